"""What a block implements, and what the engine runs: ``_forward`` and ``_inverse`` (a block
without them is refused, saying so), never an overridden ``forward()``, and the fused
backward step only where the block's own directions are the ones it was written for."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import X, chain, grads
from helpers import worst_rel_error

import revlib
from revlib.core import engine


def test_block_without_underscored_methods_is_refused_with_what_to_implement():
    class Plain(revlib.ReversibleBlock):
        def forward(self, x):
            return x

        def inverse(self, y):
            return y

    with pytest.raises(TypeError, match=r"implement _forward\(x, run\) and _inverse\(y, run\)"):
        revlib.ReversibleSequence([Plain()])
    with pytest.raises(
        NotImplementedError, match=r"Plain: a ReversibleBlock implements _forward\(x, run\)"
    ):
        Plain()._forward(torch.zeros(1), revlib.core.blocks.plain_run)


class Doubled(revlib.AdditiveCoupling):
    """Overrides forward(): autograd and eval would compute 2 y, the inverse knows nothing of it."""

    def forward(self, x, **extras):
        return 2 * super().forward(x, **extras)


def test_an_overridden_forward_is_refused_in_reversible_mode():
    m = chain(Doubled)
    with pytest.raises(TypeError, match=r"Doubled overrides forward\(\).*_forward/_inverse"):
        grads(m, X)


def test_control_the_override_computes_something_else_in_autograd_mode():
    a, r = chain(Doubled, mode="autograd"), chain(revlib.AdditiveCoupling, mode="autograd")
    assert not torch.allclose(a(X), r(X))


class LayerScaled(revlib.AdditiveCoupling):
    """A layer scale written the documented way: _forward and _inverse changed, backward_step
    inherited."""

    scale = 0.3

    def _forward(self, x, run):
        x1, x2 = x.chunk(2, dim=-1)
        y1 = x1 + self.scale * run("F", self.F, x2)
        y2 = x2 + self.scale * run("G", self.G, y1)
        return torch.cat([y1, y2], dim=-1)

    def _inverse(self, y, run):
        y1, y2 = y.chunk(2, dim=-1)
        x2 = y2 - self.scale * run("G", self.G, y1)
        x1 = y1 - self.scale * run("F", self.F, x2)
        return torch.cat([x1, x2], dim=-1)


def test_an_inherited_fused_step_is_not_used_for_a_changed_forward():
    ref, rev = chain(LayerScaled, mode="autograd"), chain(LayerScaled)
    (g_ref, dx_ref), (g, dx) = grads(ref, X), grads(rev, X)
    assert worst_rel_error(g, g_ref) < 1e-12
    assert (dx - dx_ref).abs().max() < 1e-12


def test_control_the_inherited_fused_step_gives_wrong_gradients(monkeypatch):
    monkeypatch.setattr(engine.function, "fused_step_applies", lambda block: True)
    ref, rev = chain(LayerScaled, mode="autograd"), chain(LayerScaled)
    assert worst_rel_error(grads(rev, X)[0], grads(ref, X)[0]) > 0.1
