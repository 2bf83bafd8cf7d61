"""State outside torch that F reaches: every kind of random generator (as an attribute, in a
container, as a module-level global), scalar attributes changed between forward and backward,
the extra arguments a block actually received, and lists or tensors a forward must not change."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

import revlib

SHARED = {"rng": np.random.default_rng(0)}  # a module-level generator, read by _GlobalNoise


def _noise(kind: str):
    if kind == "numpy Generator":
        g = np.random.default_rng(0)
        return lambda: float(g.uniform(0.5, 1.5)), g
    if kind == "random.Random":
        g = random.Random(0)
        return lambda: g.uniform(0.5, 1.5), g
    g = np.random.RandomState(0)
    return lambda: float(g.uniform(0.5, 1.5)), g


class _AttributeNoise(nn.Module):
    def __init__(self, kind: str, in_list: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4, dtype=torch.double)
        self.draw, generator = _noise(kind)
        if in_list:
            self.generators = [generator]
        else:
            self.generator = generator

    def forward(self, x):
        return torch.tanh(self.lin(x)) * self.draw()


class _GlobalNoise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4, dtype=torch.double)

    def forward(self, x):
        return torch.tanh(self.lin(x)) * float(SHARED["rng"].uniform(0.5, 1.5))


def _half():
    return nn.Sequential(nn.Linear(4, 4, dtype=torch.double), nn.Tanh())


def _grads(make_f, mode, preserve=True, between=None, **extras):
    torch.manual_seed(0)
    SHARED["rng"] = np.random.default_rng(0)
    seq = revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(make_f(), _half()) for _ in range(2)],
        mode=mode,
        preserve_rng_state=preserve,
    )
    x = torch.randn(4, 8, dtype=torch.double, generator=torch.Generator().manual_seed(1))
    y = seq(x.requires_grad_(True), **extras)
    if between is not None:
        between(seq)
    y.square().sum().backward()
    return [p.grad for p in seq.parameters()]


def _assert_same(a, b):
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-9)


CASES = {
    **{
        f"{kind}, {where}": (lambda k=kind, w=where: _AttributeNoise(k, w == "in a list"))
        for kind in ("numpy Generator", "random.Random", "numpy RandomState")
        for where in ("attribute", "in a list")
    },
    "numpy Generator, module-level global": _GlobalNoise,
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_generator_f_reaches_is_replayed(case):
    _assert_same(_grads(CASES[case], "reversible"), _grads(CASES[case], "autograd"))


def test_control_without_the_host_replay_the_draws_differ():
    make = CASES["numpy Generator, attribute"]
    off = _grads(make, "reversible", preserve=False)
    ref = _grads(make, "autograd")
    assert max((u - v).abs().max().item() for u, v in zip(off, ref, strict=True)) > 1e-3


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4, dtype=torch.double)
        self.scale = 1.0

    def forward(self, x, options=None):
        scale = self.scale * (options["gain"] if options is not None else 1.0)
        return torch.tanh(self.lin(x)) * scale


def test_an_attribute_set_between_forward_and_backward_is_replayed_as_the_forward_saw_it():
    def change(seq):
        for b in seq.blocks:
            b.F.scale = 5.0

    _assert_same(_grads(_Scaled, "reversible", between=change), _grads(_Scaled, "autograd"))


def test_a_mutable_extra_changed_between_forward_and_backward_is_replayed_as_it_was():
    def run(mode):
        options = {"gain": 2.0}
        return _grads(_Scaled, mode, between=lambda seq: options.update(gain=7.0), options=options)

    _assert_same(run("reversible"), run("autograd"))


def test_the_values_a_pre_hook_gave_the_block_are_the_ones_replayed():
    def make_and_hook(mode):
        torch.manual_seed(0)
        seq = revlib.ReversibleSequence(
            [revlib.AdditiveCoupling(_Scaled(), _half()) for _ in range(2)], mode=mode
        )
        seq.blocks[1].register_forward_pre_hook(
            lambda m, args, kwargs: (args, {**kwargs, "options": {"gain": 3.0}}), with_kwargs=True
        )
        x = torch.randn(4, 8, dtype=torch.double, requires_grad=True)
        seq(x, options={"gain": 1.0}).square().sum().backward()
        return [p.grad for p in seq.parameters()]

    _assert_same(make_and_hook("reversible"), make_and_hook("autograd"))


class _Counts(nn.Module):
    def __init__(self, kept: str) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4, dtype=torch.double)
        self.kept = kept
        self.calls: list[int] = []
        self.total = torch.zeros(1, dtype=torch.double)

    def forward(self, x):
        if self.kept == "list":
            self.calls.append(1)
        else:
            self.total = self.total + 1
        return torch.tanh(self.lin(x))


@pytest.mark.parametrize("kept", ["list", "tensor"])
def test_a_forward_that_changes_a_list_or_tensor_it_keeps_is_refused(kept):
    with pytest.raises(RuntimeError, match=f"changed its {kept} attribute"):
        _grads(lambda: _Counts(kept), "reversible")
    _grads(lambda: _Counts(kept), "autograd")  # control: autograd mode runs it


class _Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4, dtype=torch.double)
        self.mask = torch.ones(4, dtype=torch.double)

    def forward(self, x):
        return torch.tanh(self.lin(x)) * self.mask


@pytest.mark.parametrize("how", ["refilled in place", "replaced"])
def test_a_tensor_attribute_changed_before_the_backward_is_refused(how):
    def change(seq):
        for b in seq.blocks:
            if how == "replaced":
                b.F.mask = torch.zeros(4, dtype=torch.double)
            else:
                b.F.mask.zero_()

    with pytest.raises(RuntimeError, match="'mask' of _Masked was replaced or changed in place"):
        _grads(_Masked, "reversible", between=change)
    # control: left alone, the same model trains as in autograd mode
    _assert_same(_grads(_Masked, "reversible"), _grads(_Masked, "autograd"))


# ---- the fast path: F made only of torch's own layers reaches no host state, unless hooked ----


def _torch_only_f_with_a_drawing_pre_hook(where: str):
    def draw(module, args):
        return (args[0] * random.uniform(0.5, 1.5),)  # acts: replayed, from Python's generator

    def make():
        f = _half()
        if where == "on a layer":
            f[0].register_forward_pre_hook(draw)
        return f

    return make


@pytest.mark.parametrize("where", ["on a layer", "global"])
def test_a_hook_that_draws_on_a_torch_only_f_is_replayed(where):
    make = _torch_only_f_with_a_drawing_pre_hook(where)
    handle = (
        nn.modules.module.register_module_forward_pre_hook(
            lambda m, a: (a[0] * random.uniform(0.5, 1.5),) if isinstance(m, nn.Linear) else None
        )
        if where == "global"
        else None
    )
    try:
        grads = {}
        for mode in ("reversible", "autograd"):
            random.seed(0)
            grads[mode] = _grads(make, mode)
    finally:
        if handle is not None:
            handle.remove()
    _assert_same(grads["reversible"], grads["autograd"])


def test_control_without_the_hook_check_the_fast_path_loses_the_draw(monkeypatch):
    from revlib.core.replay import host

    monkeypatch.setattr(host, "_reaches_no_host_state", lambda fn, modules: True)
    make = _torch_only_f_with_a_drawing_pre_hook("on a layer")
    grads = {}
    for mode in ("reversible", "autograd"):
        random.seed(0)
        grads[mode] = _grads(make, mode)
    diff = max((u - v).abs().max().item() for u, v in zip(*grads.values(), strict=True))
    assert diff > 1e-3
