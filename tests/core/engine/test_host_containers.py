"""Containers and globals that F reads, changed between the forward and the backward: list, tuple
and dict attributes, module-level scalars and dicts, a dict in forward's closure, and a scalar
attribute of one of torch's own modules read by a hook. Each is replayed as the forward saw it;
each test has a control that switches the replay off and sees the gradients differ."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import revlib
from revlib.core.replay import host

SETTINGS = {"gain": 1.5}  # a module-level dict, read by _GlobalGain
OFFSET = 0.25  # a module-level scalar, read by _GlobalGain


class _ContainerGain(nn.Module):
    """F = tanh(lin(x)) * gains[0] * table["gain"] * pair[1]."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4, dtype=torch.double)
        self.gains = [1.5]
        self.table = {"gain": 2.0}
        self.pair = (1.0, 0.5)

    def forward(self, x):
        return torch.tanh(self.lin(x)) * self.gains[0] * self.table["gain"] * self.pair[1]


class _GlobalGain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4, dtype=torch.double)

    def forward(self, x):
        return torch.tanh(self.lin(x)) * SETTINGS["gain"] + OFFSET


def _closure_gain():
    """An F whose forward reads a dict from its closure (a class defined in a factory)."""
    gains = {"gain": 1.5}

    class ClosureGain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4, dtype=torch.double)
            self.gains = gains  # kept for the test's change, which goes through the closure

        def forward(self, x):
            return torch.tanh(self.lin(x)) * gains["gain"]

    return ClosureGain()


def _change_closure(seq):
    for b in seq.blocks:
        vars(b.F)["gains"]["gain"] = 4.0


def _scaled_by_a_hook():
    """A torch-only F whose hook reads a scalar attribute the user set on the nn.Sequential."""
    f = nn.Sequential(nn.Linear(4, 4, dtype=torch.double), nn.Tanh())
    f.scale = 1.5
    f[0].register_forward_hook(lambda m, args, out: out * f.scale)
    return f


def _change_containers(seq):
    for b in seq.blocks:
        b.F.gains[0] = 4.0
        b.F.table["gain"] = 3.0
        b.F.pair = (1.0, 2.0)


def _change_globals(seq):
    global OFFSET
    SETTINGS["gain"] = 4.0
    OFFSET = -1.0


def _change_hooked_scale(seq):
    for b in seq.blocks:
        b.F.scale = 4.0


CASES = {
    "list, tuple and dict attributes": (_ContainerGain, _change_containers, "kept_containers"),
    "module-level dict and scalar": (_GlobalGain, _change_globals, "read_globals"),
    "dict in forward's closure": (_closure_gain, _change_closure, "read_globals"),
    "scalar attribute of a torch module, read by a hook": (
        _scaled_by_a_hook,
        _change_hooked_scale,
        "_attributes",
    ),
}


def _grads(make_f, mode, between=None):
    global OFFSET
    SETTINGS["gain"], OFFSET = 1.5, 0.25
    torch.manual_seed(0)
    seq = revlib.ReversibleSequence(
        [
            revlib.AdditiveCoupling(make_f(), nn.Sequential(nn.Linear(4, 4, dtype=torch.double)))
            for _ in range(2)
        ],
        mode=mode,
    )
    x = torch.randn(4, 8, dtype=torch.double, generator=torch.Generator().manual_seed(1))
    y = seq(x.requires_grad_(True))
    if between is not None:
        between(seq)
    y.square().sum().backward()
    return [p.grad for p in seq.parameters()] + [x.grad]


def _worst(a, b):
    return max((u - v).abs().max().item() for u, v in zip(a, b, strict=True))


@pytest.mark.parametrize("case", list(CASES))
def test_state_changed_between_forward_and_backward_is_replayed_as_the_forward_saw_it(case):
    make, change, _ = CASES[case]
    ref = _grads(make, "autograd", between=change)  # autograd saved what the forward used
    assert _worst(_grads(make, "reversible", between=change), ref) < 1e-12


@pytest.mark.parametrize("case", list(CASES))
def test_control_without_its_replay_the_change_reaches_the_gradients(case, monkeypatch):
    make, change, recorder = CASES[case]
    empty = [] if recorder == "read_globals" else {}
    monkeypatch.setattr(host, recorder, lambda modules: empty)
    ref = _grads(make, "autograd", between=change)
    assert _worst(_grads(make, "reversible", between=change), ref) > 1e-3


class _StoresInADict(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4, dtype=torch.double)
        self.stats = {}

    def forward(self, x):
        y = self.lin(x)
        self.stats["energy"] = y.square().mean()  # a loss for later: no graph in reversible
        return torch.tanh(y)


def test_a_forward_that_stores_a_tensor_in_a_dict_attribute_is_refused():
    with pytest.raises(RuntimeError, match=r"stored a tensor .* attribute \"stats\['energy'\]\""):
        _grads(_StoresInADict, "reversible")
    _grads(_StoresInADict, "autograd")  # control: autograd mode runs it
