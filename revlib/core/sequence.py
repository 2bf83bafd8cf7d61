"""``ReversibleSequence``: a chain of reversible blocks whose backward stores no block activations.

In mode ``"reversible"`` the forward runs every block without building a
graph and keeps only the chain's output. The backward walks the blocks in
reverse; each block reconstructs its input from its output and turns the
output gradient into the input and parameter gradients (Algorithm 1 of Gomez
et al. 2017). The parameters are inputs of the autograd function, so their
gradients flow through the autograd engine like any other: hooks,
``torch.autograd.grad`` and gradient accumulation behave as usual.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from .blocks import ReversibleBlock, trainable_parameters
from .modes import MODES, HasMode, Mode
from .recompute import Tape, checkpoint_updating_stats_once, has_random_layers

__all__ = ["ReversibleSequence"]

class ReversibleSequence(HasMode):
    """Run reversible blocks one after another, in one of three backward modes.

    Args:
        blocks: the :class:`~revlib.core.blocks.ReversibleBlock` modules, in order.
        mode: ``"reversible"`` (default) stores only the chain's output and
            reconstructs the block inputs during the backward, evaluating each
            sub-function once more; ``"autograd"`` runs the blocks with ordinary
            autograd (everything stored), for A/B checks; ``"checkpoint"`` wraps
            every block in non-reentrant :func:`torch.utils.checkpoint.checkpoint`
            (block inputs stored, running statistics still updated once).
        preserve_rng_state: record and replay the RNG states of every
            sub-function so that dropout masks are the same in the recomputation.
            ``None`` (default) does so exactly when a block holds an active
            ``torch.nn`` dropout layer; pass ``True`` for custom random layers.
        ndim: if given, the number of dimensions the input must have
            (4 for images), checked at every forward.

    In eval mode, or when no gradient is being recorded, the forward is a
    plain forward of the blocks. Double backward (``create_graph=True``)
    through mode ``"reversible"`` raises ``RuntimeError``.
    """

    def __init__(
        self,
        blocks: Iterable[ReversibleBlock],
        mode: Mode = "reversible",
        preserve_rng_state: bool | None = None,
        ndim: int | None = None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        for i, block in enumerate(self.blocks):
            if not isinstance(block, ReversibleBlock):
                raise TypeError(
                    f"ReversibleSequence: block {i} is a {type(block).__name__}, not a "
                    "ReversibleBlock (use a coupling such as revlib.AdditiveCoupling)"
                )
        self.mode = mode
        self.preserve_rng_state = preserve_rng_state
        self.ndim = ndim

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"ReversibleSequence: expected a Tensor, got {type(x).__name__}")
        if self.ndim is not None and x.dim() != self.ndim:
            raise ValueError(
                f"ReversibleSequence: expected an input with {self.ndim} dimensions, "
                f"got shape {tuple(x.shape)}"
            )

    def _records_rng(self, block: nn.Module) -> bool:
        if self.preserve_rng_state is None:
            return has_random_layers(block)
        return self.preserve_rng_state

    def forward(self, x: Tensor) -> Tensor:
        """Apply the blocks in order."""
        self._check_input(x)
        if len(self.blocks) == 0:
            return x
        if not torch.is_grad_enabled() or not self.training or self.mode == "autograd":
            return _each_block(self.blocks, x, lambda block, h: block(h))
        if self.mode == "checkpoint":
            return _each_block(self.blocks, x, lambda block, h: checkpoint_updating_stats_once(block, block, h))
        params = trainable_parameters(self.blocks)
        if not x.requires_grad and not params:
            return _each_block(self.blocks, x, lambda block, h: block(h))
        return _ReversibleChain.apply(x, self, *params)

    def inverse(self, y: Tensor) -> Tensor:
        """Apply the blocks' inverses in reverse order."""
        self._check_input(y)
        return _each_block(self.blocks, y, lambda block, h: block.inverse(h), reverse=True)

    def forward_recorded(self, x: Tensor, record_rng: bool = True) -> tuple[Tensor, list[Tape]]:
        """The forward with one tape per block (see :meth:`inverse_replayed`)."""
        tapes: list[Tape] = []

        def step(block: ReversibleBlock, h: Tensor) -> Tensor:
            tapes.append(Tape.start(h, record_rng))
            return block.forward_recorded(h, tapes[-1])

        return _each_block(self.blocks, x, step), tapes

    def inverse_replayed(self, y: Tensor, tapes: list[Tape]) -> Tensor:
        """The inverse of :meth:`forward_recorded`, with the same random draws."""
        by_block = dict(zip(map(id, self.blocks), tapes))
        return _each_block(
            self.blocks, y, lambda block, h: block.inverse_replayed(h, by_block[id(block)]), reverse=True
        )


def _each_block(blocks: nn.ModuleList, x: Tensor, step, reverse: bool = False) -> Tensor:
    """Apply ``step(block, x)`` along the chain, naming the block in a ValueError."""
    order = reversed(list(enumerate(blocks))) if reverse else enumerate(blocks)
    for i, block in order:
        try:
            x = step(block, x)
        except ValueError as err:
            raise ValueError(f"ReversibleSequence block {i}: {err}") from err
    return x


def _check_parameters_unchanged(
    seq: ReversibleSequence, params: tuple[nn.Parameter, ...], versions: list[int]
) -> None:
    """Raise unless the backward would recompute with the very weights the forward used.

    The reconstruction re-runs the blocks with their current parameters. If
    they were replaced (``torch.func.functional_call``) or changed in place
    (an optimizer step before ``backward``), the gradients would be silently
    wrong, so this is an error.
    """
    current = trainable_parameters(seq.blocks)
    if [id(p) for p in current] != [id(p) for p in params]:
        raise RuntimeError(
            "ReversibleSequence(mode='reversible'): the blocks' parameters were replaced between "
            "forward and backward (e.g. by torch.func.functional_call or a weight swap); the "
            "reconstruction needs the forward's weights. Use mode='autograd' for functional calls."
        )
    changed = [i for i, (p, v) in enumerate(zip(params, versions)) if p._version != v]
    if changed:
        raise RuntimeError(
            f"ReversibleSequence(mode='reversible'): {len(changed)} parameter tensor(s) were modified "
            "in place between forward and backward (e.g. an optimizer step before backward); the "
            "reconstruction would use the new weights and give wrong gradients."
        )


class _ReversibleChain(torch.autograd.Function):
    """Forward without a graph; backward by reconstruction, one block at a time."""

    @staticmethod
    def forward(ctx, x: Tensor, seq: ReversibleSequence, *params: nn.Parameter) -> Tensor:
        tapes: list[Tape] = []

        def step(block: ReversibleBlock, h: Tensor) -> Tensor:
            tapes.append(Tape.start(h, seq._records_rng(block)))
            return block.forward_recorded(h, tapes[-1])

        with torch.no_grad():
            y = _each_block(seq.blocks, x, step)
        if y is x:
            y = y.clone()
        ctx.seq = seq
        ctx.tapes = tapes
        ctx.params = params
        ctx.param_versions = [p._version for p in params]
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "ReversibleSequence(mode='reversible') does not support double backward "
                "(create_graph=True): its backward reconstructs activations outside the graph. "
                "Use mode='autograd' or mode='checkpoint' for higher-order gradients."
            )
        _check_parameters_unchanged(ctx.seq, ctx.params, ctx.param_versions)
        (y,) = ctx.saved_tensors
        index = {id(p): i for i, p in enumerate(ctx.params)}
        grads: list[Tensor | None] = [None] * len(ctx.params)
        with torch.enable_grad():
            for block, tape in reversed(list(zip(ctx.seq.blocks, ctx.tapes))):
                y, dy, param_grads = block.backward_step(y, dy, tape)
                for p, g in param_grads:
                    if g is None:
                        continue
                    i = index[id(p)]
                    grads[i] = g if grads[i] is None else grads[i] + g
        dx = dy if ctx.needs_input_grad[0] else None
        return (dx, None, *grads)
