"""``torch.compile(model)`` in mode "reversible": F and G compiled, the engine eager, autograd's
gradients.

One model (BatchNorm, dropout, in float64) is compiled as users call it and
trained 12 steps beside an eager autograd copy: gradients and buffers must
agree to rounding, the step must not recompile after the first two steps
(forward and backward graphs are made on first use), and the sub-functions
must run compiled (the control, with the compiled path bypassed, makes no
graph for them). Saved bytes stay flat in depth, compiled.
"""

from __future__ import annotations

import copy
import gc
import logging
import weakref

import pytest
import torch
from torch import nn

import revlib
from revlib.core import compiled as compiled_module
from revlib.core.memory import saved_tensor_bytes
from revlib.core.replay import tape as recompute


def half(channels: int = 4, dropout: float = 0.2) -> nn.Module:
    return nn.Sequential(
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.Dropout(dropout),
    )


def net(depth: int = 3, dropout: float = 0.2) -> revlib.ReversibleSequence:
    torch.manual_seed(0)
    return revlib.ReversibleSequence(
        [
            revlib.AdditiveCoupling(half(dropout=dropout), half(dropout=dropout))
            for _ in range(depth)
        ]
    ).double()


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled_module._CACHE.clear()
    compiled_module._WHOLE.clear()
    yield
    torch._dynamo.reset()


def train(model, compiled, steps: int, x: torch.Tensor):
    """``steps`` SGD steps of mean(y^2) on ``compiled`` (which runs ``model``); graphs made after
    each step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    graphs, grads = [], []
    for i in range(steps):
        torch.manual_seed(100 + i)  # the same dropout masks for both runs
        opt.zero_grad()
        compiled(x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    return graphs, grads


def assert_as_eager(model, got, eager, expected) -> None:
    """Every step's gradients within 1e-10 of eager autograd's, and the buffers alike."""
    worst = max(
        (a - b).abs().max().item()
        for s, e in zip(got, expected, strict=True)
        for a, b in zip(s, e, strict=True)
    )
    assert worst < 1e-10
    for a, b in zip(model.buffers(), eager.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


X = torch.randn(4, 8, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


def test_compiled_reversible_equals_eager_autograd_and_does_not_recompile(caplog):
    eager = net()
    eager.mode = "autograd"
    model = copy.deepcopy(eager)
    model.mode = "reversible"
    _, expected = train(eager, eager, 12, X)
    with caplog.at_level(logging.WARNING):
        graphs, got = train(model, torch.compile(model), 12, X)
    assert not [r for r in caplog.records if "recompile" in r.getMessage()]
    assert graphs[1] == graphs[-1]  # nothing compiled after the second step
    assert graphs[-1] >= 2  # the sub-functions were compiled: a forward graph and a replay graph
    assert_as_eager(model, got, eager, expected)
    assert len(compiled_module._CACHE) == 6  # F and G of three blocks, each compiled once


def test_control_with_the_compiled_path_bypassed_no_subfunction_graph(monkeypatch):
    monkeypatch.setattr(recompute.Tape, "_callable", lambda self, fn: fn)
    model = net()
    graphs, _ = train(model, torch.compile(model), 3, X)
    assert graphs[-1] < 2 and len(compiled_module._CACHE) == 0


# ---- a block whose tape would record nothing: its whole forward is one compiled graph ----------


class OwnCoupling(revlib.AdditiveCoupling):
    """A user's subclass: its forward may do more than call F and G, so it is not fused."""


def _plain_net(block=revlib.AdditiveCoupling, hook: bool = False) -> revlib.ReversibleSequence:
    torch.manual_seed(0)
    model = revlib.ReversibleSequence([block(half()[:3], half()[:3]) for _ in range(3)]).double()
    if hook:
        model.blocks[1].G[2].register_forward_pre_hook(lambda m, a: (a[0] * 2,))  # the conv
    return model


@pytest.mark.parametrize(
    "case, fused",
    [
        ("plain layers", 3),
        ("dropout in every block", 0),
        ("a hook in one block", 2),
        ("a user's block class", 0),
    ],
)
def test_blocks_that_record_nothing_run_their_forward_as_one_graph(case, fused):
    model = {
        "plain layers": lambda: _plain_net(),
        "dropout in every block": lambda: net(dropout=0.2),
        "a hook in one block": lambda: _plain_net(hook=True),
        "a user's block class": lambda: _plain_net(OwnCoupling),
    }[case]()
    eager = copy.deepcopy(model)
    eager.mode = "autograd"
    _, expected = train(eager, eager, 3, X)
    _, got = train(model, torch.compile(model), 3, X)
    assert len(compiled_module._WHOLE) == fused
    assert_as_eager(model, got, eager, expected)


def test_control_fusing_a_block_with_a_hook_gives_wrong_gradients(monkeypatch):
    """The hook acts in the fused forward, but no tape recorded it, so the replay runs G without
    it: the check that keeps such a block out of the fused path is what makes it exact."""
    monkeypatch.setattr(compiled_module, "needs_no_tape", lambda block: True)
    model = _plain_net(hook=True)
    eager = copy.deepcopy(model)
    eager.mode = "autograd"
    _, expected = train(eager, eager, 1, X)
    _, got = train(model, torch.compile(model), 1, X)
    assert len(compiled_module._WHOLE) == 3
    assert max((a - b).abs().max().item() for a, b in zip(got[0], expected[0], strict=True)) > 1e-3


def _compiled_model_is_freed() -> bool:
    def train_and_forget():
        model = _plain_net()
        model.blocks[0].F = half().double()  # dropout: sub-functions compiled, not the block
        train(model, torch.compile(model), 1, X)
        assert compiled_module._CACHE and compiled_module._WHOLE
        return weakref.ref(model.blocks[0].F), weakref.ref(model.blocks[1])

    refs = train_and_forget()
    gc.collect()
    return all(r() is None for r in refs)


def test_a_compiled_model_is_freed_with_its_last_reference():
    """The compiled calls are cached per module without keeping it alive (the cache's values
    hold weak references)."""
    assert _compiled_model_is_freed()


def test_control_a_cache_value_that_holds_its_module_keeps_it_alive(monkeypatch):
    monkeypatch.setattr(compiled_module, "_CACHE", _StrongValues())
    assert not _compiled_model_is_freed()


class _StrongValues(weakref.WeakKeyDictionary):
    """A cache whose values also hold their keys, as a per-module torch.compile did."""

    def __setitem__(self, key, value):
        super().__setitem__(key, (value, key))

    def get(self, key, default=None):
        found = super().get(key)
        return default if found is None else found[0]


def test_compiled_saved_bytes_are_flat_in_depth():
    def saved(depth):
        model = net(depth, dropout=0.0)
        compiled = torch.compile(model)
        compiled(X).sum().backward()  # compile first
        return saved_tensor_bytes(compiled, X)

    assert saved(2) == saved(5)


def one_step_gap(
    model_mode: str = "reversible", autocast: bool = False, dtype=torch.float64
) -> float:
    """Largest gradient difference of one compiled step against eager autograd, relative to the
    largest gradient."""
    eager = net().to(dtype)
    eager.mode = "autograd"
    model = copy.deepcopy(eager)
    model.mode = model_mode
    x = X.to(dtype)
    grads = []
    for m, run in ((eager, eager), (model, torch.compile(model))):
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            run(x).float().square().mean().backward()
        grads.append([p.grad for p in m.parameters()])
    scale = max(g.abs().max().item() for g in grads[0])
    return max((a - b).abs().max().item() for a, b in zip(grads[1], grads[0], strict=True)) / scale


def test_compiled_dropout_is_replayed_with_eager_random_draws():
    assert one_step_gap() < 1e-10


def test_control_without_eager_random_draws_compiled_dropout_differs(monkeypatch):
    monkeypatch.setattr(compiled_module, "COMPILE_OPTIONS", {})
    assert one_step_gap() > 1e-3


def test_compiled_under_bfloat16_autocast_agrees_with_eager_autograd():
    # float32 weights under bf16 autocast: both runs compute in bfloat16; the tolerance is
    # bfloat16's (2^-8)
    assert one_step_gap(autocast=True, dtype=torch.float32) < 2**-7


def test_parametrized_subfunctions_run_eagerly_without_recompiles(caplog):
    """Each parametrized module has a class of its own: compiled, every block would recompile the
    graph."""

    def half_sn():
        return nn.Sequential(
            nn.utils.parametrizations.spectral_norm(nn.Conv2d(4, 4, 3, padding=1)), nn.Tanh()
        )

    def make():
        torch.manual_seed(0)
        return revlib.ReversibleSequence(
            [revlib.AdditiveCoupling(half_sn(), half_sn()) for _ in range(9)]
        ).double()

    eager, model = make(), make()
    eager.mode = "autograd"
    with caplog.at_level(logging.WARNING):
        _, got = train(model, torch.compile(model), 3, X)
    _, expected = train(eager, eager, 3, X)
    assert not [r for r in caplog.records if "recompile" in r.getMessage()]
    assert (
        max(
            (a - b).abs().max().item()
            for s, e in zip(got, expected, strict=True)
            for a, b in zip(s, e, strict=True)
        )
        < 1e-10
    )
    assert len(compiled_module._CACHE) == 0


def test_control_compiling_parametrized_subfunctions_recompiles_per_block(monkeypatch):
    monkeypatch.setattr(compiled_module, "_runs_eagerly", lambda fn: False)

    def half_sn():
        return nn.Sequential(
            nn.utils.parametrizations.spectral_norm(nn.Conv2d(4, 4, 3, padding=1)), nn.Tanh()
        )

    torch.manual_seed(0)
    model = revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(half_sn(), half_sn()) for _ in range(9)]
    ).double()
    train(model, torch.compile(model), 1, X)
    assert (
        torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 8
    )  # one graph per parametrized module


class AttributeConditioned(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.cond = None

    def forward(self, h):
        return torch.tanh(self.lin(h)) * self.cond


def test_compiled_side_inputs_are_refused_too():
    halves = [AttributeConditioned() for _ in range(2)]
    model = revlib.ReversibleSequence([revlib.AdditiveCoupling(*halves, dim=-1)]).double()
    c = torch.ones(3, dtype=torch.float64, requires_grad=True)
    for h in halves:
        h.cond = c * 2  # made from a leaf that requires grad: its gradient would be lost
    with pytest.raises(RuntimeError, match=r"tensor of shape \(3,\) that requires grad"):
        torch.compile(model)(torch.randn(4, 6, dtype=torch.float64, requires_grad=True))


def test_compiled_under_a_memory_budget_equals_eager_autograd():
    eager = net(depth=4)
    eager.mode = "autograd"
    model = copy.deepcopy(eager)
    model.mode = "reversible"
    model.memory_budget = 0.5
    _, expected = train(eager, eager, 3, X)
    _, got = train(model, torch.compile(model), 3, X)
    assert model.budget_plan is not None and 0 < len(model.budget_plan.stored) < 4
    worst = max(
        (a - b).abs().max().item()
        for s, e in zip(got, expected, strict=True)
        for a, b in zip(s, e, strict=True)
    )
    assert worst < 1e-10


@pytest.mark.parametrize("mode", ["autograd", "checkpoint"])
def test_compiling_the_other_modes_traces_the_sequence(mode):
    from revlib.core import aux_losses

    model = net(depth=2, dropout=0.0)
    model.mode = mode
    reference = copy.deepcopy(model)
    _, expected = train(reference, reference, 2, X)
    aux_losses._SINK.__dict__.pop("losses", None)  # as in a fresh thread
    _, got = train(model, torch.compile(model), 2, X)
    for s, e in zip(got, expected, strict=True):
        for a, b in zip(s, e, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
