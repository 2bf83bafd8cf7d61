r"""Weight smoothness decay: a penalty on the change of the kernels from one block to the next.

Haber and Ruthotto (2017) and Chang et al. (2018) read a deep network as an
ODE whose weights :math:`K(t)` vary with time (depth). A network whose kernels
jump from block to block is a rough discretisation; the regulariser

.. math::
    R = \text{rate} \sum_{\text{stages}} \sum_j \lVert K_j - K_{j+1} \rVert_F^2
    \qquad\Big(\text{or } \frac{\text{rate}}{h}\sum_j \lVert K_j - K_{j+1}\rVert_F^2,
    \text{ a Riemann sum of } \text{rate}\int \lVert \dot K(t)\rVert^2 dt\Big)

penalises that roughness, for every kernel of a block (both :math:`K_1` and
:math:`K_2` of a Hamiltonian block), over consecutive blocks of one stage.
Its gradient with respect to an inner kernel is
:math:`2\,\text{rate}\,(2K_j - K_{j-1} - K_{j+1})`, a discrete Laplacian in depth.

Chang et al.'s TensorFlow code applies ``tf.nn.l2_loss``, which is
:math:`\tfrac12\lVert\cdot\rVert^2`; their rate 2e-4 is rate 1e-4 in the
formula above.

This is not a penalty on one optimizer step's change of the weights,
:math:`\lVert W_t - W_{t-1}\rVert^2`, as Masin and Rothschild's course report on
Chang et al. reads it: that compares a block with itself across training
time, not with its neighbour in depth (the book's chapter on Hamiltonian
networks works through the difference).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from .sequence import ReversibleSequence

__all__ = ["block_kernels", "kernel_stages", "weight_smoothness"]


def block_kernels(block: nn.Module) -> dict[str, Tensor]:
    """The kernels of ``block`` that the penalty compares across depth, by name.

    Blocks of :mod:`revlib.core.ode` name theirs through ``kernels()`` (``K1``, ``K2``
    or ``K``); for any other block every parameter with two or more dimensions
    (convolution and linear weights) counts, by its parameter name.
    """
    kernels = getattr(block, "kernels", None)
    if callable(kernels):
        return dict(kernels())
    return {name: p for name, p in block.named_parameters() if p.dim() >= 2}


def kernel_stages(
    model_or_stages: nn.Module | Iterable[Iterable[nn.Module]],
) -> list[list[nn.Module]]:
    """The stages (lists of consecutive blocks) of a model.

    A model with a ``stages()`` method (e.g. :class:`revlib.models.ODENet`)
    gives its stages; any other module gives one stage per
    :class:`~revlib.ReversibleSequence` inside it; an iterable of iterables of
    blocks is taken as the stages themselves (a lone ReversibleSequence or a
    list of blocks in it is one stage).
    """
    if isinstance(model_or_stages, ReversibleSequence):
        return [list(model_or_stages.blocks)]
    if isinstance(model_or_stages, nn.Module):
        stages = getattr(model_or_stages, "stages", None)
        if callable(stages):
            return [list(s) for s in stages()]
        return [
            list(m.blocks) for m in model_or_stages.modules() if isinstance(m, ReversibleSequence)
        ]
    out = []
    for stage in model_or_stages:
        out.append(list(stage.blocks) if isinstance(stage, ReversibleSequence) else list(stage))
    return out


def weight_smoothness(
    model_or_stages: nn.Module | Sequence[Sequence[nn.Module]],
    rate: float = 2e-4,
    h: float | None = None,
) -> Tensor:
    r"""The weight smoothness decay :math:`R = \text{rate}\sum_j \lVert K_j - K_{j+1}\rVert_F^2` as
    a loss term.

    Args:
        model_or_stages: a model, a :class:`~revlib.ReversibleSequence`, or a
            list of stages, each a list of blocks (see :func:`kernel_stages`).
        rate: the weight of the penalty (Chang et al.: 2e-4 on CIFAR, in
            their code with the factor 1/2 of ``tf.nn.l2_loss``).
        h: if given, divide by the step size (the papers' :math:`1/h` scaling,
            which makes R approximate :math:`\text{rate}\int\lVert\dot K\rVert^2dt`).

    Kernels are paired by name between consecutive blocks of one stage; a
    pair whose shapes differ is skipped, like the shape check of Chang et
    al.'s code. Returns a 0-dim tensor that carries gradients (0 when nothing pairs).
    """
    total: Tensor | None = None
    for stage in kernel_stages(model_or_stages):
        # consecutive blocks: stage[1:] is one shorter, the last block pairs with no successor
        for a, b in zip(stage, stage[1:], strict=False):
            ka, kb = block_kernels(a), block_kernels(b)
            for name, wa in ka.items():
                wb = kb.get(name)
                if wb is None or wb.shape != wa.shape:
                    continue
                term = (wa - wb).pow(2).sum()
                total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    scale = rate / h if h is not None else rate
    return scale * total
