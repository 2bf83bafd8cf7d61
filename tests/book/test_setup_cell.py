"""The notebooks' setup cell: installs revlib on Colab only when needed, from $REVLIB_INSTALL if
set; no network.

The cell's source comes from tools/notebooks.py (the same text every chapter
starts with) and runs here with ``subprocess.run`` recorded instead of called,
``google.colab`` present or absent in ``sys.modules``, and a stand-in ``revlib``
module at the version under test.
"""

from __future__ import annotations

import subprocess
import sys
import types

import notebooks
import pytest

import revlib

WANTED = notebooks.revlib_version()


def fake_revlib(version: str | None) -> types.ModuleType:
    mod = types.ModuleType("revlib")
    if version is not None:
        mod.__version__ = version
    mod.default_device = lambda: "cpu"
    return mod


@pytest.fixture
def cell(monkeypatch):
    """Run the setup cell; returns (pip calls, namespace). ``installs`` is what a pip call puts into
    sys.modules."""
    calls: list[list[str]] = []
    state = {"installs": fake_revlib(WANTED)}

    def fake_run(cmd, check=False, **kwargs):
        calls.append(list(cmd))
        sys.modules["revlib"] = state["installs"]
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.delenv("REVLIB_INSTALL", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    # restore the real revlib (and its submodules) afterwards, whatever the cell dropped
    saved = {k: v for k, v in sys.modules.items() if k == "revlib" or k.startswith("revlib.")}
    yield calls, state
    for k in [k for k in sys.modules if k == "revlib" or k.startswith("revlib.")]:
        del sys.modules[k]
    sys.modules.update(saved)


def run_cell(capsys) -> str:
    exec(compile(notebooks.setup_cell_source(), "setup-cell", "exec"), {"__name__": "__main__"})
    return capsys.readouterr().out


def on_colab(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))


def test_the_version_it_asks_for_is_the_library_s():
    assert WANTED == revlib.__version__
    assert f'REVLIB_VERSION = "{WANTED}"' in notebooks.setup_cell_source()


def test_local_checkout_at_the_version_installs_nothing(cell, capsys):
    calls, _ = cell
    out = run_cell(capsys)
    assert calls == [] and f"revlib {WANTED}, running on: cpu" in out


def test_colab_with_revlib_already_there_installs_nothing(cell, capsys, monkeypatch):
    calls, _ = cell
    on_colab(monkeypatch)  # a second notebook in the same runtime, or a fork's own install
    run_cell(capsys)
    assert calls == []


@pytest.mark.parametrize("present", [None, "0.0.1", "pypi-other"])
def test_colab_without_the_right_revlib_installs_from_the_repository(
    cell, capsys, monkeypatch, present
):
    calls, _ = cell
    on_colab(monkeypatch)
    if present is None:
        monkeypatch.setitem(sys.modules, "revlib", None)  # import revlib raises ImportError
    elif present == "pypi-other":
        monkeypatch.setitem(
            sys.modules, "revlib", fake_revlib(None)
        )  # PyPI's unrelated package: no __version__
    else:
        monkeypatch.setitem(sys.modules, "revlib", fake_revlib(present))
    out = run_cell(capsys)
    assert len(calls) == 1
    cmd = calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"]
    assert cmd[-1] == f"revlib[train] @ git+{notebooks.repository_url()}"
    assert (
        f"revlib {WANTED}, running on: cpu" in out
    )  # the freshly installed module, not the stale one


def test_revlib_install_overrides_the_source(cell, capsys, monkeypatch, tmp_path):
    calls, _ = cell
    on_colab(monkeypatch)
    monkeypatch.setitem(sys.modules, "revlib", None)
    monkeypatch.setenv("REVLIB_INSTALL", f"revlib[train] @ file://{tmp_path}")
    run_cell(capsys)
    assert calls[0][-1] == f"revlib[train] @ file://{tmp_path}"


def test_outside_colab_a_missing_revlib_is_a_clear_error_not_an_install(cell, capsys, monkeypatch):
    calls, _ = cell
    monkeypatch.setitem(sys.modules, "revlib", fake_revlib("0.0.1"))
    with pytest.raises(ImportError, match=r"pip install -e '\.\[train\]'"):
        run_cell(capsys)
    assert calls == []
