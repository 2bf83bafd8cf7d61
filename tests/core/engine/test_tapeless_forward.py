"""A block whose recording would keep nothing (revlib's own block, torch's plain layers, no hook)
runs its forward without writing a tape; whatever could leave a record keeps the recorded path.
Gradients and buffers are autograd's either way; the control forces the tapeless path on a block
that draws and gets wrong gradients."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import ROUND_OFF, mode_error, token_chain
from torch import nn

import revlib
from revlib.core.engine import function
from revlib.core.replay import Tape


class UserTanh(nn.Module):
    """A user's layer: its forward could do anything, so it is watched."""

    def forward(self, x):
        return torch.tanh(x)


class OwnCoupling(revlib.AdditiveCoupling):
    """A user's block class: its _forward could call more than its sub-modules."""


def _hooked():
    f = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    f[0].register_forward_hook(lambda m, a, out: out * 2)
    return f


CASES = {
    "plain layers": (lambda: nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.GELU()), True),
    "dropout": (lambda: nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)), False),
    "a hook": (_hooked, False),
    "a user's layer": (lambda: nn.Sequential(nn.Linear(4, 4), UserTanh()), False),
}


def _chain(case: str, block=revlib.AdditiveCoupling) -> revlib.ReversibleSequence:
    make, _ = CASES[case]
    return revlib.ReversibleSequence([block(make(), make(), dim=-1) for _ in range(2)]).double()


@pytest.mark.parametrize("case", CASES)
def test_only_a_block_that_would_record_nothing_skips_its_tape(case, monkeypatch):
    recorded = []
    record = Tape.record
    monkeypatch.setattr(Tape, "record", lambda self, *a: recorded.append(a[0]) or record(self, *a))
    chain = _chain(case)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    err, same_buffers = mode_error(chain, x)
    assert err <= ROUND_OFF and same_buffers
    assert (not recorded) == CASES[case][1]


def test_a_users_block_class_keeps_its_tape(monkeypatch):
    chain = _chain("plain layers", OwnCoupling)
    assert not any(function.needs_no_tape(b) for b in chain.blocks)
    assert all(function.needs_no_tape(b) for b in _chain("plain layers").blocks)


def test_control_a_tapeless_forward_loses_the_draws(monkeypatch):
    monkeypatch.setattr(function, "needs_no_tape", lambda block: True)
    chain = token_chain(lambda: nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))).double()
    assert mode_error(chain, torch.randn(3, 5, 8, dtype=torch.float64))[0] > 1e-3
