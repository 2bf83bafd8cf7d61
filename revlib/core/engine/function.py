"""The autograd node of one block: a forward without a graph, and one step of Algorithm 1 back.

:class:`BlockFunction` is what :class:`~revlib.core.engine.chain.BlockCall`
applies. Its forward runs the block without a graph, under the
guards, recording a :class:`~revlib.core.replay.tape.Tape`, and saves nothing but
the tape (and the chain's last output). Its backward is one step of Algorithm 1
of Gomez et al. (2017): from the block's output, which the next block's step
rebuilt, and its gradient, the block's input, its gradient, and the gradients
of its parameters and of the extra arguments. The parameters and the
tensor-valued extras are inputs of the node (as MemCNN's ``revop`` passes
them), so their gradients reach autograd's accumulation (hooks, DDP's reducer,
FSDP's reduce-scatter) as in mode ``"autograd"``.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from .. import refusals
from ..aux_losses import collecting
from ..blocks import (
    ReversibleBlock,
    detached_parameters,
    fused_step_applies,
    grads_for,
    plain_run,
    takes_halves,
)
from ..halves import Halves
from ..replay import Tape, cached_walks, records_nothing
from .guards import (
    ModuleState,
    SideInputGuard,
    check_attribute_tensors,
    fingerprint,
    signature,
)
from .measure import measure_block

if TYPE_CHECKING:
    from .chain import BlockCall, Chain  # it imports this module

__all__ = ["BlockFunction", "in_reversible_block", "needs_no_tape"]


class _Depth(threading.local):
    value = 0


_INSIDE = _Depth()


def in_reversible_block() -> bool:
    """True while the engine runs a block's forward or backward step (a recomputation is already
    under way)."""
    return _INSIDE.value > 0


@contextlib.contextmanager
def _inside() -> Iterator[None]:
    _INSIDE.value += 1
    try:
        yield
    finally:
        _INSIDE.value -= 1


_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _checksum(y: Tensor) -> Tensor:
    """The wrapping sum of the chain's output's bit patterns: a write through ``y.data`` that moves
    no version counter changes it (any one changed element does; NaNs compare as bits). One pass
    in the output's own width (a float64 sum first converted the whole output)."""
    if y.is_complex():
        y = torch.view_as_real(y)
    bits = y.view(_SAME_SIZE_INT[y.element_size()])
    return bits.sum(dtype=torch.int64 if y.element_size() == 8 else torch.int32)


class BlockFunction(torch.autograd.Function):
    """Forward without a graph; backward: reconstruct the input, one step of Algorithm 1."""

    # ctx: autograd's context object, which carries the attributes set on it (untyped in torch)
    @staticmethod
    def forward(
        ctx: Any, x: Tensor, call: BlockCall, slots: tuple[int, ...], *tensors: Tensor
    ) -> Tensor | tuple[Tensor, ...]:
        """Run the block without a graph, recording its tape; return its output, and its
        auxiliary losses when it reported any."""
        chain, block = call.chain, call.block
        owner = refusals.owner(call.index, block)
        extra_tensors, params = tensors[: len(slots)], tensors[len(slots) :]
        # detached: the forward runs in grad mode, where only a side input builds a graph
        x_in = x.detach()
        extras = call.extras_with(slots, [t.detach() for t in extra_tensors])
        tape = Tape.start(x_in, chain.record_rng, extras)
        tape.names = chain.names
        tape.call = chain.call
        before = {k: fingerprint(v) for k, v in extras.items()}
        with collecting() as aux:
            y = _forward(block, x_in, tape, (x, *tensors), params, aux, owner, chain)
        for name, value in extras.items():  # what the forward stored there would be lost
            if fingerprint(value) != before[name]:
                raise refusals.extra_changed_by_forward(owner, name)
        if chain.costs is not None:
            with collecting():
                chain.costs.append(measure_block(block, x, tape))
        for record in tape.hook_records():
            for name, shape in record.kept_outputs(keep=y):
                raise refusals.hook_kept_output(owner, name, shape)
        chain.used_extras |= tape.used_extras
        if y is x_in:
            y = y.clone()
        ctx.call, ctx.slots, ctx.params = call, slots, params
        ctx.extra_versions = [(weakref.ref(t), t._version) for t in extra_tensors]
        ctx.state = ModuleState.capture(block, [tape])
        last = call.index == chain.count - 1
        ctx.keeps_output = chain.keeps_output(call.index)
        kept = tape.tensors()
        ctx.n_kept = len(kept)
        ctx.save_for_backward(*kept, *extra_tensors, *((y,) if ctx.keeps_output else ()))
        # the tape without its tensors (saved above; backward puts them back with with_tensors)
        ctx.tape = tape.with_tensors(itertools.repeat(None))  # type: ignore[arg-type]
        ctx.checksum = _checksum(y.detach()) if last else None
        chain.output = signature(y)
        ctx.output_shape, ctx.output_dtype, ctx.output_device = y.shape, y.dtype, y.device
        ctx.n_aux = len(aux)
        ctx.set_materialize_grads(False)  # an auxiliary loss left out of the loss: None, no replay
        return (y, *(a.detach().clone() for a in aux)) if aux else y

    @staticmethod
    def backward(ctx: Any, dy: Tensor, *daux: Tensor | None) -> tuple[Tensor | None, ...]:
        """One step of Algorithm 1: rebuild the block's input, return its gradient and those of
        the extras and parameters."""
        with cached_walks():  # one walk of each module for the whole step (the first is fresh)
            return BlockFunction._backward(ctx, dy, *daux)

    @staticmethod
    def _backward(ctx: Any, dy: Tensor, *daux: Tensor | None) -> tuple[Tensor | None, ...]:
        call: BlockCall = ctx.call
        chain, block, i = call.chain, call.block, call.index
        if dy is None:  # only the block's auxiliary losses reach the loss
            dy = torch.zeros(ctx.output_shape, dtype=ctx.output_dtype, device=ctx.output_device)
        _check_plain_backward(dy)
        kept, extra_tensors, y = _unpack(ctx, chain.reconstructed.pop(i, None), call)
        ctx.state.check(block, refusals.OWNER, prefix=f"{i}.")
        tape = ctx.tape.with_tensors(iter(kept))
        aliases = {id(p): p.detach().requires_grad_(True) for p in ctx.params}
        extra_aliases = [t.detach().requires_grad_(t.requires_grad) for t in extra_tensors]
        tape.extras = call.extras_with(ctx.slots, extra_aliases)
        with ctx.state.forward_training_flags():
            owner = refusals.owner(i, block)
            x, dx, grads = _step(block, y, dy, tape, aliases, owner, chain.fused_step)
            if any(d is not None for d in daux):
                x_aux, aux_grads = _aux_step(block, x, daux, tape, aliases)
                dx = x_aux if dx is None else dx + x_aux
                grads = [*grads, *aux_grads]
        # the step's gradients are paired with the aliases: sum them onto the node's inputs
        slot = {id(a): k for k, a in enumerate(aliases.values())}
        slot.update({id(p): k for k, p in enumerate(ctx.params)})
        slot.update({id(a): len(ctx.params) + k for k, a in enumerate(extra_aliases)})
        summed: list[Tensor | None] = [None] * (len(ctx.params) + len(ctx.slots))
        for target, g in grads:
            k = slot.get(id(target))
            if g is not None and k is not None:
                before = summed[k]
                summed[k] = g if before is None else before + g
        if i > 0 and i - 1 not in chain.stored:
            chain.reconstructed[i - 1] = x
        dx = dx if ctx.needs_input_grad[0] else None
        param_grads, extra_grads = summed[: len(ctx.params)], summed[len(ctx.params) :]
        return (dx, None, None, *extra_grads, *param_grads)


def _aux_step(
    block: ReversibleBlock,
    x: Tensor | Halves,
    daux: tuple[Tensor | None, ...],
    tape: Tape,
    aliases: dict[int, Tensor],
) -> tuple[Tensor, list[tuple[Tensor, Tensor | None]]]:
    """The gradients of the block's auxiliary losses, weighted by theirs: the block's forward
    replayed once more on its rebuilt input, with autograd (:mod:`revlib.core.aux_losses`)."""
    whole = x.join() if isinstance(x, Halves) else x
    leaf = whole.detach().requires_grad_(True)
    with torch.enable_grad(), _inside(), cached_walks(), detached_parameters(block, aliases):
        with collecting() as aux:
            block._forward(leaf, tape.replay)
        pairs = [(a, d) for a, d in zip(aux, daux, strict=True) if d is not None]
        (dx,), grads = grads_for(
            [a for a, _ in pairs], [d for _, d in pairs], [leaf], tape.grad_targets(block)
        )
    return (torch.zeros_like(whole) if dx is None else dx), grads


def needs_no_tape(block: ReversibleBlock) -> bool:
    """True if a recording of the block's forward would keep nothing: revlib's own block (whose
    ``_forward`` only runs its sub-modules and combines their outputs) and
    :func:`~revlib.core.replay.tape.records_nothing` of it. Then its forward calls the
    sub-functions plainly (the watches cost more than F's call on small tensors), and under
    ``torch.compile`` runs as one graph (:mod:`~revlib.core.compiled`)."""
    return type(block).__module__.startswith("revlib.core.") and records_nothing(block)


def _forward(
    block: ReversibleBlock,
    x: Tensor,
    tape: Tape,
    inputs: tuple[Tensor, ...],
    params: tuple[Tensor, ...],
    aux: list[Tensor],
    owner: str,
    chain: Chain,
) -> Tensor:
    """The block's forward, recorded on ``tape``, with no graph, under the side-input guard
    (``x`` and the tape's extras detached; ``inputs``: the node's inputs, which the compiled
    path's static scan allows; ``aux``: the auxiliary losses it reports)."""
    try:
        if chain.call is not None:  # under torch.compile
            # a static scan of the attributes: swapping in detached parameters would recompile
            allowed = {id(t) for t in inputs} | {id(t._base) for t in inputs if t._is_view()}
            check_attribute_tensors(block, allowed, owner)
            with torch.no_grad(), _inside(), cached_walks():
                whole = None if chain.whole is None or tape.extras else chain.whole(block)
                # a tape that would record nothing: one graph for the whole block
                return whole(x) if whole is not None else block.forward_recorded(x, tape)
        guard = SideInputGuard(owner)
        detached = {id(p): p.detach() for p in params}
        with torch.enable_grad(), _inside(), cached_walks(), detached_parameters(block, detached):
            quiet = not tape.extras and needs_no_tape(block)
            y = block._forward(x, plain_run) if quiet else block.forward_recorded(x, tape)
        guard.check((y, *aux))
        return y
    except RuntimeError as err:
        clear = refusals.explain_forward_error(err, owner)
        if clear is None:
            raise
        raise clear from err


def _check_plain_backward(dy: Tensor) -> None:
    """Refuse a double backward and a backward under vmap (both need a graph of the step)."""
    if torch.is_grad_enabled():
        raise refusals.double_backward()
    if (
        torch._C._functorch.peek_interpreter_stack() is not None
        or torch._C._functorch.is_batchedtensor(dy)
    ):
        raise refusals.vmap()


def _unpack(
    ctx: Any, rebuilt: Tensor | Halves | None, call: BlockCall
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], Tensor | Halves]:
    """The tape's tensors, the extra tensors and the block's output: the saved output (the
    chain's last, checked; or the input of a stored block), else the one the next block's step
    rebuilt."""
    try:
        saved = ctx.saved_tensors
    except RuntimeError as err:
        if "inplace operation" not in str(err):
            raise
        changed = _changed_extra(ctx)
        if changed is not None:
            name, shape = changed
            raise refusals.extra_modified_in_place(
                refusals.owner(call.index, call.block), name, shape
            ) from err
        raise refusals.output_modified_in_place() from err
    kept, rest = saved[: ctx.n_kept], saved[ctx.n_kept :]
    extra_tensors = rest[: len(ctx.slots)]
    if ctx.keeps_output:
        y = rest[len(ctx.slots)]
        if ctx.checksum is not None and not torch.equal(_checksum(y.detach()), ctx.checksum):
            raise refusals.output_changed_unseen()
        return kept, extra_tensors, y
    if rebuilt is None:
        raise refusals.backward_before_rebuilt(refusals.owner(call.index, call.block))
    return kept, extra_tensors, rebuilt


def _changed_extra(ctx: Any) -> tuple[str, tuple[int, ...]] | None:
    """The name and shape of a tensor among the extras modified in place since the forward."""
    for name, (ref, version) in zip(ctx.call.names, ctx.extra_versions, strict=True):
        t = ref()
        if t is not None and t._version != version:
            return name, tuple(t.shape)
    return None


def _step(
    block: ReversibleBlock,
    y: Tensor | Halves,
    dy: Tensor,
    tape: Tape,
    aliases: dict[int, Tensor],
    owner: str,
    fused_step: Callable[..., Any] | None = None,
) -> tuple[Tensor | Halves, Tensor | None, list[tuple[Tensor, Tensor | None]]]:
    """One step of Algorithm 1 (the block's fused ``backward_step`` where it applies; under
    ``torch.compile``, ``fused_step``'s one graph where it gives one), with the parameters
    swapped for their detached aliases."""
    try:
        with torch.enable_grad(), _inside(), cached_walks(), collecting():
            if takes_halves(block):
                y = Halves.of(block, y)
            elif isinstance(y, Halves):
                y = y.join()
            with detached_parameters(block, aliases):
                one_graph = None if fused_step is None else fused_step(block, y, tape)
                step = one_graph or (
                    block.backward_step
                    if fused_step_applies(block)
                    else ReversibleBlock.backward_step.__get__(block)
                )
                return step(cast(Tensor, y), dy, tape)  # Halves where takes_halves(block)
    except Exception as err:  # re-raised, with the cause named where it is known
        clear = refusals.explain_backward_error(err, owner)
        if clear is None:
            raise
        raise clear from err
