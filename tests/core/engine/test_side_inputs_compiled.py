"""Under torch.compile, what eager mode refuses is refused too: a tensor that requires grad and
reaches F through a closure or a global (before: compiled, its gradient was silently lost)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import revlib

EMBEDDING = torch.randn(1, 4, requires_grad=True)  # read by _ReadsAGlobal.forward


class _ReadsAGlobal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return torch.tanh(self.lin(x) + EMBEDDING)


def _reads_a_closure(tensor):
    class ReadsAClosure(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return torch.tanh(self.lin(x) + tensor)

    return ReadsAClosure()


def _half():
    return nn.Sequential(nn.Linear(4, 4), nn.Tanh())


@pytest.mark.parametrize("where", ["global", "closure"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_tensor_read_from_a_closure_or_a_global_is_refused(where, compiled):
    torch.manual_seed(0)
    side = torch.randn(1, 4, requires_grad=True)
    make_f = _ReadsAGlobal if where == "global" else lambda: _reads_a_closure(side)
    seq = revlib.ReversibleSequence([revlib.AdditiveCoupling(make_f(), _half())])
    model = torch.compile(seq) if compiled else seq
    x = torch.randn(3, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"tensor of shape \(1, 4\) that requires grad"):
        model(x).sum().backward()
    # control: the same network in mode "autograd" trains the side tensor
    revlib.set_mode(seq, "autograd")
    seq(x).sum().backward()
    assert (EMBEDDING if where == "global" else side).grad is not None
