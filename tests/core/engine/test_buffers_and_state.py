"""Module state is updated once per step and replayed in the recomputation: BatchNorm's running
statistics, other buffers (spectral norm, an EMA, buffers written without a version bump),
Python attributes, and the train/eval flags of the forward; mode "checkpoint" and
``check_inverse`` leave other pending graphs on that state intact. Float64 against mode
"autograd"; each mechanism has a control that fails without it."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as nnf
from engine_helpers import ROUND_OFF, agree, mode_error, pair, step_in_mode, token_chain
from helpers import copies_by_mode, grads_of, revnet_stack, run_step, worst_rel_error
from torch import nn

import revlib
from revlib.core import engine
from revlib.core.replay import buffers, host

# ---- running statistics, updated once ------------------------------------------------------------


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


def test_nan_input_leaves_the_same_running_statistics_as_autograd():
    base = revnet_stack(depth=2).double()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    x[0, 0, 0, 0] = float("nan")
    buffers = {mode: step_in_mode(base, x, mode)[1] for mode in ("autograd", "reversible")}
    for a, b in zip(buffers["reversible"], buffers["autograd"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_training_batchnorm_updated_by_a_second_forward_is_fine():
    """Two forwards, one backward: the running statistics move, but a training BN never reads
    them."""
    base = revnet_stack(depth=2).double()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    grads = {}
    for mode in ("reversible", "autograd"):
        m = copy.deepcopy(base)
        m.mode = mode
        (m(x).sum() + (m(2 * x) ** 2).sum()).backward()
        grads[mode] = grads_of(m)
    assert worst_rel_error(grads["reversible"], grads["autograd"]) <= ROUND_OFF


# ---- the forward's train/eval flags --------------------------------------------------------------


def test_train_eval_switch_before_backward_replays_the_forward_mode(device):
    base = revnet_stack(depth=3).double().to(device)
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64, device=device)
    err, same = mode_error(base, x, between=lambda m: m.eval())
    assert err <= ROUND_OFF and same
    # the other way: a frozen (eval) BatchNorm inside a training model, .train() before backward
    frozen = copy.deepcopy(base)
    step_in_mode(frozen, x, "autograd")  # some running statistics
    frozen.blocks[1].F[0].eval()
    err, same = mode_error(frozen, x, between=lambda m: m.train())
    assert err <= ROUND_OFF and same


def test_control_without_the_forward_mode_an_eval_switch_gives_wrong_gradients(monkeypatch):
    monkeypatch.setattr(
        engine.ModuleState, "forward_training_flags", lambda self: contextlib.nullcontext()
    )
    base = revnet_stack(depth=3).double()
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64)
    assert mode_error(base, x, between=lambda m: m.eval())[0] > 1e-3


# ---- stateful buffers other than BatchNorm's -----------------------------------------------------


class EMACentred(nn.Module):
    """Subtracts an exponential moving average of its input, updated in place in training."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.register_buffer("ema", torch.zeros(d))

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.ema.mul_(0.5).add_(0.5 * x.mean(dim=(0, 1)))
        return torch.tanh(self.lin(x - self.ema))


STATEFUL_HALVES = {
    "spectral_norm": lambda: nn.Sequential(
        nn.utils.parametrizations.spectral_norm(nn.Linear(4, 4)), nn.Tanh()
    ),
    "ema_buffer": EMACentred,
}


@pytest.mark.parametrize("kind", STATEFUL_HALVES)
def test_stateful_buffers_are_updated_once_and_replayed(kind, device):
    chain = token_chain(STATEFUL_HALVES[kind]).double().to(device)
    x = torch.randn(3, 5, 8, dtype=torch.float64, device=device)
    err, same_buffers = mode_error(chain, x)
    assert err <= ROUND_OFF and same_buffers
    before = [b.clone() for b in chain.buffers()]
    assert revlib.check_inverse(chain, x) < 1e-12
    assert all(torch.equal(a, b) for a, b in zip(before, chain.buffers(), strict=True))


@pytest.mark.parametrize("kind", STATEFUL_HALVES)
def test_control_without_buffer_copies_state_advances_twice(kind, monkeypatch):
    monkeypatch.setattr(buffers, "updated_once_buffers", lambda module: [])
    chain = token_chain(STATEFUL_HALVES[kind]).double()
    err, same_buffers = mode_error(chain, torch.randn(3, 5, 8, dtype=torch.float64))
    assert err > 1e-6 or not same_buffers


# ---- buffers changed without a version bump ------------------------------------------------------


class OwnStats(nn.Module):
    """A half that normalises with F.batch_norm on buffers of its own (not a _NormBase layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.register_buffer("mean", torch.zeros(3))
        self.register_buffer("var", torch.ones(3))

    def forward(self, h):
        return torch.tanh(
            nnf.batch_norm(self.lin(h), self.mean, self.var, training=True, momentum=0.5)
        )


class DataEMA(nn.Module):
    """Old EMA code: writes its buffer through .data, which moves no version counter."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.register_buffer("ema", torch.zeros(3))

    def forward(self, h):
        out = self.lin(h)
        self.ema.data.mul_(0.9).add_(0.1 * out.mean(0))
        return torch.tanh(out) + self.ema


@pytest.mark.parametrize("half", [OwnStats, DataEMA])
def test_buffers_changed_without_a_version_bump_are_updated_once(half):
    grad_err, buffer_err = agree(pair(half))
    assert grad_err < 1e-12 and buffer_err < 1e-15


def test_control_comparing_versions_only_updates_them_twice(monkeypatch):
    monkeypatch.setattr(buffers, "_same_values", lambda a, b: True)
    grad_err, buffer_err = agree(pair(DataEMA))
    assert buffer_err > 1e-3


# ---- Python attributes ---------------------------------------------------------------------------


class Counter(nn.Module):
    """A half whose output depends on a Python step counter it increments."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.calls = 0

    def forward(self, h):
        self.calls += 1
        return torch.tanh(self.lin(h)) * (1.0 if self.calls % 2 else -0.5)


def test_python_attributes_are_replayed_and_left_as_the_forward_left_them():
    models = pair(Counter)
    grad_err, _ = agree(models)
    assert grad_err < 1e-12
    counts = {
        mode: [m.calls for m in model.modules() if isinstance(m, Counter)]
        for mode, model in models.items()
    }
    assert counts["reversible"] == counts["autograd"] == [1, 1, 1, 1]


def test_control_without_attribute_replay_the_counter_moves_twice(monkeypatch):
    monkeypatch.setattr(host, "_attributes", lambda modules: {})
    models = pair(Counter)
    grad_err, _ = agree(models)
    assert grad_err > 1e-3


# ---- other pending graphs on the statistics stay intact ------------------------------------------


def pending_graph_after_a_checkpointed_step() -> None:
    """A graph built between a checkpointed forward and its backward that saved a BatchNorm's
    statistics."""
    torch.manual_seed(0)
    model = revnet_stack(2, mode="checkpoint").double()
    bn = model.blocks[0].F[0]
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    y = model(x)
    pending = (
        x[:, :4] * bn.running_var.view(1, -1, 1, 1)
    ).sum()  # saves running_var (a read, e.g. a monitor)
    y.square().sum().backward()  # the recomputation must not touch the statistics' versions
    pending.backward()


def test_checkpoint_mode_leaves_a_pending_graph_on_the_statistics_intact():
    pending_graph_after_a_checkpointed_step()


def test_control_a_version_bump_of_the_statistics_breaks_the_pending_graph():
    """What the test guards against: any write through the statistics' own tensors breaks such a
    graph."""
    torch.manual_seed(0)
    model = revnet_stack(2, mode="checkpoint").double()
    bn = model.blocks[0].F[0]
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    pending = (x[:, :4] * bn.running_var.view(1, -1, 1, 1)).sum()
    with torch.no_grad():
        bn.running_var.copy_(bn.running_var.clone())  # a restore by copy_, as the engine once did
    with pytest.raises(RuntimeError, match="inplace operation"):
        pending.backward()


def frozen_bn_model() -> torch.nn.Module:
    """A model whose BatchNorms are in eval mode (fine-tuning): the forward saves their
    statistics."""
    torch.manual_seed(0)
    model = revnet_stack(2, mode="autograd").double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return model


def test_check_inverse_between_forward_and_backward_leaves_the_backward_intact():
    model = frozen_bn_model()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    y = model(x)
    before = [b.clone() for b in model.buffers()]
    assert revlib.check_inverse(model, x.detach()) < 1e-12
    y.square().sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))


def test_control_restoring_buffers_by_copy_breaks_that_backward():
    model = frozen_bn_model()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    y = model(x)
    with torch.no_grad():  # check_inverse's old restore
        for b in model.buffers():
            b.copy_(b.clone())
    with pytest.raises(RuntimeError, match="inplace operation"):
        y.square().sum().backward()
