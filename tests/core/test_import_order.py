"""The core's layers (ARCHITECTURE.md): each module imports only its own layer and those above it,
and no import cycle anywhere in ``revlib/core``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import ROOT

CORE = ROOT / "revlib" / "core"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("device", "memory", "stability", "refusals", "aux_losses"),  # leaves
    ("replay",),  # how a sub-function runs twice alike; knows nothing of blocks
    ("halves", "blocks"),  # what a block is
    ("couplings", "ode", "downsampling", "transformer"),  # the blocks of the papers; ode/ a package
    ("engine",),  # how autograd drives blocks backwards
    ("budget", "compiled", "modes", "sequence", "checks", "memcalc", "momentum", "smoothness"),
)
"""From the bottom up: a module may import its own layer and the layers listed before it."""


def _name(path: Path) -> str:
    parts = path.relative_to(CORE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path) -> set[str]:
    """The core modules a file imports at run time (``if TYPE_CHECKING:`` blocks skipped)."""
    name = _name(path).split(".")
    package = name if path.name == "__init__.py" else name[:-1]
    found: set[str] = set()
    stack: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"))]
    while stack:
        node = stack.pop()
        if _type_checking_only(node):
            continue
        stack.extend(ast.iter_child_nodes(node))
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        up = node.level - 1
        if up > len(package):
            continue  # above revlib.core
        base = package[: len(package) - up]
        if node.module is not None:
            found.add(".".join([*base, *node.module.split(".")]))
        else:  # from . import refusals
            found |= {".".join([*base, a.name]) for a in node.names}
    return {m for m in found if _is_module(m)}


def _is_module(name: str) -> bool:
    path = CORE / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def graph() -> dict[str, set[str]]:
    """``{module: the core modules it imports}``, every ``.py`` file under ``revlib/core``."""
    return {
        _name(p): _imports(p)
        for p in sorted(CORE.rglob("*.py"))
        if _name(p)  # revlib/core/__init__.py itself
    }


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"revlib/core/{top}: not in a layer of LAYERS; add it to one")


def misplaced_imports(g: dict[str, set[str]]) -> list[str]:
    return [
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m, targets in g.items()
        for t in targets
        if layer_of(t) > layer_of(m)
    ]


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``g`` as a path, or ``None``."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(g.get(m, ())):
            if state.get(t) == 1:
                return path[path.index(t) :] + [t]
            if t not in state and (found := visit(t)) is not None:
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (found := visit(m)) is not None:
            return found
    return None


def test_every_core_module_sits_in_a_layer_and_imports_none_below_it():
    g = graph()
    assert {"replay.tape", "engine.function", "blocks", "sequence"} <= set(g)
    assert misplaced_imports(g) == []


def test_no_import_cycle_in_the_core():
    assert cycle(graph()) is None


def test_the_replay_layer_knows_nothing_of_blocks():
    g = graph()
    assert not any(
        t.startswith(("blocks", "engine")) for m in g if m.startswith("replay") for t in g[m]
    )


@pytest.mark.parametrize("case", ["upward", "cycle"])
def test_control_the_checks_see_a_bad_import(case):
    g = {k: set(v) for k, v in graph().items()}
    if case == "upward":
        g["replay.tape"].add("engine.function")
        assert misplaced_imports(g) == ["replay.tape (layer 1) imports engine.function (layer 4)"]
    else:
        g["engine.guards"].add("engine.chain")
        assert cycle(g) is not None
