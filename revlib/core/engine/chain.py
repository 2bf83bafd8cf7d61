"""A chain in mode ``"reversible"``: each block called as PyTorch calls a module.

:class:`Chain` calls every block through ``nn.Module.__call__``
(``block(h, **extras)``), so the block's forward hooks and pre-hooks run once,
and FSDP2's hooks unshard the block's parameters around its forward and,
through the hooks FSDP puts on the block's output, around its backward step.
Inside that call the block's ``forward`` finds the :class:`BlockCall` in
``blocks.ENGINE_CALL`` and runs it: one
:class:`~revlib.core.engine.function.BlockFunction` node per block. Block
``i + 1``'s backward step hands the input it rebuilt to block ``i``'s step
through :attr:`Chain.reconstructed`; only the last output is saved.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

import torch
from torch import Tensor, nn
from torch.utils._pytree import TreeSpec, keystr, tree_flatten_with_path, tree_unflatten

from .. import refusals
from ..aux_losses import add_aux_loss
from ..blocks import ENGINE_CALL, ReversibleBlock, check_extras_taken, trainable_parameters
from ..halves import Halves
from ..replay import generators_in, keywords_for
from .function import BlockFunction
from .guards import Signature, signature
from .measure import BlockCost

if TYPE_CHECKING:
    from ..sequence import ReversibleSequence  # it imports this module

__all__ = ["BlockCall", "Chain"]

_T = TypeVar("_T")


class _ModuleNames(dict[int, str]):
    """``{id(module): its name in the chain}``, computed on first use (only error messages need
    it)."""

    def __init__(self, root: nn.Module) -> None:
        super().__init__()
        self.root = root

    @overload
    def get(self, key: int, default: None = None) -> str | None: ...

    @overload
    def get(self, key: int, default: str) -> str: ...

    @overload
    def get(self, key: int, default: _T) -> str | _T: ...

    def get(self, key: int, default: object = None) -> object:
        if not self:
            self.update({id(m): n or type(m).__name__ for n, m in self.root.named_modules()})
        return super().get(key, default)


@dataclass
class Chain:
    """One forward of a sequence in mode ``"reversible"``: the calls of its blocks and what they
    hand back.

    ``reconstructed[i]`` is block ``i``'s output as rebuilt by block
    ``i + 1``'s backward step, kept until block ``i``'s step takes it.
    """

    seq: ReversibleSequence
    extras: dict[str, Any]
    record_rng: bool
    reconstructed: dict[int, Tensor | Halves] = field(default_factory=dict)
    used_extras: set[str] = field(default_factory=set)
    names: dict[int, str] = field(default_factory=dict)  # filled by run() with a _ModuleNames
    expected_input: Signature | None = None
    output: Signature | None = None
    call: Callable[[Callable[..., Tensor]], Callable[..., Tensor]] | None = None
    """How every sub-function is wrapped before a call (under ``torch.compile``: compiled)."""
    whole: Callable[[ReversibleBlock], Callable[[Tensor], Tensor] | None] | None = None
    """Under ``torch.compile``: a block's whole forward as one compiled call, where its tape would
    record nothing (else ``None``)."""
    fused_step: Callable[..., Any] | None = None
    """Under ``torch.compile``: :func:`~revlib.core.compiled.compiled_backward_step`, a block's
    backward step as one compiled call where it applies."""
    channels_last: Callable[[nn.ModuleList, Tensor], bool] | None = None
    """Under ``torch.compile``: :func:`~revlib.core.compiled.carries_channels_last`, whether the
    blocks take and give channels-last tensors."""
    stored: frozenset[int] = frozenset()
    """The blocks that run with stored activations (plain autograd), under a memory budget."""
    costs: list[BlockCost] | None = None
    """If a list, each reversible block's :func:`~revlib.core.engine.measure.measure_block`."""

    @property
    def count(self) -> int:
        return len(self.seq.blocks)

    def keeps_output(self, i: int) -> bool:
        """Whether reversible block ``i`` saves its output: the chain's last block, and a block
        whose successor is stored (that block's graph holds the tensor anyway)."""
        return i == self.count - 1 or i + 1 in self.stored

    def run(self, x: Tensor) -> Tensor:
        """Call each block through ``nn.Module.__call__``, checking that hooks did not change what
        flows."""
        self.names = _ModuleNames(self.seq.blocks)
        carries = self.channels_last
        carry = carries is not None and not self.extras and carries(self.seq.blocks, x)
        h = x.contiguous(memory_format=torch.channels_last) if carry else x
        self.expected_input = signature(h)
        for i, block in enumerate(self.seq.blocks):
            if i in self.stored:  # plain autograd: hooks, FSDP and extras as in mode "autograd"
                h = block(h, **self.extras)
                self.expected_input = signature(h)
                continue
            # a ReversibleBlock: the sequence accepts no other block, and the step runs only
            # from ReversibleBlock.forward (a block that does not run it raises below)
            step = BlockCall(self, i, cast(ReversibleBlock, block))
            ENGINE_CALL.step = step
            try:
                out = block(h, **self.extras)
            except ValueError as err:
                raise ValueError(f"ReversibleSequence block {i}: {err}") from err
            finally:
                ENGINE_CALL.step = None
            if not step.ran:
                raise refusals.forward_overridden(refusals.owner(i, block), block)
            if not isinstance(out, Tensor) or signature(out) != self.output:
                raise refusals.output_changed_by_hook(refusals.owner(i, block))
            self.expected_input = signature(out)
            h = out
        if self.stored:
            self.used_extras |= _taken_by(self.seq.blocks, self.stored, self.extras)
        check_extras_taken(self.extras, self.used_extras)
        return h.contiguous() if carry and x.is_contiguous() else h  # the input's layout


@dataclass
class BlockCall:
    """The engine's step for one block call, run by the block's ``forward``
    (:class:`~revlib.core.blocks.EngineStep`)."""

    chain: Chain
    index: int
    block: ReversibleBlock
    ran: bool = False
    received: list[Any] = field(default_factory=list)
    """The leaves of the extras the block received, tensors left out (``None``)."""
    layout: TreeSpec | None = None
    names: list[str] = field(default_factory=list)
    """How each tensor among the extras is reached (``mask``, ``cond[0]``), for errors."""

    def __call__(self, x: Tensor, extras: dict[str, Any]) -> Tensor:
        self.ran = True
        if not isinstance(x, Tensor) or signature(x) != self.chain.expected_input:
            raise refusals.input_changed_by_hook(refusals.owner(self.index, self.block))
        # what the block received (a pre-hook with kwargs may have changed it): tensors, also
        # inside lists, tuples and dicts, become inputs of the node (gradients, version checks);
        # other values are copied, since the backward step replays the values of the forward
        params = trainable_parameters([self.block])
        if not extras:  # the common case: nothing to flatten
            self.layout = _EMPTY_LAYOUT
            out = BlockFunction.apply(x, self, (), *params)
        else:
            paths, self.layout = tree_flatten_with_path(extras)
            leaves = [v for _, v in paths]
            slots = tuple(k for k, v in enumerate(leaves) if isinstance(v, Tensor))
            self.names = [
                keystr(paths[k][0]).replace("['", "", 1).replace("']", "", 1) for k in slots
            ]
            self.received = [None if isinstance(v, Tensor) else _as_of_now(v) for v in leaves]
            tensors = (leaves[k] for k in slots)
            out = BlockFunction.apply(x, self, slots, *tensors, *params)
        if isinstance(out, Tensor):
            return out
        for loss in out[1:]:  # the block's auxiliary losses, outputs of its node
            add_aux_loss(loss)
        y: Tensor = out[0]
        return y

    def extras_with(self, slots: tuple[int, ...], tensors: Sequence[Tensor]) -> dict[str, Any]:
        """The extras the block received, with ``tensors`` at the tensor leaves ``slots``."""
        if self.layout is _EMPTY_LAYOUT:
            return {}
        leaves = list(self.received)
        for k, t in zip(slots, tensors, strict=True):
            leaves[k] = t
        extras: dict[str, Any] = tree_unflatten(leaves, cast(TreeSpec, self.layout))
        return extras


_EMPTY_LAYOUT: TreeSpec = tree_flatten_with_path({})[1]


def _taken_by(blocks: nn.ModuleList, stored: frozenset[int], extras: dict[str, Any]) -> set[str]:
    """The extra arguments some sub-function of the stored blocks takes by name."""
    taken: set[str] = set()
    for i in stored:
        for fn in blocks[i].children():
            keywords_for(fn, extras, taken)
    return taken


def _as_of_now(value: Any) -> Any:
    """``value`` if a tensor, immutable or a random generator; else a deep copy (a dict, a list,
    an object that the caller may change before the backward) that shares the random generators
    it holds (they draw for the caller, as in mode ``"autograd"``; the step replays their state),
    or ``value`` itself if it cannot be copied."""
    if isinstance(value, Tensor | int | float | bool | str | bytes | type(None)):
        return value
    shared = generators_in([value])
    if any(g.obj is value for g in shared):
        return value
    try:
        return copy.deepcopy(value, {id(g.obj): g.obj for g in shared})
    except Exception:  # an object that refuses to be copied is kept as it is
        return value
