"""RevNet / ResNet models: exact parameter counts, equal results in every backward mode, memory."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from revlib import ReversibleSequence
from revlib.core.memory import saved_tensor_bytes
from revlib.models import count_parameters, pool_pad, set_mode
from revlib.models import revnet as R
from revlib.models.revnet import PreActNet, RevTransition

# Official code's counts (../shared/reference/paper-numbers.md): 10 and 100 classes.
CIFAR_COUNTS = {
    "resnet32": (464_154, 470_004),
    "revnet38": (464_890, 475_060),
    "resnet110": (1_727_962, 1_733_812),
    "revnet110": (1_729_194, 1_740_804),
    "resnet164": (1_703_258, 1_726_388),
    "revnet164": (1_748_778, 1_794_948),
}
IMAGENET_COUNTS = {"resnet101": 44_541_480, "revnet104": 45_428_072}


@pytest.mark.parametrize("name", sorted(CIFAR_COUNTS))
@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_parameter_counts(name, classes):
    with torch.device("meta"):
        model = getattr(R, name)(num_classes=classes)
    expected = CIFAR_COUNTS[name][0 if classes == 10 else 1]
    assert count_parameters(model) == expected


@pytest.mark.parametrize("name", sorted(IMAGENET_COUNTS))
def test_imagenet_parameter_counts(name):
    with torch.device("meta"):  # 45M parameters: no memory, no forward
        model = getattr(R, name)()
    assert count_parameters(model) == IMAGENET_COUNTS[name]


def test_structure_follows_the_official_configs():
    m = R.revnet38()
    seqs = [s.blocks for s in m.stages]
    # stage 1 keeps the shape (32 -> 32, stride 1): all 3 units reversible;
    # stages 2 and 3 start with a stored transition.
    assert [len(s.blocks) for s in seqs] == [3, 2, 2]
    assert [s.transition is not None for s in m.stages] == [False, True, True]
    assert m.widths == (32, 32, 64, 112)
    b = R.revnet164()
    assert b.widths == (32, 128, 256, 512)
    assert [s.transition is not None for s in b.stages] == [True, True, True]  # 32 -> 128 projects
    # bottleneck transitions project each half with a 1x1 conv, basic ones pool and pad
    assert isinstance(b.stages[1].transition.shortcut1, nn.Conv2d)
    assert isinstance(m.stages[1].transition.shortcut1, R.PoolPadShortcut)
    # the very first unit skips its pre-activation (the stem has just applied BN-ReLU)
    first_f = m.stages[0].blocks.blocks[0].F
    assert isinstance(first_f[0], nn.Conv2d)
    assert isinstance(m.stages[1].transition.F[0], nn.BatchNorm2d)
    r = R.resnet32()
    assert [len(s) for s in r.stages] == [5, 5, 5]
    assert isinstance(r.stages[0][0].branch[0], nn.Conv2d)
    bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert all(bn.momentum == 0.01 and bn.eps == 1e-3 for bn in bns)


def test_official_initialisation():
    torch.manual_seed(0)
    m = R.revnet38()
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            std = math.sqrt(2.0 / (k * mod.out_channels))
            assert mod.weight.abs().max() <= 2 * std + 1e-7  # truncated at two sigma
        if isinstance(mod, nn.Linear):
            assert mod.weight.abs().max() <= math.sqrt(3.0 / mod.in_features)
            assert torch.all(mod.bias == 0)


def test_pool_pad_shortcut():
    x = torch.randn(2, 4, 6, 6)
    y = pool_pad(x, 2, 8)
    assert y.shape == (2, 8, 3, 3)
    assert torch.all(y[:, :2] == 0) and torch.all(y[:, 6:] == 0)
    assert torch.allclose(y[:, 2:6], nn.functional.avg_pool2d(x, 2))
    with pytest.raises(ValueError):
        pool_pad(x, 1, 7)


def _run(model, x):
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    stats = {n: b.clone() for n, b in model.named_buffers()}
    return out.detach(), grads, stats


def _modes_agree(build, x, rtol):
    torch.manual_seed(0)
    base = build().to(x.dtype).train()
    results = {}
    for mode in ("autograd", "reversible", "checkpoint"):
        model = copy.deepcopy(base)
        set_mode(model, mode)
        assert model.mode == mode
        results[mode] = _run(model, x)
    out0, g0, s0 = results["autograd"]
    for mode in ("reversible", "checkpoint"):
        out, g, s = results[mode]
        assert torch.equal(out, out0), mode  # the forward is the same computation
        for name in g0:
            err = (g[name] - g0[name]).norm() / g0[name].norm().clamp_min(1e-30)
            assert err < rtol, (mode, name, err.item())
        for name in s0:  # running statistics updated exactly once
            assert torch.equal(s[name], s0[name]), (mode, name)


def test_revnet38_modes_agree_float64():
    _modes_agree(R.revnet38, torch.randn(2, 3, 8, 8, dtype=torch.float64), rtol=1e-10)


def test_revnet164_modes_agree_float64():
    _modes_agree(R.revnet164, torch.randn(2, 3, 8, 8, dtype=torch.float64), rtol=1e-10)


def test_revnet38_modes_agree_float32():
    """float32, batch 2 at 32x32: outputs bit for bit, gradients to float32 accuracy.

    The tolerance is per parameter 1e-5 relative except when a reconstructed
    value lands on the other side of a ReLU kink (a value within rounding of
    0 changes its mask): then one element's gradient changes, which we bound
    by 1e-2 and allow for at most a few parameters.
    """
    torch.manual_seed(1)
    base = R.revnet38().train()
    x = torch.randn(2, 3, 32, 32)
    ref = _run(copy.deepcopy(base), x)
    for mode in ("reversible", "checkpoint"):
        model = copy.deepcopy(base)
        set_mode(model, mode)
        out, g, _ = _run(model, x)
        assert torch.equal(out, ref[0])
        errs = [((g[n] - ref[1][n]).norm() / ref[1][n].norm()).item() for n in g]
        assert max(errs) < 1e-2, mode
        assert sorted(errs)[len(errs) // 2] < 1e-5, mode  # the typical parameter: float32 accuracy


def test_saved_bytes_reversible_below_checkpoint_below_autograd():
    x = torch.randn(2, 3, 16, 16)
    m = R.revnet38()
    saved = {}
    for mode in ("reversible", "checkpoint", "autograd"):
        m.mode = mode
        saved[mode] = saved_tensor_bytes(m, x)
    assert saved["reversible"] < saved["checkpoint"] < saved["autograd"]
    assert saved["reversible"] < saved["autograd"] / 4


def test_reversible_memory_flat_in_depth():
    x = torch.randn(2, 3, 16, 16)
    cfg = dict(block="basic", channels=(32, 32, 64, 112), strides=(1, 2, 2), reversible=True)
    saved = [saved_tensor_bytes(PreActNet(units=(n, n, n), **cfg), x) for n in (2, 4)]
    assert saved[0] == saved[1]
    res = [
        saved_tensor_bytes(PreActNet(units=(n, n, n), **{**cfg, "reversible": False}), x)
        for n in (2, 4)
    ]
    assert res[1] > 1.5 * res[0]


@pytest.mark.parametrize("name", sorted(CIFAR_COUNTS))
def test_small_one_channel_inputs(name):
    """The offline 8x8 digits (1 channel) and odd sizes go through every CIFAR model."""
    m = getattr(R, name)(num_classes=10, in_channels=1)
    with torch.no_grad():
        for size in (8, 9):
            assert m(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_training_step_on_odd_one_channel_input():
    m = R.revnet38(num_classes=10, in_channels=1)
    x = torch.randn(2, 1, 9, 9, requires_grad=True)
    nn.functional.cross_entropy(m(x), torch.tensor([1, 2])).backward()
    assert x.grad is not None and all(p.grad is not None for p in m.parameters())


def test_mode_errors():
    with pytest.raises(ValueError):
        R.resnet32().mode = "reversible"
    with pytest.raises(ValueError):
        set_mode(R.revnet38(), "fast")
    m = R.revnet38(mode="checkpoint")
    assert all(
        s.mode == "checkpoint"
        for s in m.modules()
        if isinstance(s, (ReversibleSequence, RevTransition))
    )
    assert R.resnet32().mode == "autograd"


def test_a_bad_mode_is_refused_when_the_model_is_built():
    with pytest.raises(ValueError, match="mode must be one of"):
        R.revnet38(mode="fast")


def test_count_parameters_counts_a_shared_parameter_once():
    shared = nn.Linear(3, 3)
    assert count_parameters(nn.Sequential(shared, nn.ReLU(), shared)) == 12
    assert (
        count_parameters(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))) == 24
    )  # control: two layers
