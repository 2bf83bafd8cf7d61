"""FSDP2 with a bfloat16 ``MixedPrecisionPolicy`` on the blocks only, in two gloo processes.

In mode ``"reversible"`` the tensors between the blocks must pass unchanged:
each block's backward step hands the input it rebuilt to the block before it
as that block's output. A policy on the blocks only casts the chain's float32
input to bfloat16 at the first block (``cast_forward_inputs``), and an
``output_dtype`` casts every block's output: both are refused with an FSDP
message (:func:`revlib.core.refusals.fsdp_mixed_precision`) that says what to
do. Done so (the sequence's input cast to bfloat16 by the model, the output
cast back), the same blocks-only policy trains, and its gradients are
compared with the same FSDP setup in mode ``"autograd"``.

The tolerance: both runs compute the blocks in bfloat16 (unit roundoff
:math:`u = 2^{-8}`), and the reversible one also rebuilds the activations in
bfloat16, so the two differ at the level of bfloat16 rounding, not of float64's
(1e-12 in ``test_distributed_fsdp.py``): a few :math:`u` in norm, relative,
after three blocks each rebuilt with an error of about :math:`u`. The test
asks for at most :math:`8u` (measured: 5.1e-3, about :math:`1.3u`), and at
most twice the distance of autograd's own bfloat16 gradients from the float32
ones without any policy (measured: 7.1e-3): the reversible backward adds an
error of the order of bfloat16's own, not more.
Control: with the FSDP check skipped, the first case gets the engine's generic
message about a pre-hook.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from test_distributed_fsdp import WORLD, free_port
from torch import nn

BF16_U = 2.0**-8


class CastNet(nn.Module):
    """Embedding, a reversible transformer stack, a read-out; ``cast``: the sequence's input to
    bfloat16 and its output back to float32 (the refusal's advice)."""

    def __init__(self, mode: str, cast: bool) -> None:
        super().__init__()
        import revlib

        self.cast = cast
        self.embed = nn.Linear(3, 8)
        self.sequence = revlib.ReversibleSequence(
            [revlib.ReversibleTransformerBlock(4, heads=2, mlp_ratio=2.0) for _ in range(3)],
            mode=mode,
        )
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        if self.cast:
            return self.out(self.sequence(h.to(torch.bfloat16)).float())
        return self.out(self.sequence(h).float())


# name: (mode, the model casts around the sequence, policy on the blocks, output_dtype)
CASES = {
    "input cast, reversible": ("reversible", False, True, None),
    "output_dtype, reversible": ("reversible", True, True, torch.float32),
    "input cast, reversible, no FSDP check": ("reversible", False, True, None),
    "cast by the model, reversible": ("reversible", True, True, None),
    "cast by the model, autograd": ("autograd", True, True, None),
    "float32, autograd": ("autograd", False, False, None),
}


def _rank(rank: int, port: int, out: str) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    import revlib.core.blocks as blocks

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    g = torch.Generator().manual_seed(1)
    x, target = torch.randn(4, 5, 3, generator=g), torch.randn(4, 5, 2, generator=g)
    rows = slice(rank * 2, rank * 2 + 2)
    results: dict[str, object] = {}
    try:
        for name, (mode, cast, bf16, output_dtype) in CASES.items():
            torch.manual_seed(0)
            model = CastNet(mode, cast)
            policy = MixedPrecisionPolicy(
                param_dtype=torch.bfloat16, reduce_dtype=torch.float32, output_dtype=output_dtype
            )
            for block in model.sequence.blocks:
                fully_shard(block, mp_policy=policy if bf16 else MixedPrecisionPolicy())
            fully_shard(model)
            check = blocks._fsdp_mixed_precision
            if "no FSDP check" in name:
                blocks._fsdp_mixed_precision = lambda block: None
            try:
                ((model(x[rows]) - target[rows]) ** 2).mean().backward()
                results[name] = [p.grad.full_tensor() for p in model.parameters()]
            except RuntimeError as err:
                results[name] = f"{type(err).__name__}: {err}"
            finally:
                blocks._fsdp_mixed_precision = check
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("fsdp_mp")
    mp.spawn(_rank, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{rank}.pt") for rank in range(WORLD)]


def _norm(grads: list[torch.Tensor]) -> float:
    return torch.cat([g.flatten() for g in grads]).norm().item()


def _distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return _norm([x - y for x, y in zip(a, b, strict=True)]) / _norm(b)


def test_blocks_only_policy_that_casts_the_input_is_refused_with_an_fsdp_message(results):
    for got in results:
        msg = got["input cast, reversible"]
        assert isinstance(msg, str) and msg.startswith("RuntimeError: ReversibleSequence")
        assert "block 0" in msg
        assert "FSDP2's MixedPrecisionPolicy on the block casts its input to bfloat16" in msg
        assert "seq(h.to(torch.bfloat16))" in msg and "mode='autograd'" in msg


def test_blocks_only_policy_with_an_output_dtype_is_refused_with_an_fsdp_message(results):
    for got in results:
        msg = got["output_dtype, reversible"]
        assert isinstance(msg, str) and "block 0" in msg
        assert "casts its output to float32 (output_dtype)" in msg
        assert "seq(h).to(torch.float32)" in msg


def test_control_without_the_fsdp_check_the_message_is_the_generic_one(results):
    for got in results:
        msg = got["input cast, reversible, no FSDP check"]
        assert isinstance(msg, str) and "a forward pre-hook on the block changed its input" in msg
        assert "MixedPrecisionPolicy" not in msg


def test_blocks_only_policy_with_the_cast_in_the_model_matches_autograd_to_bf16(results):
    for got in results:
        rev, ref = got["cast by the model, reversible"], got["cast by the model, autograd"]
        fp32 = got["float32, autograd"]
        assert isinstance(rev, list) and isinstance(ref, list) and isinstance(fp32, list)
        assert all(g.dtype == torch.float32 for g in rev)  # reduce_dtype: float32 gradients
        rev_error, bf16_error = _distance(rev, ref), _distance(ref, fp32)
        # control: the policy is in effect (bfloat16 is far from float32), so the bound means
        # something
        assert bf16_error > 10 * 2.0**-23
        assert rev_error <= 8 * BF16_U
        assert rev_error <= 2 * bf16_error
