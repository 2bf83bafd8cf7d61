"""A memory budget for a reversible chain: store the activations of the blocks that fit, reverse
the rest.

Storing a block's activations spares its recomputation in the backward and
costs the bytes its forward saves for backward. Under a budget the chain keeps
the blocks that spare the most time per byte until the budget is spent
(:func:`plan_budget`), from what it measured on its own blocks
(:func:`~revlib.core.engine.measure.measure_block`). A stored block runs as in
mode ``"autograd"``, a reversed one as in mode ``"reversible"``, so the
gradients are autograd's at every budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = ["BudgetPlan", "MemoryBudget", "check_budget", "plan_budget"]

MemoryBudget = int | float
"""Bytes (an ``int``), or a fraction of what the chain would save in mode ``"autograd"`` (a
``float`` from 0.0 to 1.0)."""


def check_budget(budget: object) -> MemoryBudget | None:
    """``budget`` if it is ``None``, a byte count or a fraction; else ``ValueError``."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, int | float):
        raise ValueError(
            f"ReversibleSequence: memory_budget must be None, a number of bytes (int) or a "
            f"fraction of what mode 'autograd' saves (float in [0, 1]), got {budget!r}"
        )
    if isinstance(budget, float) and not 0.0 <= budget <= 1.0:
        raise ValueError(
            f"ReversibleSequence: memory_budget={budget} is a fraction outside [0, 1]; give a "
            "fraction of what mode 'autograd' saves, or a number of bytes as an int"
        )
    if budget < 0:
        raise ValueError(f"ReversibleSequence: memory_budget={budget} bytes is negative")
    return budget


def input_signature(x: Tensor, extras: dict[str, Any]) -> tuple[Any, ...]:
    """What a plan was measured for: the input's shape, dtype and device, and the extras' names."""
    return (tuple(x.shape), x.dtype, x.device, tuple(sorted(extras)))


@dataclass(frozen=True)
class BudgetPlan:
    """Which blocks of a chain keep their activations, and why.

    ``saved_bytes[i]`` is what block ``i`` saves for backward when stored,
    ``recompute_seconds[i]`` what its recomputation costs (both measured);
    ``stored`` the blocks kept, ``budget_bytes`` the budget in bytes.
    """

    budget_bytes: int
    saved_bytes: tuple[int, ...]
    recompute_seconds: tuple[float, ...]
    stored: frozenset[int]
    signature: tuple[Any, ...]

    @property
    def stored_bytes(self) -> int:
        """The bytes the stored blocks save, at most ``budget_bytes``."""
        return sum(self.saved_bytes[i] for i in self.stored)

    @property
    def autograd_bytes(self) -> int:
        """What every block would save in mode ``"autograd"``."""
        return sum(self.saved_bytes)

    def __str__(self) -> str:
        rows = [
            f"block {i:3d}: {'stored  ' if i in self.stored else 'reversed'} "
            f"{b / 2**20:9.2f} MiB  {t * 1e3:8.2f} ms"
            for i, (b, t) in enumerate(zip(self.saved_bytes, self.recompute_seconds, strict=True))
        ]
        head = (
            f"BudgetPlan: {len(self.stored)} of {len(self.saved_bytes)} blocks stored, "
            f"{self.stored_bytes / 2**20:.2f} of {self.budget_bytes / 2**20:.2f} MiB budget "
            f"(autograd would save {self.autograd_bytes / 2**20:.2f} MiB)"
        )
        return "\n".join([head, *rows])


def plan_budget(
    budget: MemoryBudget,
    saved_bytes: Sequence[int],
    recompute_seconds: Sequence[float],
    signature: tuple[Any, ...] = (),
) -> BudgetPlan:
    """Store the blocks that spare the most recomputation time per byte, while they fit.

    A greedy choice for the knapsack problem: exact when the blocks cost alike
    (a uniform chain, where any choice of the same count is equally good).
    Among equal ratios, later blocks first (the earliest blocks' inputs are the
    ones a reversed tail would rebuild last).
    """
    total = sum(saved_bytes)
    limit = int(budget * total) if isinstance(budget, float) else int(budget)
    order = sorted(
        range(len(saved_bytes)),
        key=lambda i: (-recompute_seconds[i] / max(saved_bytes[i], 1), -i),
    )
    stored: set[int] = set()
    used = 0
    for i in order:
        if used + saved_bytes[i] <= limit:
            stored.add(i)
            used += saved_bytes[i]
    return BudgetPlan(
        limit, tuple(saved_bytes), tuple(recompute_seconds), frozenset(stored), signature
    )
