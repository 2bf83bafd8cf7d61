"""Under ``torch.compile``, a plain image coupling's backward step runs as one compiled graph
(revlib.core.compiled.compiled_backward_step): autograd's gradients and buffers, and the
engine's own step wherever the one graph does not apply."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

import revlib
from revlib.core import compiled as compiled_module


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def fused_calls(monkeypatch):
    """How many backward steps ran as one graph."""
    calls = []
    original = compiled_module._fused_step

    def counting(*args):
        calls.append(args[0])
        return original(*args)

    monkeypatch.setattr(compiled_module, "_fused_step", counting)
    return calls


def half(channels: int = 4) -> nn.Module:
    return nn.Sequential(
        nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1)
    )


def plain_net(depth: int = 3, **coupling) -> revlib.ReversibleSequence:
    torch.manual_seed(0)
    blocks = [revlib.AdditiveCoupling(half(), half(), **coupling) for _ in range(depth)]
    return revlib.ReversibleSequence(blocks).double()


X = torch.randn(4, 8, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


def compare(model: revlib.ReversibleSequence, x: torch.Tensor = X, steps: int = 3) -> float:
    """Train ``model`` compiled in mode "reversible" and a copy eagerly in mode "autograd";
    return the largest difference of gradients (parameters and input), checking buffers and
    gradient layouts on the way."""
    eager = copy.deepcopy(model)
    eager.mode = "autograd"
    compiled = torch.compile(model)
    worst = 0.0
    for m, run in ((eager, eager), (model, compiled)):
        opt = torch.optim.SGD(m.parameters(), lr=0.05)
        m.grads = []
        for i in range(steps):
            torch.manual_seed(100 + i)  # the same dropout masks in both runs
            opt.zero_grad(set_to_none=True)
            leaf = x.clone().requires_grad_(True)
            run(leaf).square().mean().backward()
            m.grads.append([leaf.grad, *(p.grad for p in m.parameters())])
            opt.step()
    for got, expected in zip(model.grads, eager.grads, strict=True):
        for a, b in zip(got, expected, strict=True):
            if b is None:
                assert a is None
                continue
            assert a.stride() == b.stride()  # autograd's layout contract, channels-last inside
            worst = max(worst, (a - b).abs().max().item())
    for a, b in zip(model.buffers(), eager.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)  # statistics updated once
    return worst


def test_a_plain_image_chain_steps_as_one_graph_with_autograds_gradients(fused_calls):
    assert compare(plain_net()) < 1e-10
    assert len(fused_calls) == 3 * 3  # every block, every step


def test_control_a_step_that_updates_the_statistics_again_is_caught(monkeypatch, fused_calls):
    monkeypatch.setattr(
        compiled_module, "norm_stats_not_updated", lambda fn: contextlib.nullcontext()
    )
    # torch.func refuses the second update (an in-place write to a captured buffer); had it
    # run, the buffers would differ from autograd's
    with pytest.raises((AssertionError, RuntimeError)):
        compare(plain_net())
    assert fused_calls


def test_control_a_step_that_drops_gs_input_gradient_is_caught(monkeypatch, fused_calls):
    original = compiled_module._additive_step

    def wrong(f, g, f_params, g_params, y1, y2, dy):
        x1, x2, dx, f_grads, g_grads = original(f, g, f_params, g_params, y1, y2, dy)
        return x1, x2, dx * 0.5, f_grads, g_grads

    monkeypatch.setattr(compiled_module, "_additive_step", wrong)
    assert compare(plain_net(), steps=1) > 1e-3


def test_frozen_and_tied_parameters(fused_calls):
    model = plain_net()
    model.blocks[0].F[2].weight.requires_grad_(False)  # frozen: no gradient
    model.blocks[1].G = model.blocks[1].F  # tied: F and G are one module
    model.blocks[2].F.requires_grad_(False)  # a whole sub-function frozen
    assert compare(model) < 1e-10
    assert len(fused_calls) == 3 * 3


def _one_process_group():
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    return dist


def test_under_ddp_each_parameter_gets_autograds_gradient(fused_calls):
    from torch.nn.parallel import DistributedDataParallel

    dist = _one_process_group()
    try:
        model = plain_net()
        eager = copy.deepcopy(model)
        eager.mode = "autograd"
        ddp = torch.compile(DistributedDataParallel(model))
        for _ in range(2):  # the reducer must be ready again after the first step
            for m in (ddp, eager):
                m.zero_grad()
                m(X).square().mean().backward()
        pairs = zip(model.parameters(), eager.parameters(), strict=True)
        assert max((a.grad - b.grad).abs().max().item() for a, b in pairs) < 1e-10
        assert len(fused_calls) == 2 * 3
    finally:
        dist.destroy_process_group()


def test_under_bfloat16_autocast_within_its_rounding(fused_calls):
    model = plain_net().float()
    eager = copy.deepcopy(model)
    eager.mode = "autograd"
    grads = []
    for m, run in ((eager, eager), (model, torch.compile(model))):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            run(X.float()).float().square().mean().backward()
        grads.append([p.grad for p in m.parameters()])
    scale = max(g.abs().max().item() for g in grads[0])
    gap = max((a - b).abs().max().item() for a, b in zip(*grads, strict=True))
    assert gap / scale < 2**-7 and fused_calls


class OwnCoupling(revlib.AdditiveCoupling):
    """A user's subclass: it may change the step, so the engine's own step runs."""


def _with_hook():
    model = plain_net()
    model.blocks[1].G[2].register_forward_pre_hook(lambda m, a: (a[0] * 2,))
    return model


def _with_dropout():
    model = plain_net()
    model.blocks[0].F.append(nn.Dropout(0.2))
    return model


def _tokens():
    torch.manual_seed(0)
    lin = [nn.Sequential(nn.LayerNorm(3), nn.Linear(3, 3)) for _ in range(2)]
    return revlib.ReversibleSequence([revlib.AdditiveCoupling(*lin, dim=-1)]).double()


@pytest.mark.parametrize(
    "case, make, x, fused",
    [
        ("a hook in one block", _with_hook, X, 2 * 3),
        ("dropout in one block", _with_dropout, X, 2 * 3),
        ("a user's block class", lambda: _subclassed(), X, 0),
        ("token features (dim=-1)", _tokens, X[:, 0], 0),
    ],
)
def test_the_engines_own_step_runs_where_one_graph_does_not_apply(
    case, make, x, fused, fused_calls
):
    torch.manual_seed(7)
    assert compare(make(), x) < 1e-10
    assert len(fused_calls) == fused


def _subclassed():
    torch.manual_seed(0)
    blocks = [OwnCoupling(half(), half()) for _ in range(3)]
    return revlib.ReversibleSequence(blocks).double()


def test_under_fsdp2_the_engines_own_step_gives_autograds_gradients(fused_calls):
    """fully_shard gives each block a class of its own, so the one-graph step (for revlib's class
    only) stands aside and the engine's step runs, with FSDP's hooks around it."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    dist = _one_process_group()
    try:
        model = plain_net()
        eager = copy.deepcopy(model)
        eager.mode = "autograd"
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        for m in (torch.compile(model), eager):
            m(X).square().mean().backward()
        full = [
            p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
            for p in model.parameters()
        ]
        pairs = zip(full, eager.parameters(), strict=True)
        assert max((a - b.grad).abs().max().item() for a, b in pairs) < 1e-10
        assert not fused_calls
    finally:
        dist.destroy_process_group()


def _saved_and_output(model: revlib.ReversibleSequence, x: torch.Tensor):
    """What the compiled chain saves for backward (in mode "reversible": its last output), and
    its output."""
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = torch.compile(model)(x.clone().requires_grad_(True))
    y.square().mean().backward()
    return saved, y


CL = torch.channels_last


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_the_halves_travel_channels_last_and_the_output_keeps_the_inputs_layout(layout):
    saved, y = _saved_and_output(plain_net(), X.contiguous(memory_format=layout))
    assert len(saved) == 1 and saved[0].is_contiguous(memory_format=CL)
    assert y.is_contiguous(memory_format=layout)


def test_control_without_the_carry_the_last_output_is_contiguous(monkeypatch):
    monkeypatch.setattr(revlib.core.sequence, "carries_channels_last", lambda blocks, x: False)
    saved, y = _saved_and_output(plain_net(), X)
    assert len(saved) == 1 and not saved[0].is_contiguous(memory_format=CL)


def _layouts_a_block_hook_sees(model: revlib.ReversibleSequence) -> list[tuple[bool, bool]]:
    seen = []

    def hook(module, args, out):
        seen.append((args[0].is_contiguous(), out.is_contiguous()))

    model.blocks[1].register_forward_hook(hook)
    _saved_and_output(model, X)
    return seen


def test_a_block_with_a_hook_sees_the_layout_of_eager_mode():
    assert _layouts_a_block_hook_sees(plain_net()) == [(True, True)]


def test_control_a_hooked_block_would_see_channels_last(monkeypatch):
    monkeypatch.setattr(revlib.core.sequence, "carries_channels_last", lambda blocks, x: True)
    assert _layouts_a_block_hook_sees(plain_net()) == [(False, False)]
