"""What users write that mode "reversible" cannot reproduce is refused with its own cause and
fix: a compiled or scripted F, a compiled block, a hook that keeps what it computed."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import revlib
from revlib.core.replay.hooks import HookRecord


def _seq(mode="reversible"):
    torch.manual_seed(0)
    blocks = [
        revlib.AdditiveCoupling(nn.Sequential(nn.Linear(3, 3), nn.Tanh()), nn.Linear(3, 3), dim=-1)
        for _ in range(2)
    ]
    return revlib.ReversibleSequence(blocks, mode=mode).double()


def _step(seq, kept=()):
    x = torch.randn(4, 6, dtype=torch.double, requires_grad=True)
    loss = seq(x).square().sum() + sum(k.sum() for k in kept)
    loss.backward()
    return [p.grad.clone() for p in seq.parameters()]


def test_a_compiled_f_names_torch_compile():
    seq = _seq()
    seq.blocks[0].F = torch.compile(seq.blocks[0].F)
    with pytest.raises(TypeError, match=r"F is torch.compile'd.*torch.compile\(model\)"):
        _step(seq)


def test_a_compiled_block_names_torch_compile_in_every_mode():
    for mode in ("autograd", "reversible"):
        seq = _seq(mode)
        seq.blocks[1] = torch.compile(seq.blocks[1])
        with pytest.raises(TypeError, match="block 1 is torch.compile'd"):
            _step(seq)


def test_a_scripted_g_names_torchscript():
    seq = _seq()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        seq.blocks[0].G = torch.jit.script(seq.blocks[0].G)
    with pytest.raises(TypeError, match="G is a TorchScript module"):
        _step(seq)
    seq.mode = "autograd"
    _step(seq)  # works there


@pytest.mark.parametrize("what", ["a statistic of the output", "the input"])
def test_a_hook_that_keeps_what_it_computed_or_saw_is_refused(what):
    kept = []
    seq = _seq()
    lin = seq.blocks[1].F[0]
    if what == "the input":
        lin.register_forward_pre_hook(lambda m, a: kept.append(a[0]))
    else:
        lin.register_forward_hook(lambda m, a, out: kept.append(out.square().mean()))
    with pytest.raises(RuntimeError, match=r"a hook on 1\.F\.0 kept a tensor"):
        _step(seq, kept)


def test_control_without_the_check_a_kept_statistic_silently_loses_its_gradient(monkeypatch):
    monkeypatch.setattr(HookRecord, "kept_outputs", lambda self, keep=None: [])
    grads = {}
    for mode in ("autograd", "reversible"):
        kept = []
        seq = _seq(mode)
        layer = seq.blocks[1].F[0]
        layer.register_forward_hook(lambda m, a, o, k=kept: k.append(o.square().mean()))
        grads[mode] = _step(seq, kept)
    diff = max((u - v).abs().max().item() for u, v in zip(*grads.values(), strict=True))
    assert diff > 1e-3
