"""Hooks run as in autograd: a block's and F's and G's module hooks once per step (a hook that
changes F is part of F in the replay; one that changes the block's input or output raises),
and parameter hooks once, with the full gradient. Float64 against mode "autograd"; each
mechanism has a control that fails without it."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from engine_helpers import ROUND_OFF, X, both, chain, grads
from helpers import grads_of, revnet_stack, worst_rel_error
from torch import nn

import revlib
from revlib.core import engine
from revlib.core.blocks import ReversibleBlock
from revlib.core.replay import hooks as replay_hooks

# ---- hooks on the block --------------------------------------------------------------------------


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


# ---- hooks on F and G ----------------------------------------------------------------------------


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
    monkeypatch.setattr(
        replay_hooks, "_replaying_hooks", lambda fn, acting, states=None: contextlib.nullcontext()
    )
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


# ---- parameter hooks -----------------------------------------------------------------------------


def hooked_step(mode: str, device) -> tuple[dict[str, int], list]:
    torch.manual_seed(0)
    base = revnet_stack(depth=3).double().to(device)
    base.blocks[2].F[2].weight = base.blocks[0].F[2].weight  # a parameter shared by two blocks
    m = copy.deepcopy(base)
    m.mode = mode
    calls: dict[str, int] = {}
    accumulated: dict[str, int] = {}
    for name, p in m.named_parameters():

        def hook(g, name=name):
            calls[name] = calls.get(name, 0) + 1
            return 2 * g

        p.register_hook(hook)
        p.register_post_accumulate_grad_hook(
            lambda p, name=name: accumulated.__setitem__(name, accumulated.get(name, 0) + 1)
        )
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64, device=device)
    torch.manual_seed(1)
    (m(x) ** 2).sum().backward()
    return calls, accumulated, grads_of(m)


def test_parameter_hooks_fire_once_with_the_full_gradient(device):
    calls, accumulated, grads = hooked_step("reversible", device)
    calls_ref, accumulated_ref, grads_ref = hooked_step("autograd", device)
    assert calls == calls_ref and set(calls.values()) == {1}
    assert accumulated == accumulated_ref and set(accumulated.values()) == {1}
    assert worst_rel_error(grads, grads_ref) <= ROUND_OFF  # 2*g, not 4*g


def test_control_without_parameter_aliases_hooks_fire_inside_the_backward(monkeypatch):
    swap = engine.function.detached_parameters

    def forward_only(block, aliases):  # the forward's detached copies stay; the backward's go
        replay = any(a.requires_grad for a in aliases.values())
        return contextlib.nullcontext() if replay else swap(block, aliases)

    monkeypatch.setattr(engine.function, "detached_parameters", forward_only)
    calls, _, grads = hooked_step("reversible", "cpu")
    _, _, grads_ref = hooked_step("autograd", "cpu")
    assert max(calls.values()) >= 2
    assert worst_rel_error(grads, grads_ref) > 0.5
