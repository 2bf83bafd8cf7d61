"""``ReversibleSequence.inverse`` and ``check_inverse``: exact in float64, and replaying what
training replays (a block used twice, with dropout, gets a tape per use)."""

from __future__ import annotations

import torch
from engine_helpers import ROUND_OFF, mode_error, smooth_stack
from helpers import conv_bn_relu

import revlib
from revlib.core import sequence


def test_sequence_inverse():
    m = smooth_stack(4).double()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    assert torch.allclose(m.inverse(m(x)), x, atol=1e-12)
    assert revlib.check_inverse(m, x) < 1e-12


def test_check_inverse_with_a_block_used_twice_and_dropout():
    block = revlib.AdditiveCoupling(conv_bn_relu(4, dropout=0.5), conv_bn_relu(4, dropout=0.5))
    tied = revlib.ReversibleSequence([block, revlib.HalfSwap(), block]).double()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    assert revlib.check_inverse(tied, x) < 1e-12
    err, same = mode_error(tied, x)
    assert err <= ROUND_OFF and same


def test_control_tapes_keyed_by_block_break_a_tied_block(monkeypatch):
    def keyed_by_block(self, y, tapes):  # the old rule: one tape per block instance
        by_block = dict(zip(map(id, self.blocks), tapes, strict=True))
        return sequence._each_block(
            self.blocks, y, lambda b, h: b.inverse_replayed(h, by_block[id(b)]), reverse=True
        )

    monkeypatch.setattr(revlib.ReversibleSequence, "inverse_with_tapes", keyed_by_block)
    block = revlib.AdditiveCoupling(conv_bn_relu(4, dropout=0.5), conv_bn_relu(4, dropout=0.5))
    tied = revlib.ReversibleSequence([block, revlib.HalfSwap(), block]).double()
    assert revlib.check_inverse(tied, torch.randn(2, 8, 4, 4, dtype=torch.float64)) > 1e-3
