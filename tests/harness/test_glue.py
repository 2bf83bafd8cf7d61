"""revlib.harness.notebook.glue writes the very output myst_nb.glue writes, without importing
myst-nb."""

from __future__ import annotations

import subprocess
import sys

import pytest

from revlib.harness import notebook


def recorded(monkeypatch, module, attribute: str, call) -> list:
    calls = []
    monkeypatch.setattr(module, attribute, lambda *a, **k: calls.append((a, k)))
    call()
    return calls


@pytest.mark.parametrize("display", [True, False])
@pytest.mark.parametrize("value", [3.25e-07, 12345, "text", [1, 2]])
def test_same_display_call_as_myst_nb(monkeypatch, value, display):
    myst_glue = pytest.importorskip("myst_nb.ext.glue")
    import IPython.display

    ours = recorded(
        monkeypatch, IPython.display, "display", lambda: notebook.glue("x", value, display=display)
    )
    theirs = recorded(
        monkeypatch, myst_glue, "ipy_display", lambda: myst_glue.glue("x", value, display=display)
    )
    assert ours == theirs and len(ours) == 1
    bundle = ours[0][0][0]
    assert all(k.startswith(notebook.GLUE_PREFIX) for k in bundle) is (not display)


def test_importing_the_harness_notebook_helpers_does_not_import_myst_nb():
    code = (
        "import revlib.harness.notebook as n, sys; n.glue('a', 1, display=False); "
        "print('myst_nb' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().endswith("False")
