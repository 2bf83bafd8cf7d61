"""tools/notebooks.py sync's rule (what may change without a rebuild) and
tools/check_code_width.py (the chapters' code fits the rendered code column)."""

from __future__ import annotations

from pathlib import Path

import check_code_width
import notebooks

CELL = '''import torch


def f(x):
    """Twice x: one line of a docstring that a formatter may well rewrap."""
    return 2 * x  # doubled


print(f(torch.ones(1)))
'''


def test_sync_takes_layout_comments_and_rewrapped_docstrings():
    relaid = CELL.replace("  # doubled", "").replace(
        "one line of a docstring that", "one line of a docstring that\n    "
    )
    assert relaid != CELL
    assert notebooks._same_program(relaid, CELL)


def test_sync_refuses_other_changes():
    assert not notebooks._same_program(CELL.replace("2 * x", "3 * x"), CELL)
    assert not notebooks._same_program(CELL.replace("Twice x", "Double x"), CELL)
    # a string at the top of a cell is what the cell shows when it is its last expression
    assert not notebooks._same_program('"a  b"\n', '"a b"\n')


def write_chapter(tmp_path, code_line: str) -> Path:
    src = tmp_path / "99_test.py"
    src.write_text(f"# %% [markdown]\n# {'prose ' * 30}\n\n# %%\nx = 1\n{code_line}\n")
    return src


def test_width_check_ignores_markdown_and_finds_a_long_code_line(tmp_path):
    width = check_code_width.limit()
    fits = write_chapter(tmp_path, "y = " + "1" * (width - 4))
    assert check_code_width.main([str(fits)]) == 0
    too_long = write_chapter(tmp_path, "y = " + "1" * (width - 3))
    problems = check_code_width.check([too_long], width)
    assert problems == [f"{too_long}:cell 2:line 2: {width + 1} > {width}: y = {'1' * (width - 3)}"]
    assert check_code_width.main([str(too_long)]) == 1


def test_width_is_set_once_in_the_chapters_ruff_config():
    assert check_code_width.limit() == 86
    assert check_code_width.check([], check_code_width.limit()) == []  # the setup cell fits
