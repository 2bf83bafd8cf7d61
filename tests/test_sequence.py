"""ReversibleSequence: gradients, running statistics, RNG, autocast and errors, mode by mode."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import copies_by_mode, max_rel_error, revnet_stack, run_step
from torch import nn

import revlib


def smooth_stack(depth: int) -> revlib.ReversibleSequence:
    """Couplings with smooth halves (no ReLU kinks), for finite-difference checks."""

    def half():
        return nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Tanh())

    blocks = [revlib.AdditiveCoupling(half(), half()) for _ in range(depth)]
    blocks.insert(1, revlib.AffineCoupling(nn.Conv2d(1, 2, 3, padding=1)))
    blocks.insert(2, revlib.NICECoupling(half()))
    blocks.insert(3, revlib.HalfSwap())
    return revlib.ReversibleSequence(blocks)


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


@pytest.mark.parametrize("mode", ["reversible", "checkpoint"])
def test_batchnorm_running_stats_updated_once(mode, device):
    base = revnet_stack(depth=3).to(device)
    models = copies_by_mode(base)
    x = torch.randn(4, 8, 6, 6, device=device, requires_grad=True)
    for m in models.values():
        run_step(m, x)
    ours = dict(models[mode].named_buffers())
    ref = dict(models["autograd"].named_buffers())
    assert ref["blocks.0.F.0.num_batches_tracked"].item() == 1
    for name, value in ref.items():
        assert torch.equal(ours[name], value), name
    assert not torch.equal(ref["blocks.0.F.0.running_mean"], torch.zeros(4, device=device))


@pytest.mark.parametrize("mode", ["reversible", "checkpoint"])
def test_dropout_masks_are_replayed(mode, device):
    base = revnet_stack(depth=3, dropout=0.5).to(device)
    models = copies_by_mode(base)
    x = torch.randn(4, 8, 6, 6, device=device, requires_grad=True)
    out = {}
    for name, m in models.items():
        torch.manual_seed(123)
        y = m(x)
        (y**2).sum().backward()
        rng = (
            torch.get_device_module(device.type).get_rng_state()
            if device.type != "cpu"
            else torch.get_rng_state()
        )
        out[name] = (y.detach(), [p.grad.clone() for p in m.parameters()], rng)
        x.grad = None
    y, grads, rng = out[mode]
    y_ref, grads_ref, rng_ref = out["autograd"]
    assert torch.equal(y, y_ref)
    assert max(max_rel_error(a, b) for a, b in zip(grads, grads_ref, strict=True)) <= 1e-5
    assert torch.equal(rng, rng_ref)


def test_without_rng_replay_dropout_gradients_are_wrong():
    """The control for the test above: switch replay off and the gradients differ."""
    base = revnet_stack(depth=3, dropout=0.5)
    models = copies_by_mode(base)
    models["reversible"].preserve_rng_state = False
    x = torch.randn(4, 8, 6, 6)
    grads = {}
    for name in ("reversible", "autograd"):
        torch.manual_seed(123)
        (models[name](x) ** 2).sum().backward()
        grads[name] = [p.grad for p in models[name].parameters()]
    assert (
        max(
            max_rel_error(a, b) for a, b in zip(grads["reversible"], grads["autograd"], strict=True)
        )
        > 1e-2
    )


def test_recomputation_runs_under_the_forward_autocast_state():
    base = revnet_stack(depth=4, channels=16)
    models = copies_by_mode(base)
    x = torch.randn(4, 16, 8, 8, requires_grad=True)
    grads = {}
    for name, m in models.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
        (y.float() ** 2).sum().backward()
        grads[name] = [p.grad.float() for p in m.parameters()]
    err = max(
        max_rel_error(a, b) for a, b in zip(grads["reversible"], grads["autograd"], strict=True)
    )
    assert err < 2e-2  # bf16 noise; a float32 recomputation would reconstruct wrong inputs
    # A recomputation in float32 (autocast forgotten) is measurably further off:
    from revlib.core import recompute

    original = recompute.AutocastState.context
    recompute.AutocastState.context = lambda self: torch.autocast("cpu", enabled=False)
    try:
        m = copy.deepcopy(base)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
        (y.float() ** 2).sum().backward()
    finally:
        recompute.AutocastState.context = original
    wrong = max(
        max_rel_error(p.grad.float(), b)
        for p, b in zip(m.parameters(), grads["autograd"], strict=True)
    )
    assert wrong > 5 * err


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


def test_double_backward_raises_a_clear_error():
    m = revnet_stack(depth=2)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    loss = (m(x) ** 2).sum()
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(loss, x, create_graph=True)


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


def test_errors_name_the_block_and_shapes():
    m = revnet_stack(depth=2)
    with pytest.raises(ValueError, match=r"block 0: AdditiveCoupling.*odd number of channels \(7"):
        m(torch.randn(2, 7, 4, 4, requires_grad=True))
    bad = revlib.ReversibleSequence(
        [
            revlib.AdditiveCoupling(nn.Identity(), nn.Identity()),
            revlib.AdditiveCoupling(nn.Conv2d(2, 3, 1), nn.Identity()),
        ]
    )
    with pytest.raises(
        ValueError,
        match=r"block 1: AdditiveCoupling: F maps a half of shape \(1, 2, 4, 4\) "
        r"to shape \(1, 3, 4, 4\)",
    ):
        bad(torch.randn(1, 4, 4, 4, requires_grad=True))
    with pytest.raises(
        ValueError, match=r"expected an input with 4 dimensions, got shape \(8, 4, 4\)"
    ):
        revlib.ReversibleSequence(m.blocks, ndim=4)(torch.randn(8, 4, 4))
    with pytest.raises(ValueError, match="got shape \\(8,\\)"):
        m(torch.randn(8, requires_grad=True))
    with pytest.raises(TypeError, match="block 0 is a Conv2d"):
        revlib.ReversibleSequence([nn.Conv2d(2, 2, 1)])
    with pytest.raises(ValueError, match="mode must be one of"):
        revlib.ReversibleSequence([], mode="fast")


def test_sequence_inverse():
    m = smooth_stack(4).double()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    assert torch.allclose(m.inverse(m(x)), x, atol=1e-12)
    assert revlib.check_inverse(m, x) < 1e-12


def test_weights_changed_before_backward_raise_instead_of_a_wrong_gradient():
    m = revnet_stack(depth=2)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    loss = (m(x) ** 2).sum()
    with torch.no_grad():
        next(m.parameters()).add_(0.1)  # an optimizer step too early
    with pytest.raises(RuntimeError, match="modified in place between forward and backward"):
        loss.backward()


def test_functional_call_is_rejected_clearly():
    m = revnet_stack(depth=2)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    params = {name: p.detach().clone().requires_grad_() for name, p in m.named_parameters()}
    y = torch.func.functional_call(m, params, (x,))
    with pytest.raises(
        RuntimeError, match="parameters or buffers were replaced between forward and backward"
    ):
        (y**2).sum().backward()
    m.mode = "autograd"
    y = torch.func.functional_call(m, params, (x,))
    (y**2).sum().backward()
    assert all(p.grad is not None for p in params.values())
