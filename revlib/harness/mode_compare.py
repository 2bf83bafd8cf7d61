"""Does ``mode="reversible"`` change training? One seed trained in both modes, update by update.

:func:`compare_modes` trains one reversible network twice from the same
initial weights on the same batches, once with ``mode="autograd"`` and once
with ``mode="reversible"``, and records every update's loss: the first update
whose losses differ, the largest and the final difference. At a few updates,
:func:`gradient_cosine` compares the two modes' gradients of the reversible
run's current weights, in float32 and under bfloat16 autocast (Gomez et al.
2017 measure the numerical error of reconstructed activations the same way).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import train

__all__ = ["gradient_cosine", "compare_modes"]

ExtraLoss = Callable[[nn.Module], Tensor]


def _gradient(
    model: nn.Module, x: Tensor, y: Tensor, extra: ExtraLoss | None, bf16: bool
) -> Tensor:
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
    loss = F.cross_entropy(out.float(), y)
    (loss + extra(model) if extra is not None else loss).backward()
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).flatten().double()
            for p in model.parameters()
        ]
    )


def gradient_cosine(
    model: nn.Module, x: Tensor, y: Tensor, extra: ExtraLoss | None = None
) -> dict[str, float]:
    """Cosines between gradients of copies of ``model`` (a reversible network) on one batch.

    ``fp32``: reversible against autograd, float32. ``bf16``: the same pair
    under bfloat16 autocast (on ``x``'s device). ``bf16_vs_fp32``: autograd in bfloat16
    against autograd in float32, the scale of bfloat16's own rounding.
    ``model`` is not changed (copies absorb the BatchNorm updates).
    """
    from ..core.modes import set_mode

    grads = {}
    for mode in ("autograd", "reversible"):
        for bf16 in (False, True):
            twin = copy.deepcopy(model)
            set_mode(twin, mode)
            grads[mode, bf16] = _gradient(twin, x, y, extra, bf16)

    def cos(a: Tensor, b: Tensor) -> float:
        return float(F.cosine_similarity(a, b, dim=0))

    return {
        "fp32": cos(grads["reversible", False], grads["autograd", False]),
        "bf16": cos(grads["reversible", True], grads["autograd", True]),
        "bf16_vs_fp32": cos(grads["autograd", True], grads["autograd", False]),
    }


def _forever(loader: Iterable[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
    while True:
        yield from loader


def compare_modes(
    build: Callable[[str], nn.Module],
    batches: Callable[[], Iterable[tuple[Tensor, Tensor]]],
    recipe: train.Recipe,
    *,
    seed: int = 0,
    cosine_at: Sequence[int] = (),
    extra_loss: ExtraLoss | None = None,
    perturb: float = 0.0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train ``build(mode)`` from ``seed`` in both modes for ``recipe.iterations`` updates on
    ``device``.

    ``batches()`` makes a fresh loader that yields the same batches each time
    it is made. Returns per-update ``loss`` of each mode, ``first_difference``
    (the first update whose losses are not equal, or ``None``),
    ``max_difference``, ``final_difference``, and ``cosine`` rows (update, and
    :func:`gradient_cosine` of the reversible run's weights before that
    update). ``perturb`` multiplies the reversible run's initial weights by
    ``1 + perturb`` (a control: the comparison must see it).
    """
    out: dict[str, Any] = {"updates": recipe.iterations, "cosine": []}
    for mode in ("autograd", "reversible"):
        t0 = time.perf_counter()
        train.seed_everything(seed)
        model = train.set_bn_momentum(build(mode), 0.1).to(device)
        if mode == "reversible" and perturb:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1 + perturb)
        opt = torch.optim.SGD(
            train.parameter_groups(model, recipe.weight_decay),
            lr=recipe.lr,
            momentum=recipe.momentum,
        )
        losses = []
        model.train()
        for step, (x, y) in zip(range(recipe.iterations), _forever(batches()), strict=False):
            x, y = x.to(device), y.to(device)
            if mode == "reversible" and step in cosine_at:
                out["cosine"].append({"step": step, **gradient_cosine(model, x, y, extra_loss)})
            for g in opt.param_groups:
                g["lr"] = recipe.lr_at(step)
            loss = F.cross_entropy(model(x).float(), y)
            total = loss + extra_loss(model) if extra_loss is not None else loss
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            losses.append(loss.item())
        out[mode] = {"loss": losses, "seconds": time.perf_counter() - t0}
    a, r = out["autograd"]["loss"], out["reversible"]["loss"]
    diffs = [abs(u - v) for u, v in zip(a, r, strict=True)]
    out["first_difference"] = next((i for i, d in enumerate(diffs) if d != 0), None)
    out["max_difference"] = max(diffs)
    out["final_difference"] = diffs[-1]
    return out
