"""The reversible engine: one autograd node per block, each block called as PyTorch calls a module.

:class:`~revlib.core.sequence.ReversibleSequence` in mode ``"reversible"``
calls every block through ``nn.Module.__call__`` (``block(h, **extras)``), so
the block's forward hooks and pre-hooks run once, and FSDP2's hooks unshard
the block's parameters around its forward and, through the hooks FSDP puts
on the block's output, around its backward step. Inside that call the
block's ``forward`` hands over to :class:`_BlockStep`, an autograd function
whose forward runs the block without a graph and saves nothing but a tape,
and whose backward is one step of Algorithm 1 of Gomez et al. (2017): from
the block's output, which the next block's backward step reconstructed, and
its gradient, the block's input, its gradient, and the gradients of the
block's parameters and of the extra arguments (conditioning tensors). Only
the chain's last output is saved.

The parameters and the tensor-valued extra arguments are inputs of the
autograd function, so their gradients reach autograd's accumulation (hooks,
DDP's reducer, FSDP's reduce-scatter) as in mode ``"autograd"``. What F sees
by any other way is refused (:class:`SideInputGuard`), or recorded and
replayed (:mod:`~revlib.core.recompute`, :mod:`~revlib.core.sidestate`).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .blocks import (
    ENGINE_CALL,
    Halves,
    ReversibleBlock,
    check_extras_taken,
    detached_parameters,
    fused_step_applies,
    takes_halves,
    trainable_parameters,
)
from .recompute import ModuleState, Tape, cached_walks
from .sidestate import check_no_kept_outputs, forward_reads

if TYPE_CHECKING:
    from .sequence import ReversibleSequence  # it imports this module

__all__ = ["Chain", "SideInputGuard", "check_attribute_tensors", "in_reversible_block"]

OWNER = "ReversibleSequence(mode='reversible')"


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


_Signature = tuple[int, torch.Size, tuple[int, ...], int]


def _signature(t: Tensor) -> _Signature:
    return (t.data_ptr(), t.shape, t.stride(), t._version)


class SideInputGuard(TorchFunctionMode):
    """Refuse a tensor that requires grad and reaches a block's forward other than as an input.

    In the engine's forward no graph is built, so the gradient of a tensor F
    reads from an attribute (a conditioning tensor set on F, an unregistered
    ``nn.Parameter``) would silently be lost. Allowed: the block's input, the
    chain's extra arguments and the block's registered parameters.
    """

    def __init__(self, allowed: set[int], owner: str) -> None:
        super().__init__()
        self.allowed = allowed
        self.owner = owner

    def _check(self, value: Any) -> None:
        if isinstance(value, Tensor):
            if (
                value.requires_grad
                and id(value) not in self.allowed
                and not (value._is_view() and id(value._base) in self.allowed)
            ):
                raise _side_input_error(self.owner, value)
        elif isinstance(value, (list, tuple)):
            for v in value:
                if isinstance(v, Tensor):
                    self._check(v)

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Collection[type],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        for a in args:
            self._check(a)
        for a in kwargs.values():
            self._check(a)
        return func(*args, **kwargs)


def _side_input_error(owner: str, t: Tensor) -> RuntimeError:
    return RuntimeError(
        f"{owner}: a tensor of shape {tuple(t.shape)} that requires grad reaches the block without "
        "being an input of the chain or a registered parameter (e.g. a conditioning tensor set as "
        "an attribute of F, or an nn.Parameter kept in a plain list). The reversible forward "
        "builds no graph, so its gradient would be lost. Pass it through the chain (seq(x, "
        "cond=c): F and G receive it by keyword), register it as a parameter, or use "
        "mode='autograd'."
    )


def check_attribute_tensors(block: nn.Module, allowed: set[int], owner: str) -> None:
    """The static form of :class:`SideInputGuard`, used under ``torch.compile``: scan the modules'
    attributes.

    A tensor that requires grad and is not a registered parameter raises when a
    module of the block holds it as a plain attribute or inside a list, tuple
    or dict attribute, or when the ``forward`` of a module defined outside
    torch reads it from a closure cell or a global name (what the eager guard
    sees as it happens; a tensor reached by a deeper path is not seen here).
    """
    registered = {id(p) for p in block.parameters()} | allowed
    for m in block.modules():
        for v in forward_reads(m):
            if isinstance(v, Tensor) and v.requires_grad and id(v) not in registered:
                raise _side_input_error(owner, v)
        for key, value in vars(m).items():
            if key in ("_parameters", "_buffers", "_modules"):
                continue
            values = (
                value.values()
                if isinstance(value, dict)
                else value
                if isinstance(value, (list, tuple))
                else (value,)
            )
            for v in values:
                if isinstance(v, Tensor) and v.requires_grad and id(v) not in registered:
                    raise _side_input_error(owner, v)


def _forward_error(err: RuntimeError, owner: str) -> RuntimeError | None:
    text = str(err)
    if "doesn't require gradient" in text or "does not require grad" in text:
        return RuntimeError(
            f"{owner}: code inside the block needs a graph in the forward "
            f"({text.splitlines()[0]}), e.g. register_hook on an activation or torch.autograd.grad "
            "inside F. The reversible forward runs without a graph (its backward rebuilds the "
            "activations). Put the hook on the block's output, or use mode='autograd'."
        )
    return None


_VMAP_ERROR = (
    f"{OWNER} cannot run its backward under vmap "
    "(torch.autograd.functional.jacobian(vectorize=True), "
    "torch.autograd.grad(is_grads_batched=True)): it reconstructs activations outside the graph. "
    "Use mode='autograd' (revlib.set_mode(model, 'autograd')) for batched gradients."
)


def _backward_error(err: Exception, owner: str) -> Exception | None:
    text = str(err)
    if "Batching rule not implemented" in text or "vmap" in text:
        return RuntimeError(f"{_VMAP_ERROR} ({text.splitlines()[0]})")
    if isinstance(err, torch.utils.checkpoint.CheckpointError) or "heckpoint" in text:
        return RuntimeError(
            f"{owner}: torch.utils.checkpoint inside a reversible block is not supported: its "
            "recomputation runs outside the engine's replay (random state, autocast, running "
            "statistics), and it saves nothing here anyway, since the block's activations are not "
            "stored. Remove the checkpoint from F/G (revlib's CheckpointedModule runs plainly "
            "inside a block), or use mode='checkpoint' for the whole sequence. "
            f"({text.splitlines()[0] if text else type(err).__name__})"
        )
    return None


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
    expected_input: _Signature | None = None
    output: _Signature | None = None
    compiled: bool = False

    @property
    def count(self) -> int:
        return len(self.seq.blocks)

    def run(self, x: Tensor) -> Tensor:
        """Call each block through ``nn.Module.__call__``, checking that hooks did not change what
        flows."""
        self.names = _ModuleNames(self.seq.blocks)
        self.expected_input = _signature(x)
        h = x
        for i, block in enumerate(self.seq.blocks):
            # a ReversibleBlock: the sequence accepts no other block, and the step runs only
            # from ReversibleBlock.forward (a block that does not run it raises below)
            step = _Call(self, i, cast(ReversibleBlock, block))
            ENGINE_CALL.step = step
            try:
                out = block(h, **self.extras)
            except ValueError as err:
                raise ValueError(f"ReversibleSequence block {i}: {err}") from err
            finally:
                ENGINE_CALL.step = None
            owner = f"{OWNER}, block {i} ({type(block).__name__})"
            if not step.ran:
                raise TypeError(
                    f"{owner}: the block's forward did not run the engine's step; its class "
                    "overrides forward(). In mode='reversible' a block's function is its "
                    "_forward(x, run) and its inverse _inverse(y, run), so an override would be "
                    "inverted wrongly. Move the change into _forward/_inverse, or use "
                    "mode='autograd'."
                )
            if not isinstance(out, Tensor) or _signature(out) != self.output:
                raise RuntimeError(
                    f"{owner}: a forward hook on the block replaced or changed its output. The "
                    "reversible backward rebuilds each block's input from its output, so the "
                    "block must return what its _forward computed. Observe in the hook (return "
                    "None) or use mode='autograd'."
                )
            self.expected_input = _signature(out)
            h = out
        check_extras_taken(self.extras, self.used_extras)
        return h


@dataclass
class _Call:
    """The engine's step for one block call, run by the block's ``forward``."""

    chain: Chain
    index: int
    block: ReversibleBlock
    ran: bool = False
    received: dict[str, Any] = field(default_factory=dict)

    def __call__(self, x: Tensor, extras: dict[str, Any]) -> Tensor:
        self.ran = True
        # what the block received (a pre-hook with kwargs may have changed it), with containers
        # and objects copied: the backward step replays the values of the forward
        self.received = {k: _as_of_now(v) for k, v in extras.items()}
        owner = f"{OWNER}, block {self.index} ({type(self.block).__name__})"
        if not isinstance(x, Tensor) or _signature(x) != self.chain.expected_input:
            raise RuntimeError(
                f"{owner}: a forward pre-hook on the block changed its input. The reversible "
                "backward hands each block the output of the block before it, so a block must "
                "receive it unchanged. Observe in the hook (return None) or use mode='autograd'."
            )
        keys = tuple(k for k, v in extras.items() if isinstance(v, Tensor))
        params = trainable_parameters([self.block])
        y: Tensor = _BlockStep.apply(x, self, keys, *(extras[k] for k in keys), *params)
        return y


def _as_of_now(value: Any) -> Any:
    """``value`` if a tensor or immutable; else a deep copy (a dict, a list, an object that the
    caller may change before the backward), or ``value`` itself if it cannot be copied."""
    if isinstance(value, Tensor | int | float | bool | str | bytes | type(None)):
        return value
    try:
        return copy.deepcopy(value)
    except Exception:  # noqa: BLE001 (an object that refuses to be copied is kept as it is)
        return value


def _checksum(y: Tensor) -> Tensor:
    """One float64 sum over the chain's output: a write through ``y.data`` that moves no version
    counter changes it (one pass, no allocation; a write that keeps the sum exactly is not seen)."""
    return y.sum(dtype=torch.float64) if y.numel() else y.new_zeros(())


class _BlockStep(torch.autograd.Function):
    """Forward without a graph; backward: reconstruct the input, one step of Algorithm 1."""

    # ctx: autograd's context object, which carries the attributes set on it (untyped in torch)
    @staticmethod
    def forward(
        ctx: Any, x: Tensor, call: _Call, keys: tuple[str, ...], *tensors: Tensor
    ) -> Tensor:
        chain, block = call.chain, call.block
        owner = f"{OWNER}, block {call.index} ({type(block).__name__})"
        extra_tensors, params = tensors[: len(keys)], tensors[len(keys) :]
        extras = {k: v for k, v in call.received.items() if k not in keys}
        extras.update(zip(keys, extra_tensors, strict=True))
        tape = Tape.start(x, chain.record_rng, extras)
        tape.names = chain.names
        tape.compiled = chain.compiled
        allowed = {id(t) for t in (x, *tensors)} | {
            id(t._base) for t in (x, *tensors) if t._is_view()
        }
        if chain.compiled:
            # Dynamo runs under an active torch function mode too: a static scan of the
            # attributes instead
            check_attribute_tensors(block, allowed, owner)
            guard: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        else:
            guard = SideInputGuard(allowed, owner)
        try:
            with torch.no_grad(), _inside(), guard, cached_walks():
                y = block.forward_recorded(x, tape)
        except RuntimeError as err:
            clear = _forward_error(err, owner)
            if clear is None:
                raise
            raise clear from err
        for log in tape.hooks.values():
            check_no_kept_outputs(log, owner, keep=y)
        chain.used_extras |= tape.used_extras
        if y is x:
            y = y.clone()
        ctx.call, ctx.keys, ctx.n_params = call, keys, len(params)
        ctx.params = params
        ctx.state = ModuleState.capture(block, [tape])
        last = call.index == chain.count - 1
        kept = tape.tensors()
        ctx.n_kept = len(kept)
        ctx.save_for_backward(*kept, *extra_tensors, *((y,) if last else ()))
        # the tape without its tensors (saved above; backward puts them back with with_tensors)
        ctx.tape = tape.with_tensors(itertools.repeat(None))  # type: ignore[arg-type]
        ctx.checksum = _checksum(y.detach()) if last else None
        chain.output = _signature(y)
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        call: _Call = ctx.call
        chain, block, i = call.chain, call.block, call.index
        owner = f"{OWNER}, block {i} ({type(block).__name__})"
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"{OWNER} does not support double backward (create_graph=True): its backward "
                "reconstructs activations outside the graph. Use mode='autograd' or "
                "mode='checkpoint' for higher-order gradients."
            )
        if (
            torch._C._functorch.peek_interpreter_stack() is not None
            or torch._C._functorch.is_batchedtensor(dy)
        ):
            raise RuntimeError(_VMAP_ERROR)
        try:
            saved = ctx.saved_tensors
        except RuntimeError as err:
            if "inplace operation" not in str(err):
                raise
            raise RuntimeError(
                f"{OWNER}: the sequence's output was modified in place (e.g. relu_) before "
                "backward; the backward reconstructs every activation from that output. Use the "
                "out-of-place op (relu) or clone the output first."
            ) from err
        kept, rest = saved[: ctx.n_kept], saved[ctx.n_kept :]
        extra_tensors = rest[: len(ctx.keys)]
        if ctx.checksum is not None:
            y = rest[len(ctx.keys)]
            if not _same_checksum(_checksum(y.detach()), ctx.checksum):
                raise RuntimeError(
                    f"{OWNER}: the sequence's output was changed after the forward without "
                    "autograd seeing it (a write through y.data or y.detach()); the backward "
                    "reconstructs every activation from that output. Change a clone instead."
                )
        else:
            y = chain.reconstructed.pop(i, None)
            if y is None:
                raise RuntimeError(
                    f"{owner}: the backward reached this block before the next block's step "
                    "rebuilt its output: a gradient flows into an inner block's output from "
                    "outside the chain, without the chain's output (e.g. a loss on a block output "
                    "kept by a hook alone). Include the sequence's output in the loss, or use "
                    "mode='autograd'."
                )
        ctx.state.check(block, OWNER, prefix=f"{i}.")
        tape = ctx.tape.with_tensors(iter(kept))
        aliases = {id(p): p.detach().requires_grad_(True) for p in ctx.params}
        extra_aliases = [t.detach().requires_grad_(t.requires_grad) for t in extra_tensors]
        tape.extras = {**tape.extras, **dict(zip(ctx.keys, extra_aliases, strict=True))}
        index = {id(a): k for k, a in enumerate(aliases.values())}
        index.update({id(p): k for k, p in enumerate(ctx.params)})
        extra_index = {id(a): k for k, a in enumerate(extra_aliases)}
        try:
            with torch.enable_grad(), _inside(), ctx.state.forward_training_flags(), cached_walks():
                if takes_halves(block):
                    y = Halves.of(block, y)
                elif isinstance(y, Halves):
                    y = y.join()
                with detached_parameters(block, aliases):
                    step = (
                        block.backward_step
                        if fused_step_applies(block)
                        else ReversibleBlock.backward_step.__get__(block)
                    )
                    x, dx, grads = step(y, dy, tape)
        except Exception as err:  # noqa: BLE001 (re-raised, with the cause named where it is known)
            clear = _backward_error(err, owner)
            if clear is None:
                raise
            raise clear from err
        param_grads: list[Tensor | None] = [None] * ctx.n_params
        extra_grads: list[Tensor | None] = [None] * len(ctx.keys)
        for target, g in grads:
            if g is None:
                continue
            if id(target) in index:
                k = index[id(target)]
                before = param_grads[k]
                param_grads[k] = g if before is None else before + g
            elif id(target) in extra_index:
                k = extra_index[id(target)]
                before = extra_grads[k]
                extra_grads[k] = g if before is None else before + g
        if i > 0:
            chain.reconstructed[i - 1] = x
        dx = dx if ctx.needs_input_grad[0] else None
        return (dx, None, None, *extra_grads, *param_grads)


def _same_checksum(a: Tensor, b: Tensor) -> bool:
    return bool(
        torch.equal(a, b)
        or (a.isnan() == b.isnan()).all()
        and torch.equal(a.nan_to_num(), b.nan_to_num())
    )
