"""Helpers of the user-pattern tests: gradients and buffers of a model, compared to autograd's
at relative 1e-9 (entries near zero against the largest gradient)."""

from __future__ import annotations

import torch
from torch import nn

REL = 1e-9


def assert_same_grads(got: dict, want: dict) -> None:
    """Every gradient of ``want`` in ``got``: both None, or equal to relative 1e-9 (entries near
    zero to 1e-9 of the largest gradient: a gradient that is zero in exact arithmetic, such as
    an attention key's bias, is round-off in both modes)."""
    assert got.keys() == want.keys()
    scale = max(g.abs().max().item() for g in want.values() if g is not None)
    for name, g in want.items():
        if g is None:
            assert got[name] is None, f"{name}: a gradient where autograd has none"
            continue
        assert got[name] is not None, f"{name} got no gradient"
        torch.testing.assert_close(
            got[name], g, rtol=REL, atol=REL * scale, msg=lambda m, n=name: f"{n}: {m}"
        )


def assert_same_buffers(got: nn.Module, want: nn.Module, rel: float | None = None) -> None:
    """Every buffer equal bit for bit, or with ``rel``, floating-point buffers to that relative
    tolerance (integer ones still exactly): after an optimizer step the two modes' parameters
    differ by round-off, and so do the statistics of a later forward."""
    ref = dict(want.named_buffers())
    assert ref.keys() == dict(got.named_buffers()).keys()
    for name, b in got.named_buffers():
        if rel is None or not b.is_floating_point():
            assert torch.equal(b, ref[name]), name
        else:
            torch.testing.assert_close(b, ref[name], rtol=rel, atol=0, msg=name)


def gradients(model: nn.Module, **inputs: torch.Tensor) -> dict:
    return {
        **{n: p.grad for n, p in model.named_parameters()},
        **{f"input {k}": v.grad for k, v in inputs.items()},
    }


def worst(got: dict, want: dict) -> float:
    """The largest difference of two gradient dicts, relative to the largest gradient."""
    scale = max(g.abs().max().item() for g in want.values() if g is not None)
    return max((got[n] - g).abs().max().item() / scale for n, g in want.items() if g is not None)


def params_after(model: nn.Module) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}
