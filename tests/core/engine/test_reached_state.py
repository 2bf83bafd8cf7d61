"""State that F's code reaches outside its modules, as ported code keeps it: random generators
passed as extra arguments or held by a config, losses collected in global, closure or nested
containers, nested and class-level settings, and hooks whose action depends on a counter. Each
gives autograd's gradients or a clear refusal; each mechanism has a control."""

from __future__ import annotations

import collections
import copy
import dataclasses
import random
import types

import numpy as np
import pytest
import torch
from torch import nn

import revlib
from revlib.core.replay import hooks, reaches

D = torch.double


class _Lin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4, dtype=D)

    def forward(self, x):
        return torch.tanh(self.lin(x))


def _grads(make, mode, extras=dict, between=None, seed=0):
    torch.manual_seed(seed)
    seq = revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(make(), make(), dim=-1) for _ in range(3)], mode=mode
    )
    x = torch.randn(3, 8, dtype=D, generator=torch.Generator().manual_seed(1))
    y = seq(x.requires_grad_(True), **extras())
    if between is not None:
        between(seq)
    y.square().sum().backward()
    return [x.grad, *(p.grad for p in seq.parameters())]


def _gap(a, b) -> float:
    scale = max(v.abs().max().item() for v in b)
    return max((u - v).abs().max().item() for u, v in zip(a, b, strict=True)) / scale


# ---- random generators passed in --------------------------------------------------------------


class _DrawsFromPassed(_Lin):
    def forward(self, x, gen):
        source = gen.gen if dataclasses.is_dataclass(gen) else gen
        if isinstance(source, torch.Generator):
            noise = torch.rand(x.shape, generator=source, dtype=D)
        elif isinstance(source, random.Random):
            noise = torch.full_like(x, source.random())
        else:
            noise = torch.full_like(x, float(source.random()))
        return torch.tanh(self.lin(x)) * (0.5 + noise)


@dataclasses.dataclass
class _Holder:
    gen: object


GENERATORS = {
    "torch.Generator": lambda: torch.Generator().manual_seed(5),
    "random.Random": lambda: random.Random(5),
    "numpy Generator": lambda: np.random.default_rng(5),
    "torch.Generator in a dataclass": lambda: _Holder(torch.Generator().manual_seed(5)),
}


@pytest.mark.parametrize("kind", list(GENERATORS))
def test_a_generator_passed_as_an_extra_is_replayed_and_draws_for_the_caller(kind):
    drawn = {}

    def run(mode):
        gen = GENERATORS[kind]()
        out = _grads(_DrawsFromPassed, mode, extras=lambda: {"gen": gen})
        source = gen.gen if isinstance(gen, _Holder) else gen
        drawn[mode] = float(torch.rand(1, generator=source)) if kind.startswith("torch") else 0
        return out

    assert _gap(run("reversible"), run("autograd")) < 1e-12
    assert drawn["reversible"] == drawn["autograd"]  # the caller's generator moved alike


def test_control_without_rng_bookkeeping_the_passed_generator_draws_anew():
    def run(mode, **options):
        gen = torch.Generator().manual_seed(5)
        torch.manual_seed(0)
        seq = revlib.ReversibleSequence(
            [revlib.AdditiveCoupling(_DrawsFromPassed(), _DrawsFromPassed(), dim=-1)],
            mode=mode,
            **options,
        )
        x = torch.randn(3, 8, dtype=D, requires_grad=True)
        seq(x, gen=gen).square().sum().backward()
        return [x.grad, *(p.grad for p in seq.parameters())]

    assert _gap(run("reversible", preserve_rng_state=False), run("autograd")) > 1e-3


# ---- losses collected outside the output ------------------------------------------------------

AUX: list[torch.Tensor] = []


def _collector(where: str):
    box: list[torch.Tensor] = []

    class Collects(_Lin):
        def __init__(self) -> None:
            super().__init__()
            self.stats = types.SimpleNamespace(losses=[], last=None)
            self.store: dict = {"aux": {}}

        def forward(self, x):
            h = self.lin(x)
            loss = h.square().mean()
            if where == "a global list":
                AUX.append(loss)
            elif where == "a closure list":
                box.append(loss)
            elif where == "a list in an object":
                self.stats.losses.append(loss)
            elif where == "a field of an object":
                self.stats.last = loss
            else:
                self.store["aux"]["l2"] = loss
            return torch.tanh(h)

    return Collects


@pytest.mark.parametrize(
    "where",
    ["a global list", "a closure list", "a list in an object", "a field of an object", "a dict"],
)
def test_a_loss_collected_outside_the_output_is_refused(where):
    AUX.clear()
    make = _collector(where)
    _grads(make, "autograd")  # control: autograd mode runs it
    with pytest.raises(RuntimeError, match=r"(stored|appended) a tensor of shape \(\)"):
        _grads(make, "reversible")
    AUX.clear()


# ---- settings nested, at class level, or in a helper's closure --------------------------------


def _settings(where: str):
    gain = {"value": 1.5}

    class Reads(_Lin):
        factor = 1.5  # a class attribute

        def __init__(self) -> None:
            super().__init__()
            self.config = types.SimpleNamespace(attn={"temp": 1.5})
            self.counts: collections.defaultdict = collections.defaultdict(int)

        def scale(self):
            if where == "nested in a config":
                return self.config.attn["temp"]
            if where == "a class attribute":
                return type(self).factor
            return gain["value"]  # a helper method's closure

        def forward(self, x):
            return torch.tanh(self.lin(x)) * self.scale()

    def change(seq):
        for b in seq.blocks:
            b.F.config.attn["temp"] = 4.0
        Reads.factor = 4.0
        gain["value"] = 4.0

    return Reads, change


SETTINGS = ["nested in a config", "a class attribute", "a helper method's closure"]


@pytest.mark.parametrize("where", SETTINGS)
def test_a_setting_changed_before_the_backward_is_replayed_as_the_forward_saw_it(where):
    make, change = _settings(where)
    want = _grads(make, "autograd", between=change)
    make, change = _settings(where)
    assert _gap(_grads(make, "reversible", between=change), want) < 1e-12


def test_control_with_one_level_snapshots_the_nested_change_reaches_the_gradients(monkeypatch):
    monkeypatch.setattr(reaches, "snapshot", lambda value, depth=2: copy.copy(value))
    make, change = _settings("nested in a config")
    want = _grads(make, "autograd", between=change)
    make, change = _settings("nested in a config")
    assert _gap(_grads(make, "reversible", between=change), want) > 1e-3


# ---- a hook whose action depends on a counter -------------------------------------------------


def _warm_up_hook(where: str):
    state = {"calls": 0}

    def warm(module, args, out):  # acts on its first two calls only
        if isinstance(module, nn.Linear):
            state["calls"] += 1
            if state["calls"] <= 2:
                return out * 0.1
        return None

    return warm


@pytest.mark.parametrize("where", ["on a layer", "global"])
def test_a_hook_that_acts_by_a_counter_is_replayed_with_the_count_it_saw(where):
    grads = {}
    for mode in ("reversible", "autograd"):
        hook = _warm_up_hook(where)
        handle = None
        if where == "global":
            handle = nn.modules.module.register_module_forward_hook(hook)
            make = _Lin
        else:

            def make(hook=hook):
                m = _Lin()
                m.lin.register_forward_hook(hook)
                return m

        try:
            grads[mode] = _grads(make, mode)
        finally:
            if handle is not None:
                handle.remove()
    assert _gap(grads["reversible"], grads["autograd"]) < 1e-12


def test_control_without_the_hooks_state_the_replay_counts_on(monkeypatch):
    monkeypatch.setattr(hooks, "function_state", lambda fn: [])
    grads = {}
    for mode in ("reversible", "autograd"):
        hook = _warm_up_hook("on a layer")

        def make(hook=hook):
            m = _Lin()
            m.lin.register_forward_hook(hook)
            return m

        grads[mode] = _grads(make, mode)
    assert _gap(grads["reversible"], grads["autograd"]) > 1e-3


# ---- more settings: a global config, NumPy scalars, None, a function --------------------------

GLOBAL_CONFIG = types.SimpleNamespace(scale=1.5)


class _Settings(_Lin):
    def __init__(self) -> None:
        super().__init__()
        self.gain = np.float64(1.5)
        self.temp = None
        self.act = torch.tanh

    def forward(self, x):
        temp = 1.0 if self.temp is None else self.temp
        return self.act(self.lin(x)) * self.gain * GLOBAL_CONFIG.scale / temp


def _change_settings(seq):
    GLOBAL_CONFIG.scale = 4.0
    for b in seq.blocks:
        b.F.gain, b.F.temp, b.F.act = np.float64(3.0), 2.0, torch.sin


def test_a_global_config_numpy_scalar_none_and_function_are_replayed():
    GLOBAL_CONFIG.scale = 1.5
    want = _grads(_Settings, "autograd", between=_change_settings)
    GLOBAL_CONFIG.scale = 1.5
    got = _grads(_Settings, "reversible", between=_change_settings)
    GLOBAL_CONFIG.scale = 1.5
    assert _gap(got, want) < 1e-12


# ---- hooks whose state is an object's, or a partial's ------------------------------------------


class _Monitor(nn.Module):
    """A module outside F whose method is the hook: its counter is an attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def hook(self, module, args, out):
        self.calls += 1
        return out * 0.1 if self.calls <= 2 else None


def _by_partial(module, args, out, state):
    state["calls"] += 1
    return out * 0.1 if state["calls"] <= 2 else None


HOOK_OWNERS = {
    "a method of a module": lambda: _Monitor().hook,
    "a functools.partial": lambda: __import__("functools").partial(_by_partial, state={"calls": 0}),
}


@pytest.mark.parametrize("owner", list(HOOK_OWNERS))
def test_a_hook_whose_counter_is_an_objects_is_replayed_with_the_count_it_saw(owner):
    grads = {}
    for mode in ("reversible", "autograd"):
        hook = HOOK_OWNERS[owner]()

        def make(hook=hook):
            m = _Lin()
            m.lin.register_forward_hook(hook)
            return m

        grads[mode] = _grads(make, mode)
    assert _gap(grads["reversible"], grads["autograd"]) < 1e-12


# ---- mode "checkpoint": model.eval() between the forward and the backward ----------------------


class _EMA(_Lin):
    """A buffer replaced in every training forward, read by the output."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("ema", torch.zeros(4, dtype=D))

    def forward(self, x):
        h = self.lin(x)
        if self.training:
            self.ema = 0.9 * self.ema + 0.1 * h.detach().mean(0)
        return torch.tanh(h + self.ema)


def _norm_and_ema():
    return nn.Sequential(_EMA(), nn.BatchNorm1d(4, dtype=D))


def _eval_between(mode):
    torch.manual_seed(0)
    seq = revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(_norm_and_ema(), _norm_and_ema(), dim=-1) for _ in range(2)],
        mode=mode,
    )
    x = torch.randn(3, 8, dtype=D, generator=torch.Generator().manual_seed(1))
    y = seq(x.requires_grad_(True))
    seq.eval()
    y.square().sum().backward()
    return [x.grad, *(p.grad for p in seq.parameters()), *(b.clone() for b in seq.buffers())]


def test_checkpoint_recomputes_with_the_forwards_train_flags():
    assert _gap(_eval_between("checkpoint"), _eval_between("autograd")) < 1e-12


def test_control_without_the_flags_the_recomputation_runs_in_eval_mode(monkeypatch):
    from torch.utils.checkpoint import CheckpointError

    from revlib.core.replay import buffers

    monkeypatch.setattr(buffers, "submodules", lambda module: [])
    with pytest.raises(CheckpointError, match="different metadata"):  # BatchNorm saves less
        _eval_between("checkpoint")
