"""Helpers shared by the tests: small RevNet-like halves and chains, one step in each mode,
relative errors. The tests import them (``from helpers import ...``; pytest puts tests/ on
sys.path, see pyproject.toml); fixtures live in conftest.py."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

import revlib

ROOT = Path(__file__).resolve().parents[1]  # the repository


def conv_bn_relu(channels: int, dropout: float = 0.0) -> nn.Sequential:
    """A pre-activation half F or G: BN, ReLU, 3x3 conv (and optional dropout)."""
    layers: list[nn.Module] = [
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
    ]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def revnet_stack(
    depth: int, channels: int = 8, dropout: float = 0.0, mode: str = "reversible"
) -> revlib.ReversibleSequence:
    """``depth`` additive couplings on ``channels`` channels (halves of channels/2)."""
    half = channels // 2
    blocks = [
        revlib.AdditiveCoupling(conv_bn_relu(half, dropout), conv_bn_relu(half, dropout))
        for _ in range(depth)
    ]
    return revlib.ReversibleSequence(blocks, mode=mode)


def run_step(model: nn.Module, x: torch.Tensor, seed: int = 0):
    """One forward and backward of ``sum(y**2)``; returns output, input grad, param grads."""
    torch.manual_seed(seed)
    x = x.detach().clone().requires_grad_(x.requires_grad)
    y = model(x)
    (y.float() ** 2).sum().backward()
    return (
        y.detach(),
        x.grad,
        [p.grad.clone() if p.grad is not None else None for p in model.parameters()],
    )


def copies_by_mode(model: revlib.ReversibleSequence) -> dict[str, revlib.ReversibleSequence]:
    """Deep copies of ``model``, one per backward mode, with identical weights."""
    out = {}
    for mode in revlib.MODES:
        m = copy.deepcopy(model)
        m.mode = mode
        out[mode] = m
    return out


def max_rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b|."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def grads_of(model: nn.Module) -> list[torch.Tensor | None]:
    """The ``.grad`` of every parameter of ``model``, in order (cloned)."""
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def worst_rel_error(grads: list, reference: list) -> float:
    """The largest :func:`max_rel_error` over pairs of gradients (both ``None`` counts as equal)."""
    worst = 0.0
    for a, b in zip(grads, reference, strict=True):
        if a is None or b is None:
            assert a is None and b is None
            continue
        worst = max(worst, max_rel_error(a, b))
    return worst
