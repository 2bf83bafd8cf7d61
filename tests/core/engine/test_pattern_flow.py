"""A class-conditional normalizing flow trained on its negative log-likelihood (log-dets from
``forward_and_log_det`` or reported with ``add_aux_loss``), its inverse with the conditioning,
and gradient accumulation with clipping; mode "reversible" against mode "autograd" (float64),
each with a control."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf
from pattern_helpers import (
    REL,
    assert_same_buffers,
    assert_same_grads,
    gradients,
    params_after,
    worst,
)
from torch import nn

import revlib
from revlib.core.engine import function

# ---- 3. a class-conditional normalizing flow ---------------------------------------------------


class CouplingNet(nn.Module):
    """``net`` of an AffineCoupling: (scale, shift) from x1 and the class embedding ``cond``.
    With ``report`` it reports its log-det, the sum of the raw scale, with add_aux_loss."""

    def __init__(self, report: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(2, 8)
        self.cond = nn.Linear(3, 8)
        self.out = nn.Linear(8, 4)
        self.report = report

    def forward(self, x1, cond):
        h = self.out(torch.tanh(self.inp(x1) + self.cond(cond)))
        if self.report:  # valid with scale_bound=None: the block's scale is h's first half
            revlib.add_aux_loss(h.chunk(2, dim=1)[0].sum(dim=1))
        return h


class ConditionalFlow(nn.Module):
    """x (B, 4) and a class label to z: AffineCouplings interleaved with HalfSwaps, the class
    embedded by a learned table and passed to every ``net`` as the extra argument ``cond``."""

    def __init__(self, report: bool = False, **coupling) -> None:
        super().__init__()
        self.embed = nn.Embedding(3, 3)
        blocks = []
        for _ in range(3):
            blocks += [
                revlib.AffineCoupling(CouplingNet(report), **coupling),
                revlib.HalfSwap(),
            ]
        self.flow = revlib.ReversibleSequence(blocks)

    def forward(self, x, labels):
        return self.flow(x, cond=self.embed(labels))

    def inverse(self, z, labels):
        return self.flow.inverse(z, cond=self.embed(labels))


X_FLOW = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
CLASSES = torch.tensor([0, 1, 2, 0, 1, 2])


def _log_normal(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * z.square().sum(dim=1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


def nll_log_det_outside_the_chain(model: ConditionalFlow, x, labels) -> torch.Tensor:
    """The chain has no log-det API (only a block's ``forward_and_log_det``), so the log-dets
    come from a second pass over the blocks outside the chain (a plain autograd pass)."""
    z = model(x, labels)
    cond = model.embed(labels)
    h, log_det = x, torch.zeros(x.shape[0], dtype=x.dtype)
    for block in model.flow.blocks:
        if isinstance(block, revlib.AffineCoupling):
            h, block_log_det = block.forward_and_log_det(h, cond=cond)
            log_det = log_det + block_log_det
        else:
            h = block(h)  # HalfSwap: log-det 0
    torch.testing.assert_close(h, z, rtol=0, atol=1e-12)
    return -(_log_normal(z) + log_det).mean()


def nll_log_det_as_aux_losses(model: ConditionalFlow, x, labels) -> torch.Tensor:
    """The log-dets reported from inside ``net`` with add_aux_loss (one per sample), collected by
    the chain in every mode: no second pass."""
    z = model(x, labels)
    return -(_log_normal(z) + sum(model.flow.aux_losses)).mean()


def _flow_train(mode, nll, report=False, steps=2, **coupling):
    torch.manual_seed(0)
    model = ConditionalFlow(report, **coupling).double()
    revlib.set_mode(model, mode)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        x = X_FLOW.clone().requires_grad_(True)
        loss = nll(model, x, CLASSES)
        loss.backward()
        grads = gradients(model, x=x)
        opt.step()
    return grads, model


def test_flow_nll_two_sgd_steps_with_log_dets_from_forward_and_log_det_equal_autograd():
    want, ref = _flow_train("autograd", nll_log_det_outside_the_chain)
    got, rev = _flow_train("reversible", nll_log_det_outside_the_chain)
    assert_same_grads(got, want)
    assert_same_grads(params_after(rev), params_after(ref))


def test_flow_nll_two_sgd_steps_with_log_dets_as_aux_losses_equal_autograd():
    """scale_bound=None, so the raw scale ``net`` reports is the block's scale; the aux losses
    equal ``forward_and_log_det``'s log-dets, and training equals autograd's."""
    model = ConditionalFlow(report=True, scale_bound=None).double()
    model(X_FLOW, CLASSES)
    reported = model.flow.aux_losses
    cond, h = model.embed(CLASSES), X_FLOW
    for i, block in enumerate(model.flow.blocks[::2]):
        h, log_det = block.forward_and_log_det(h, cond=cond)
        torch.testing.assert_close(reported[i], log_det, rtol=0, atol=1e-12)
        h = model.flow.blocks[2 * i + 1](h)
    want, ref = _flow_train("autograd", nll_log_det_as_aux_losses, True, scale_bound=None)
    got, rev = _flow_train("reversible", nll_log_det_as_aux_losses, True, scale_bound=None)
    assert_same_grads(got, want)
    assert_same_grads(params_after(rev), params_after(ref))


def test_control_without_the_aux_step_the_log_dets_get_no_gradient(monkeypatch):
    """The comparison can fail: without the backward step of the aux losses, mode "reversible"
    trains on the Gaussian term alone."""

    def no_aux(block, x, daux, tape, aliases):
        whole = x.join() if hasattr(x, "join") else x
        return torch.zeros_like(whole), []

    monkeypatch.setattr(function, "_aux_step", no_aux)
    want, _ = _flow_train("autograd", nll_log_det_as_aux_losses, True, 1, scale_bound=None)
    got, _ = _flow_train("reversible", nll_log_det_as_aux_losses, True, 1, scale_bound=None)
    assert worst(got, want) > 1e-3


def test_flow_inverse_reconstructs_x_from_z_with_its_class_and_not_with_another():
    _, model = _flow_train("reversible", nll_log_det_outside_the_chain)
    with torch.no_grad():
        z = model(X_FLOW, CLASSES)
        assert (model.inverse(z, CLASSES) - X_FLOW).abs().max() < 1e-12
        assert (model.inverse(z, CLASSES.roll(1)) - X_FLOW).abs().max() > 1e-2  # control
        samples = model.inverse(torch.randn(6, 4, dtype=torch.float64), CLASSES)
    assert samples.shape == X_FLOW.shape and torch.isfinite(samples).all()


# ---- 4. gradient accumulation, zero_grad(set_to_none=True), clipping -----------------------------


class Classifier(nn.Module):
    """A small RevNet classifier: BatchNorm and dropout in F and G, a linear head."""

    def __init__(self, **options) -> None:
        super().__init__()

        def half():
            return nn.Sequential(
                nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1), nn.Dropout(0.2)
            )

        self.body = revlib.ReversibleSequence(
            [revlib.AdditiveCoupling(half(), half()) for _ in range(3)], **options
        )
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.body(x).mean(dim=(2, 3)))


_A = torch.Generator().manual_seed(3)
MICRO_BATCHES = [
    (torch.randn(3, 4, 4, 4, dtype=torch.float64, generator=_A), torch.tensor(t))
    for t in ([0, 1, 2], [2, 2, 0], [1, 0, 1], [0, 0, 2])
]


def _accumulate(mode, **options):
    """Two optimizer steps of two micro-batches each: loss / 2 per micro-batch, clipping to
    norm 0.05, an eval pass under no_grad between the steps; returns (total norms, the model)."""
    torch.manual_seed(0)
    model = Classifier(**options).double()
    revlib.set_mode(model, mode)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    torch.manual_seed(7)
    norms = []
    for step in range(2):
        model.train()
        for x, t in MICRO_BATCHES[2 * step : 2 * step + 2]:
            (nnf.cross_entropy(model(x), t) / 2).backward()
        norms.append(nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.05))
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad():
            model(MICRO_BATCHES[0][0])
    return torch.stack(norms), model


def test_gradient_accumulation_with_clipping_equals_autograd():
    """The clipped total norms (clipping active: above 0.05), then the parameters after the
    steps (SGD with momentum and weight decay) and the BatchNorm statistics (the second step's
    forward sees parameters that the two modes' round-off made differ: to relative 1e-9)."""
    norms_ref, ref = _accumulate("autograd")
    norms, rev = _accumulate("reversible")
    assert (norms_ref > 0.05).all()
    torch.testing.assert_close(norms, norms_ref, rtol=REL, atol=0)
    assert all(p.grad is None for p in rev.parameters())  # set_to_none
    assert_same_grads(params_after(rev), params_after(ref))
    assert_same_buffers(rev, ref, rel=REL)


def test_control_accumulation_without_rng_replay_differs():
    """The comparison can fail: with ``preserve_rng_state=False`` the dropout masks of the
    replay are new ones, and the clipped norms already differ."""
    norms_ref, ref = _accumulate("autograd")
    norms, rev = _accumulate("reversible", preserve_rng_state=False)
    assert (norms - norms_ref).abs().max() / norms_ref.abs().max() > 1e-3
