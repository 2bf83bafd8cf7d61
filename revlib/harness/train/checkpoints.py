"""Checkpoint I/O: atomic files, metric files, and the random state an exact resume needs.

Checkpoints and metric files are written to a temporary file beside the target
that then replaces it (``os.replace``), so an interruption during a save never
leaves a broken file.

The random state of a run is torch's (CPU and CUDA), NumPy's and Python's
global generators plus every ``torch.Generator`` the train loader draws from
(:func:`rng_snapshot`); all of it is stored in types that
``torch.load(weights_only=True)`` accepts.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

__all__ = [
    "seed_everything",
    "rng_snapshot",
    "restore_rng",
    "atomic_save",
    "atomic_write_text",
    "write_metrics",
]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the global generator that user code draws from)
    torch.manual_seed(seed)


# ------------------------------------------------------------------ random state


def _global_rng_state() -> dict[str, Any]:
    # the legacy global generator: the one np.random.seed seeds and older code draws from
    np_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))  # noqa: NPY002
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "cuda": torch.cuda.get_rng_state_all()
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else None,
    }


def _set_global_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))  # noqa: NPY002
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """Every torch.Generator a loader draws from (its own, its sampler's, its batch sampler's)."""
    found: dict[int, torch.Generator] = {}
    for owner in (
        loader,
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    ):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator):
            found.setdefault(id(g), g)
    return list(found.values())


def rng_snapshot(loader: Any) -> dict:
    """The global random state and the state of every generator of ``loader``."""
    return {
        "global": _global_rng_state(),
        "loader": [g.get_state() for g in _loader_generators(loader)],
    }


def restore_rng(snapshot: dict, loader: Any) -> None:
    """Put back a :func:`rng_snapshot`; ``loader`` must be built like the one it was taken from."""
    _set_global_rng_state(snapshot["global"])
    gens = _loader_generators(loader)
    if len(gens) != len(snapshot["loader"]):
        raise RuntimeError(
            f"the train loader has {len(gens)} generators, the checkpoint "
            f"{len(snapshot['loader'])}: resume with a loader built the same way"
        )
    for g, s in zip(gens, snapshot["loader"], strict=True):
        g.set_state(s)


# ------------------------------------------------------------------ atomic files


def _atomic_write(path: str | os.PathLike, mode: str, write: Callable[[Any], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it, then ``os.replace``.

    A crash at any point leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        binary = "b" in mode
        with os.fdopen(
            fd, mode, encoding=None if binary else "utf-8", newline=None if binary else ""
        ) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` onto ``path``."""
    return _atomic_write(path, "wb", lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    return _atomic_write(path, "w", lambda f: f.write(text))


def write_metrics(history: Sequence[dict], path: str | os.PathLike) -> Path:
    """Per-epoch metrics, atomically: ``.json`` (a list of objects) or ``.csv`` (a row each)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        keys: dict[str, None] = {}
        for row in history:
            keys.update(dict.fromkeys(row))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(keys))
        w.writeheader()
        w.writerows(history)
        return atomic_write_text(buf.getvalue(), path)
    return atomic_write_text(json.dumps(list(history), indent=1) + "\n", path)
