"""FSDP2 (``fully_shard``) per block and at the root, over a reversible chain, in two gloo
processes.

The engine calls each block through ``nn.Module.__call__``, so FSDP's hooks
unshard a block's parameters around its forward and its backward step and
reduce-scatter its gradients; the reversible backward stores no activations
either way. Two processes train two steps on halves of a batch (float64);
the full gradients must equal a single-process autograd run on the whole
batch to 1e-12, and a block's parameters must be unsharded only around its
own forward and backward step (in the backward FSDP may prefetch the block
before it). The control shards the same model while the engine skips the
module call (the old engine): FSDP's hooks never run and the forward fails.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn

STEPS = 2
WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TokenNet(nn.Module):
    """Embedding, a reversible transformer stack (LayerNorm, attention, MLP), a linear read-out."""

    def __init__(self, mode: str = "reversible") -> None:
        super().__init__()
        import revlib

        self.embed = nn.Linear(3, 8)
        self.sequence = revlib.ReversibleSequence(
            [revlib.ReversibleTransformerBlock(4, heads=2, mlp_ratio=2.0) for _ in range(3)],
            mode=mode,
        )
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.sequence(self.embed(x)))


def build(mode: str = "reversible") -> TokenNet:
    torch.manual_seed(0)
    return TokenNet(mode).double()


def batches() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(STEPS, 4, 5, 3, generator=g, dtype=torch.float64),
        torch.randn(STEPS, 4, 5, 2, generator=g, dtype=torch.float64),
    )


def train(
    model: nn.Module, xs: torch.Tensor, targets: torch.Tensor, full
) -> list[list[torch.Tensor]]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    history = []
    for x, t in zip(xs, targets, strict=True):
        opt.zero_grad()
        ((model(x) - t) ** 2).mean().backward()
        history.append([full(p.grad).clone() for p in model.parameters()])
        opt.step()
    return history


def _sharded(block: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(block.F.qkv.weight, DTensor)


def _rank(rank: int, port: int, out: str) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        model = build()
        blocks = list(model.sequence.blocks)
        for block in blocks:
            fully_shard(block)
        fully_shard(model)
        # which blocks hold unsharded parameters whenever some block's F or G runs (forward or
        # replay)
        seen: list[tuple[bool, int, list[bool]]] = []
        subs = {id(b.F): i for i, b in enumerate(blocks)} | {
            id(b.G): i for i, b in enumerate(blocks)
        }

        def note(module, args):
            if id(module) in subs:
                # the engine's forward runs F on detached parameters, its replay on leaves that
                # require grad
                replay = any(p.requires_grad for p in module.parameters())
                seen.append((replay, subs[id(module)], [not _sharded(b) for b in blocks]))

        handle = torch.nn.modules.module.register_module_forward_pre_hook(note)
        xs, targets = batches()
        share = xs.shape[1] // WORLD
        rows = slice(rank * share, (rank + 1) * share)
        history = train(
            model,
            xs[:, rows],
            targets[:, rows],
            lambda g: g.full_tensor() if isinstance(g, DTensor) else g,
        )
        handle.remove()
        torch.save(
            {"history": history, "seen": seen, "sharded_after": [_sharded(b) for b in blocks]},
            f"{out}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_fsdp2_per_block_and_root_equals_single_process_autograd(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    expected = train(build("autograd"), *batches(), lambda g: g)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert len(got["history"]) == STEPS
        for step_grads, step_expected in zip(got["history"], expected, strict=True):
            assert len(step_grads) == len(step_expected)
            worst = max(
                (a - b).abs().max().item() for a, b in zip(step_grads, step_expected, strict=True)
            )
            assert worst <= 1e-12
        assert all(got["sharded_after"])
        forward = [(i, on) for grad, i, on in got["seen"] if not grad]
        backward = [(i, on) for grad, i, on in got["seen"] if grad]
        assert len(forward) == len(backward) == STEPS * 3 * 2  # F and G of 3 blocks, per step
        for i, on in forward:  # in the forward only the running block is unsharded
            assert [j for j, u in enumerate(on) if u] == [i]
        for (
            i,
            on,
        ) in (
            backward
        ):  # in its backward step: the block, and at most the block before it (prefetch)
            assert on[i] and set(j for j, u in enumerate(on) if u) <= {i, i - 1}


def _rank_without_module_call(rank: int, port: int, out: str) -> None:
    from torch.distributed.fsdp import fully_shard

    import revlib.core.engine as engine

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        model = build()
        for block in model.sequence.blocks:
            fully_shard(block)
        fully_shard(model)

        # the old engine: the block's step is run directly, not through nn.Module.__call__
        def direct(self, x):
            for i, block in enumerate(self.seq.blocks):
                step = engine.BlockCall(self, i, block)
                self.expected_input = engine.guards.signature(x)
                x = step(x, self.extras)
            return x

        engine.Chain.run = direct
        xs, targets = batches()
        try:
            ((model(xs[0, :2]) - targets[0, :2]) ** 2).mean().backward()
            outcome = "ran"
        except Exception as err:  # noqa: BLE001
            outcome = f"{type(err).__name__}: {err}"
        with open(f"{out}/control{rank}.txt", "w") as f:
            f.write(outcome)
    finally:
        dist.destroy_process_group()


def test_control_without_the_module_call_fsdp2_fails(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank_without_module_call, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    outcome = (tmp_path / "control0.txt").read_text()
    assert outcome != "ran" and "DTensor" in outcome


@pytest.mark.parametrize("mode", ["reversible", "autograd"])
def test_single_process_model_matches_between_modes(mode):
    """The model of the FSDP test, unsharded: the modes agree (a check on the test's reference)."""
    xs, targets = batches()
    ref = train(build("autograd"), xs, targets, lambda g: g)
    got = train(build(mode), xs, targets, lambda g: g)
    assert (
        max(
            (a - b).abs().max().item()
            for s, e in zip(got, ref, strict=True)
            for a, b in zip(s, e, strict=True)
        )
        <= 1e-12
    )
