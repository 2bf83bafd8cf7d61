"""Helpers for the book's notebooks that work with or without the book's build tools.

:func:`glue` stores a value for the rendered book (``myst_nb.glue``) when
myst-nb is installed, and otherwise shows it as a plain output, so that a
chapter runs unchanged on Colab, where only ``revlib[train]`` is installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["glue"]


def glue(name: str, value: Any, display: bool = True) -> None:
    """``myst_nb.glue(name, value, display)`` if myst-nb is importable, else a plain display."""
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        if display:
            from IPython.display import display as show

            show(value)
        return
    myst_glue(name, value, display=display)
