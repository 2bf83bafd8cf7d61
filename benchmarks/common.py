"""What the benchmark scripts share: their common options, the run's metadata, the JSON file."""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

import revlib
from revlib.core.device import hardware, synchronize

RESULTS = Path(__file__).resolve().parent / "results"


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


def run_metadata(device: torch.device) -> dict:
    """Date, device and software of a benchmark run, for its JSON file."""
    info = hardware(device)
    return {
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
    """Write ``result`` as JSON to ``out``, or to results/<default_name>_<device type>.json."""
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
    """
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
