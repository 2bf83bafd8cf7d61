"""The package's layers: the core and the models import nothing but torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HARNESS_ONLY = ("torchvision", "tqdm", "matplotlib", "sklearn", "myst_nb", "IPython", "pandas")

_PROBE = """
import json, sys, pkgutil, importlib
import torch
baseline = {m.split(".")[0] for m in sys.modules}  # torch itself may import numpy and tqdm
import revlib, revlib.core, revlib.models
for info in pkgutil.iter_modules(revlib.core.__path__, "revlib.core."):
    importlib.import_module(info.name)
for info in pkgutil.iter_modules(revlib.models.__path__, "revlib.models."):
    importlib.import_module(info.name)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} - baseline)))
"""


def _top_level_modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_core_and_models_import_no_harness_dependency():
    loaded = _top_level_modules_after(_PROBE)
    assert "revlib" in loaded
    assert not loaded & set(HARNESS_ONLY), sorted(loaded & set(HARNESS_ONLY))


def test_the_probe_sees_a_harness_dependency():
    """Control: had the core imported a plotting library, the same probe would report it."""
    loaded = _top_level_modules_after(_PROBE.replace("import revlib, ", "import matplotlib.pyplot, revlib, "))
    assert "matplotlib" in loaded


@pytest.mark.parametrize("name", ["blocks", "recompute", "couplings", "sequence", "modes", "memory", "checks"])
def test_core_modules_live_in_revlib_core(name):
    import importlib

    module = importlib.import_module(f"revlib.core.{name}")
    assert module.__name__ == f"revlib.core.{name}"
