"""What the benchmark scripts share: their common options, the run's metadata, the JSON file.

**A loaded machine gives no result.** :func:`run_metadata` starts watching the
CPU time that other processes use (``/proc/stat`` less this process's own), and
:func:`write_result` refuses to write the JSON when, on average over the run or
over the second before it, they used more than :data:`MAX_OTHER_CORES` cores:
a neighbour that takes time from the benchmark changes its medians by an amount
no interval of a single run reveals. So a benchmark calls ``run_metadata`` before its timed
work (:func:`time_interleaved` refuses to start otherwise), and the file records how long the
watch ran. ``REVLIB_BENCHMARK_ALLOW_LOAD=1``
overrides the refusal; the file then records the load and the override.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

import revlib
from revlib.core.device import hardware, synchronize

RESULTS = Path(__file__).resolve().parent / "results"

MAX_OTHER_CORES = 0.2
"""The CPU that other processes may use, in cores, averaged over a benchmark run."""


def compile_from_scratch() -> None:
    """Make ``torch.compile``'s time in this process a cold compile, counted as this process's.

    A fresh Inductor cache folder and no cached graphs (a cache left warm by an
    earlier run would make the first steps' time that of a lookup), and one
    compiler thread (a pool of compile workers would count as another process's load).
    """
    import tempfile

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="revlib-bench-inductor-")
    torch._inductor.config.compile_threads = 1
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False


def print_setting(result: dict, args: argparse.Namespace) -> None:
    """The first line a benchmark prints: the machine, and the stack it timed."""
    print(
        f"{result['device']}, torch {result['torch']}, {result['threads']} threads; "
        f"depth {args.depth}, width {args.width}, batch {args.batch}, {args.size}x{args.size}; "
        f"median of {args.repeats} after {args.warmup} warm-up"
    )


def _cpu_seconds() -> tuple[float, float, float]:
    """(busy seconds of every core, this process's CPU seconds, wall time), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(v) for v in fields]
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # less idle and iowait
    own = os.times()  # children: the compiler processes this run waited for
    mine = own.user + own.system + own.children_user + own.children_system
    return busy / os.sysconf("SC_CLK_TCK"), mine, time.monotonic()


def _others_cores(start: tuple[float, float, float]) -> float:
    busy, own, wall = _cpu_seconds()
    return max(0.0, (busy - start[0]) - (own - start[1])) / max(wall - start[2], 1e-9)


_WATCH: dict[str, object] = {}


def _start_watch() -> dict:
    before = _cpu_seconds()
    time.sleep(1.0)
    idle_before = _others_cores(before)
    _WATCH["start"] = _cpu_seconds()
    _WATCH["before"] = idle_before
    return {"other_cores_before": idle_before, "loadavg_before": os.getloadavg()}


def load_report() -> dict:
    """Other processes' CPU use (cores) in the second before the run and during it."""
    if "start" not in _WATCH:
        raise RuntimeError("benchmarks: call run_metadata() before the timed work")
    during = _others_cores(_WATCH["start"])  # type: ignore[arg-type]
    allowed = os.environ.get("REVLIB_BENCHMARK_ALLOW_LOAD") == "1"
    return {
        "other_cores_before": _WATCH["before"],
        "other_cores_during": during,
        # how long "during" covers: at least the timed work, which starts after the watch
        "seconds_watched": time.monotonic() - _WATCH["start"][2],  # type: ignore[index]
        "max_other_cores": MAX_OTHER_CORES,
        "loadavg_after": os.getloadavg(),
        "override": allowed,
    }


def add_run_options(
    parser: argparse.ArgumentParser, name: str, device_default: str = "revlib.default_device()"
) -> None:
    """The options every benchmark has: --device, --threads, --seed, --note and --out."""
    parser.add_argument(
        "--device", default=None, help=f"cpu, cuda, cuda:1, ... (default: {device_default})"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--note", default="", help="free text stored in the JSON (e.g. the machine's load)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help=f"JSON path (default results/{name}_<device>.json)"
    )


def add_stack_options(parser: argparse.ArgumentParser, repeats: int) -> None:
    """The coupling stack's size and the rounds: --depth, --width, --batch, --size, --repeats and
    --warmup (the stack of step_time.py)."""
    parser.add_argument("--depth", type=int, default=9, help="coupling blocks (default 9)")
    parser.add_argument("--width", type=int, default=32, help="channels, even (default 32)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--size", type=int, default=32, help="height and width (default 32)")
    parser.add_argument(
        "--repeats", type=int, default=repeats, help=f"timed steps each (default {repeats})"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps each (default 3)")


def stack_setting(args: argparse.Namespace) -> dict:
    """The stack's size and the rounds, as a results file records them."""
    return {k: getattr(args, k) for k in ("depth", "width", "batch", "size", "warmup", "repeats")}


def run_metadata(device: torch.device) -> dict:
    """Date, device and software of a benchmark run, for its JSON file; starts the load watch."""
    info = hardware(device)
    watch = _start_watch()
    return {
        "load_before": watch,
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": info["name"],
        "device_type": device.type,
        "hardware": info,
        "torch": torch.__version__,
        "revlib": revlib.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }


def write_result(result: dict, out: Path | None, default_name: str) -> Path:
    """Write ``result`` as JSON to ``out``, or to results/<default_name>_<device type>.json.

    Refuses (``SystemExit``) when other processes used more than
    :data:`MAX_OTHER_CORES` cores before or during the run, unless overridden.
    """
    load = load_report()
    result["load"] = load
    busy = max(load["other_cores_before"], load["other_cores_during"])
    if busy > MAX_OTHER_CORES and not load["override"]:
        raise SystemExit(
            f"benchmarks: other processes used {busy:.2f} cores (more than {MAX_OTHER_CORES}); "
            "no result written. Run it on an idle machine, or set REVLIB_BENCHMARK_ALLOW_LOAD=1 "
            "to write it with the load recorded."
        )
    path = out or RESULTS / f"{default_name}_{result['device_type']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def time_interleaved(
    step: Callable[[str], None], names: list[str], device: torch.device, warmup: int, repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and process-CPU seconds of ``step(name)`` for every name, interleaved.

    ``warmup`` untimed rounds, then ``repeats`` timed rounds; a round runs
    each variant once, in an order rotated by one from round to round, so a
    change in the machine's load (or a cache left warm by the variant before)
    hits all variants alike. The device is synchronised around every step.
    Refuses to start before :func:`run_metadata` has started the load watch,
    which must cover the timing.
    """
    if "start" not in _WATCH:
        raise RuntimeError("benchmarks: call run_metadata() before time_interleaved()")
    for _ in range(warmup):
        for name in names:
            step(name)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            step(name)
            synchronize(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu
