"""revlib.core.memory: exact saved-for-backward bytes, and the flat memory of reversible chains."""

from __future__ import annotations

import torch
from helpers import revnet_stack
from torch import nn

from revlib.core.memory import SavedTensorMeter, saved_tensor_bytes

X_SHAPE = (1, 8, 4, 4)


def bytes_at(depth: int, mode: str) -> int:
    torch.manual_seed(0)
    return saved_tensor_bytes(
        revnet_stack(depth, mode=mode), torch.randn(*X_SHAPE, requires_grad=True)
    )


def test_reversible_saved_bytes_do_not_grow_with_depth():
    output_bytes = 1 * 8 * 4 * 4 * 4
    assert bytes_at(2, "reversible") == bytes_at(64, "reversible") == output_bytes


def test_autograd_and_checkpoint_grow_linearly_with_depth():
    for mode in ("autograd", "checkpoint"):
        b2, b3, b64 = bytes_at(2, mode), bytes_at(3, mode), bytes_at(64, mode)
        per_block = b3 - b2
        assert per_block > 0
        assert b64 == b2 + 62 * per_block, mode
    # checkpoint keeps one input per block, autograd every intermediate
    assert bytes_at(64, "checkpoint") < bytes_at(64, "autograd")


def test_each_storage_is_counted_once_and_parameters_are_left_out():
    x = torch.randn(100, requires_grad=True)
    w = nn.Parameter(torch.randn(100))
    with SavedTensorMeter() as meter:
        y = x * w  # saves x and w
        z = (x * 2) * x  # saves x again (same storage) and x*2
        v = x[:50] * x[50:]  # saves two views of x's storage
    assert meter.count == 2
    assert meter.bytes == 2 * 100 * 4
    assert meter.by_dtype == {"float32": 800}
    del y, z, v


def test_on_save_is_called_once_per_counted_storage():
    x = torch.randn(100, requires_grad=True)
    w = nn.Parameter(torch.randn(100))
    calls = []
    with SavedTensorMeter(
        on_save=lambda t, nbytes: calls.append((tuple(t.shape), nbytes))
    ) as meter:
        y = x * w  # saves x (counted) and the parameter w (not)
        z = (x * 2) * x  # saves x again (not) and x*2 (counted)
        v = x[:50] * x[50:]  # views of x's storage (not)
    assert calls == [((100,), 400), ((100,), 400)]
    assert sum(nbytes for _, nbytes in calls) == meter.bytes
    del y, z, v


def test_excluded_tensors_are_not_counted():
    x = torch.randn(10, requires_grad=True)
    buf = torch.randn(10)
    with SavedTensorMeter(exclude=[buf]) as meter:
        (x.exp() * buf).sum()  # saves exp's output (counted) and buf (excluded)
    assert meter.bytes == 10 * 4


def test_saved_bytes_scale_with_dtype():
    m = revnet_stack(2, mode="autograd")
    x = torch.randn(*X_SHAPE, requires_grad=True)
    b32 = saved_tensor_bytes(m, x)
    b64 = saved_tensor_bytes(m.double(), x.double().detach().requires_grad_())
    assert b64 == 2 * b32
