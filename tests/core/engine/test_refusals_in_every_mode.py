"""What one mode refuses, every mode refuses: an extra argument nothing takes, an instance-level
forward; a momentum network whose gamma makes the inverse inexact warns before training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import revlib


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
