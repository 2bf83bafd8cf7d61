"""Helpers of the engine tests: the same step in mode "autograd" and in mode "reversible"
(or "checkpoint") from identical copies, and the small chains they run on (float64)."""

from __future__ import annotations

import contextlib
import copy
import random

import numpy as np
import torch
from helpers import grads_of, worst_rel_error
from torch import nn

import revlib

ROUND_OFF = 1e-10

X = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


# ---- one step on a copy of a model, in a mode ----------------------------------------------------


def step_in_mode(
    model: nn.Module,
    x: torch.Tensor,
    mode: str,
    seed: int = 0,
    between=None,
    context=contextlib.nullcontext,
):
    """One step of sum(y * w) in ``mode`` on a copy of ``model``; returns (grads, buffers,
    copy)."""
    m = copy.deepcopy(model)
    revlib.set_mode(m, mode)
    torch.manual_seed(seed)
    x = x.detach().clone().requires_grad_(True)
    with context():
        y = m(x)
        w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).view_as(y)
        loss = (y * w).sum() + (y**2).sum()
        if between is not None:
            between(m)
        loss.backward()
    return [*grads_of(m), x.grad], [b.clone() for b in m.buffers()], m


def mode_error(model: nn.Module, x: torch.Tensor, **kwargs) -> tuple[float, bool]:
    """(worst relative gradient error of reversible vs autograd, whether all buffers are
    equal)."""
    g_ref, b_ref, _ = step_in_mode(model, x, "autograd", **kwargs)
    g, b, _ = step_in_mode(model, x, "reversible", **kwargs)
    same = all(torch.equal(u, v) for u, v in zip(b, b_ref, strict=True))
    return worst_rel_error(g, g_ref), same


def token_chain(make, depth: int = 2, **kwargs) -> revlib.ReversibleSequence:
    """``depth`` additive couplings split along the feature dimension (B, T, D)."""
    return revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(make(), make(), dim=-1) for _ in range(depth)], **kwargs
    )


# ---- the same chain in both modes, one seeded step of each -------------------------------------


def pair(make_half, depth: int = 2, **options):
    """The same chain in modes autograd and reversible (identical weights and state);
    ``options`` go to ReversibleSequence."""
    out = {}
    for mode in ("autograd", "reversible"):
        torch.manual_seed(0)
        out[mode] = revlib.ReversibleSequence(
            [revlib.AdditiveCoupling(make_half(), make_half(), dim=-1) for _ in range(depth)],
            mode=mode,
            **options,
        ).double()
    return out


def seeded_step(model, x=X, seed: int = 0, **extras):
    """One step of sum(y**2) with torch's, Python's and NumPy's generators seeded; returns
    (parameter gradients, buffers)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (NumPy's global state: what ported code draws from)
    model.zero_grad(set_to_none=True)
    model(x.clone().requires_grad_(True), **extras).square().sum().backward()
    return [p.grad for p in model.parameters()], [b.clone() for b in model.buffers()]


def agree(models, **kw) -> tuple[float, float]:
    """The largest gradient difference relative to the largest gradient, and the largest buffer
    difference."""
    (g_ref, b_ref), (g, b) = (
        seeded_step(models["autograd"], **kw),
        seeded_step(models["reversible"], **kw),
    )
    buffers = max([(u - v).abs().max().item() for u, v in zip(b, b_ref, strict=True)] or [0.0])
    scale = max(r.abs().max().item() for r in g_ref)
    return max((u - v).abs().max().item() for u, v in zip(g, g_ref, strict=True)) / scale, buffers


# ---- chains of Linear-tanh halves on (batch, features) -------------------------------------------


def tanh_half(width: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))


def chain(
    block_type=revlib.AdditiveCoupling, depth: int = 3, mode: str = "reversible", **kw
) -> revlib.ReversibleSequence:
    torch.manual_seed(0)
    return revlib.ReversibleSequence(
        [block_type(tanh_half(), tanh_half(), dim=-1, **kw) for _ in range(depth)], mode=mode
    ).double()


def grads(model: nn.Module, x: torch.Tensor, **extras) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(parameter gradients, input gradient) of one step of sum(y**2)."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    model(x, **extras).square().sum().backward()
    return [p.grad for p in model.parameters()], x.grad


def both(make):
    return {mode: make(mode) for mode in ("autograd", "reversible")}


# ---- smooth halves, for finite differences -------------------------------------------------------


def smooth_stack(depth: int) -> revlib.ReversibleSequence:
    """Couplings with smooth halves (no ReLU kinks), for finite-difference checks."""

    def half():
        return nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Tanh())

    blocks = [revlib.AdditiveCoupling(half(), half()) for _ in range(depth)]
    blocks.insert(1, revlib.AffineCoupling(nn.Conv2d(1, 2, 3, padding=1)))
    blocks.insert(2, revlib.NICECoupling(half()))
    blocks.insert(3, revlib.HalfSwap())
    return revlib.ReversibleSequence(blocks)
