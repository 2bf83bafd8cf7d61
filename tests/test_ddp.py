"""DistributedDataParallel over a reversible chain: each parameter receives its gradient once.

Reentrant or manual backward passes break DDP ("Expected to mark a variable
ready only once"). revlib passes the parameters into its autograd function, so
the engine delivers one gradient per parameter. Checked here on the CPU with
the gloo backend and a single process.
"""

from __future__ import annotations

import copy
import socket

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from conftest import max_rel_error, revnet_stack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gradients_equal_plain_autograd():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
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
        worst = max(max_rel_error(a.grad, b.grad) for a, b in zip(model.parameters(), reference.parameters()))
        assert worst <= 1e-5
    finally:
        dist.destroy_process_group()
