"""The recomputation runs under the forward's autocast state, on or off, whatever the state
around the backward."""

from __future__ import annotations

import contextlib
import copy

import torch
from helpers import copies_by_mode, grads_of, max_rel_error, revnet_stack, worst_rel_error

from revlib.core.replay import rng as recompute


def test_recomputation_runs_under_the_forward_autocast_state():
    base = revnet_stack(depth=4, channels=16)
    models = copies_by_mode(base)
    x = torch.randn(4, 16, 8, 8, requires_grad=True)
    grads = {}
    for name, m in models.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
        (y.float() ** 2).sum().backward()
        grads[name] = [p.grad.float() for p in m.parameters()]
    err = max(
        max_rel_error(a, b) for a, b in zip(grads["reversible"], grads["autograd"], strict=True)
    )
    assert err < 2e-2  # bf16 noise; a float32 recomputation would reconstruct wrong inputs
    # A recomputation in float32 (autocast forgotten) is measurably further off:
    from revlib.core.replay import rng as recompute

    original = recompute.AutocastState.context
    recompute.AutocastState.context = lambda self: torch.autocast("cpu", enabled=False)
    try:
        m = copy.deepcopy(base)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
        (y.float() ** 2).sum().backward()
    finally:
        recompute.AutocastState.context = original
    wrong = max(
        max_rel_error(p.grad.float(), b)
        for p, b in zip(m.parameters(), grads["autograd"], strict=True)
    )
    assert wrong > 5 * err


def autocast_island_error() -> float:
    """Forward with autocast off inside a bfloat16 region, backward inside the region."""
    base = revnet_stack(depth=3, channels=8)
    x = torch.randn(4, 8, 6, 6)

    def run(mode):
        m = copy.deepcopy(base)
        m.mode = mode
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with torch.autocast("cpu", enabled=False):
                y = m(x.clone().requires_grad_())
            (y.float() ** 2).sum().backward()  # backward inside the bf16 region
        return grads_of(m)

    return worst_rel_error(run("reversible"), run("autograd"))


def test_autocast_off_in_forward_stays_off_in_recomputation():
    assert (
        autocast_island_error() <= 1e-5
    )  # float32 round-off; a bf16 recomputation is off by ~1e-2


def test_control_autocast_replayed_only_when_on_leaks_the_backward_region(monkeypatch):
    original = recompute.AutocastState.context

    def only_when_on(self):  # the old rule: a null context when autocast was off in the forward
        return original(self) if any(on for _, on, _ in self.states) else contextlib.nullcontext()

    monkeypatch.setattr(recompute.AutocastState, "context", only_when_on)
    assert autocast_island_error() > 1e-3


def test_autocast_state_is_captured_for_every_available_device_type():
    state = recompute.AutocastState.capture("cpu")
    assert [s[0] for s in state.states] == ["cpu"]
    assert recompute.AutocastState.capture("meta").states[0][0] == "cpu"  # meta has no autocast
