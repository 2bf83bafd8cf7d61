"""The full-run branch of every chapter that has one runs, on the CPU, on stand-in data.

A chapter's ``RUN = RunSettings.from_env(full_run=False)`` is switched on by
environment variables (``REVLIB_FULL_RUN=1``), with the data root pointed at
the stand-ins of tests/standin_data.py, the runs folder at a temporary one,
the iterations capped, and the GPU requirement lifted. The notebook is built
from its source (tools/notebooks.py) and executed in a fresh kernel, so these
are the cells a Colab reader runs with ``full_run=True``, on tiny data: they
check code paths, not results.
"""

from __future__ import annotations

import os

import notebooks
import pytest
import standin_data
import torch
from helpers import ROOT

from revlib.harness.notebook import RunSettings, peak_memory_bytes

TESTS = ROOT / "tests"

FULL_RUN_CHAPTERS = sorted(
    p for p in notebooks.SRC.glob("*.py") if "RunSettings.from_env" in p.read_text()
)
# Text that only the full branch prints, per chapter (a chapter not listed only has to run without
# error).
FULL_RUN_MARKERS = {
    "04_revnet_architecture_memory": "cpu peak during a step at batch 4",
    "11_peers": "median step (ms), cpu",
}


def test_some_chapter_has_a_full_run_branch():
    assert FULL_RUN_CHAPTERS, "no chapter uses RunSettings.from_env"


@pytest.mark.parametrize("src", FULL_RUN_CHAPTERS, ids=lambda p: p.stem)
def test_full_run_branch_executes_on_the_cpu(src, standin_root, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    root, _ = standin_root
    for key, value in {
        "REVLIB_FULL_RUN": "1",
        "REVLIB_DATA_ROOT": str(root),
        "REVLIB_RUNS_DIR": str(tmp_path / "runs"),
        "REVLIB_MAX_ITERATIONS": "2",
        "REVLIB_REQUIRE_GPU": "0",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = notebooks.notebook_from_source(src)
    nb.cells.insert(0, nbformat.v4.new_code_cell(standin_data.KERNEL_PREAMBLE))
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "\n".join(
        str(out.get("text", ""))
        + str(out.get("data", {}).get("text/markdown", ""))
        + str(out.get("data", {}).get("text/plain", ""))
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )
    assert "Traceback" not in text
    marker = FULL_RUN_MARKERS.get(src.stem)
    if marker is not None:
        assert marker in text


def test_run_settings_device_refuses_a_missing_gpu_unless_allowed(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="Change runtime type"):
        RunSettings(full_run=True).device()
    assert RunSettings(full_run=True, require_gpu=False).device() == torch.device("cpu")
    monkeypatch.setenv("REVLIB_REQUIRE_GPU", "0")
    assert RunSettings.from_env(full_run=True).device() == torch.device("cpu")


def test_run_settings_caps_iterations(monkeypatch):
    assert RunSettings().iterations(80_000) == 80_000
    monkeypatch.setenv("REVLIB_MAX_ITERATIONS", "3")
    assert RunSettings.from_env().iterations(80_000) == 3
    monkeypatch.setenv("REVLIB_MAX_ITERATIONS", "zero")
    with pytest.raises(ValueError, match="REVLIB_MAX_ITERATIONS"):
        RunSettings.from_env()


def test_peak_memory_bytes_on_the_cpu_runs_the_step_and_reports_not_measured():
    calls = []
    assert peak_memory_bytes(lambda: calls.append(1), "cpu") is None
    assert calls == [1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_peak_memory_bytes_on_cuda_counts_an_allocation():
    n = 1 << 20
    assert peak_memory_bytes(lambda: torch.empty(n, device="cuda"), "cuda") >= 4 * n
