"""The activation-memory calculator: hand-computed tiny cases, and agreement with the meter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import revlib
from revlib.core.memcalc import memory_table
from revlib.core.memory import saved_tensor_bytes
from revlib.models import set_mode
from revlib.models.revnet import PreActNet, revnet38


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def test_tiny_model_by_hand():
    """Input 1x4x4, batch 5; every number below is worked out by hand.

    Layer outputs per image: conv 2*4*4 = 32, BN 32, ReLU (not counted), pool
    2*2*2 = 8, flatten (not counted), linear 3: 75 floats.
    Saved by autograd at batch 5 (float32 = 4 bytes, int64 = 8 bytes):
    conv: its input 5*16*4 = 320; BN: its input 5*32*4 = 640 plus mean and
    inverse std 2*2*4 = 16; ReLU: its output 640; max pool: its input is the
    ReLU output (already saved), plus int64 indices 5*8*8 = 320; linear: its
    input, the flattened pool output, 5*8*4 = 160. Total 2,096 bytes, of which
    16 (the BN statistics) do not grow with the batch.
    """
    model, x = tiny(), torch.randn(5, 1, 4, 4)
    t = memory_table(model, x)
    assert [r.kind for r in t.rows] == [
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "MaxPool2d",
        "Flatten",
        "Linear",
    ]
    assert [r.kept for r in t.rows] == [32, 32, 0, 8, 0, 3]
    assert t.kept == 75
    assert [r.saved_bytes for r in t.rows] == [320, 656, 640, 320, 0, 160]
    assert [r.params for r in t.rows] == [20, 4, 0, 0, 0, 27]
    assert t.measured_bytes == 2096 == saved_tensor_bytes(model, x)
    assert t.fixed_bytes == 16
    assert t.kept_bytes(128) == 75 * 128 * 4
    assert t.measured_at(128) == (2096 - 16) // 5 * 128 + 16
    assert t.rows[3].saved == [((5, 2, 2, 2), "int64")]


def test_measured_is_affine_in_batch():
    model = tiny()
    tables = {n: memory_table(model, torch.randn(n, 1, 4, 4)) for n in (1, 3, 7)}
    for n, t in tables.items():
        assert tables[1].measured_at(n) == t.measured_bytes


def test_reversible_sequence_rows():
    def half():
        return nn.Sequential(
            nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, bias=False)
        )

    seq = revlib.ReversibleSequence([revlib.AdditiveCoupling(half(), half()) for _ in range(3)])
    model = nn.Sequential(nn.Conv2d(3, 8, 1), seq, nn.Conv2d(8, 2, 1))
    x = torch.randn(2, 3, 5, 5)
    seq.mode = "reversible"
    t = memory_table(model, x)
    assert [r.kind for r in t.rows] == ["Conv2d", "ReversibleSequence", "Conv2d"]
    assert t.rows[1].kept == 0
    # the chain keeps its output (2*8*5*5 floats), which the next conv also saves: charged once
    assert t.rows[1].saved_bytes == 2 * 8 * 25 * 4 and t.rows[2].saved_bytes == 0
    seq.mode = "checkpoint"
    t = memory_table(model, x)
    assert t.rows[1].kept == 2 * 8 * 25  # inputs of blocks 2 and 3
    seq.mode = "autograd"
    t = memory_table(model, x)
    assert len(t.rows) == 2 + 3 * 2 * 3  # every layer of F and G listed
    for mode in ("reversible", "checkpoint", "autograd"):
        seq.mode = mode
        assert memory_table(model, x).measured_bytes == saved_tensor_bytes(model, x)


@pytest.mark.parametrize("mode", ["reversible", "checkpoint", "autograd"])
def test_rows_add_up_to_the_meter_on_revnet38(mode):
    model = set_mode(revnet38(), mode)
    x = torch.randn(2, 3, 8, 8)
    t = memory_table(model, x)
    assert t.measured_bytes == saved_tensor_bytes(model, x)
    assert t.params == sum(p.numel() for p in model.parameters())


def test_row_types_make_one_row():
    model = nn.Sequential(
        nn.Linear(4, 6), nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6)), nn.Linear(6, 2)
    )
    t = memory_table(model, torch.randn(3, 4), row_types=(nn.Sequential,))
    # the whole model is an nn.Sequential too, but only the outermost row-unit below it is used
    assert len(t.rows) == 1 and t.rows[0].kept == 2
    inner = type("Block", (nn.Sequential,), {})
    model = nn.Sequential(
        nn.Linear(4, 6), inner(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6)), nn.Linear(6, 2)
    )
    t = memory_table(model, torch.randn(3, 4), row_types=(inner,))
    assert [r.kept for r in t.rows] == [6, 6, 2]
    assert t.measured_bytes == saved_tensor_bytes(model, torch.randn(3, 4))


def test_memory_flat_in_depth_for_revnets():
    x = torch.randn(2, 3, 8, 8)
    cfg = dict(block="basic", channels=(16, 16, 32, 32), strides=(1, 2, 2), reversible=True)
    kept = [memory_table(PreActNet(units=(n, n, n), **cfg), x).measured_bytes for n in (1, 3)]
    assert kept[0] == kept[1]


def test_units_is_the_former_name_of_row_types():
    """Chapter 4 passes ``units=``; it must list the same rows as ``row_types=``."""
    inner = type("Block", (nn.Sequential,), {})
    model = nn.Sequential(
        nn.Linear(4, 6), inner(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6)), nn.Linear(6, 2)
    )
    x = torch.randn(3, 4)
    assert (
        memory_table(model, x, units=(inner,)).rows
        == memory_table(model, x, row_types=(inner,)).rows
    )
    assert len(memory_table(model, x).rows) != len(memory_table(model, x, units=(inner,)).rows)


def test_explain_sets_the_count_against_the_measurement_per_layer_type():
    """The tiny model of the hand-worked test: a conv saves its input (320 bytes), not its output
    (640)."""
    model, x = tiny(), torch.randn(5, 1, 4, 4)
    rows = {kind: rest for kind, *rest in memory_table(model, x).explain()}
    assert rows["Conv2d"] == [640, 320, -320]
    assert rows["ReLU"] == [0, 640, 640]  # not counted, but autograd keeps its output
    assert rows["MaxPool2d"] == [160, 320, 160]  # 8 floats counted; 8 int64 indices saved
