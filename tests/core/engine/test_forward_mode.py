"""Forward-mode derivatives (torch.func.jvp, dual tensors) through a reversible sequence: autograd's
tangents."""

from __future__ import annotations

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
