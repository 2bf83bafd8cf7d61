"""Couplings: exact inverses, Jacobian determinants, input validation."""

from __future__ import annotations

import pytest
import torch
from helpers import conv_bn_relu
from torch import nn

import revlib


def small_net(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.Tanh())


COUPLINGS = {
    "additive": lambda: revlib.AdditiveCoupling(small_net(2, 2), small_net(2, 2)),
    "nice": lambda: revlib.NICECoupling(small_net(2, 2)),
    "affine": lambda: revlib.AffineCoupling(small_net(2, 4)),
    "affine_unbounded": lambda: revlib.AffineCoupling(small_net(2, 4), scale_bound=None),
    "swap": lambda: revlib.HalfSwap(),
}


@pytest.mark.parametrize("name", sorted(COUPLINGS))
def test_inverse_reconstructs_input(name):
    block = COUPLINGS[name]().double()
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    y = block(x)
    assert not torch.allclose(y, x) or name == "swap" and not torch.equal(y, x)
    assert torch.allclose(block.inverse(y), x, atol=1e-12)
    assert revlib.check_inverse(block, x) < 1e-12


def test_check_inverse_detects_a_wrong_inverse():
    class NotInverse(nn.Module):
        def forward(self, x):
            return 2 * x

        def inverse(self, y):
            return y / 3

    x = torch.ones(2, 4)
    assert revlib.check_inverse(NotInverse(), x) == pytest.approx(1 / 3)


def test_check_inverse_leaves_bn_stats_and_rng_alone_and_replays_dropout():
    block = revlib.AdditiveCoupling(conv_bn_relu(2, dropout=0.5), conv_bn_relu(2, dropout=0.5))
    x = torch.randn(4, 4, 6, 6)
    stats = [b.clone() for b in block.buffers()]
    rng = torch.get_rng_state()
    assert revlib.check_inverse(block, x) < 1e-5
    assert all(torch.equal(a, b) for a, b in zip(stats, block.buffers(), strict=True))
    assert torch.equal(rng, torch.get_rng_state())


def jacobian_matrix(fn, x: torch.Tensor) -> torch.Tensor:
    jac = torch.autograd.functional.jacobian(fn, x)
    return jac.reshape(x.numel(), x.numel())


@pytest.mark.parametrize("name", ["additive", "nice"])
def test_additive_couplings_have_unit_determinant(name):
    block = COUPLINGS[name]().double()
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    det = torch.linalg.det(jacobian_matrix(block, x))
    assert det.item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("bound", [2.0, None])
def test_affine_log_det_matches_the_jacobian(bound):
    block = revlib.AffineCoupling(small_net(2, 4), scale_bound=bound).double()
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    sign, logabsdet = torch.linalg.slogdet(jacobian_matrix(block, x))
    assert sign.item() == 1.0
    assert block.log_det(x).item() == pytest.approx(logabsdet.item(), abs=1e-9)
    assert abs(logabsdet.item()) > 1e-3  # a non-trivial scale, so the check means something


def test_affine_scale_bound_limits_the_scale():
    net = nn.Conv2d(2, 4, 1)
    nn.init.constant_(net.weight, 50.0)
    block = revlib.AffineCoupling(net, scale_bound=1.5)
    x = torch.randn(2, 4, 3, 3)
    s_per_element = block.log_det(x) / (2 * 3 * 3)
    assert (s_per_element.abs() < 1.5).all()
    unbounded = revlib.AffineCoupling(net, scale_bound=None)
    assert unbounded.log_det(x).abs().max() > 1.5 * 2 * 3 * 3


def test_affine_rejects_bad_bound_and_wrong_net_shape():
    with pytest.raises(ValueError, match="scale_bound"):
        revlib.AffineCoupling(nn.Identity(), scale_bound=0)
    block = revlib.AffineCoupling(nn.Conv2d(2, 2, 1))
    with pytest.raises(ValueError, match=r"AffineCoupling.*\(2, 2, 3, 3\).*\(2, 4, 3, 3\)"):
        block(torch.randn(2, 4, 3, 3))


def test_odd_channel_count_is_rejected_with_the_shape():
    block = COUPLINGS["additive"]()
    with pytest.raises(
        ValueError, match=r"AdditiveCoupling.*odd number of channels \(5, shape \(2, 5, 4, 4\)\)"
    ):
        block(torch.randn(2, 5, 4, 4))


def test_shape_changing_F_is_rejected():
    block = revlib.AdditiveCoupling(nn.Conv2d(2, 2, 3, stride=2, padding=1), nn.Identity())
    with pytest.raises(
        ValueError,
        match=r"AdditiveCoupling: F maps a half of shape \(1, 2, 8, 8\) to shape \(1, 2, 4, 4\)",
    ):
        block(torch.randn(1, 4, 8, 8))


def test_rank_one_input_is_rejected():
    with pytest.raises(
        ValueError,
        match=r"NICECoupling: expected an input of shape \(batch, channels, \.\.\.\) "
        r"to split along dimension 1, got shape \(4,\)",
    ):
        revlib.NICECoupling(nn.Identity())(torch.randn(4))


# ---- the split dimension: (batch, tokens, features) split on the features ----


def token_mlp(d_in: int, d_out: int) -> nn.Module:
    return nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_out), nn.GELU())


TOKEN_COUPLINGS = {
    "additive": lambda: revlib.AdditiveCoupling(token_mlp(4, 4), token_mlp(4, 4), dim=-1),
    "nice": lambda: revlib.NICECoupling(token_mlp(4, 4), dim=-1),
    "affine": lambda: revlib.AffineCoupling(token_mlp(4, 8), dim=-1),
    "swap": lambda: revlib.HalfSwap(dim=-1),
}


@pytest.mark.parametrize("name", sorted(TOKEN_COUPLINGS))
def test_dim_minus_one_splits_features_not_tokens(name):
    block = TOKEN_COUPLINGS[name]().double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)  # 5 tokens: odd, so a split on dim 1 would fail
    y = block(x)
    assert y.shape == x.shape
    assert torch.allclose(block.inverse(y), x, atol=1e-12)
    if name != "swap":
        assert torch.equal(y[..., :4], x[..., :4]) or name == "additive"


@pytest.mark.parametrize("name", ["additive", "nice", "affine"])
def test_dim_minus_one_gradients_equal_autograd_in_every_mode(name):
    torch.manual_seed(0)
    blocks = [TOKEN_COUPLINGS[name]().double() for _ in range(3)]
    reference = revlib.ReversibleSequence(blocks, mode="autograd")
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    results = {}
    for mode in revlib.MODES:
        reference.mode = mode
        reference.zero_grad()
        x.grad = None
        (reference(x) ** 2).sum().backward()
        results[mode] = (x.grad.clone(), [p.grad.clone() for p in reference.parameters()])
    for mode in ("reversible", "checkpoint"):
        assert torch.allclose(results[mode][0], results["autograd"][0], atol=1e-12)
        for a, b in zip(results[mode][1], results["autograd"][1], strict=True):
            assert torch.allclose(a, b, atol=1e-12)


def test_dim_minus_one_odd_features_error_names_block_dim_and_shape():
    block = revlib.AdditiveCoupling(token_mlp(3, 3), token_mlp(3, 3), dim=-1)
    with pytest.raises(
        ValueError, match=r"AdditiveCoupling.*odd size \(7\) along dimension -1.*\(2, 5, 7\)"
    ):
        block(torch.randn(2, 5, 7))


def test_default_dim_one_would_split_the_tokens():
    """Control: without dim=-1 a (B, T, D) batch with an odd token count is refused."""
    block = revlib.AdditiveCoupling(token_mlp(4, 4), token_mlp(4, 4))
    with pytest.raises(ValueError, match="odd number of channels"):
        block(torch.randn(2, 5, 8))
