"""The i-RevNet-style classifier and the three ViTs: inverse, gradients, memory against depth."""

from __future__ import annotations

import pytest
import torch
from helpers import run_step
from torch import nn

import revlib
from revlib.core.couplings import AdditiveCoupling
from revlib.core.downsampling import InjectivePad
from revlib.core.memory import saved_tensor_bytes
from revlib.models import IRevNet, ReversibleViT, ViT, irevnet_bottleneck_branch, matching_revnet


def test_irevnet_is_invertible_from_the_stem_to_the_head():
    torch.manual_seed(0)
    net = IRevNet((1, 1), in_channels=3).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert net.widths == (12, 48)
    assert revlib.check_inverse(net.sequence, x) < 1e-12
    assert net(x).shape == (2, 10)


def test_irevnet_odd_channels_need_the_padding_and_the_error_says_so():
    with pytest.raises(
        ValueError, match="IRevNet: the stem gives 3 channels.*use stem_factor=2.*or pad=1.*kink"
    ):
        IRevNet((1,), in_channels=3, stem_factor=1)
    net = IRevNet((1,), in_channels=3, stem_factor=1, pad=1)
    assert revlib.check_inverse(net.sequence, torch.randn(2, 3, 4, 4)) < 1e-5


def test_irevnet_gradients_equal_autograd_float64():
    torch.manual_seed(0)
    ref = IRevNet((1, 1), in_channels=1, mode="autograd").double()
    other = IRevNet((1, 1), in_channels=1).double()
    other.load_state_dict(ref.state_dict())
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    _, dx0, g0 = run_step(ref, x)
    _, dx1, g1 = run_step(other, x)
    torch.testing.assert_close(dx1, dx0, rtol=0, atol=1e-10)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    # BatchNorm statistics updated once, as in autograd
    for a, b in zip(other.buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_irevnet_invertible_part_saves_its_output_whatever_the_depth_and_stages():
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    bytes_ = {
        units: saved_tensor_bytes(IRevNet(units).sequence, x)
        for units in [(1, 1), (3, 3), (1, 1, 1)]
    }
    assert set(bytes_.values()) == {x.numel() * 4}
    # control: the RevNet of the same widths stores more with every stage
    rev2, rev3 = (saved_tensor_bytes(matching_revnet(u), x) for u in [(1, 1), (1, 1, 1)])
    assert rev3 > rev2 > saved_tensor_bytes(IRevNet((1, 1)), x)


def vit_pair(depth: int, **kw):
    torch.manual_seed(0)
    return ReversibleViT(8, 2, depth=depth, width=8, heads=2, **kw), ViT(
        8, 2, depth=depth, width=8, heads=2, **kw
    )


def test_reversible_vit_gradients_equal_autograd_float64_with_dropout():
    rev, _ = vit_pair(3, dropout=0.1, attn_dropout=0.1)
    rev = rev.double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    rev.mode = "autograd"
    _, _, g0 = run_step(rev, x)
    rev.zero_grad()
    rev.mode = "reversible"
    _, _, g1 = run_step(rev, x)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_vit_saved_bytes_flat_in_depth_only_when_reversible():
    x = torch.randn(4, 1, 8, 8)
    rev = [saved_tensor_bytes(vit_pair(d)[0], x) for d in (1, 4)]
    std = [saved_tensor_bytes(vit_pair(d)[1], x) for d in (1, 4)]
    ckpt = [
        saved_tensor_bytes(ViT(8, 2, depth=d, width=8, heads=2, checkpoint_blocks=True), x)
        for d in (1, 4)
    ]
    assert rev[0] == rev[1]
    assert std[1] > 3 * std[0] - 1 and std[1] > rev[1]
    assert rev[1] < ckpt[1] < std[1]


def test_vits_refuse_wrong_images():
    rev, std = vit_pair(1)
    for m in (rev, std):
        with pytest.raises(
            ValueError, match=r"PatchEmbedding: expected images of shape \(N, 1, 8, 8\)"
        ):
            m(torch.randn(2, 3, 8, 8))


def test_irevnet_bottleneck_branch_is_the_official_three_convolutions():
    branch = irevnet_bottleneck_branch(16)
    convs = [m for m in branch if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (16, 4, (3, 3)),
        (4, 4, (3, 3)),
        (4, 16, (3, 3)),
    ]
    with pytest.raises(ValueError, match="6 channels do not divide by mult=4"):
        irevnet_bottleneck_branch(6)


def test_irevnet_with_bottlenecks_inverts_and_matches_autograd_float64():
    torch.manual_seed(0)
    ref = IRevNet((1, 1), in_channels=2, branch="bottleneck", mode="autograd").double()
    other = IRevNet((1, 1), in_channels=2, branch="bottleneck").double()
    other.load_state_dict(ref.state_dict())
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    assert revlib.check_inverse(other.sequence, x) < 1e-12
    _, dx0, g0 = run_step(ref, x.requires_grad_(True))
    _, dx1, g1 = run_step(other, x)
    torch.testing.assert_close(dx1, dx0, rtol=0, atol=1e-10)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_irevnet_bottleneck_needs_halves_divisible_by_four_and_says_how():
    with pytest.raises(ValueError, match=r"stage 0 has 12 channels, halves of 6.*pad="):
        IRevNet((1,), in_channels=3, branch="bottleneck")
    with pytest.raises(ValueError, match="branch must be 'basic' or 'bottleneck'"):
        IRevNet((1,), branch="wide")


# ---------------------------------------------- padding off ReLU's kink (issue 26)

# As the library recommends: pad=1 for an odd stem, the pad a bottleneck asks for, and more padding
# than the stem has channels (the first F then starts with its convolution).
PADDED = {
    "odd stem, pad=1": dict(in_channels=3, stem_factor=1, pad=1),
    "basic, pad=4": dict(in_channels=3, pad=4),
    "bottleneck, pad=4": dict(in_channels=3, pad=4, branch="bottleneck"),
    "bottleneck, pad=7 > 1 channel": dict(in_channels=1, stem_factor=1, pad=7, branch="bottleneck"),
}


def zeros_into_relus(net: nn.Module, x: torch.Tensor) -> int:
    """How many entries of a forward are exactly 0 where they enter a ReLU (its kink)."""
    count = [0]

    def hook(_module, args):
        count[0] += int((args[0] == 0).sum())

    handles = [m.register_forward_pre_hook(hook) for m in net.modules() if isinstance(m, nn.ReLU)]
    try:
        net(x)
    finally:
        for handle in handles:
            handle.remove()
    return count[0]


def _padded(kind: str, mode: str = "reversible") -> tuple[IRevNet, torch.Tensor]:
    """The network as documented, with its default initialisation, and an input for it."""
    torch.manual_seed(0)
    net = IRevNet((1, 1), mode=mode, **PADDED[kind]).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, PADDED[kind]["in_channels"], 8, 8, generator=g, dtype=torch.float64)
    return net, x


def _with_padding_at_the_end(net: IRevNet) -> IRevNet:
    """Control: the zeros appended, into the half that the first coupling's F reads."""
    for block in net.sequence.blocks:
        if isinstance(block, InjectivePad):
            block.at = "end"
    return net


@pytest.mark.parametrize("kind", sorted(PADDED))
def test_padded_irevnet_puts_no_exact_zero_into_a_relu(kind):
    net, x = _padded(kind)
    assert zeros_into_relus(net, x) == 0
    assert revlib.check_inverse(net.sequence, x) < 1e-12
    assert zeros_into_relus(_with_padding_at_the_end(net), x) > 0  # control


def test_control_more_padding_than_channels_needs_the_first_f_without_bn_relu():
    """Zeros put first still reach the first F when pad exceeds the stem's channels: a first F with
    its BN-ReLU in front would sit on the kink."""
    net, x = _padded("bottleneck, pad=7 > 1 channel")
    first = net.sequence.blocks[1]  # no stem psi: the padding, then the first coupling
    assert isinstance(first, AdditiveCoupling) and isinstance(first.F[0], nn.Conv2d)
    assert isinstance(net.sequence.blocks[3].F[0], nn.BatchNorm2d)  # only the first F
    first.F = irevnet_bottleneck_branch(4).double()
    assert zeros_into_relus(net, x) > 0


@pytest.mark.parametrize("kind", sorted(PADDED))
def test_padded_irevnet_gradients_equal_autograd_float64(kind):
    ref, x = _padded(kind, mode="autograd")
    other, _ = _padded(kind)
    other.load_state_dict(ref.state_dict())
    _, dx0, g0 = run_step(ref, x.requires_grad_(True))
    _, dx1, g1 = run_step(other, x)
    torch.testing.assert_close(dx1, dx0, rtol=0, atol=1e-10)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_control_appended_padding_puts_the_first_branch_on_relus_kink():
    """Without the placement, the zeros' BN bias (0 at init) sits on the kink: the reversible
    backward's reconstructed zeros (zero to rounding) take another slope than autograd for that
    one bias."""
    ref, x = _padded("basic, pad=4", mode="autograd")
    other, _ = _padded("basic, pad=4")
    other.load_state_dict(ref.state_dict())
    _with_padding_at_the_end(ref)
    _with_padding_at_the_end(other)
    _, dx0, g0 = run_step(ref, x.requires_grad_(True))
    _, dx1, g1 = run_step(other, x)
    torch.testing.assert_close(dx1, dx0, rtol=0, atol=1e-10)
    differ = {
        n
        for (n, _), a, b in zip(ref.named_parameters(), g1, g0, strict=True)
        if not torch.allclose(a, b, rtol=0, atol=1e-10)
    }
    assert differ == {"sequence.blocks.2.F.0.bias"}  # the first coupling's F, first BatchNorm
