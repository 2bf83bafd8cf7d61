"""Every line of the book's code cells fits the rendered page's code column.

The chapters (``book/src/*.py``, jupytext percent format) hold Markdown cells as
comment lines, whose length does not matter: the page reflows them. Code cells
are shown as written, and a line wider than the code column scrolls sideways.
This reads each chapter with jupytext and checks every line of every code cell,
and the setup cell that tools/notebooks.py puts first in every notebook
(:func:`notebooks.setup_cell_source`), against the chapters' ``line-length`` in
book/src/ruff.toml (the one place that sets it; ``ruff format`` keeps code to it,
but not strings or comments).

    python tools/check_code_width.py                              # every chapter
    python tools/check_code_width.py book/src/03_reversible_backprop.py   # some

Exit status 1 and one line per offending line (file:cell:line: length) if any.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

import jupytext

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "book" / "src"
sys.path.insert(0, str(ROOT / "tools"))
import notebooks  # noqa: E402


def limit() -> int:
    """The chapters' code width: ``line-length`` in book/src/ruff.toml."""
    return tomllib.loads((SRC / "ruff.toml").read_text())["line-length"]


def long_lines(source: str, width: int) -> list[tuple[int, int, str]]:
    """(line number from 1, length, line) of each line of ``source`` longer than ``width``."""
    return [
        (i, len(line), line)
        for i, line in enumerate(source.splitlines(), start=1)
        if len(line) > width
    ]


def check(sources: list[Path], width: int) -> list[str]:
    """One message per code line wider than ``width``: ``file:cell N:line M: L > width``.

    Cells are numbered from 1 in the order jupytext reads them (Markdown cells
    included), lines from 1 within the cell.
    """
    problems = []
    setup = notebooks.setup_cell_source()
    for i, length, line in long_lines(setup, width):
        problems.append(
            f"tools/notebooks.py setup_cell_source():line {i}: {length} > {width}: {line.strip()}"
        )
    for src in sources:
        nb = jupytext.read(src, fmt="py:percent")
        name = src.resolve().relative_to(ROOT) if src.resolve().is_relative_to(ROOT) else src
        for n, cell in enumerate(nb.cells, start=1):
            if cell.cell_type != "code":
                continue
            for i, length, line in long_lines(cell.source, width):
                problems.append(f"{name}:cell {n}:line {i}: {length} > {width}: {line.strip()}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sources", nargs="*", type=Path, help="chapters (default: all)")
    args = parser.parse_args(argv)
    width = limit()
    sources = args.sources or sorted(SRC.glob("*.py"))
    problems = check(sources, width)
    if problems:
        print("\n".join(problems))
        print(f"{len(problems)} code line(s) wider than {width} columns (book/src/ruff.toml)")
        return 1
    print(f"every code line fits {width} columns ({len(sources)} chapters and the setup cell)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
