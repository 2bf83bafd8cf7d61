"""The package's layers: the core and the models import nothing but torch; the harness packages keep
their names."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

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
    loaded = _top_level_modules_after(
        _PROBE.replace("import revlib, ", "import matplotlib.pyplot, revlib, ")
    )
    assert "matplotlib" in loaded


@pytest.mark.parametrize(
    "name", ["blocks", "replay", "couplings", "sequence", "modes", "memory", "checks"]
)
def test_core_modules_live_in_revlib_core(name):
    import importlib

    module = importlib.import_module(f"revlib.core.{name}")
    assert module.__name__ == f"revlib.core.{name}"


# ------------------------------------------------------------ imports inside functions

REVLIB = ROOT / "revlib"


def _imported_packages(path: Path) -> set[str]:
    """Top-level packages named by every import statement of a file, including those inside
    functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
            elif node.module and node.module.split(".")[0] == "harness":
                found.add("revlib.harness")  # from ..harness import ...
    return found


@pytest.mark.parametrize("layer", ["core", "models"])
def test_no_deferred_import_of_a_harness_dependency(layer):
    """The subprocess probe sees imports done at import time; this sees the ones deferred into
    functions too."""
    for path in sorted((REVLIB / layer).glob("*.py")):
        bad = _imported_packages(path) & {*HARNESS_ONLY, "revlib.harness", "numpy"}
        assert not bad, f"{path.relative_to(REVLIB.parent)} imports {sorted(bad)}"


def test_the_import_scan_sees_deferred_imports():
    """Control: the harness defers scikit-learn's and torchvision's imports into functions; the scan
    finds them."""
    found = _imported_packages(REVLIB / "harness" / "data" / "datasets.py")
    assert {"sklearn", "torchvision"} <= found


# The public names of revlib.harness.train and .data when each was one module (chapter 7 uses them).
PUBLIC_BEFORE_THE_SPLIT = {
    "revlib.harness.train": [
        "Recipe",
        "RECIPES",
        "recipe",
        "parameter_groups",
        "decayed_parameter_names",
        "Trainer",
        "evaluate",
        "seed_everything",
        "atomic_save",
        "atomic_write_text",
        "write_metrics",
        "plot_history",
        "smoothness_hook",
        "set_bn_momentum",
    ],
    "revlib.harness.data": [
        "DATASETS",
        "DataUnavailableError",
        "ImageData",
        "TensorLoader",
        "RandomCropFlip",
        "load",
        "load_digits",
        "balanced_subset",
        "default_root",
        "augmentation_for",
    ],
}


@pytest.mark.parametrize("package", sorted(PUBLIC_BEFORE_THE_SPLIT))
def test_harness_packages_keep_their_public_names(package):
    """``from revlib.harness.train import Trainer`` keeps working: each public name is one
    submodule's."""
    import importlib
    import pkgutil

    pkg = importlib.import_module(package)
    assert set(PUBLIC_BEFORE_THE_SPLIT[package]) <= set(pkg.__all__)
    modules = [
        importlib.import_module(info.name)
        for info in pkgutil.iter_modules(pkg.__path__, package + ".")
    ]
    for name in pkg.__all__:
        homes = [m for m in modules if name in m.__all__]
        assert len(homes) == 1 and getattr(pkg, name) is getattr(homes[0], name), (name, homes)
