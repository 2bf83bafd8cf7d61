"""Extra arguments that hold tensors inside lists, tuples and dicts: the tensors are inputs of
each block's node, so they get autograd's gradients and its in-place checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import revlib
from revlib.core.engine import chain as chain_module


class _Conditioned(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x, cond=None):
        scale = cond["scale"][0] if isinstance(cond, dict) else cond[0][1]
        return torch.tanh(self.lin(x)) * scale


def _run(mode, make_cond, between=None):
    torch.manual_seed(0)
    blocks = [revlib.AdditiveCoupling(_Conditioned(), _Conditioned(), dim=-1) for _ in range(2)]
    seq = revlib.ReversibleSequence(blocks, mode=mode).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, dtype=torch.double, generator=g, requires_grad=True)
    t = torch.randn(4, 3, dtype=torch.double, generator=g, requires_grad=True)
    y = seq(x, cond=make_cond(t))
    if between is not None:
        between(t)
    y.square().sum().backward()
    return [x.grad, t.grad, *(p.grad for p in seq.parameters())]


CONTAINERS = {
    "dict of a list": lambda t: {"scale": [t * 1.0], "note": "kept as it was"},
    "list of a tuple": lambda t: [(0, t * 1.0)],
}


@pytest.mark.parametrize("kind", list(CONTAINERS))
def test_tensors_inside_containers_get_autograds_gradients(kind):
    got = _run("reversible", CONTAINERS[kind])
    want = _run("autograd", CONTAINERS[kind])
    for u, v in zip(got, want, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "mode, message",
    [
        ("autograd", "modified by an inplace operation"),
        ("reversible", r"the extra argument cond\['scale'\]\[0\] \(shape \(4, 3\)\) was modified"),
    ],
)
def test_a_tensor_in_a_container_changed_in_place_is_caught_and_named(mode, message):
    def refill(t):
        with torch.no_grad():
            held.add_(1.0)

    held = torch.ones(4, 3, dtype=torch.double)

    def make(t):
        nonlocal held
        held = t * 1.0
        return {"scale": [held]}

    with pytest.raises(RuntimeError, match=message):
        _run(mode, make, between=refill)


def test_control_containers_as_opaque_values_lose_the_tensor(monkeypatch):
    real = chain_module.tree_flatten_with_path

    def opaque(extras):  # each extra one leaf, as the engine treated containers before
        paths, _ = real(dict.fromkeys(extras))
        return [(k, extras[k[0].key]) for k, _ in paths], real(dict.fromkeys(extras))[1]

    monkeypatch.setattr(chain_module, "tree_flatten_with_path", opaque)
    with pytest.raises(RuntimeError, match="requires grad reaches the block"):
        _run("reversible", CONTAINERS["dict of a list"])


class _AppendsALoss(nn.Module):
    """F that reports an auxiliary loss by appending it to a list (or an object) passed in."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x, losses):
        y = self.lin(x)
        target = losses if isinstance(losses, list) else losses.items
        target.append(y.square().mean())
        return torch.tanh(y)


class _Box:
    def __init__(self) -> None:
        self.items: list[torch.Tensor] = []


@pytest.mark.parametrize("holder", ["a list", "an object"])
def test_an_extra_the_forward_changes_in_place_is_refused_and_named(holder):
    def run(mode):
        torch.manual_seed(0)
        blocks = [revlib.AdditiveCoupling(_AppendsALoss(), _Conditioned(), dim=-1)]
        seq = revlib.ReversibleSequence(blocks, mode=mode).double()
        losses = [] if holder == "a list" else _Box()
        x = torch.randn(4, 6, dtype=torch.double, requires_grad=True)
        seq(x, losses=losses, cond=[(0, torch.ones(4, 3, dtype=torch.double))])
        return losses if holder == "a list" else losses.items

    # control: autograd gives the caller the losses, with their graph
    assert all(loss.requires_grad for loss in run("autograd")) and run("autograd")
    with pytest.raises(RuntimeError, match="changed the extra argument 'losses' in place"):
        run("reversible")
