"""i-RevNet's space-to-depth psi and the injective padding: inverse, gradients, nothing saved."""

from __future__ import annotations

import pytest
import torch
from helpers import conv_bn_relu, run_step

import revlib
from revlib.core.memory import saved_tensor_bytes


def test_psi_moves_each_2x2_patch_into_channels():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = revlib.SpaceToDepth(2)(x)
    assert y.shape == (1, 4, 2, 2)
    # channel i*2+j holds pixel (2h+i, 2w+j)
    assert y[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]
    assert y[0, :, 1, 1].tolist() == [10.0, 11.0, 14.0, 15.0]


@pytest.mark.parametrize("factor", [2, 3])
def test_psi_is_exactly_invertible(factor):
    psi = revlib.SpaceToDepth(factor)
    x = torch.randn(2, 3, 6 * factor, 6 * factor)
    assert torch.equal(psi.inverse(psi(x)), x)
    assert revlib.check_inverse(psi, x) == 0.0


def test_psi_rejects_sizes_it_cannot_split_with_the_fix():
    with pytest.raises(ValueError, match=r"SpaceToDepth.*\(2, 3, 5, 6\).*multiples of factor=2"):
        revlib.SpaceToDepth(2)(torch.randn(2, 3, 5, 6))
    with pytest.raises(ValueError, match="not a multiple of factor\\*\\*2"):
        revlib.SpaceToDepth(2).inverse(torch.randn(2, 6, 3, 3))


def psi_chain(mode: str) -> revlib.ReversibleSequence:
    """Couplings on 4 channels, psi, couplings on 16 channels: a shape-changing chain."""
    blocks = [
        revlib.AdditiveCoupling(conv_bn_relu(2), conv_bn_relu(2)),
        revlib.SpaceToDepth(2),
        revlib.AdditiveCoupling(conv_bn_relu(8), conv_bn_relu(8)),
    ]
    return revlib.ReversibleSequence(blocks, mode=mode)


@pytest.mark.parametrize("mode", ["reversible", "checkpoint"])
def test_shape_changing_chain_gradients_equal_autograd_float64(mode):
    torch.manual_seed(0)
    ref = psi_chain("autograd").double()
    other = psi_chain(mode).double()
    other.load_state_dict(ref.state_dict())
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    y0, dx0, g0 = run_step(ref, x)
    y1, dx1, g1 = run_step(other, x)
    assert y1.shape == (3, 16, 4, 4)
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-12)
    torch.testing.assert_close(dx1, dx0, rtol=0, atol=1e-10)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert revlib.check_inverse(other, x.detach()) < 1e-12


def test_psi_and_padding_save_nothing_in_a_reversible_chain():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    seq = revlib.ReversibleSequence(
        [revlib.SpaceToDepth(2), revlib.InjectivePad(4), revlib.SpaceToDepth(2)]
    )
    y = seq(x)
    assert y.shape == (2, 64, 2, 2)
    # the chain keeps its output only; the same blocks under autograd keep nothing either
    assert saved_tensor_bytes(seq, x) == y.numel() * 4
    seq.mode = "autograd"
    assert saved_tensor_bytes(seq, x) == 0


def test_injective_pad_appends_zeros_and_its_left_inverse_drops_them():
    pad = revlib.InjectivePad(3, dim=-1)
    x = torch.randn(2, 5, 4)
    y = pad(x)
    assert y.shape == (2, 5, 7) and torch.equal(y[..., 4:], torch.zeros(2, 5, 3))
    assert torch.equal(pad.inverse(y), x)
    x.requires_grad_(True)
    seq = revlib.ReversibleSequence([pad])
    (seq(x) * torch.arange(7.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(4.0).expand(2, 5, 4))


def test_injective_pad_at_the_start_puts_the_zeros_first_and_its_left_inverse_drops_them():
    pad = revlib.InjectivePad(2, at="start")
    x = torch.randn(2, 3, 4, 4)
    y = pad(x)
    assert torch.equal(y[:, :2], torch.zeros(2, 2, 4, 4)) and torch.equal(y[:, 2:], x)
    assert torch.equal(pad.inverse(y), x)
    # control: the default appends, and its inverse of this output is not x
    assert not torch.equal(revlib.InjectivePad(2).inverse(y), x)
    x.requires_grad_(True)
    seq = revlib.ReversibleSequence([pad])
    (seq(x) * torch.arange(5.0).view(1, 5, 1, 1)).sum().backward()
    assert torch.equal(x.grad, torch.arange(2.0, 5.0).view(1, 3, 1, 1).expand(2, 3, 4, 4))
    assert repr(pad) == "InjectivePad(pad=2, dim=1, at='start')"
    with pytest.raises(ValueError, match="at must be 'end' or 'start'"):
        revlib.InjectivePad(2, at="front")
