"""Every random draw of the forward is replayed in the recomputation: dropout of any kind,
RReLU, ``torch.rand_like``, Python's and NumPy's generators, a module's own
``torch.Generator``; a deterministic block keeps no generator state. Each mechanism has a
control: the same check with it switched off fails."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from engine_helpers import ROUND_OFF, agree, mode_error, pair, token_chain
from helpers import copies_by_mode, max_rel_error, revnet_stack
from torch import nn

import revlib
from revlib.core.replay import RNGState

# ---- dropout masks -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["reversible", "checkpoint"])
def test_dropout_masks_are_replayed(mode, device):
    base = revnet_stack(depth=3, dropout=0.5).to(device)
    models = copies_by_mode(base)
    x = torch.randn(4, 8, 6, 6, device=device, requires_grad=True)
    out = {}
    for name, m in models.items():
        torch.manual_seed(123)
        y = m(x)
        (y**2).sum().backward()
        rng = (
            torch.get_device_module(device.type).get_rng_state()
            if device.type != "cpu"
            else torch.get_rng_state()
        )
        out[name] = (y.detach(), [p.grad.clone() for p in m.parameters()], rng)
        x.grad = None
    y, grads, rng = out[mode]
    y_ref, grads_ref, rng_ref = out["autograd"]
    assert torch.equal(y, y_ref)
    assert max(max_rel_error(a, b) for a, b in zip(grads, grads_ref, strict=True)) <= 1e-5
    assert torch.equal(rng, rng_ref)


def test_without_rng_replay_dropout_gradients_are_wrong():
    """The control for the test above: switch replay off and the gradients differ."""
    base = revnet_stack(depth=3, dropout=0.5)
    models = copies_by_mode(base)
    models["reversible"].preserve_rng_state = False
    x = torch.randn(4, 8, 6, 6)
    grads = {}
    for name in ("reversible", "autograd"):
        torch.manual_seed(123)
        (models[name](x) ** 2).sum().backward()
        grads[name] = [p.grad for p in models[name].parameters()]
    assert (
        max(
            max_rel_error(a, b) for a, b in zip(grads["reversible"], grads["autograd"], strict=True)
        )
        > 1e-2
    )


# ---- every random layer, not only nn.Dropout -----------------------------------------------------


class SelfAttention(nn.Module):
    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(d, 2, dropout=0.5, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


class FunctionalDropout(nn.Module):
    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        return nnf.dropout(self.lin(x), 0.5, self.training)


class Noisy(nn.Module):
    """Multiplicative noise drawn with torch.rand_like."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        return torch.tanh(self.lin(x)) * (1 + torch.rand_like(x))


RANDOM_HALVES = {
    "rrelu": lambda: nn.Sequential(nn.Linear(4, 4), nn.RReLU()),
    "attention_dropout": SelfAttention,
    "transformer_layer": lambda: nn.TransformerEncoderLayer(
        4, 2, dim_feedforward=8, dropout=0.3, batch_first=True
    ),
    "functional_dropout": FunctionalDropout,
    "rand_like": Noisy,
}


@pytest.mark.parametrize("kind", RANDOM_HALVES)
def test_random_layers_are_replayed(kind, device):
    chain = token_chain(RANDOM_HALVES[kind]).double().to(device)
    x = torch.randn(3, 5, 8, dtype=torch.float64, device=device)
    err, same_buffers = mode_error(chain, x)
    assert err <= ROUND_OFF and same_buffers
    assert revlib.check_inverse(chain, x) < 1e-12


@pytest.mark.parametrize("kind", RANDOM_HALVES)
def test_control_without_rng_replay_random_layers_give_wrong_gradients(kind):
    chain = token_chain(RANDOM_HALVES[kind], preserve_rng_state=False).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    assert mode_error(chain, x)[0] > 1e-3
    assert revlib.check_inverse(chain, x) > 1e-3  # check_inverse flags it too


def test_deterministic_blocks_keep_no_rng_state():
    seq = revnet_stack(depth=3)
    y, tapes = seq.forward_with_tapes(torch.randn(2, 8, 4, 4))
    assert all(not tape.records for tape in tapes)
    y, tapes = revnet_stack(depth=3, dropout=0.5).forward_with_tapes(torch.randn(2, 8, 4, 4))
    assert all(set(tape.recorded(RNGState)) == {"F", "G"} for tape in tapes)


def test_memory_meter_counts_the_kept_rng_states():
    from revlib.core.memory import saved_tensor_bytes

    x = torch.randn(1, 8, 4, 4, requires_grad=True)
    state = torch.get_rng_state().numel()  # bytes of one CPU generator state
    output = x.numel() * 4
    for depth in (2, 5):
        assert saved_tensor_bytes(revnet_stack(depth, dropout=0.5), x) == output + 2 * depth * state
        assert saved_tensor_bytes(revnet_stack(depth), x) == output


# ---- randomness outside torch's default generators -----------------------------------------------


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
def test_control_without_host_replay_the_draws_differ(source):
    # the public switch: preserve_rng_state=False keeps no generator state, the host's included
    models = pair(lambda: DropPath(source), preserve_rng_state=False)
    x = torch.randn(16, 6, dtype=torch.float64)
    grad_err, _ = agree(models, x=x)
    assert grad_err > 1e-3
