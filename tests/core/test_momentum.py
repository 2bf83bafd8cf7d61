"""Momentum residual networks: inverse, its conditioning in gamma, gradients, memory."""

from __future__ import annotations

import pytest
import torch
from helpers import run_step
from torch import nn

import revlib
from revlib.core.memory import saved_tensor_bytes


def tanh_layer(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, width), nn.Tanh())


def test_momentum_step_is_the_formula_and_inverts():
    torch.manual_seed(0)
    f = tanh_layer(4).double()
    block = revlib.MomentumBlock(f, gamma=0.7, dim=-1)
    x, v = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    y = block(torch.cat([x, v], -1))
    v_new = 0.7 * v + 0.3 * f(x)
    torch.testing.assert_close(y, torch.cat([x + v_new, v_new], -1))
    assert revlib.check_inverse(block, torch.cat([x, v], -1)) < 1e-14


def test_gamma_outside_the_invertible_range_is_refused():
    for gamma in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"MomentumBlock: gamma must be in \(0, 1\]"):
            revlib.MomentumBlock(nn.Identity(), gamma)


def reconstruction_error(gamma: float, depth: int) -> float:
    torch.manual_seed(0)
    net = revlib.MomentumNet([tanh_layer(8) for _ in range(depth)], gamma=gamma, dim=-1)
    x = torch.randn(16, 8)
    return revlib.check_inverse(net.sequence, torch.cat([x, torch.zeros_like(x)], -1))


def test_error_grows_as_gamma_goes_to_zero():
    """The inverse divides by gamma each block: float32 error ~ gamma**-depth."""
    assert reconstruction_error(0.9, 12) < 1e-4
    assert reconstruction_error(0.1, 12) > 1e3 * reconstruction_error(0.9, 12)


@pytest.mark.parametrize("mode", ["reversible", "checkpoint"])
def test_momentum_net_gradients_equal_autograd_float64(mode):
    torch.manual_seed(0)
    ref = revlib.MomentumNet(
        [tanh_layer(6) for _ in range(4)], gamma=0.5, dim=-1, mode="autograd"
    ).double()
    other = revlib.MomentumNet(
        [tanh_layer(6) for _ in range(4)], gamma=0.5, dim=-1, mode=mode
    ).double()
    other.load_state_dict(ref.state_dict())
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    _, dx0, g0 = run_step(ref, x)
    _, dx1, g1 = run_step(other, x)
    torch.testing.assert_close(dx1, dx0, rtol=0, atol=1e-10)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_momentum_net_memory_is_flat_in_depth():
    x = torch.randn(4, 3, 8, 8, requires_grad=True)

    def net(depth: int, mode: str) -> revlib.MomentumNet:
        fs = [nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Tanh()) for _ in range(depth)]
        return revlib.MomentumNet(fs, gamma=0.9, mode=mode)

    assert saved_tensor_bytes(net(2, "reversible"), x) == saved_tensor_bytes(
        net(8, "reversible"), x
    )
    assert saved_tensor_bytes(net(8, "autograd"), x) > 3 * saved_tensor_bytes(net(2, "autograd"), x)


@pytest.mark.parametrize("gamma", [1.0, 0.6])
def test_fused_step_evaluates_f_once_and_equals_autograd(gamma, monkeypatch):
    """One evaluation of f per block in the backward (the generic step, the control, needs two)."""
    torch.manual_seed(1)
    ref = revlib.MomentumNet(
        [tanh_layer(6) for _ in range(3)], gamma=gamma, dim=-1, mode="autograd"
    ).double()
    net = revlib.MomentumNet([tanh_layer(6) for _ in range(3)], gamma=gamma, dim=-1).double()
    net.load_state_dict(ref.state_dict())
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)

    def calls_in_backward() -> int:
        calls = 0

        targets = {id(block.f) for block in net.sequence.blocks}

        def count(module, args):
            nonlocal calls
            calls += module is not None and id(module) in targets

        y = net(x)
        # a global module hook sees every evaluation, the recomputations included
        # (a hook on f itself runs once per step, as in autograd mode)
        handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
        try:
            y.square().sum().backward()
        finally:
            handle.remove()
        return calls

    assert calls_in_backward() == 3
    net.zero_grad(set_to_none=True)
    _, dx0, g0 = run_step(ref, x)
    _, dx1, g1 = run_step(net, x)
    torch.testing.assert_close(dx1, dx0, rtol=0, atol=1e-12)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    monkeypatch.setattr(revlib.MomentumBlock, "backward_step", revlib.ReversibleBlock.backward_step)
    assert calls_in_backward() == 6
