"""Build the book's notebooks from their percent-format sources, and execute them.

Each chapter is written as ``book/src/NAME.py`` in jupytext's percent format
(``# %%`` starts a code cell, ``# %% [markdown]`` a Markdown cell whose lines
start with ``# ``; ``# %% tags=["nbval-ignore-output"]`` tags a cell). This
script reads it with jupytext, puts the standard setup cell first, and writes
``book/NAME.ipynb`` executed in place, so the committed notebook is the executed one.

    python tools/notebooks.py build book/src/01_introduction.py   # one chapter
    python tools/notebooks.py build --all                         # every chapter
    python tools/notebooks.py check                               # sources and notebooks agree
    python tools/notebooks.py sync --all    # take reformatted code into the notebooks, outputs kept

``sync`` rewrites a committed notebook's cells from its source without executing
it, and only where nothing can change an output: the same cells and tags, any
Markdown (it has no outputs), and code whose syntax tree is unchanged (a
formatter's or a comment's change, or a function's docstring rewrapped).
Anything else must be rebuilt.

The setup cell installs revlib from the repository named once in _config.yml,
at the version named once in revlib/__init__.py (see :func:`setup_cell_source`).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import yaml
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "book" / "src"
BOOK = ROOT / "book"


def config() -> dict:
    """The book's ``_config.yml``, parsed."""
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def _config_value(*keys: str) -> str:
    value = config()
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    if not isinstance(value, str) or not value:
        raise SystemExit(f"_config.yml has no {'.'.join(keys)}")
    return value


def repository_url() -> str:
    """The repository URL: ``repository.url`` in _config.yml."""
    return _config_value("repository", "url")


def book_url() -> str:
    """Where the rendered book is published: ``html.baseurl`` in _config.yml."""
    return _config_value("html", "baseurl")


def revlib_version() -> str:
    """``revlib.__version__``, read from revlib/__init__.py without importing it."""
    match = re.search(
        r'^__version__\s*=\s*"([^"]+)"', (ROOT / "revlib" / "__init__.py").read_text(), flags=re.M
    )
    if not match:
        raise SystemExit("revlib/__init__.py has no __version__")
    return match.group(1)


def setup_cell_source() -> str:
    """The first code cell of every chapter.

    It makes ``import revlib`` give the version this notebook was built with.
    If revlib already imports at that version (a local checkout, a fork's own
    install, a second notebook in the same Colab runtime) it does nothing. On
    Colab it pip-installs ``revlib[train]`` from the book's repository, or from
    ``$REVLIB_INSTALL`` if set (a fork, or a local folder in tests). Elsewhere it
    says how to install revlib instead of installing anything.
    """
    url = repository_url()
    # Every line fits the chapters' code width (tools/check_code_width.py checks this cell too).
    return (
        "# Setup: make `import revlib` give the version this notebook was written for. On\n"
        "# Colab it is installed from the book's repository (or from $REVLIB_INSTALL, e.g. a\n"
        "# fork); elsewhere it must be.\n"
        "import importlib, os, subprocess, sys\n"
        "\n"
        f'REVLIB_VERSION = "{revlib_version()}"\n'
        'REVLIB_INSTALL = os.environ.get("REVLIB_INSTALL") or (\n'
        '    "revlib[train] @ "\n'
        f'    "git+{url}"\n'
        ")\n"
        "\n"
        "\n"
        "def installed_revlib():\n"
        "    try:\n"
        '        return importlib.import_module("revlib").__version__\n'
        "    # absent, or PyPI's revlib: HomebrewNLP's RevNet library, same import name\n"
        "    except (ImportError, AttributeError):\n"
        "        return None\n"
        "\n"
        "\n"
        "if installed_revlib() != REVLIB_VERSION:\n"
        '    if "google.colab" not in sys.modules:\n'
        "        raise ImportError(\n"
        '            f"this notebook needs revlib {REVLIB_VERSION} "\n'
        '            f"(found {installed_revlib()}): in a checkout of the book run  "\n'
        "            \"pip install -e '.[train]'  (see its README)\"\n"
        "        )\n"
        '    for name in [m for m in sys.modules if m == "revlib" or m.startswith("revlib.")]:\n'
        "        del sys.modules[name]  # forget a stale import\n"
        "    subprocess.run(\n"
        '        [sys.executable, "-m", "pip", "install", "-q", REVLIB_INSTALL], check=True\n'
        "    )\n"
        "    importlib.invalidate_caches()\n"
        "import revlib\n"
        "\n"
        'print(f"revlib {revlib.__version__}, running on: {revlib.default_device()}")'
    )


def read_source(src: Path) -> list[nbformat.NotebookNode]:
    """The cells of a percent-format chapter, read by jupytext; only their tags are kept as
    metadata."""
    nb = jupytext.read(src, fmt="py:percent")
    cells = []
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        cell.metadata = nbformat.NotebookNode({"tags": list(tags)} if tags else {})
        cells.append(cell)
    return cells


def notebook_from_source(src: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    cells = read_source(src)
    first_code = (
        next(i for i, c in enumerate(cells) if c.cell_type == "code")
        if any(c.cell_type == "code" for c in cells)
        else len(cells)
    )
    setup = nbformat.v4.new_code_cell(setup_cell_source())
    setup.metadata["tags"] = ["hide-input"]  # the rendered book folds it; Colab shows it
    cells.insert(first_code, setup)
    nb.cells = cells
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"
    return nb


def build(src: Path, timeout: int = 600) -> float:
    """Write book/NAME.ipynb from its source and execute it in place; return seconds."""
    nb = notebook_from_source(src)
    out = BOOK / (src.stem + ".ipynb")
    start = time.perf_counter()
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(BOOK)}}
    ).execute()
    seconds = time.perf_counter() - start
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, out)
    print(f"{out.relative_to(ROOT)}: executed in {seconds:.1f} s")
    return seconds


def check() -> list[str]:
    """Problems: notebooks whose cells differ from their sources, or that are not executed."""
    problems = []
    for src in sorted(SRC.glob("*.py")):
        path = BOOK / (src.stem + ".ipynb")
        if not path.exists():
            problems.append(
                f"{path.name}: missing (run tools/notebooks.py build {src.relative_to(ROOT)})"
            )
            continue
        expected = notebook_from_source(src)
        actual = nbformat.read(path, as_version=4)
        want = [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in expected.cells]
        have = [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in actual.cells]
        if want != have:
            problems.append(f"{path.name}: cells differ from {src.name} (rebuild it)")
        if any(
            c.cell_type == "code" and c.source and c.get("execution_count") is None
            for c in actual.cells
        ):
            problems.append(f"{path.name}: has code cells that were not executed")
    return problems


class _DocstringWords(ast.NodeTransformer):
    """Reduce each function's and class's docstring to its words: rewrapping a docstring (as a
    formatter or a line-length fix does) changes its line breaks and indentation, not what runs.
    A string at the top of a cell is left alone: as a cell's last expression it is its output."""

    def _words(self, node: ast.AST) -> ast.AST:
        self.generic_visit(node)
        body = getattr(node, "body", [])
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            body[0].value.value = " ".join(body[0].value.value.split())
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _words


def _same_program(new: str, old: str) -> bool:
    """Whether code cell ``new`` runs as ``old`` does: the same syntax tree, comments, layout and
    the line breaks of docstrings aside, except that its imports may be sorted or fewer (lint
    removes an import only when the whole chapter leaves it unused)."""
    try:
        trees = (
            _DocstringWords().visit(ast.parse(new)).body,
            _DocstringWords().visit(ast.parse(old)).body,
        )
    except SyntaxError:
        return False
    imports = [
        {
            (getattr(n, "module", None), getattr(n, "level", 0), a.name, a.asname)
            for n in body
            if isinstance(n, ast.Import | ast.ImportFrom)
            for a in n.names
        }
        for body in trees
    ]
    rest = [
        [ast.dump(n) for n in body if not isinstance(n, ast.Import | ast.ImportFrom)]
        for body in trees
    ]
    return rest[0] == rest[1] and imports[0] <= imports[1]


def sync(src: Path) -> str:
    """Copy ``src``'s cells into its executed notebook where no output can change; say what
    happened."""
    path = BOOK / (src.stem + ".ipynb")
    expected = notebook_from_source(src)
    actual = nbformat.read(path, as_version=4)
    if len(expected.cells) != len(actual.cells):
        return (
            f"{path.name}: {len(expected.cells)} cells in the source, {len(actual.cells)} (rebuild)"
        )
    changed = 0
    for i, (want, have) in enumerate(zip(expected.cells, actual.cells, strict=True)):
        same_kind = want.cell_type == have.cell_type
        same_tags = want.metadata.get("tags", []) == have.metadata.get("tags", [])
        if not (same_kind and same_tags):
            return f"{path.name}: cell {i} changed its type or tags (rebuild)"
        if want.source == have.source:
            continue
        if want.cell_type == "code" and not _same_program(want.source, have.source):
            return f"{path.name}: cell {i} changed more than its layout (rebuild)"
        have.source = want.source
        changed += 1
    if changed:
        nbformat.write(actual, path)
    return f"{path.name}: {changed} cell(s) synced"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("sources", nargs="*", type=Path)
    b.add_argument("--all", action="store_true")
    sub.add_parser("check")
    s = sub.add_parser("sync")
    s.add_argument("sources", nargs="*", type=Path)
    s.add_argument("--all", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "check":
        problems = check()
        print("\n".join(problems) or "notebooks match their sources")
        return 1 if problems else 0
    sources = sorted(SRC.glob("*.py")) if args.all else [s.resolve() for s in args.sources]
    if args.cmd == "sync":
        reports = [sync(src) for src in sources]
        print("\n".join(reports))
        return 1 if any("rebuild" in r for r in reports) else 0
    for src in sources:
        build(src)
    return 0


if __name__ == "__main__":
    sys.exit(main())
