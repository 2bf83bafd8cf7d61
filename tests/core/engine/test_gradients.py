"""Mode "reversible" (and "checkpoint") gives autograd's gradients: of the input and the
parameters, through ``backward`` and ``torch.autograd.grad``, with frozen parameters or an
input without grad; eval mode and ``no_grad`` run plain forwards."""

from __future__ import annotations

import copy

import pytest
import torch
from engine_helpers import smooth_stack
from helpers import copies_by_mode, max_rel_error, revnet_stack, run_step


def test_gradcheck_float64():
    seq = smooth_stack(2).double()
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    params = tuple(seq.parameters())
    assert torch.autograd.gradcheck(seq, (x,))
    # the parameters are inputs of the reversible function: check their gradients too
    y = seq(x)
    w = torch.randn_like(y)
    grads = torch.autograd.grad((y * w).sum(), params)
    for p, g in zip(params, grads, strict=True):
        eps = 1e-6
        idx = (0,) * p.dim()
        with torch.no_grad():
            p[idx] += eps
            up = (seq(x) * w).sum()
            p[idx] -= 2 * eps
            down = (seq(x) * w).sum()
            p[idx] += eps
        assert g[idx].item() == pytest.approx(((up - down) / (2 * eps)).item(), rel=1e-5, abs=1e-8)


def test_float32_revnet_gradients_equal_autograd(device):
    """Float32 reconstruction differs from the stored activations by a few ulps; a ReLU input
    that close to zero can change sides and move one gradient by ~1e-3 (chapter 3 shows this on
    a large batch). This small stack has no such flip, so the 1e-5 bound holds."""
    base = revnet_stack(depth=6, channels=16).to(device)
    x = torch.randn(4, 16, 8, 8, device=device, requires_grad=True)
    results = {mode: run_step(m, x) for mode, m in copies_by_mode(base).items()}
    y_ref, dx_ref, dp_ref = results["autograd"]
    for mode in ("reversible", "checkpoint"):
        y, dx, dp = results[mode]
        assert torch.equal(y, y_ref)
        assert max_rel_error(dx, dx_ref) <= 1e-5
        worst = max(max_rel_error(a, b) for a, b in zip(dp, dp_ref, strict=True))
        assert worst <= 1e-5, (mode, worst)


def test_input_without_grad_and_only_parameter_gradients():
    base = revnet_stack(depth=3)
    x = torch.randn(2, 8, 6, 6)  # as after a stem whose output does not need grad
    results = {mode: run_step(m, x) for mode, m in copies_by_mode(base).items()}
    for mode in ("reversible", "checkpoint"):
        assert results[mode][1] is None
        assert (
            max(
                max_rel_error(a, b)
                for a, b in zip(results[mode][2], results["autograd"][2], strict=True)
            )
            <= 1e-5
        )


def test_frozen_parameters_and_input_gradient_only():
    base = revnet_stack(depth=3)
    base.requires_grad_(False)
    models = copies_by_mode(base)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    dx = {mode: run_step(m, x)[1] for mode, m in models.items()}
    assert max_rel_error(dx["reversible"], dx["autograd"]) <= 1e-5


def test_autograd_grad_returns_parameter_gradients():
    base = revnet_stack(depth=3)
    models = copies_by_mode(base)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    grads = {}
    for mode in ("reversible", "autograd"):
        m = models[mode]
        loss = (m(x) ** 2).sum()
        grads[mode] = torch.autograd.grad(loss, [x, *m.parameters()])
    assert all(p.grad is None for p in models["reversible"].parameters())
    assert (
        max(
            max_rel_error(a, b) for a, b in zip(grads["reversible"], grads["autograd"], strict=True)
        )
        <= 1e-5
    )


def test_backward_twice_with_retained_graph_accumulates_twice():
    m = revnet_stack(depth=2)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    loss = (m(x) ** 2).sum()
    loss.backward(retain_graph=True)
    once = x.grad.clone()
    loss.backward()
    assert torch.allclose(x.grad, 2 * once, rtol=1e-5, atol=1e-6)


def test_eval_mode_and_no_grad_are_plain_forwards():
    m = revnet_stack(depth=4)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    with torch.no_grad():
        y = m(x)
    assert y.grad_fn is None
    m.eval()
    reference = copy.deepcopy(m)
    reference.mode = "autograd"
    y = m(x)
    assert "ReversibleChain" not in type(y.grad_fn).__name__
    assert torch.equal(y, reference(x))
    stats = [b.clone() for b in m.buffers()]
    (y**2).sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(stats, m.buffers(), strict=True))
