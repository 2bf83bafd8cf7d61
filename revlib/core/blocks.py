"""The contract of a reversible block, and the channel split that couplings share.

A block is a bijection ``y = forward(x)`` with ``x = inverse(y)``. Subclasses
write the two directions once, as ``_forward(x, run)`` and ``_inverse(y, run)``,
calling every learned sub-function through ``run(name, fn, tensor)``. The same
code then serves a plain forward (:func:`plain_run`), a forward that records
on a :class:`~revlib.core.replay.tape.Tape` (``tape.record``), and a
recomputation that replays it (``tape.replay``). The rules an implementer must
follow are in :class:`ReversibleBlock`'s docstring.

:meth:`ReversibleBlock.backward_step` is the step of the paper's Algorithm 1:
from the output ``y`` and its gradient ``dy`` it returns the input ``x``, its
gradient ``dx`` and the parameter gradients. The generic version inverts the
block and then re-runs it with autograd (two evaluations of each sub-function);
couplings override it with a fused step that evaluates each sub-function once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from . import refusals
from .replay import Slot, Tape, keywords_for, submodules, swapped

__all__ = [
    "ReversibleBlock",
    "EngineStep",
    "Run",
    "ParamGrads",
    "plain_run",
    "PlainRun",
    "run_with",
    "fused_step_applies",
    "check_same_shape",
    "implements_contract",
    "detached_parameters",
]

Run = Callable[[str, nn.Module, Tensor], Tensor]
"""How a block calls a sub-function: ``run(name, fn, x)`` returns ``fn(x)``."""

ParamGrads = list[tuple[Tensor, "Tensor | None"]]
"""A backward step's gradients, paired with what :meth:`Tape.grad_targets` gave: the parameters'
detached aliases (the engine maps them back to the parameters) and the extra arguments."""


def plain_run(name: str, fn: nn.Module, x: Tensor) -> Tensor:
    """Call ``fn(x)`` with nothing recorded or replayed."""
    out: Tensor = fn(x)  # a sub-function returns a tensor (the block contract)
    return out


class PlainRun:
    """:func:`plain_run` that also passes the chain's extra arguments ``fn`` takes by name.

    ``PlainRun({"cond": c})("F", F, h)`` is ``F(h, cond=c)`` if ``F.forward``
    has a parameter ``cond`` (or ``**kwargs``), else ``F(h)``.
    """

    __slots__ = ("extras",)

    def __init__(self, extras: dict[str, object]) -> None:
        self.extras = extras

    def __call__(self, name: str, fn: nn.Module, x: Tensor) -> Tensor:
        out: Tensor = fn(x, **keywords_for(fn, self.extras, TAKEN_EXTRAS.names))
        return out


class _TakenExtras(threading.local):
    """The extra arguments that some sub-function took by name, while a sequence collects them."""

    names: set[str] | None = None


TAKEN_EXTRAS = _TakenExtras()


def check_extras_taken(extras: Iterable[str], taken: set[str]) -> None:
    """Raise ``TypeError`` if an extra argument of a chain reached no sub-function (every mode
    refuses one alike: it would silently do nothing)."""
    unused = set(extras) - taken
    if unused:
        raise refusals.extras_not_taken(unused)


def run_with(extras: dict[str, object]) -> Run:
    """The run function of a plain forward: :func:`plain_run`, or :class:`PlainRun` with extra
    arguments."""
    return PlainRun(extras) if extras else plain_run


class EngineStep(Protocol):
    """The engine's step for one block call (:class:`revlib.core.engine.chain.BlockCall`)."""

    @property
    def block(self) -> nn.Module: ...

    @property
    def index(self) -> int: ...

    def __call__(self, x: Tensor, extras: dict[str, Any]) -> Tensor: ...


class _EngineCall(threading.local):
    """The block call the reversible engine is making now, handed to the block's ``forward``.

    The engine calls each block as PyTorch calls a module (``block(h)``: hooks,
    FSDP's unshard and reshard); the block's :meth:`ReversibleBlock.forward`
    finds the engine's step here and runs it instead of a plain forward.
    """

    step: EngineStep | None = None


ENGINE_CALL = _EngineCall()


def _fsdp_mixed_precision(block: nn.Module) -> Any:
    """The ``MixedPrecisionPolicy`` FSDP2's ``fully_shard`` gave ``block`` (read from FSDP's
    private state: ``None`` where a torch version keeps it elsewhere)."""
    try:
        return getattr(cast(Any, block)._get_fsdp_state(), "_mp_policy", None)
    except Exception:  # noqa: BLE001  (a torch without that state: the generic refusal stands)
        return None


def _step_under_fsdp(
    block: nn.Module, step: EngineStep, x: Tensor, extras: dict[str, Any]
) -> Tensor:
    """Run ``step``; where FSDP2's mixed precision casts the tensors between the blocks (the
    engine then refuses a changed input, or the chain a changed output), say so."""
    policy = _fsdp_mixed_precision(block)
    try:
        y = step(x, extras)
    except refusals.InputChangedByHook as err:
        if policy is not None and policy.cast_forward_inputs and policy.param_dtype == x.dtype:
            raise refusals.fsdp_mixed_precision(err.owner, "input", x.dtype) from err
        raise
    out_dtype = getattr(policy, "output_dtype", None)
    if out_dtype is not None and out_dtype != y.dtype and y.is_floating_point():
        raise refusals.fsdp_mixed_precision(refusals.owner(step.index, block), "output", out_dtype)
    return y


def _step_owner(block: nn.Module) -> type:
    return next(cls for cls in type(block).__mro__ if "backward_step" in vars(cls))


def fused_step_applies(block: nn.Module) -> bool:
    """True if the block's own ``backward_step`` may be used: it was written for this
    ``_forward``/``_inverse``.

    The class that defines the ``backward_step`` in use must resolve
    ``_forward`` and ``_inverse`` to the same methods as the block's class. A
    subclass that changes the forward (a layer scale written the documented
    way) but inherits a fused step would otherwise get that step's gradients
    for another function; it gets the generic step instead.
    """
    owner = _step_owner(block)
    cls = type(block)
    return owner is ReversibleBlock or all(
        getattr(owner, name) is getattr(cls, name) for name in ("_forward", "_inverse")
    )


def takes_halves(block: nn.Module) -> bool:
    """True if ``block.backward_step`` takes and returns :class:`Halves`.

    That is, the class that defines the ``backward_step`` in use also sets
    ``backward_step_takes_halves = True`` (and the step applies,
    :func:`fused_step_applies`): a subclass that overrides the step gets whole
    tensors unless it sets the flag itself.
    """
    return vars(_step_owner(block)).get(
        "backward_step_takes_halves", False
    ) is True and fused_step_applies(block)


def check_same_shape(block: nn.Module, fn_name: str, out: Tensor, like: Tensor) -> Tensor:
    """Raise unless sub-function ``fn_name`` returned one tensor of its argument's shape (a
    strided or channel-changing layer inside F or G breaks invertibility)."""
    if not isinstance(out, Tensor):
        raise TypeError(
            f"{type(block).__name__}: {fn_name} returned a {type(out).__name__}, not one tensor "
            "of its argument's shape (a Hugging Face layer returns a tuple: wrap it in a module "
            "whose forward returns layer(h)[0])"
        )
    if out.shape != like.shape:
        raise ValueError(
            f"{type(block).__name__}: {fn_name} maps a half of shape {tuple(like.shape)} to "
            f"shape {tuple(out.shape)}; it must keep the shape (no stride, no change of "
            "channels) for the block to be invertible"
        )
    return out


def trainable_parameters(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    """The distinct parameters that require gradients, in a fixed order."""
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for m in submodules(module):
            for p in m._parameters.values():
                if p is not None and p.requires_grad and id(p) not in seen:
                    seen[id(p)] = p
    return list(seen.values())


def grads_for(
    outputs: Sequence[Tensor],
    grad_outputs: Sequence[Tensor],
    inputs: Sequence[Tensor],
    params: Sequence[Tensor],
) -> tuple[list[Tensor | None], ParamGrads]:
    """Vector-Jacobian products of ``outputs`` with respect to ``inputs`` and ``params``.

    Returns ``(input_grads, [(param, grad), ...])``; an input or parameter that
    does not influence the outputs gets ``None``.
    """
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs, strict=True) if o.requires_grad]
    wanted = [*inputs, *params]
    if not pairs or not wanted:
        return [None] * len(inputs), [(p, None) for p in params]
    grads = torch.autograd.grad(
        [o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True
    )
    return list(grads[: len(inputs)]), list(zip(params, grads[len(inputs) :], strict=True))


class ReversibleBlock(nn.Module):
    """A bijection ``y = forward(x)``, ``x = inverse(y)`` with a memory-free backward step.

    The contract, as rules an implementer follows (the engine relies on them
    to give autograd's gradients or an error, never a silently wrong gradient):

    1. Implement :meth:`_forward` ``(x, run)`` and :meth:`_inverse` ``(y, run)``,
       not ``forward``/``inverse``. The two must be exact inverses up to
       round-off. A class that overrides ``forward`` is refused in mode
       ``"reversible"`` (the engine would invert another function).
    2. Call every sub-function that has parameters, buffers, random draws or
       autocast-sensitive ops through ``run(name, fn, h)``, which returns
       ``fn(h)``. ``name`` is a string unique within the block (``"F"``,
       ``"G"``); the inverse calls the same ``fn`` under the same name, on the
       tensor the forward called it on (reconstructed). ``fn`` takes one
       tensor and returns one tensor of the same shape unless the block
       checks otherwise.
    3. Everything outside ``run`` is deterministic and stateless: the
       splitting, adding, scaling and concatenating of halves. It draws no
       random numbers, updates no buffer and reads no global state.
    4. Inside ``fn`` anything torch provides is allowed: random layers (the
       engine records the generator states when the call draws), BatchNorm
       (its running statistics are updated once per step), buffers updated
       in place by the forward (spectral norm, moving averages, and writes
       that move no version counter: found by value, replayed from their
       value before the call), autocast, Python's :mod:`random`, NumPy's
       global generator and ``torch.Generator`` attributes, and ``int``,
       ``float``, ``bool`` or ``str`` attributes the call changes (replayed
       from their values before the call, left as the forward left them).
       Other Python-side state (a list that grows) is not recorded: keep
       state in registered buffers.
    5. Parameters are the module's own (``self.parameters()``); a block may
       share a parameter with another block or appear twice in a sequence.
       Anything else F needs comes as an extra argument of the chain,
       ``seq(x, cond=c, mask=m)``: every sub-function whose ``forward`` takes
       that name (or ``**kwargs``) receives it, in the forward and in the
       replay, and a tensor that requires grad gets its gradient. A tensor
       that requires grad and reaches F any other way (an attribute, an
       unregistered parameter, ``parametrize.cached()``) raises an error
       naming its shape and the block.
    6. Hooks run as in mode ``"autograd"``: the engine calls each block as
       ``block(h, **extras)``, so the block's hooks (and FSDP2's unshard and
       reshard) run once per forward; a hook on a module inside F runs once
       per step, and again in the replay only if it returned a value (it
       changed F). A hook on the block that changes its input or output, or a
       hook inside F that keeps what would carry a gradient in mode
       ``"autograd"`` (it has no graph in this mode), raises. A global module
       hook (``register_module_forward_hook``) sees every evaluation, the replay
       included (use it to count); in the replay only those that changed F act.
    7. Optionally override :meth:`backward_step` with a fused version; it
       calls sub-functions through ``tape.replay(name, fn, h)`` and returns the
       gradients as pairs with the tensors ``tape.grad_targets(fn)`` gives
       (the parameters ``self.parameters()`` yields during the step, where the
       engine swaps in detached aliases so that parameter hooks fire once, in
       the autograd engine, and the extra arguments that require grad). The
       fused step is used only if the class that defines it also resolves
       ``_forward`` and ``_inverse`` to the methods in use
       (:func:`fused_step_applies`); a subclass that changes the forward gets
       the generic step. A block whose class sets
       ``backward_step_takes_halves = True`` receives ``y`` as
       :class:`Halves` from the step after it and returns ``x`` as
       :class:`Halves` when given them (as :class:`~revlib.core.couplings.AdditiveCoupling`
       does); any other block receives whole tensors.
    """

    def _forward(self, x: Tensor, run: Run) -> Tensor:
        raise NotImplementedError(
            f"{type(self).__name__}: a ReversibleBlock implements _forward(x, run) and "
            "_inverse(y, run), calling each sub-function as run(name, fn, h); overriding "
            "forward/inverse is not enough, since the engine records and replays through run"
        )

    def _inverse(self, y: Tensor, run: Run) -> Tensor:
        raise NotImplementedError(
            f"{type(self).__name__}: a ReversibleBlock implements _inverse(y, run) (the exact "
            "inverse of _forward), calling each sub-function as run(name, fn, h)"
        )

    def forward(self, x: Tensor, **extras: object) -> Tensor:
        """``y = f(x)``; ``extras`` (conditioning, masks) reach every sub-function that takes them
        by name.

        Called by a :class:`~revlib.core.sequence.ReversibleSequence` in mode
        ``"reversible"``, this runs the engine's recorded step instead (the
        call still passes through ``nn.Module.__call__``, so the block's hooks
        and FSDP's unshard/reshard run as in autograd mode). An FSDP2
        ``MixedPrecisionPolicy`` that casts the tensors between the blocks
        (``cast_forward_inputs`` on an input of another dtype, ``output_dtype``)
        is refused by :func:`~revlib.core.refusals.fsdp_mixed_precision`.
        """
        step = ENGINE_CALL.step
        if step is not None and step.block is self:
            ENGINE_CALL.step = None
            if not hasattr(type(self), "_get_fsdp_state"):  # not sharded by FSDP2's fully_shard
                return step(x, extras)
            return _step_under_fsdp(self, step, x, extras)
        return self._forward(x, run_with(extras))

    def inverse(self, y: Tensor, **extras: object) -> Tensor:
        """``x = f^{-1}(y)``, with the same extra arguments as the forward."""
        return self._inverse(y, run_with(extras))

    def forward_recorded(self, x: Tensor, tape: Tape) -> Tensor:
        """The forward, recording on ``tape`` what a recomputation must replay."""
        return self._forward(x, tape.record)

    def inverse_replayed(self, y: Tensor, tape: Tape) -> Tensor:
        """The inverse of :meth:`forward_recorded`, replaying the tape (same random draws, same
        buffers)."""
        return self._inverse(y, tape.replay)

    def round_trip(self, x: Tensor, record_rng: bool = True, **extras: Any) -> Tensor:
        """``f^{-1}(f(x))`` recorded and replayed exactly as in a training step (for
        :func:`check_inverse`), with the extra arguments F and G take."""
        tape = Tape.start(x, record_rng, extras)
        return self.inverse_replayed(self.forward_recorded(x, tape), tape)

    def backward_step(
        self, y: Tensor, dy: Tensor, tape: Tape
    ) -> tuple[Tensor, Tensor | None, ParamGrads]:
        """Reconstruct ``x`` from ``y`` and map ``dy`` to ``dx`` and the parameter gradients.

        Generic version: ``x = f^{-1}(y)`` without a graph, then ``f(x)`` again
        with autograd and one vector-Jacobian product. Must run with grad mode on.
        """
        with torch.no_grad():
            x = self.inverse_replayed(y, tape)
        x = x.detach().requires_grad_(True)
        y_again = self._forward(x, tape.replay)
        (dx,), param_grads = grads_for([y_again], [dy], [x], tape.grad_targets(self))
        return x.detach(), dx, param_grads


def implements_contract(block: ReversibleBlock) -> bool:
    """True if ``block``'s class overrides both :meth:`ReversibleBlock._forward` and
    ``_inverse``."""
    cls = type(block)
    return (
        cls._forward is not ReversibleBlock._forward
        and cls._inverse is not ReversibleBlock._inverse
    )


def detached_parameters(
    module: nn.Module, aliases: dict[int, Tensor]
) -> contextlib.AbstractContextManager[None]:
    """Run the body with each parameter of ``module`` listed in ``aliases`` swapped for its alias.

    ``aliases`` maps ``id(parameter)`` to a detached leaf sharing its storage
    (``p.detach().requires_grad_()``, no copy). Gradients taken inside the body
    with respect to ``module.parameters()`` are then gradients with respect to
    the aliases, so the hooks registered on the real parameters do not fire
    there; the engine fires them once, when the chain's autograd function
    returns the summed gradients for the real parameters.
    """
    # a plain tensor where torch types a Parameter (torch's own _named_member_accessor swaps
    # tensors in the same way)
    return swapped(
        (Slot.item(m._parameters, name), aliases[id(p)])
        for m in submodules(module)
        for name, p in m._parameters.items()
        if p is not None and id(p) in aliases
    )
