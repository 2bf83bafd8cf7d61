"""check_inverse with the chain's extra arguments, and with complex inputs."""

from __future__ import annotations

import torch
from torch import nn

import revlib


def _half(dtype=torch.double):
    return nn.Sequential(nn.Linear(4, 4, dtype=dtype), nn.Tanh())


X = torch.randn(3, 8, dtype=torch.double, generator=torch.Generator().manual_seed(1))
V = torch.randn(3, 8, dtype=torch.double, generator=torch.Generator().manual_seed(2))


class _Conditioned(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4, dtype=torch.double)

    def forward(self, x, cond):
        return torch.tanh(self.lin(x) + cond)


def test_check_inverse_passes_extra_arguments_to_every_block():
    torch.manual_seed(0)
    seq = revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(_Conditioned(), _half()) for _ in range(2)]
    )
    cond = torch.randn(3, 4, dtype=torch.double)
    assert revlib.check_inverse(seq, X, cond=cond) < 1e-12
    assert revlib.check_inverse(seq.blocks[0], X, cond=cond) < 1e-12


def test_check_inverse_measures_complex_errors_in_the_complex_plane():
    torch.manual_seed(0)
    block = revlib.AdditiveCoupling(_half(torch.cdouble), _half(torch.cdouble))
    z = torch.randn(3, 8, dtype=torch.cdouble)
    assert revlib.check_inverse(block, z) < 1e-12

    class Off(nn.Module):  # control: an inverse off by 1e-3 i, invisible to the real part
        def forward(self, x):
            return x

        def inverse(self, y):
            return y + 1e-3j

    assert abs(revlib.check_inverse(Off(), z) - 1e-3) < 1e-12


class _ConditionedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 8, dtype=torch.double)

    def forward(self, x, cond):
        return self.lin(x) + cond.repeat(1, 2)


def test_affine_log_det_takes_the_conditioning_the_forward_takes():
    torch.manual_seed(0)
    block = revlib.AffineCoupling(_ConditionedNet())
    x = torch.randn(3, 8, dtype=torch.double)
    cond = torch.randn(3, 4, dtype=torch.double)
    y, log_det = block.forward_and_log_det(x, cond=cond)
    torch.testing.assert_close(y, block(x, cond=cond))
    jac = torch.autograd.functional.jacobian(lambda v: block(v.unsqueeze(0), cond=cond[:1]), x[0])
    ref = torch.linalg.slogdet(jac.reshape(8, 8))[1]
    torch.testing.assert_close(log_det[0], ref)
    # control: another conditioning gives another log-determinant
    assert not torch.allclose(block.log_det(x, cond=torch.zeros_like(cond)), log_det)
