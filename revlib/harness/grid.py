"""A resumable grid of runs: one JSON file per finished run, shards, one results file.

A study names each run as a :class:`Job` (a frozen dataclass whose fields say
what the run is) and gives a function that performs one job. :func:`run` does
every job of a shard that the cache does not hold yet, so a stopped grid goes
on where it stopped. Processes that share a cache share its jobs: each takes
the next job that no other live process holds (:func:`claim`), so two
one-thread processes of the same command keep both cores busy to the end;
``--shard i/n`` splits a grid between machines that do not share a cache.
:func:`collect` gathers the cache into a results file marked with the study's
format tag; :func:`load` reads one back and :func:`select` picks runs out of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .train.checkpoints import atomic_write_text

__all__ = [
    "Job",
    "JobT",
    "parse_shard",
    "shard",
    "result_path",
    "claim",
    "run",
    "collect",
    "restore",
    "load",
    "select",
]


@dataclasses.dataclass(frozen=True)
class Job:
    """One run of a grid. Subclasses add the fields; :meth:`key` names the run's files."""

    def fields(self) -> dict[str, Any]:
        """The job's fields as JSON values."""
        return dataclasses.asdict(self)

    def key(self) -> str:
        """A file name that differs between any two jobs: ``field=value`` joined by ``_``."""
        return "_".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.fields().items()
        )


JobT = TypeVar("JobT", bound=Job)
"""A study's own kind of :class:`Job`: :func:`run` hands each job to ``perform`` as it is."""


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n) as ``(i, n)``."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"grid: a shard is written i/n, such as 0/2; got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"grid: shard {text!r} needs 0 <= i < n")
    return i, n


def shard(jobs: Sequence[JobT], index: int, count: int) -> list[JobT]:
    """Every ``count``-th job from ``index``: ``count`` shards are disjoint and cover ``jobs``.

    Striding keeps each shard in the grid's order of priority, so shards that
    are stopped early hold a spread of the grid, not one end of it.
    """
    return list(jobs[index::count])


def result_path(cache: Path, job: Job) -> Path:
    """Where a finished ``job``'s result lives in ``cache``."""
    return cache / f"{job.key()}.json"


@contextlib.contextmanager
def claim(cache: Path, job: Job) -> Iterator[bool]:
    """Hold ``job`` for this process while the body runs: ``True`` if no other live process
    holds it, else ``False``.

    The hold is an exclusive ``flock`` on ``cache/claims/<key>.lock``, which the
    system releases when its holder ends, however it ends: a stopped process
    leaves no stale claim. Where ``fcntl`` is missing (Windows) every claim
    succeeds, and processes must be given disjoint shards.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield True
        return
    path = cache / "claims" / f"{job.key()}.lock"
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def run(
    jobs: Sequence[JobT],
    cache: str | Path,
    perform: Callable[[JobT, Path], dict[str, Any] | None],
    *,
    log: Callable[[str], None] = print,
) -> int:
    """Perform every job of ``jobs`` whose result is not in ``cache`` and that no other process
    holds (:func:`claim`), in order; count them.

    ``perform(job, checkpoint)`` returns the run's result (JSON values);
    ``checkpoint`` is a path it may use to save and resume its state, removed
    once the result is written.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    done, t0 = 0, time.perf_counter()
    for i, job in enumerate(jobs, 1):
        path = result_path(cache, job)
        finished = path.exists()
        with contextlib.nullcontext(False) if finished else claim(cache, job) as mine:
            # checked again once held: another process may have just written the result
            if mine and not path.exists():
                checkpoint = cache / "checkpoints" / f"{job.key()}.pt"
                checkpoint.parent.mkdir(exist_ok=True)
                outcome = perform(job, checkpoint)
                if outcome is None:
                    raise RuntimeError(f"grid.run: {job.key()} stopped before its end")
                result = {**job.fields(), **outcome}
                atomic_write_text(json.dumps(result) + "\n", path)
                checkpoint.unlink(missing_ok=True)
                done += 1
        held = "" if finished or mine or path.exists() else "  (another process holds it)"
        log(f"[{i}/{len(jobs)}] {time.perf_counter() - t0:7.0f} s  {path.name}{held}")
    return done


def collect(jobs: Iterable[Job], cache: str | Path, fmt: str, **meta: Any) -> dict[str, Any]:
    """The results file: ``format`` (``fmt``), ``meta``, cached ``runs``, ``missing`` jobs."""
    cache = Path(cache)
    runs, missing = [], []
    for job in jobs:
        path = result_path(cache, job)
        if path.exists():
            runs.append(json.loads(path.read_text()))
        else:
            missing.append(job.fields())
    return {"format": fmt, **meta, "runs": runs, "missing": missing}


def restore(jobs: Iterable[Job], results: dict[str, Any], cache: str | Path) -> int:
    """Write into ``cache`` every run of ``results`` that is one of ``jobs`` and not cached yet.

    A results file committed to the repository carries a grid's finished runs
    from one machine (or one clone) to the next; count the runs written.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    jobs = list(jobs)
    written = 0
    for r in results["runs"]:
        for job in jobs:
            if all(r.get(k) == v for k, v in job.fields().items()):
                path = result_path(cache, job)
                if not path.exists():
                    atomic_write_text(json.dumps(r) + "\n", path)
                    written += 1
                break
    return written


def load(path: str | Path | None, fmt: str, command: str, packaged: str = "") -> dict[str, Any]:
    """A results file of format ``fmt``: ``path``, or with ``path=None`` the file ``packaged``
    shipped inside ``revlib.harness`` (``results/...``, pyproject's package data), which is there
    wherever revlib is installed (Colab's checkout-free install included). If absent, the error
    names ``command``, which makes it."""
    if path is None:
        from importlib.resources import files

        resource = files("revlib.harness").joinpath(packaged)
        where: str | Path = f"revlib.harness/{packaged}"
        text = resource.read_text() if packaged and resource.is_file() else None
    else:
        where = Path(path)
        text = where.read_text() if where.exists() else None
    if text is None:
        raise FileNotFoundError(f"grid: no results file {where}; make it with `{command}`")
    result: dict[str, Any] = json.loads(text)
    if result.get("format") != fmt:
        raise ValueError(f"grid: {where} is not a {fmt} results file")
    return result


def select(
    results: dict[str, Any] | Sequence[dict[str, Any]], **where: Any
) -> list[dict[str, Any]]:
    """The runs whose fields equal every ``where`` value, sorted by seed."""
    runs = results["runs"] if isinstance(results, dict) else results
    chosen = [r for r in runs if all(r.get(k) == v for k, v in where.items())]
    return sorted(chosen, key=lambda r: r.get("seed", 0))
