"""Hooks inside F that return None but are part of F: they set a module's tensor attribute
(the hook-based weight_norm and spectral_norm) or edit an output in place. Mode "reversible"
replays them, as they were at the forward, and gives autograd's gradients and buffers."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import revlib
from revlib.core.replay import hooks as replay_hooks


def _conv(wrap):
    return wrap(nn.Conv2d(4, 4, 3, padding=1))


def _chain(mode, wrap, seed=0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # weight_norm's deprecation notice
        blocks = [
            revlib.AdditiveCoupling(
                nn.Sequential(_conv(wrap), nn.Tanh()), nn.Sequential(_conv(wrap), nn.Tanh())
            )
            for _ in range(2)
        ]
    seq = revlib.ReversibleSequence(blocks).double()
    revlib.set_mode(seq, mode)
    return seq


def _run(mode, wrap):
    seq = _chain(mode, wrap)
    x = torch.randn(2, 8, 5, 5, dtype=torch.double, generator=torch.Generator().manual_seed(1))
    seq(x).square().sum().backward()
    grads = {n: p.grad for n, p in seq.named_parameters()}
    return grads, {n: b.clone() for n, b in seq.named_buffers()}


WRAPS = {
    "weight_norm": nn.utils.weight_norm,
    "spectral_norm": nn.utils.spectral_norm,
}


@pytest.mark.parametrize("wrap", list(WRAPS))
def test_hook_based_weight_norm_and_spectral_norm_train_as_in_autograd(wrap):
    ref_grads, ref_buffers = _run("autograd", WRAPS[wrap])
    grads, buffers = _run("reversible", WRAPS[wrap])
    assert any(n.endswith(("weight_g", "weight_orig")) for n in grads)
    for n, g in ref_grads.items():
        assert grads[n] is not None, f"{n} got no gradient"
        torch.testing.assert_close(grads[n], g, rtol=1e-9, atol=1e-9, msg=n)
    for n, b in ref_buffers.items():  # spectral_norm's power-iteration vectors: updated once
        torch.testing.assert_close(buffers[n], b, rtol=1e-9, atol=1e-9, msg=n)


def test_control_a_state_setting_hook_taken_for_an_observer_loses_the_gradient(monkeypatch):
    """Without the check for changed tensor attributes, weight_g and weight_v get no gradient."""
    monkeypatch.setattr(replay_hooks, "_tensor_attributes", lambda m: {})
    # and without the refusal of what an observer keeps (the weight it computed)
    monkeypatch.setattr(replay_hooks.HookRecord, "kept_outputs", lambda self, keep=None: [])
    grads, _ = _run("reversible", WRAPS["weight_norm"])
    assert all(grads[n] is None for n in grads if n.endswith(("weight_g", "weight_v")))


def _double_in_place(module, args, output):
    output.mul_(2)  # returns None, but changes what the module computes


def test_a_forward_hook_that_edits_its_output_in_place_is_part_of_f():
    def run(mode):
        seq = _chain(mode, lambda c: c)
        for block in seq.blocks:
            block.F[0].register_forward_hook(_double_in_place)
        x = torch.randn(2, 8, 5, 5, dtype=torch.double, generator=torch.Generator().manual_seed(1))
        y = seq(x)
        y.square().sum().backward()
        return y.detach(), {n: p.grad for n, p in seq.named_parameters()}

    y_ref, ref = run("autograd")
    y, got = run("reversible")
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    for n, g in ref.items():
        torch.testing.assert_close(got[n], g, rtol=1e-9, atol=1e-9, msg=n)


def test_an_acting_hook_removed_after_the_forward_is_still_replayed():
    """The replay runs the hooks the forward ran, not the ones registered at backward time."""

    def scale(module, args, output):
        return output * 3

    def run(mode, remove):
        seq = _chain(mode, lambda c: c)
        handles = [b.F[0].register_forward_hook(scale) for b in seq.blocks]
        x = torch.randn(2, 8, 5, 5, dtype=torch.double, generator=torch.Generator().manual_seed(1))
        y = seq(x)
        if remove:
            for h in handles:
                h.remove()
        y.square().sum().backward()
        return {n: p.grad for n, p in seq.named_parameters()}

    ref = run("autograd", remove=True)
    got = run("reversible", remove=True)
    for n, g in ref.items():
        torch.testing.assert_close(got[n], g, rtol=1e-9, atol=1e-9, msg=n)
