"""A short check for a GPU user: the reversible engine on CUDA, against mode "autograd".

    pytest tests/core/engine/test_cuda.py      # skipped without CUDA

Covers what depends on the device: the CUDA generator (dropout replayed), autocast
on CUDA (float16 forward, float32 backward region), BatchNorm running statistics,
and the flat saved memory.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import grads_of, revnet_stack, worst_rel_error

from revlib.core.memory import saved_tensor_bytes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def both_modes(base, x, autocast: bool = False):
    out = {}
    for mode in ("autograd", "reversible"):
        m = copy.deepcopy(base)
        m.mode = mode
        torch.manual_seed(0)
        with torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
            y = m(x)
        (y.float() ** 2).sum().backward()
        out[mode] = (grads_of(m), [b.clone() for b in m.buffers()], torch.cuda.get_rng_state())
    return out


def test_cuda_dropout_batchnorm_float64_equal_autograd():
    base = revnet_stack(depth=4, channels=8, dropout=0.3).double().cuda()
    x = torch.randn(4, 8, 6, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    out = both_modes(base, x)
    assert worst_rel_error(out["reversible"][0], out["autograd"][0]) <= 1e-10
    assert all(
        torch.equal(a, b) for a, b in zip(out["reversible"][1], out["autograd"][1], strict=True)
    )
    assert torch.equal(
        out["reversible"][2], out["autograd"][2]
    )  # the CUDA stream is left as autograd leaves it


def test_cuda_autocast_float16_close_to_autograd():
    base = revnet_stack(depth=4, channels=16).cuda()
    x = torch.randn(4, 16, 8, 8, device="cuda", requires_grad=True)
    out = both_modes(base, x, autocast=True)
    assert worst_rel_error(out["reversible"][0], out["autograd"][0]) <= 2e-2  # float16 round-off


def test_cuda_saved_memory_is_flat():
    x = torch.randn(1, 8, 4, 4, device="cuda", requires_grad=True)
    b2, b16 = (saved_tensor_bytes(revnet_stack(d).cuda(), x) for d in (2, 16))
    assert b2 == b16 == x.numel() * 4
