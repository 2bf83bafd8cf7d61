"""The coupling's backward passes halves between steps: the same bits as whole tensors, fewer
copies."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import revnet_stack
from torch import nn

import revlib
from revlib.core import blocks, couplings
from revlib.core.halves import Halves, halves_of_difference, join_halves_with_sum


def float64_grads(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    model = copy.deepcopy(model)
    x = x.clone().requires_grad_(True)
    model(x).square().mean().backward()
    return [x.grad, *(p.grad for p in model.parameters())]


def bit_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


@pytest.fixture
def stack_and_input():
    torch.manual_seed(0)
    return revnet_stack(4, channels=16).double(), torch.randn(4, 16, 6, 6, dtype=torch.float64)


def test_chain_gradients_are_bit_equal_to_stepping_with_whole_tensors(stack_and_input, monkeypatch):
    model, x = stack_and_input
    with_halves = float64_grads(model, x)
    monkeypatch.setattr(revlib.AdditiveCoupling, "backward_step_takes_halves", False)
    whole = float64_grads(model, x)
    assert bit_equal(with_halves, whole)


def _layouts_seen_by_g(model: nn.Module, x: torch.Tensor) -> list[bool]:
    """Whether G's input, in the forward and in the replay, was contiguous (a global pre-hook
    sees every evaluation)."""
    gs = {id(block.G) for block in model.modules() if isinstance(block, revlib.AdditiveCoupling)}
    seen = []

    def note(module, args):
        if id(module) in gs:
            seen.append(args[0].is_contiguous())

    handle = nn.modules.module.register_module_forward_pre_hook(note)
    try:
        model(x.clone().requires_grad_(True)).square().mean().backward()
    finally:
        handle.remove()
    return seen


def test_the_replay_of_g_sees_its_input_in_the_forward_layout(stack_and_input):
    model, x = stack_and_input
    seen = _layouts_seen_by_g(model, x)
    assert len(seen) == 8 and all(seen)  # 4 blocks, forward and replay


def test_control_without_the_layout_the_replay_of_g_sees_a_strided_view(
    stack_and_input, monkeypatch
):
    model, x = stack_and_input
    monkeypatch.setattr(couplings, "_as_forward_saw", lambda half: half)
    assert not all(_layouts_seen_by_g(model, x))


def _first_halves_contiguous(model: nn.Module, x: torch.Tensor) -> list[bool]:
    """For each coupling step that got halves from the step after it: was its first half (G's
    replay input) contiguous?"""
    seen = []
    real_step = revlib.AdditiveCoupling.backward_step

    def spy(self, y, dy, tape):
        if isinstance(y, Halves) and y.buffer is None:
            seen.append(y.first.is_contiguous())
        return real_step(self, y, dy, tape)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(revlib.AdditiveCoupling, "backward_step", spy)
        model(x.clone().requires_grad_(True)).square().mean().backward()
    return seen


def test_a_step_hands_on_contiguous_halves(stack_and_input):
    """So G's replay reads its input without a copy (a half of a full-size tensor is strided)."""
    model, x = stack_and_input
    assert _first_halves_contiguous(model, x) == [True] * 3  # the last block's comes saved


def test_control_halves_of_a_concatenation_are_strided(stack_and_input, monkeypatch):
    def concatenating(block, y, f, second):
        whole = torch.cat([y.first - f, second], 1)
        return Halves(*whole.chunk(2, 1), None, 1)

    monkeypatch.setattr(couplings, "halves_of_difference", concatenating)
    model, x = stack_and_input
    assert _first_halves_contiguous(model, x) == [False] * 3


def test_the_chain_makes_no_concatenation_between_couplings(stack_and_input, monkeypatch):
    model, x = stack_and_input
    counts = {}
    real_cat = torch.cat

    def counting_cat(*args, **kwargs):
        counts["cat"] = counts.get("cat", 0) + 1
        return real_cat(*args, **kwargs)

    y = model(x.clone().requires_grad_(True))
    monkeypatch.setattr(torch, "cat", counting_cat)
    y.square().mean().backward()
    assert counts.get("cat", 0) == 0
    monkeypatch.setattr(revlib.AdditiveCoupling, "backward_step_takes_halves", False)
    model(
        x.clone().requires_grad_(True)
    ).square().mean().backward()  # control: whole tensors concatenate
    assert counts["cat"] > 0


def test_halves_join_equals_cat_in_value_and_layout():
    torch.manual_seed(1)
    block = revlib.AdditiveCoupling(nn.Identity(), nn.Identity())
    y = torch.randn(2, 8, 3, 3)
    f, second = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    halves = halves_of_difference(block, Halves.of(block, y), f, second)
    expected = torch.cat([y[:, :4] - f, second], 1)
    joined = halves.join()
    assert torch.equal(joined, expected) and joined.stride() == expected.stride()
    dy, first, addend = torch.randn(2, 8, 3, 3), torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    summed = join_halves_with_sum(block, first, dy, addend)
    assert torch.equal(summed, torch.cat([first, dy[:, 4:] + addend], 1))


def test_a_channels_last_addend_is_summed_without_a_concatenation(monkeypatch):
    """A compiled F's input gradient comes channels-last: summed in place, bit for bit."""
    from revlib.core import halves

    block = revlib.AdditiveCoupling(nn.Identity(), nn.Identity())
    dy, first, addend = torch.randn(2, 8, 3, 3), torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    expected = torch.cat([first, dy[:, 4:] + addend], 1)
    monkeypatch.setattr(halves, "join_halves", lambda *a: pytest.fail("concatenated"))
    summed = join_halves_with_sum(block, first, dy, addend.to(memory_format=torch.channels_last))
    assert torch.equal(summed, expected) and summed.stride() == expected.stride()


def test_non_contiguous_or_mixed_dtypes_fall_back_to_concatenation():
    block = revlib.AdditiveCoupling(nn.Identity(), nn.Identity())
    y = torch.randn(2, 3, 3, 8).permute(0, 3, 1, 2)  # channels_last
    f, second = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    halves = halves_of_difference(block, Halves.of(block, y), f, second)
    assert torch.equal(halves.join(), torch.cat([y[:, :4] - f, second], 1))
    mixed = join_halves_with_sum(
        block, torch.randn(2, 4, 3, 3), torch.randn(2, 8, 3, 3), torch.randn(2, 4, 3, 3).double()
    )
    assert mixed.dtype == torch.float64


def test_a_block_that_takes_whole_tensors_gets_them_joined():
    """Couplings around a HalfSwap and a dim=-1 coupling: each step gets what it takes; gradients
    equal autograd."""
    torch.manual_seed(2)

    def net():
        return nn.Sequential(nn.Linear(4, 4), nn.Tanh())

    layers = [
        revlib.AdditiveCoupling(net(), net(), dim=-1),
        revlib.HalfSwap(dim=-1),
        revlib.AdditiveCoupling(net(), net(), dim=-1),
        revlib.AdditiveCoupling(net(), net(), dim=-1),
    ]
    reversible = revlib.ReversibleSequence(layers).double()
    autograd = copy.deepcopy(reversible)
    autograd.mode = "autograd"
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    for a, b in zip(float64_grads(reversible, x), float64_grads(autograd, x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_backward_step_called_with_a_tensor_returns_a_tensor():
    torch.manual_seed(3)
    block = revlib.AdditiveCoupling(
        nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
    ).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    tape = revlib.core.replay.Tape.start(x)
    with torch.no_grad():
        y = block.forward_recorded(x, tape)
    with torch.enable_grad():
        x_rec, dx, _ = block.backward_step(y, torch.ones_like(y), tape)
    assert isinstance(x_rec, torch.Tensor) and isinstance(dx, torch.Tensor)
    torch.testing.assert_close(x_rec, x, rtol=0, atol=1e-14)


def test_a_subclass_that_overrides_the_step_gets_whole_tensors():
    class GenericStep(revlib.AdditiveCoupling):
        backward_step = revlib.ReversibleBlock.backward_step

    class OwnFlag(GenericStep):
        backward_step_takes_halves = True  # the flag without a step of its own does not count

    torch.manual_seed(4)
    F, G = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
    assert blocks.takes_halves(revlib.AdditiveCoupling(F, G))
    assert not blocks.takes_halves(GenericStep(F, G))
    assert not blocks.takes_halves(OwnFlag(F, G))
    chain = revlib.ReversibleSequence(
        [GenericStep(copy.deepcopy(F), copy.deepcopy(G)) for _ in range(2)]
    ).double()
    autograd = copy.deepcopy(chain)
    autograd.mode = "autograd"
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    for a, b in zip(float64_grads(chain, x), float64_grads(autograd, x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
