"""A Hugging Face-style port, as a person porting a model would write it: a reversible
transformer (Reformer) with a padding mask, dropout, a head mask, a shared config read in
forward, layers shared across blocks and frozen layers; mode "reversible" against mode
"autograd" from identical deep copies (float64), each mechanism with a control."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as nnf
from pattern_helpers import (
    assert_same_grads,
    gradients,
    worst,
)
from torch import nn

import revlib

# ---- 1. a Hugging Face-style port: a reversible transformer (Reformer) ---------------------------


@dataclass
class RevConfig:
    """What a ``transformers`` config holds; the layers keep it and read it in ``forward``."""

    vocab_size: int = 11
    max_position_embeddings: int = 8
    hidden_size: int = 4  # of each half: the reversible stream is 2 * hidden_size wide
    num_attention_heads: int = 2
    intermediate_size: int = 8
    attention_probs_dropout_prob: float = 0.3
    hidden_dropout_prob: float = 0.2
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    num_hidden_layers: int = 2


class SelfAttention(nn.Module):
    """F: the attention sub-layer as HF code writes it (pre-LayerNorm, as in Reformer)."""

    def __init__(self, config: RevConfig) -> None:
        super().__init__()
        self.config = config
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.dense = nn.Linear(self.all_head_size, config.hidden_size)

    def transpose_for_scores(self, x: torch.Tensor) -> torch.Tensor:
        new_shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)
        return x.view(new_shape).permute(0, 2, 1, 3)

    def forward(self, hidden_states, attention_mask=None, head_mask=None):
        h = self.LayerNorm(hidden_states)
        query = self.transpose_for_scores(self.query(h))
        key = self.transpose_for_scores(self.key(h))
        value = self.transpose_for_scores(self.value(h))
        scores = query @ key.transpose(-1, -2) / math.sqrt(self.attention_head_size)
        if attention_mask is not None:
            scores = scores + attention_mask  # 0 where attended, very negative where padded
        probs = self.dropout(nnf.softmax(scores, dim=-1))
        if head_mask is not None:
            probs = probs * head_mask
        context = (probs @ value).permute(0, 2, 1, 3).contiguous()
        return self.dense(context.view(context.size()[:-2] + (self.all_head_size,)))


class FeedForward(nn.Module):
    """G: LayerNorm, Linear, the config's activation, dropout, Linear, dropout; the activation
    and one dropout probability are read from the config in ``forward``."""

    def __init__(self, config: RevConfig) -> None:
        super().__init__()
        self.config = config
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dense_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.dense_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states):
        h = self.dense_in(self.LayerNorm(hidden_states))
        h = nnf.gelu(h) if self.config.hidden_act == "gelu" else nnf.relu(h)
        h = nnf.dropout(h, p=self.config.hidden_dropout_prob, training=self.training)
        return self.dropout(self.dense_out(h))


def extended_attention_mask(attention_mask: torch.Tensor, fill: float) -> torch.Tensor:
    """HF's ``get_extended_attention_mask``: (B, T) of 1/0 to an additive (B, 1, 1, T) mask."""
    padded = attention_mask[:, None, None, :] == 0
    return torch.zeros(padded.shape, dtype=torch.float64).masked_fill(padded, fill)


class ReformerStyleForMaskedLM(nn.Module):
    """Embeddings, the stream doubled (both halves start from the embeddings, as Reformer
    does), the reversible layers, a final LayerNorm and an LM head with HF's ``labels``
    (-100 ignored)."""

    def __init__(self, config: RevConfig, shared: bool = False, **options) -> None:
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        attention, feed_forward = SelfAttention(config), FeedForward(config)  # ALBERT: shared
        self.layers = revlib.ReversibleSequence(
            [
                revlib.AdditiveCoupling(
                    attention if shared else SelfAttention(config),
                    feed_forward if shared else FeedForward(config),
                    dim=-1,
                )
                for _ in range(config.num_hidden_layers)
            ],
            **options,
        )
        self.final_norm = nn.LayerNorm(2 * config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.lm_head = nn.Linear(2 * config.hidden_size, config.vocab_size)

    def forward(
        self, input_ids=None, attention_mask=None, head_mask=None, inputs_embeds=None, labels=None
    ):
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        positions = torch.arange(inputs_embeds.shape[1])
        h = inputs_embeds + self.position_embeddings(positions)
        h = torch.cat([h, h], dim=-1)
        h = self.layers(h, attention_mask=attention_mask, head_mask=head_mask)
        logits = self.lm_head(self.dropout(self.final_norm(h)))
        loss = nnf.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
        return loss, logits


IDS = torch.tensor([[3, 5, 7, 2, 9, 4], [6, 1, 8, 0, 0, 0]])
PAD = (IDS != 0).long()  # the tokenizer's attention_mask
LABELS = torch.tensor([[-100, 5, -100, 2, -100, 4], [6, -100, 8, -100, -100, -100]])
FILLS = {"finfo.min (HF)": torch.finfo(torch.float64).min, "-inf": float("-inf")}


def _reformer(config=None, shared=False, **options) -> ReformerStyleForMaskedLM:
    torch.manual_seed(0)
    return ReformerStyleForMaskedLM(config or RevConfig(), shared, **options).double()


def _lm_step(model, mode, fill=FILLS["finfo.min (HF)"], head_mask=None, between=None):
    """One training step on a deep copy in ``mode``; returns (gradients, loss, the copy)."""
    m = copy.deepcopy(model)
    revlib.set_mode(m, mode)
    m.train()
    embeds = m.word_embeddings(IDS).detach().requires_grad_(True)  # HF's inputs_embeds
    torch.manual_seed(5)
    loss, _ = m(
        inputs_embeds=embeds,
        attention_mask=extended_attention_mask(PAD, fill),
        head_mask=head_mask,
        labels=LABELS,
    )
    if between is not None:
        between(m)
    loss.backward()
    return gradients(m, inputs_embeds=embeds), loss.detach(), m


@pytest.mark.parametrize("fill", list(FILLS))
def test_reformer_style_masked_lm_step_with_padding_mask_and_dropout_equals_autograd(fill):
    """Train mode, dropout p > 0 in attention and feed-forward (masks replayed), the additive
    padding mask as the extra argument ``attention_mask``, ``head_mask=None`` passed explicitly,
    the config read in G's forward; gradients of every parameter and of inputs_embeds."""
    model = _reformer()
    want, loss_ref, _ = _lm_step(model, "autograd", FILLS[fill])
    got, loss, _ = _lm_step(model, "reversible", FILLS[fill])
    assert torch.isfinite(loss_ref) and torch.equal(loss, loss_ref)
    assert_same_grads(got, want)
    assert want["input inputs_embeds"][1, 3:].abs().max() == 0  # padded: ignored label, masked


HEAD_MASKS = {
    "None": None,
    "a tensor (HF: 1 keeps a head, 0 prunes it)": torch.tensor([1.0, 0.0], dtype=torch.float64)[
        None, :, None, None
    ],
}


@pytest.mark.parametrize("head_mask", list(HEAD_MASKS))
def test_head_mask_none_or_a_tensor_equals_autograd(head_mask):
    """HF passes ``head_mask`` always: None (taken by F, used by nothing) or a (1, H, 1, 1)
    tensor that scales the attention probabilities of each head."""
    model = _reformer()
    want, _, _ = _lm_step(model, "autograd", head_mask=HEAD_MASKS[head_mask])
    got, _, _ = _lm_step(model, "reversible", head_mask=HEAD_MASKS[head_mask])
    assert_same_grads(got, want)


def test_albert_style_layers_shared_across_blocks_accumulate_as_in_autograd():
    """One attention and one feed-forward module reused by every block (ALBERT's cross-layer
    sharing): their gradients are sums over the blocks, and they equal autograd's."""
    model = _reformer(shared=True)
    assert model.layers.blocks[0].F is model.layers.blocks[1].F
    want, _, _ = _lm_step(model, "autograd")
    got, _, _ = _lm_step(model, "reversible")
    assert_same_grads(got, want)


def test_fine_tuning_with_the_embeddings_and_first_layer_frozen_equals_autograd():
    """``requires_grad_(False)`` on the embeddings and on every parameter of block 0: they get
    no gradient, the rest (and inputs_embeds, through the frozen block) get autograd's."""
    model = _reformer()
    for p in [*model.word_embeddings.parameters(), *model.layers.blocks[0].parameters()]:
        p.requires_grad_(False)
    want, _, _ = _lm_step(model, "autograd")
    got, _, _ = _lm_step(model, "reversible")
    assert got["layers.blocks.0.F.query.weight"] is None
    assert_same_grads(got, want)


def test_control_without_rng_replay_the_dropout_masks_differ():
    """The comparison can fail: with ``preserve_rng_state=False`` the replayed dropout draws
    new masks."""
    model = _reformer(preserve_rng_state=False)
    want, _, _ = _lm_step(model, "autograd")
    got, _, _ = _lm_step(model, "reversible")
    assert worst(got, want) > 1e-3


def test_a_layer_scalar_attribute_changed_before_backward_is_replayed_as_the_forward_saw_it():
    """The same switch as below, through the module's own attribute (what the library
    replays): a Reformer layer keeps ``self.dropout = config.hidden_dropout_prob``."""

    class OwnProbability(FeedForward):
        def __init__(self, config: RevConfig) -> None:
            super().__init__(config)
            self.p = config.hidden_dropout_prob

        def forward(self, hidden_states):
            h = nnf.gelu(self.dense_in(self.LayerNorm(hidden_states)))
            return self.dense_out(nnf.dropout(h, p=self.p, training=self.training))

    torch.manual_seed(0)
    config = RevConfig()
    model = ReformerStyleForMaskedLM(config).double()
    for block in model.layers.blocks:
        block.G = OwnProbability(config).double()

    def switch(m):
        for block in m.layers.blocks:
            block.G.p = 0.0

    want, _, _ = _lm_step(model, "autograd", between=switch)
    got, _, _ = _lm_step(model, "reversible", between=switch)
    assert_same_grads(got, want)


def _switch_activation(m):
    m.config.hidden_act = "relu"  # the layers share this config object


CONFIG_CHANGES = {
    "hidden_act switched after the forward": _switch_activation,
    "hidden_dropout_prob set to 0 after the forward": lambda m: setattr(
        m.config, "hidden_dropout_prob", 0.0
    ),
}


@pytest.mark.parametrize("change", list(CONFIG_CHANGES))
def test_a_config_field_changed_before_backward_is_replayed_as_the_forward_saw_it(change):
    """A shared config changed between a forward and its backward (by a callback, or for a
    second forward with other settings): autograd differentiates what the forward computed."""
    want, _, _ = _lm_step(_reformer(), "autograd", between=CONFIG_CHANGES[change])
    got, _, _ = _lm_step(_reformer(), "reversible", between=CONFIG_CHANGES[change])
    assert_same_grads(got, want)


def test_control_without_replaying_plain_objects_the_config_change_reaches_the_gradients(
    monkeypatch,
):
    from revlib.core.replay import reaches

    monkeypatch.setattr(reaches, "plain_object", lambda v: False)
    change = CONFIG_CHANGES["hidden_act switched after the forward"]
    want, _, _ = _lm_step(_reformer(), "autograd", between=change)
    got, _, _ = _lm_step(_reformer(), "reversible", between=change)
    with pytest.raises(AssertionError):
        assert_same_grads(got, want)


class _ReturnsTuple(nn.Module):
    """A sub-layer ported as HF writes it: ``outputs = (attention_output,) + extras``."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(2, 2)

    def forward(self, hidden_states):
        return (self.dense(hidden_states),)


def test_a_sub_layer_returning_an_hf_style_tuple_is_refused_naming_f_and_the_tuple():
    seq = revlib.ReversibleSequence([revlib.AdditiveCoupling(_ReturnsTuple(), nn.Tanh(), dim=-1)])
    with pytest.raises((TypeError, ValueError), match=r"(?s)\bF\b.*tuple"):
        seq(torch.randn(3, 4, requires_grad=True))
