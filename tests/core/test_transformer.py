"""The reversible transformer block: inverse, dropout replay, gradients, bf16 autocast, errors."""

from __future__ import annotations

import pytest
import torch

import revlib
from revlib.core.transformer import FeedForward, SelfAttention


def stack(depth: int, mode: str, dropout: float = 0.0, attn_dropout: float = 0.0, rng=True):
    blocks = [
        revlib.ReversibleTransformerBlock(8, 2, 2.0, dropout, attn_dropout) for _ in range(depth)
    ]
    return revlib.ReversibleSequence(blocks, mode=mode, preserve_rng_state=rng)


def step(model, x, seed=0):
    torch.manual_seed(seed)
    x = x.detach().clone().requires_grad_(True)
    model(x).square().sum().backward()
    return x.grad, [p.grad.clone() for p in model.parameters()]


def test_block_splits_the_feature_dimension_and_inverts():
    torch.manual_seed(0)
    block = revlib.ReversibleTransformerBlock(8, 2).double()
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    y = block(x)
    # y1 = x1 + Attn(LN(x2)): only the first 8 features move by F
    torch.testing.assert_close(y[..., :8], x[..., :8] + block.F(x[..., 8:]))
    assert revlib.check_inverse(block, x) < 1e-13


@pytest.mark.parametrize("mode", ["reversible", "checkpoint"])
@pytest.mark.parametrize("attn_dropout", [0.0, 0.2])
def test_gradients_equal_autograd_float64_with_dropout(mode, attn_dropout):
    torch.manual_seed(0)
    ref = stack(3, "autograd", dropout=0.1, attn_dropout=attn_dropout).double()
    other = stack(3, mode, dropout=0.1, attn_dropout=attn_dropout).double()
    other.load_state_dict(ref.state_dict())
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    dx0, g0 = step(ref, x)
    dx1, g1 = step(other, x)
    torch.testing.assert_close(dx1, dx0, rtol=0, atol=1e-10)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_attention_dropout_is_seen_without_the_explicit_flag():
    """Attention dropout goes through an nn.Dropout, so the default auto-detection replays it."""
    torch.manual_seed(0)
    ref = stack(2, "autograd", attn_dropout=0.3, rng=None).double()
    other = stack(2, "reversible", attn_dropout=0.3, rng=None).double()
    other.load_state_dict(ref.state_dict())
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    dx0, _ = step(ref, x)
    dx1, _ = step(other, x)
    torch.testing.assert_close(dx1, dx0, rtol=0, atol=1e-10)


def test_control_without_replay_the_gradients_are_wrong():
    """Control: with RNG recording switched off, dropout draws new masks in the backward."""
    torch.manual_seed(0)
    ref = stack(2, "autograd", dropout=0.3, rng=False).double()
    other = stack(2, "reversible", dropout=0.3, rng=False).double()
    other.load_state_dict(ref.state_dict())
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    dx0, _ = step(ref, x)
    dx1, _ = step(other, x)
    assert (dx1 - dx0).abs().max() > 1e-3


def test_bf16_autocast_gradients_close_to_autograd():
    torch.manual_seed(0)
    ref = stack(3, "autograd", dropout=0.1)
    other = stack(3, "reversible", dropout=0.1)
    other.load_state_dict(ref.state_dict())
    x = torch.randn(2, 6, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dx0, g0 = step(ref, x)
        dx1, g1 = step(other, x)
    scale = dx0.abs().max()
    assert (dx1 - dx0).abs().max() < 0.05 * scale
    for a, b in zip(g1, g0, strict=True):
        assert (a - b).abs().max() <= 0.05 * b.abs().max() + 1e-3


def test_errors_name_module_and_shape():
    with pytest.raises(ValueError, match="not a multiple of heads=3"):
        SelfAttention(8, 3)
    with pytest.raises(
        ValueError,
        match=r"SelfAttention: expected tokens of shape \(batch, tokens, 8\), got shape \(2, 8\)",
    ):
        SelfAttention(8, 2)(torch.randn(2, 8))
    with pytest.raises(ValueError, match="FeedForward"):
        FeedForward(8, 16)(torch.randn(2, 3, 6))
    with pytest.raises(ValueError, match="odd size"):
        revlib.ReversibleTransformerBlock(8, 2)(torch.randn(2, 3, 15))
