"""What reaches F besides its input: extra arguments through the chain, and side channels refused.

Conditioning tensors and masks go through the chain (``seq(x, cond=c,
mask=m)``) to every F and G that takes them by name, with their gradients;
a tensor that requires grad and reaches F any other way (an attribute, an
unregistered parameter, a weight cached by ``parametrize.cached()``, an
activation a hook keeps) raises an error naming it. Float64, against mode
"autograd"; each mechanism has a control that fails without it.
"""

from __future__ import annotations

import pytest
import torch
from helpers import worst_rel_error
from torch import nn
from torch.nn.utils import parametrize

import revlib
from revlib.core import engine
from revlib.core.replay.hooks import HookRecord

X = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


class FiLM(nn.Module):
    """``tanh(W h) * (1 + a c) + b c``: a half conditioned on ``cond`` (a time or class
    embedding)."""

    def __init__(self, width: int = 3, cond_width: int = 2) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.scale = nn.Linear(cond_width, width)
        self.shift = nn.Linear(cond_width, width)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(h)) * (1 + self.scale(cond)) + self.shift(cond)


class Embedder(nn.Module):
    """A network that makes the conditioning tensor, so its parameters need the gradient through
    cond."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(1, 2)
        self.seq = revlib.ReversibleSequence(
            [revlib.AdditiveCoupling(FiLM(), FiLM(), dim=-1) for _ in range(3)]
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.seq(x, cond=self.embed(t))


def conditioned(mode: str) -> Embedder:
    torch.manual_seed(0)
    m = Embedder().double()
    m.seq.mode = mode
    return m


def step(model: nn.Module, *args, **kwargs) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(*args, **kwargs).square().sum().backward()
    return [p.grad for p in model.parameters()]


T = torch.rand(4, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(4))


def test_conditioning_through_the_chain_gets_autograd_gradients():
    ref, rev = conditioned("autograd"), conditioned("reversible")
    g_ref, g = step(ref, X, T), step(rev, X, T)
    assert all(a is not None for a in g)
    assert worst_rel_error(g, g_ref) < 1e-12
    # the embedder's parameters get their gradient only through cond
    assert g[0].abs().sum() > 0


class AttributeConditioned(nn.Module):
    """The same network, with cond set as an attribute of every F and G before the call (a side
    channel)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(1, 2)
        self.halves = [Attr(), Attr(), Attr(), Attr()]
        self.seq = revlib.ReversibleSequence(
            [revlib.AdditiveCoupling(self.halves[i], self.halves[i + 1], dim=-1) for i in (0, 2)]
        )

    def forward(self, x, t):
        c = self.embed(t)
        for h in self.halves:
            h.cond = c
        return self.seq(x)


class Attr(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.film = FiLM()
        self.cond = None

    def forward(self, h):
        return self.film(h, self.cond)


def test_a_tensor_reaching_f_by_an_attribute_is_refused():
    m = AttributeConditioned().double()
    with pytest.raises(
        RuntimeError,
        match=r"block 0 .*tensor of shape \(4, 2\) that requires grad.*seq\(x, cond=c\)",
    ):
        step(m, X, T)


def test_control_without_the_guard_the_attribute_loses_its_gradient(monkeypatch):
    monkeypatch.setattr(engine.SideInputGuard, "check", lambda self, outputs: None)
    m = AttributeConditioned().double()
    g = step(m, X, T)
    assert g[0] is None  # the embedder silently got no gradient
    m.seq.mode = "autograd"
    assert step(m, X, T)[0] is not None


class Unregistered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.extra = [nn.Parameter(torch.ones(3))]  # in a plain list: not registered

    def forward(self, h):
        return torch.tanh(self.lin(h)) * self.extra[0]


def test_an_unregistered_parameter_is_refused():
    m = revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(Unregistered(), Unregistered(), dim=-1)]
    ).double()
    with pytest.raises(
        RuntimeError, match=r"tensor of shape \(3,\) that requires grad.*register it as a parameter"
    ):
        step(m, X.clone().requires_grad_(True))


def test_unused_extra_arguments_are_refused():
    m = revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(nn.Linear(3, 3), nn.Linear(3, 3), dim=-1)]
    ).double()
    with pytest.raises(
        TypeError, match=r"no sub-function of any block takes the extra argument\(s\) \['cond'\]"
    ):
        step(m, X.clone().requires_grad_(True), cond=T)


def test_parametrize_cached_is_refused_and_works_outside():
    def make(mode):
        torch.manual_seed(0)
        halves = [nn.Linear(3, 3) for _ in range(2)]
        for h in halves:
            parametrize.register_parametrization(h, "weight", Symmetric())
        return revlib.ReversibleSequence(
            [revlib.AdditiveCoupling(*halves, dim=-1)], mode=mode
        ).double()

    rev = make("reversible")
    with (
        parametrize.cached(),
        pytest.raises(RuntimeError, match=r"parametrize.cached\(\) is active"),
    ):
        step(rev, X.clone().requires_grad_(True))
    ref = make("autograd")
    with parametrize.cached():
        g_ref = step(ref, X.clone().requires_grad_(True))
    assert worst_rel_error(step(rev, X.clone().requires_grad_(True)), g_ref) < 1e-12


class Symmetric(nn.Module):
    def forward(self, w):
        return (w + w.T) / 2


def test_an_activation_kept_by_a_hook_on_f_is_refused():
    m = revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(nn.Linear(3, 3), nn.Linear(3, 3), dim=-1)]
    ).double()
    kept = []
    m.blocks[0].F.register_forward_hook(lambda mod, a, out: kept.append(out))
    with pytest.raises(RuntimeError, match=r"hook on 0.F kept a tensor of shape \(4, 3\)"):
        step(m, X.clone().requires_grad_(True))


def test_control_without_the_check_the_kept_activation_has_no_graph(monkeypatch):
    monkeypatch.setattr(HookRecord, "kept_outputs", lambda self, keep=None: [])
    m = revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(nn.Linear(3, 3), nn.Linear(3, 3), dim=-1)]
    ).double()
    kept = []
    m.blocks[0].F.register_forward_hook(lambda mod, a, out: kept.append(out))
    m(X.clone().requires_grad_(True))
    assert kept and not kept[0].requires_grad  # an auxiliary loss on it would get no gradient


# ---- masks through the chain: ReversibleTransformerBlock and ReversibleViT -----------------------


def transformer(mode: str) -> revlib.ReversibleSequence:
    torch.manual_seed(0)
    return revlib.ReversibleSequence(
        [revlib.ReversibleTransformerBlock(4, heads=2, mlp_ratio=2.0) for _ in range(2)], mode=mode
    ).double()


TOKENS = torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
PAD = torch.tensor([[False] * 5, [False, False, False, True, True]])
CAUSAL = torch.ones(5, 5, dtype=torch.bool).tril()


@pytest.mark.parametrize(
    "masks",
    [
        {"key_padding_mask": PAD},
        {"attn_mask": CAUSAL},
        {"attn_mask": CAUSAL, "key_padding_mask": PAD},
    ],
)
def test_masks_reach_every_block_and_gradients_equal_autograd(masks):
    ref, rev = transformer("autograd"), transformer("reversible")
    g_ref = step(ref, TOKENS.clone().requires_grad_(True), **masks)
    g = step(rev, TOKENS.clone().requires_grad_(True), **masks)
    assert worst_rel_error(g, g_ref) < 1e-12
    # control: the mask changes the result (it was not ignored)
    assert not torch.allclose(rev(TOKENS, **masks), rev(TOKENS))


def test_causal_mask_makes_early_tokens_independent_of_late_ones():
    rev = transformer("reversible")
    x = TOKENS.clone().requires_grad_(True)
    rev(x, attn_mask=CAUSAL)[:, 0].sum().backward()
    assert x.grad[:, 1:].abs().max() == 0 and x.grad[:, 0].abs().max() > 0


def test_reversible_vit_takes_an_attention_mask():
    from revlib.models.vit import ReversibleViT

    torch.manual_seed(0)
    ref = ReversibleViT(8, 4, mode="autograd", width=8, depth=2, heads=2).double()
    rev = ReversibleViT(8, 4, mode="reversible", width=8, depth=2, heads=2).double()
    rev.load_state_dict(ref.state_dict())
    images = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    mask = torch.eye(4, dtype=torch.bool) | torch.ones(4, 4, dtype=torch.bool).tril(-1)
    assert (
        worst_rel_error(step(rev, images, attn_mask=mask), step(ref, images, attn_mask=mask))
        < 1e-12
    )
    assert not torch.allclose(rev(images, attn_mask=mask), rev(images))


class StrayInAuxLoss(nn.Module):
    """A half whose output is clean but whose auxiliary loss reads an unregistered parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.stray = [nn.Parameter(torch.ones(5, dtype=torch.float64))]

    def forward(self, h):
        revlib.add_aux_loss(self.stray[0].square().sum())
        return torch.tanh(self.lin(h))


def test_a_side_input_reaching_only_an_auxiliary_loss_is_refused():
    m = revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(StrayInAuxLoss(), nn.Linear(3, 3), dim=-1)]
    ).double()
    with pytest.raises(RuntimeError, match=r"tensor of shape \(5,\) that requires grad"):
        m(X.clone().requires_grad_(True))
