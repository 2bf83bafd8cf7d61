"""A block in the chain runs as PyTorch runs a module (issue: hooks, overridden forward, inherited
steps).

Each case compares mode "reversible" with mode "autograd" in float64, and each
has a control that fails without the mechanism: the block called without
``nn.Module.__call__``, observer hooks replayed, the fused step used for a
changed forward.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import worst_rel_error
from torch import nn

import revlib
from revlib.core import engine, sidestate
from revlib.core.blocks import ReversibleBlock


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
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    model(x, **extras).square().sum().backward()
    return [p.grad for p in model.parameters()], x.grad


X = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def both(make):
    return {mode: make(mode) for mode in ("autograd", "reversible")}


# ---- cause 1: hooks on the block and on F and G; an overridden forward ---------------------------


def log_det_collector(models):
    """A forward hook on every Real NVP block that collects its log-determinant, as flows do."""
    logs = {}
    for mode, m in models.items():
        logs[mode] = []
        for b in m.blocks:
            b.register_forward_hook(
                lambda mod, args, out, bag=logs[mode]: bag.append(mod.log_det(args[0]).sum().item())
            )
    return logs


def affine_chain(mode: str) -> revlib.ReversibleSequence:
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 6)) for _ in range(3)]
    return revlib.ReversibleSequence(
        [revlib.AffineCoupling(n, dim=-1) for n in nets], mode=mode
    ).double()


def test_block_hooks_run_once_per_step_as_in_autograd():
    models = both(affine_chain)
    logs = log_det_collector(models)
    for m in models.values():
        grads(m, X)
    assert len(logs["reversible"]) == len(logs["autograd"]) == 3
    assert logs["reversible"] == pytest.approx(logs["autograd"], rel=1e-12)


def test_control_without_the_module_call_block_hooks_never_run(monkeypatch):
    monkeypatch.setattr(ReversibleBlock, "__call__", lambda self, *a, **k: self.forward(*a, **k))
    models = both(affine_chain)
    logs = log_det_collector(models)
    grads(models["reversible"], X)
    assert logs["reversible"] == []


def count_calls(model):
    calls = []
    for b in model.blocks:
        b.F.register_forward_pre_hook(lambda m, a: calls.append("pre"))
        b.G.register_forward_hook(lambda m, a, o: calls.append("post"))
    return calls


def test_hooks_on_f_and_g_run_once_per_step_as_in_autograd():
    counts = {}
    for mode in ("autograd", "reversible"):
        m = chain(mode=mode)
        calls = count_calls(m)
        grads(m, X)
        counts[mode] = len(calls)
    assert counts["reversible"] == counts["autograd"] == 6


def test_control_replaying_observer_hooks_runs_them_twice(monkeypatch):
    monkeypatch.setattr(sidestate, "replaying_hooks", lambda fn, log: contextlib.nullcontext())
    m = chain()
    calls = count_calls(m)
    grads(m, X)
    assert len(calls) == 12


def test_a_hook_that_changes_f_is_part_of_f_in_the_replay():
    """A forward hook that returns a value changes F: it runs in the forward and in the replay."""
    results = {}
    for mode in ("autograd", "reversible"):
        m = chain(mode=mode)
        for b in m.blocks:
            b.F.register_forward_hook(lambda mod, a, out: 0.5 * out)
        results[mode] = grads(m, X)
    assert worst_rel_error(results["reversible"][0], results["autograd"][0]) < 1e-12


def test_a_hook_that_replaces_the_block_output_raises():
    m = chain()
    m.blocks[1].register_forward_hook(lambda mod, a, out: out * 2)
    with pytest.raises(
        RuntimeError, match=r"block 1 .*forward hook on the block replaced or changed its output"
    ):
        grads(m, X)


def test_a_pre_hook_that_changes_the_block_input_raises():
    m = chain()
    m.blocks[2].register_forward_pre_hook(lambda mod, a: (a[0] + 1,))
    with pytest.raises(RuntimeError, match=r"block 2 .*pre-hook on the block changed its input"):
        grads(m, X)


def test_observing_block_hooks_are_fine():
    m = chain()
    seen = []
    m.blocks[1].register_forward_pre_hook(lambda mod, a: seen.append(a[0].shape))
    m.blocks[1].register_forward_hook(lambda mod, a, out: seen.append(out.shape))
    ref = chain(mode="autograd")
    assert worst_rel_error(grads(m, X)[0], grads(ref, X)[0]) < 1e-12
    assert len(seen) == 2


class Doubled(revlib.AdditiveCoupling):
    """Overrides forward(): autograd and eval would compute 2 y, the inverse knows nothing of it."""

    def forward(self, x, **extras):
        return 2 * super().forward(x, **extras)


def test_an_overridden_forward_is_refused_in_reversible_mode():
    m = chain(Doubled)
    with pytest.raises(TypeError, match=r"Doubled overrides forward\(\).*_forward/_inverse"):
        grads(m, X)


def test_control_the_override_computes_something_else_in_autograd_mode():
    a, r = chain(Doubled, mode="autograd"), chain(revlib.AdditiveCoupling, mode="autograd")
    assert not torch.allclose(a(X), r(X))


# ---- cause 2: an inherited fused step for a changed forward --------------------------------------


class LayerScaled(revlib.AdditiveCoupling):
    """A layer scale written the documented way: _forward and _inverse changed, backward_step
    inherited."""

    scale = 0.3

    def _forward(self, x, run):
        x1, x2 = x.chunk(2, dim=-1)
        y1 = x1 + self.scale * run("F", self.F, x2)
        y2 = x2 + self.scale * run("G", self.G, y1)
        return torch.cat([y1, y2], dim=-1)

    def _inverse(self, y, run):
        y1, y2 = y.chunk(2, dim=-1)
        x2 = y2 - self.scale * run("G", self.G, y1)
        x1 = y1 - self.scale * run("F", self.F, x2)
        return torch.cat([x1, x2], dim=-1)


def test_an_inherited_fused_step_is_not_used_for_a_changed_forward():
    ref, rev = chain(LayerScaled, mode="autograd"), chain(LayerScaled)
    (g_ref, dx_ref), (g, dx) = grads(ref, X), grads(rev, X)
    assert worst_rel_error(g, g_ref) < 1e-12
    assert (dx - dx_ref).abs().max() < 1e-12


def test_control_the_inherited_fused_step_gives_wrong_gradients(monkeypatch):
    monkeypatch.setattr(engine, "fused_step_applies", lambda block: True)
    ref, rev = chain(LayerScaled, mode="autograd"), chain(LayerScaled)
    assert worst_rel_error(grads(rev, X)[0], grads(ref, X)[0]) > 0.1
