"""DistributedDataParallel over a reversible chain: each parameter receives its gradient once.

Reentrant or manual backward passes break DDP ("Expected to mark a variable
ready only once"). revlib passes the parameters into its autograd function, so
the engine delivers one gradient per parameter. Checked on the CPU with the
gloo backend: in one process (BatchNorm, two steps), and in two spawned
processes that train a few steps on halves of a batch, whose averaged
gradients must equal a single-process autograd run on the whole batch.
"""

from __future__ import annotations

import copy
import socket

import torch
import torch.distributed as dist
from helpers import max_rel_error, revnet_stack
from torch.nn.parallel import DistributedDataParallel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gradients_equal_plain_autograd():
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        model = revnet_stack(depth=3)
        reference = copy.deepcopy(model)
        reference.mode = "autograd"
        ddp = DistributedDataParallel(model)
        x = torch.randn(2, 8, 6, 6)
        for _ in range(2):  # two steps: the reducer must be ready again after the first
            for m in (ddp, reference):
                m.zero_grad()
                (m(x) ** 2).sum().backward()
        worst = max(
            max_rel_error(a.grad, b.grad)
            for a, b in zip(model.parameters(), reference.parameters(), strict=True)
        )
        assert worst <= 1e-5
    finally:
        dist.destroy_process_group()


# ---- two processes: gloo on the CPU, spawned -----------------------------------------------------

STEPS = 3


def smooth_chain() -> torch.nn.Module:
    """Couplings with conv-tanh halves: no BatchNorm, whose per-rank batch statistics would
    differ."""
    from torch import nn

    import revlib

    def half():
        return nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Tanh())

    torch.manual_seed(0)
    return revlib.ReversibleSequence(
        [revlib.AdditiveCoupling(half(), half()) for _ in range(3)]
    ).double()


def full_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, 4, 4, 5, 5, generator=g, dtype=torch.float64), torch.randn(
        STEPS, 4, 4, 5, 5, generator=g, dtype=torch.float64
    )


def train(model, xs, targets):
    """A few SGD steps of mean squared error; returns the gradients of every step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    history = []
    for x, t in zip(xs, targets, strict=True):
        opt.zero_grad()
        ((model(x) - t) ** 2).mean().backward()
        history.append([p.grad.clone() for p in model.parameters()])
        opt.step()
    return history


def _rank(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        model = DistributedDataParallel(smooth_chain())
        xs, targets = full_batch()
        share = xs.shape[1] // world
        rows = slice(rank * share, (rank + 1) * share)
        torch.save(train(model, xs[:, rows], targets[:, rows]), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_equals_single_process_autograd_on_the_full_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    reference = smooth_chain()
    reference.mode = "autograd"
    expected = train(reference, *full_batch())
    for rank in (0, 1):
        history = torch.load(tmp_path / f"rank{rank}.pt")
        assert len(history) == STEPS
        for step_grads, step_expected in zip(history, expected, strict=True):
            assert (
                max(max_rel_error(a, b) for a, b in zip(step_grads, step_expected, strict=True))
                <= 1e-12
            )
