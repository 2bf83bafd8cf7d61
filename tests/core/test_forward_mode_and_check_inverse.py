"""Forward-mode derivatives through a reversible sequence, and check_inverse with extra arguments
and complex inputs."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

import revlib


def _half(dtype=torch.double):
    return nn.Sequential(nn.Linear(4, 4, dtype=dtype), nn.Tanh())


def _seq(mode):
    torch.manual_seed(0)
    seq = revlib.ReversibleSequence([revlib.AdditiveCoupling(_half(), _half()) for _ in range(3)])
    revlib.set_mode(seq, mode)
    return seq


X = torch.randn(3, 8, dtype=torch.double, generator=torch.Generator().manual_seed(1))
V = torch.randn(3, 8, dtype=torch.double, generator=torch.Generator().manual_seed(2))


def test_jvp_in_reversible_mode_gives_autograds_tangent():
    ref = torch.func.jvp(_seq("autograd"), (X,), (V,))
    got = torch.func.jvp(_seq("reversible"), (X,), (V,))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    assert ref[1].abs().sum() > 0  # a tangent that is there to compare


def test_dual_tensors_in_reversible_mode_give_autograds_tangent():
    def tangent(mode):
        with fwAD.dual_level():
            return fwAD.unpack_dual(_seq(mode)(fwAD.make_dual(X, V))).tangent

    ref, got = tangent("autograd"), tangent("reversible")
    assert got is not None
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


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


def test_a_momentum_net_warns_before_training_when_its_gamma_makes_the_inverse_inexact():
    import warnings

    x = torch.randn(2, 4)
    net = revlib.MomentumNet([nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(20)], 0.5)
    with warnings.catch_warnings():  # building it, or checking its inverse, says nothing
        warnings.simplefilter("error")
        revlib.check_inverse(net.sequence, torch.cat([x, x], -1))
    with pytest.warns(UserWarning, match=r"gamma=0.5 over 20 blocks .* gamma\^-N = 1.0e\+06"):
        net(x.requires_grad_(True)).sum().backward()
    shallow = revlib.MomentumNet([nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(4)])
    with warnings.catch_warnings():  # control: gamma 0.9 over 4 blocks keeps float32 exact enough
        warnings.simplefilter("error")
        shallow(x).sum().backward()


class _Unconditioned(nn.Module):
    def forward(self, x):
        return torch.tanh(x)


@pytest.mark.parametrize("mode", ["autograd", "checkpoint", "reversible"])
def test_every_mode_refuses_an_extra_nothing_takes_and_an_instance_forward(mode):
    torch.manual_seed(0)
    seq = revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(_Unconditioned(), _Unconditioned()) for _ in range(2)], mode=mode
    )
    x = torch.randn(3, 8, requires_grad=True)
    with pytest.raises(TypeError, match=r"takes the extra argument\(s\) \['unused'\]"):
        seq(x, unused=torch.ones(1)).sum().backward()
    seq(x).sum().backward()  # control: without the extra it runs
    seq.blocks[1].forward = lambda h, **kw: 2 * h
    with pytest.raises(TypeError, match="block 1 .* an instance attribute 'forward'"):
        seq(x)
