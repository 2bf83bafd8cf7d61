"""Auxiliary losses (a mixture-of-experts balancing loss) reported from inside F with
``revlib.add_aux_loss``: collected in every mode, with autograd's gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import revlib
from revlib.core.engine import function


class _TinyMoE(nn.Module):
    """Two experts mixed by a router; reports the router's balancing loss."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.router = nn.Linear(d, 2)
        self.experts = nn.ModuleList([nn.Linear(d, d), nn.Linear(d, d)])

    def forward(self, x):
        gate = self.router(x).softmax(-1)
        revlib.add_aux_loss(2 * (gate.mean(0) ** 2).sum())  # smallest when the load is even
        return sum(gate[:, i : i + 1] * torch.tanh(e(x)) for i, e in enumerate(self.experts))


def _model(mode: str, budget=None) -> revlib.ReversibleSequence:
    torch.manual_seed(0)
    blocks = [revlib.AdditiveCoupling(_TinyMoE(3), _TinyMoE(3), dim=-1) for _ in range(3)]
    return revlib.ReversibleSequence(blocks, mode=mode, memory_budget=budget).double()


def _grads(model, steps=2):
    x = torch.randn(5, 6, dtype=torch.double, generator=torch.Generator().manual_seed(1))
    out = []
    for _ in range(steps):
        xi = x.clone().requires_grad_(True)
        y = model(xi)
        assert len(model.aux_losses) == 6  # F and G of three blocks
        loss = y.square().sum() + 0.5 * sum(model.aux_losses)
        loss.backward()
        out.append([xi.grad, *(p.grad.clone() for p in model.parameters())])
        model.zero_grad()
    return out


@pytest.mark.parametrize(
    "mode, budget", [("checkpoint", None), ("reversible", None), ("reversible", 0.5)]
)
def test_aux_losses_get_autograds_gradients_in_every_mode(mode, budget):
    for got, want in zip(_grads(_model(mode, budget)), _grads(_model("autograd")), strict=True):
        for u, v in zip(got, want, strict=True):
            torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-9)


def test_control_without_the_aux_step_the_router_misses_its_gradient(monkeypatch):
    def no_aux(block, x, daux, tape, aliases):
        whole = x.join() if hasattr(x, "join") else x
        return torch.zeros_like(whole), []

    monkeypatch.setattr(function, "_aux_step", no_aux)
    got = _grads(_model("reversible"), steps=1)[0]
    want = _grads(_model("autograd"), steps=1)[0]
    assert max((u - v).abs().max().item() for u, v in zip(got, want, strict=True)) > 1e-4


def test_an_unused_aux_loss_costs_no_extra_replay(monkeypatch):
    calls = []
    real = function._aux_step
    monkeypatch.setattr(function, "_aux_step", lambda *a: calls.append(1) or real(*a))
    model = _model("reversible")
    model(torch.randn(5, 6, dtype=torch.double, requires_grad=True)).square().sum().backward()
    assert calls == []


def test_outside_a_sequence_add_aux_loss_keeps_nothing_and_values_still_come_in_eval():
    moe = _TinyMoE(3).double()
    moe(torch.randn(2, 3, dtype=torch.double))  # no sequence: nothing collected, no error
    model = copy.deepcopy(_model("reversible")).eval()
    with torch.no_grad():
        model(torch.randn(5, 6, dtype=torch.double))
    assert len(model.aux_losses) == 6 and not model.aux_losses[0].requires_grad


class _Stashing(nn.Module):
    """Keeps its balancing loss on an attribute, as many MoE layers do."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        self.balance = self.lin(x).square().mean()
        return torch.tanh(self.lin(x))


def test_a_loss_kept_on_an_attribute_is_refused_and_the_message_names_the_fix():
    block = revlib.AdditiveCoupling(_Stashing(3), _Stashing(3), dim=-1)
    seq = revlib.ReversibleSequence([block]).double()
    with pytest.raises(RuntimeError, match=r"'balance'.*revlib.add_aux_loss"):
        seq(torch.randn(2, 6, dtype=torch.double, requires_grad=True))
    seq.mode = "autograd"  # there the attribute carries its graph
    seq(torch.randn(2, 6, dtype=torch.double, requires_grad=True))
    assert block.F.balance.requires_grad
