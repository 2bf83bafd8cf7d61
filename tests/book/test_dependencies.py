"""revlib imports only what pyproject.toml declares, and the chapters only what Colab has (static,
fast).

The dynamic version of this check is ``make colab-check`` (tools/colab_check.py),
which runs every chapter in a Colab-like environment.
"""

from __future__ import annotations

import colab_check
import notebooks
import pytest
from helpers import ROOT

IMPORT_NAMES = {
    "sklearn": "scikit-learn",
    "IPython": "ipython",
}  # import name -> distribution, where they differ


def distribution(import_name: str) -> str:
    return IMPORT_NAMES.get(import_name, import_name).lower()


def test_detection_flags_a_module_level_import_and_skips_an_optional_one():
    assert colab_check.third_party(
        colab_check.imports_of("import myst_nb\nimport os\nimport revlib.core")
    ) == {"myst_nb"}
    assert colab_check.third_party(
        colab_check.imports_of("def f():\n    from myst_nb import glue\n")
    ) == {"myst_nb"}
    guarded = "try:\n    from myst_nb import glue\nexcept ImportError:\n    glue = None\n"
    assert colab_check.imports_of(guarded) == set()
    unguarded = "try:\n    from myst_nb import glue\nexcept KeyError:\n    glue = None\n"
    assert colab_check.imports_of(unguarded) == {"myst_nb"}


LIBRARY = sorted((ROOT / "revlib").rglob("*.py"))


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_revlib_imports_only_declared_distributions(path):
    declared = colab_check.declared_distributions()
    used = {
        distribution(n) for n in colab_check.third_party(colab_check.imports_of(path.read_text()))
    }
    assert used <= declared, (
        f"{path.relative_to(ROOT)} imports {sorted(used - declared)}: declare it in pyproject.toml"
    )


def test_the_core_needs_torch_only():
    core = set()
    for path in (ROOT / "revlib" / "core").rglob("*.py"):
        core |= colab_check.third_party(colab_check.imports_of(path.read_text()))
    for path in (ROOT / "revlib" / "models").rglob("*.py"):
        core |= colab_check.third_party(colab_check.imports_of(path.read_text()))
    assert core <= {"torch"}
    assert colab_check.declared_distributions(extras=()) == {"torch"}


@pytest.mark.parametrize("src", sorted(notebooks.SRC.glob("*.py")), ids=lambda p: p.stem)
def test_chapters_import_only_what_colab_has(src):
    used = colab_check.third_party(colab_check.imports_of(src.read_text()))
    assert used <= set(colab_check.COLAB_PACKAGES), (
        f"{src.name} imports {sorted(used - set(colab_check.COLAB_PACKAGES))}"
    )


def test_colab_packages_cover_the_train_extra():
    colab = {d.lower() for d in colab_check.COLAB_PACKAGES.values()} | {"ipython"}
    assert colab_check.declared_distributions() <= colab
