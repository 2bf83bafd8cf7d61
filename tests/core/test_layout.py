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
    for path in sorted((REVLIB / layer).rglob("*.py")):  # subpackages too (core/ode, core/engine)
        bad = _imported_packages(path) & {*HARNESS_ONLY, "revlib.harness", "numpy"}
        assert not bad, f"{path.relative_to(REVLIB.parent)} imports {sorted(bad)}"


def test_the_import_scan_sees_deferred_imports():
    """Control: the harness defers scikit-learn's and torchvision's imports into functions; the scan
    finds them."""
    found = _imported_packages(REVLIB / "harness" / "data" / "datasets.py")
    assert {"sklearn", "torchvision"} <= found


# The public names of revlib.harness.train and .data (chapter 7 uses them) and revlib.core.ode
# (chapters 5 and 6, revlib.ode) when each was one module.
PUBLIC_BEFORE_THE_SPLIT = {
    "revlib.core.ode": [
        "KTransposeSigmaK",
        "AntisymmetricSigma",
        "StepScaled",
        "HamiltonianBlock",
        "TwoStepBlock",
        "MidpointBlock",
        "LeapfrogBlock",
        "start_pair",
        "end_pair",
        "StartPair",
        "EndPair",
    ],
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
def test_split_packages_keep_their_public_names(package):
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


def test_revlib_ode_is_the_ode_package():
    import revlib
    import revlib.core.ode

    assert revlib.ode is revlib.core.ode
    assert revlib.HamiltonianBlock is revlib.core.ode.hamiltonian.HamiltonianBlock
    assert revlib.MidpointBlock is revlib.core.ode.twostep.MidpointBlock
    assert revlib.LeapfrogBlock is revlib.core.ode.twostep.LeapfrogBlock


# ------------------------------------------------------------ file length

MAX_CORE_LINES = 400
"""Issue 26: a core file longer than this is split by concern (as ``core/ode/`` was)."""


def long_files(root: Path, limit: int = MAX_CORE_LINES) -> list[str]:
    """``path: lines`` for every ``.py`` file under ``root`` with more than ``limit`` lines."""
    return [
        f"{p.relative_to(root)}: {n}"
        for p in sorted(root.rglob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > limit
    ]


MAX_HARNESS_LINES = 500
"""Issue 25: no harness file over about 500 lines (peers.py and figures.py were split)."""


def test_no_core_file_is_over_the_limit():
    assert long_files(REVLIB / "core") == []


def test_no_harness_file_is_over_the_limit():
    assert long_files(REVLIB / "harness", MAX_HARNESS_LINES) == []


def test_control_the_length_check_sees_a_long_file(tmp_path):
    """Control: the one-module ``ode.py`` before the split (497 lines) is reported."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ode.py").write_text("x = 1\n" * 497, encoding="utf-8")
    (tmp_path / "short.py").write_text("x = 1\n" * MAX_CORE_LINES, encoding="utf-8")
    assert long_files(tmp_path) == ["sub/ode.py: 497"]
