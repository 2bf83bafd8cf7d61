"""The benchmarks' load watch: it must cover the timed work, and a loaded run writes no file."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def common(monkeypatch):
    """benchmarks/common.py, fresh (its watch is module state), with a one-second sleep cut."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("common", None)
    module = importlib.import_module("common")
    monkeypatch.setattr(module.time, "sleep", lambda _: None)
    yield module
    sys.modules.pop("common", None)


def test_timing_refuses_to_start_before_the_watch(common):
    with pytest.raises(RuntimeError, match="run_metadata"):
        common.time_interleaved(lambda name: None, ["a"], torch.device("cpu"), 0, 1)


def test_the_watch_covers_the_timing(common, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "_others_cores", lambda start: 0.0)  # an idle machine
    common.run_metadata(torch.device("cpu"))
    step = lambda name: _busy(common.time.perf_counter, 0.01)  # noqa: E731  10 ms a step
    times, _ = common.time_interleaved(step, ["a", "b"], torch.device("cpu"), 1, 3)
    assert [len(t) for t in times.values()] == [3, 3]
    path = common.write_result({"device_type": "cpu"}, tmp_path / "r.json", "x")
    load = common.json.loads(path.read_text())["load"]
    timed = sum(sum(t) for t in times.values())
    assert load["seconds_watched"] >= timed > 0.05 and not load["override"]


def _busy(clock, seconds: float) -> None:
    """Wait ``seconds`` without time.sleep (the fixture cut it)."""
    end = clock() + seconds
    while clock() < end:
        pass


def test_a_loaded_run_writes_nothing_unless_overridden(common, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "_others_cores", lambda start: 1.5)  # another process's 1.5 cores
    common.run_metadata(torch.device("cpu"))
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit, match="1.50 cores"):
        common.write_result({"device_type": "cpu"}, out, "x")
    assert not out.exists()
    monkeypatch.setenv("REVLIB_BENCHMARK_ALLOW_LOAD", "1")
    common.write_result({"device_type": "cpu"}, out, "x")
    assert common.json.loads(out.read_text())["load"]["override"] is True
