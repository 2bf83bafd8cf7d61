"""State outside torch's own bookkeeping, and the errors that name revlib's mode and the fix.

Buffers written without a version bump, host random generators, module-owned
``torch.Generator`` objects and Python attributes are replayed (causes 4 and
5); what cannot work raises a clear error (cause 6); mode "checkpoint" and
``check_inverse`` leave a BatchNorm's statistics untouched for other pending
graphs (cause 7). Float64 against mode "autograd"; each mechanism has a
control that fails without it.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from conftest import revnet_stack
from torch import nn
from torch.utils.checkpoint import checkpoint

import revlib
from revlib.core import recompute, sidestate
from revlib.core.modes import CheckpointedModule

X = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def pair(make_half, depth: int = 2):
    """The same chain in modes autograd and reversible (identical weights and state)."""
    out = {}
    for mode in ("autograd", "reversible"):
        torch.manual_seed(0)
        out[mode] = revlib.ReversibleSequence(
            [revlib.AdditiveCoupling(make_half(), make_half(), dim=-1) for _ in range(depth)],
            mode=mode,
        ).double()
    return out


def step(model, x=X, seed: int = 0, **extras):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (NumPy's global state: what DropPath below draws from)
    model.zero_grad(set_to_none=True)
    model(x.clone().requires_grad_(True), **extras).square().sum().backward()
    return [p.grad for p in model.parameters()], [b.clone() for b in model.buffers()]


def agree(models, **kw) -> tuple[float, float]:
    """The largest gradient difference relative to the largest gradient, and the largest buffer
    difference."""
    (g_ref, b_ref), (g, b) = step(models["autograd"], **kw), step(models["reversible"], **kw)
    buffers = max([(u - v).abs().max().item() for u, v in zip(b, b_ref, strict=True)] or [0.0])
    scale = max(r.abs().max().item() for r in g_ref)
    return max((u - v).abs().max().item() for u, v in zip(g, g_ref, strict=True)) / scale, buffers


# ---- cause 4: buffers changed without a version bump ---------------------------------------------


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
    monkeypatch.setattr(recompute, "_same_values", lambda a, b: True)
    grad_err, buffer_err = agree(pair(DataEMA))
    assert buffer_err > 1e-3


# ---- cause 5: randomness outside torch's default generators; Python attributes -------------------


class DropPath(nn.Module):
    """Stochastic depth as ported code writes it: Python's random, NumPy, or a generator of its
    own."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.source = source
        self.generator = torch.Generator().manual_seed(7)

    def keep(self, rows: int) -> torch.Tensor:
        if self.source == "python":
            return torch.tensor([random.random() < 0.5 for _ in range(rows)], dtype=torch.float64)
        if self.source == "numpy":
            # the legacy global generator, as ported code uses it: the engine must replay it
            draws = np.random.rand(rows)  # noqa: NPY002
            return torch.from_numpy((draws < 0.5).astype(np.float64))
        return (torch.rand(rows, generator=self.generator) < 0.5).double()

    def forward(self, h):
        return torch.tanh(self.lin(h)) * self.keep(h.shape[0])[:, None]


SOURCES = ["python", "numpy", "generator"]


@pytest.mark.parametrize("source", SOURCES)
def test_host_and_module_generators_are_replayed(source):
    models = pair(lambda: DropPath(source))
    x = torch.randn(16, 6, dtype=torch.float64)
    grad_err, _ = agree(models, x=x)
    assert grad_err < 1e-12


@pytest.mark.parametrize("source", SOURCES)
def test_control_without_host_replay_the_draws_differ(source, monkeypatch):
    monkeypatch.setattr(sidestate.HostState, "changes", lambda self: None)
    models = pair(lambda: DropPath(source))
    x = torch.randn(16, 6, dtype=torch.float64)
    grad_err, _ = agree(models, x=x)
    assert grad_err > 1e-3


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
    monkeypatch.setattr(sidestate, "_attributes", lambda modules: {})
    models = pair(Counter)
    grad_err, _ = agree(models)
    assert grad_err > 1e-3


# ---- cause 6: errors that name the mode and the fix ----------------------------------------------


class TorchCheckpointed(nn.Module):
    """torch.utils.checkpoint around a body with BatchNorm (whose recomputation would run outside
    the replay)."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Tanh())
        self.reentrant = reentrant

    def forward(self, h):
        return checkpoint(self.body, h, use_reentrant=self.reentrant)


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
@pytest.mark.parametrize("reentrant", [False, True])
def test_torch_checkpoint_inside_f_raises_a_clear_error(reentrant):
    models = pair(lambda: TorchCheckpointed(reentrant))
    with pytest.raises(
        RuntimeError, match=r"mode='reversible'.*torch.utils.checkpoint inside a reversible block"
    ):
        step(models["reversible"])


def test_revlibs_checkpointed_module_runs_plainly_inside_a_block():
    class Checkpointed(CheckpointedModule):
        def __init__(self) -> None:
            super().__init__(mode="checkpoint")
            self.body = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Tanh())

        def compute(self, h):
            return self.body(h)

    half = Checkpointed

    grad_err, buffer_err = agree(pair(half))
    assert grad_err < 1e-12 and buffer_err < 1e-15


def test_backward_under_vmap_raises_a_clear_error():
    model = pair(lambda: nn.Linear(3, 3))["reversible"]
    x = X.clone().requires_grad_(True)
    y = model(x)
    with pytest.raises(RuntimeError, match=r"mode='reversible'.*under vmap.*mode='autograd'"):
        torch.autograd.grad(
            y, x, torch.eye(6, dtype=torch.float64)[:, None].expand(6, 4, 6), is_grads_batched=True
        )


def test_lazy_modules_raise_a_clear_error_until_initialised():
    model = revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(nn.LazyLinear(3), nn.LazyLinear(3), dim=-1)]
    )
    with pytest.raises(
        RuntimeError, match=r"LazyLinear has uninitialized parameters.*torch.no_grad"
    ):
        model(torch.randn(4, 6, requires_grad=True))
    with torch.no_grad():
        model(torch.randn(4, 6))
    model(torch.randn(4, 6, requires_grad=True)).sum().backward()


class HookedActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, h):
        out = self.lin(h)
        out.register_hook(lambda g: g)
        return out


def test_register_hook_on_an_activation_inside_f_raises_a_clear_error():
    with pytest.raises(
        RuntimeError, match=r"mode='reversible'.*needs a graph in the forward.*mode='autograd'"
    ):
        step(pair(HookedActivation)["reversible"])


def test_check_inverse_of_a_non_tensor_raises_a_type_error():
    with pytest.raises(TypeError, match=r"check_inverse: expected the input as a Tensor, got list"):
        revlib.check_inverse(revnet_stack(2), [1.0, 2.0])


def test_output_changed_through_data_raises():
    model = pair(lambda: nn.Linear(3, 3))["reversible"]
    y = model(X.clone().requires_grad_(True))
    y.data.mul_(2)
    with pytest.raises(RuntimeError, match=r"mode='reversible'.*changed after the forward.*y.data"):
        y.sum().backward()


def test_control_an_unchanged_output_backpropagates():
    model = pair(lambda: nn.Linear(3, 3))["reversible"]
    model(X.clone().requires_grad_(True)).sum().backward()


# ---- cause 7: mode checkpoint and check_inverse leave other pending graphs intact ----------------


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
