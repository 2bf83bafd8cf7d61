"""Build the book's notebooks from their percent-format sources, and execute them.

Each chapter is written as ``book/src/NAME.py`` in the percent format
(``# %%`` starts a code cell, ``# %% [markdown]`` a Markdown cell whose lines
start with ``# ``; ``# %% tags=["nbval-ignore-output"]`` tags a cell). This
script turns it into ``book/NAME.ipynb`` with the standard setup cell first,
then executes it in place, so the committed notebook is the executed one.

    python tools/notebooks.py build book/src/01_introduction.py   # one chapter
    python tools/notebooks.py build --all                         # every chapter
    python tools/notebooks.py check                               # sources and notebooks agree

The setup cell installs revlib from the repository named once in _config.yml.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "book" / "src"
BOOK = ROOT / "book"


def repository_url() -> str:
    """The repository URL from _config.yml (read without a YAML dependency)."""
    text = (ROOT / "_config.yml").read_text()
    match = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", text, flags=re.M)
    if not match:
        raise SystemExit("_config.yml has no repository.url")
    return match.group(1)


def setup_cell_source() -> str:
    url = repository_url()
    return (
        "# Setup: on Colab, install revlib from this book's repository; elsewhere use the local install.\n"
        "import subprocess, sys\n"
        "if \"google.colab\" in sys.modules:\n"
        f"    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\", \"revlib[train] @ git+{url}\"], check=True)\n"
        "import revlib\n"
        "print(f\"revlib {revlib.__version__}, running on: {revlib.default_device()}\")"
    )


_HEADER = re.compile(r"^# %%(?P<md> \[markdown\])?(?:\s+tags=(?P<tags>\[.*\]))?\s*$")


def parse_source(text: str) -> list[nbformat.NotebookNode]:
    """Cells of a percent-format script."""
    cells: list[nbformat.NotebookNode] = []
    kind, tags, lines = None, [], []

    def flush() -> None:
        if kind is None:
            return
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            body = "\n".join(l[2:] if l.startswith("# ") else l.lstrip("#") for l in body.split("\n"))
            cell = nbformat.v4.new_markdown_cell(body)
        else:
            cell = nbformat.v4.new_code_cell(body)
        if tags:
            cell.metadata["tags"] = tags
        cells.append(cell)

    for line in text.split("\n"):
        m = _HEADER.match(line)
        if m:
            flush()
            kind = "markdown" if m.group("md") else "code"
            tags = json.loads(m.group("tags")) if m.group("tags") else []
            lines = []
        elif kind is not None:
            lines.append(line)
    flush()
    return cells


def notebook_from_source(src: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    cells = parse_source(src.read_text())
    first_code = next(i for i, c in enumerate(cells) if c.cell_type == "code") if any(
        c.cell_type == "code" for c in cells
    ) else len(cells)
    cells.insert(first_code, nbformat.v4.new_code_cell(setup_cell_source()))
    nb.cells = cells
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"
    return nb


def build(src: Path, timeout: int = 600) -> float:
    """Write book/NAME.ipynb from its source and execute it in place; return seconds."""
    nb = notebook_from_source(src)
    out = BOOK / (src.stem + ".ipynb")
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(BOOK)}}).execute()
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
            problems.append(f"{path.name}: missing (run tools/notebooks.py build {src.relative_to(ROOT)})")
            continue
        expected = notebook_from_source(src)
        actual = nbformat.read(path, as_version=4)
        want = [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in expected.cells]
        have = [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in actual.cells]
        if want != have:
            problems.append(f"{path.name}: cells differ from {src.name} (rebuild it)")
        if any(c.cell_type == "code" and c.source and c.get("execution_count") is None for c in actual.cells):
            problems.append(f"{path.name}: has code cells that were not executed")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("sources", nargs="*", type=Path)
    b.add_argument("--all", action="store_true")
    sub.add_parser("check")
    args = parser.parse_args(argv)
    if args.cmd == "check":
        problems = check()
        print("\n".join(problems) or "notebooks match their sources")
        return 1 if problems else 0
    sources = sorted(SRC.glob("*.py")) if args.all else [s.resolve() for s in args.sources]
    for src in sources:
        build(src)
    return 0


if __name__ == "__main__":
    sys.exit(main())
