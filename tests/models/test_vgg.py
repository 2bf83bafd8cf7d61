"""VGG-19 and Rev-VGG: seed 003's parameter and activation counts, equal results in every mode."""

from __future__ import annotations

import copy

import pytest
import torch

from revlib.core.memcalc import memory_table
from revlib.core.memory import MiB, saved_tensor_bytes
from revlib.models import count_parameters, rev_vgg, set_mode, vgg19
from revlib.models.vgg import LinearBlock, RevVGG, RevVGGBlock

SEED_REVBLOCK_PARAMS = [517_632, 2_067_456, 8_263_680, 9_443_328]


def test_parameter_counts_match_seed_003():
    with torch.device("meta"):
        v, r = vgg19(), rev_vgg()
    assert count_parameters(v) == 20_565_834
    assert count_parameters(r) == 20_824_330
    blocks = [m for m in r.features if isinstance(m, RevVGGBlock)]
    assert [count_parameters(b) for b in blocks] == SEED_REVBLOCK_PARAMS
    assert count_parameters(r.classifier[1]) == 525_312  # the seed's "Linear block"
    assert round(count_parameters(v) * 4 / MiB, 2) == 78.45  # the seed's parameter memory


def test_layer_output_count_reproduces_seed_tables():
    x = torch.randn(1, 3, 32, 32)
    t = memory_table(vgg19(), x)
    assert t.kept == 638_474  # seed: 638,474 activations per image
    assert round(t.kept_bytes(128) / MiB, 2) == 311.75  # seed: 311.75 MB at batch 128
    r = memory_table(rev_vgg(), x, units=(LinearBlock,))
    # seed: 105,482, but its row "(128,16,16) Maxpool2d -> (128,8,8)" lists 16,384
    # activations for a tensor of 8,192 elements; with that row corrected:
    assert r.kept == 105_482 - 8_192
    assert [row.kept for row in r.rows if row.kind == "RevVGGBlock"] == [0, 0, 0, 0]


def test_rev_vgg_modes_agree_float64():
    torch.manual_seed(0)
    base = RevVGG(widths=(8, 16, 16, 32, 32), hidden=16).double()  # same layout, narrow
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    res = {}
    for mode in ("autograd", "reversible", "checkpoint"):
        m = copy.deepcopy(base)
        set_mode(m, mode)
        assert m.mode == mode
        out = m(x)
        out.square().sum().backward()
        res[mode] = (
            out.detach(),
            [p.grad for p in m.parameters()],
            [b.clone() for b in m.buffers()],
        )
    for mode in ("reversible", "checkpoint"):
        assert torch.equal(res[mode][0], res["autograd"][0])
        for g, g0 in zip(res[mode][1], res["autograd"][1], strict=True):
            assert torch.allclose(g, g0, rtol=1e-9, atol=1e-12)
        for b, b0 in zip(res[mode][2], res["autograd"][2], strict=True):
            assert torch.equal(b, b0)


def test_rev_vgg_saves_less():
    m = rev_vgg()
    x = torch.randn(1, 3, 32, 32)
    saved = {}
    for mode in ("reversible", "autograd"):
        m.mode = mode
        saved[mode] = saved_tensor_bytes(m, x)
    assert saved["reversible"] < saved["autograd"] / 2
    assert saved["reversible"] < saved_tensor_bytes(vgg19(), x) / 2


def test_inputs_must_be_32x32():
    with pytest.raises((RuntimeError, ValueError)):
        vgg19()(torch.randn(2, 3, 16, 16))
