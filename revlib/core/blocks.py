"""The contract of a reversible block, and the channel split that couplings share.

A block is a bijection ``y = forward(x)`` with ``x = inverse(y)``. Subclasses
write the two directions once, as ``_forward(x, run)`` and ``_inverse(y, run)``,
calling every learned sub-function through ``run(name, fn, tensor)``. The same
code then serves a plain forward (:func:`plain_run`), a forward that records
on a :class:`~revlib.core.recompute.Tape` (``tape.record``), and a
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from .recompute import Tape, keywords_for, submodules

if TYPE_CHECKING:
    from .engine import _Call  # the engine imports this module

__all__ = [
    "ReversibleBlock",
    "Halves",
    "Run",
    "ParamGrads",
    "plain_run",
    "PlainRun",
    "run_with",
    "fused_step_applies",
    "split_dim",
    "split_halves",
    "join_halves",
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
        raise TypeError(
            f"ReversibleSequence: no sub-function of any block takes the extra argument(s) "
            f"{sorted(unused)} by name; give F or G a parameter of that name (or **kwargs)."
        )


def run_with(extras: dict[str, object]) -> Run:
    """The run function of a plain forward: :func:`plain_run`, or :class:`PlainRun` with extra
    arguments."""
    return PlainRun(extras) if extras else plain_run


class _EngineCall(threading.local):
    """The block call the reversible engine is making now, handed to the block's ``forward``.

    The engine calls each block as PyTorch calls a module (``block(h)``: hooks,
    FSDP's unshard and reshard); the block's :meth:`ReversibleBlock.forward`
    finds the engine's step here and runs it instead of a plain forward.
    """

    step: _Call | None = None


ENGINE_CALL = _EngineCall()


def split_dim(block: nn.Module) -> int:
    """The dimension ``block`` splits into halves: its ``dim`` attribute, 1 (channels) by
    default."""
    return getattr(block, "dim", 1)


def split_halves(block: nn.Module, x: Tensor, what: str = "input") -> tuple[Tensor, Tensor]:
    """Split ``x`` into two equal halves along the block's split dimension.

    The dimension is :func:`split_dim` of ``block``: 1 for images of shape
    (N, C, H, W), -1 for token sequences of shape (B, T, D). Raises
    ``ValueError`` naming the block, the dimension and the shape when ``x`` has
    no such dimension or an odd size along it.
    """
    name = type(block).__name__
    dim = split_dim(block)
    layout = (
        "(batch, channels, ...)"
        if dim == 1
        else f"at least {dim + 1 if dim >= 0 else -dim + 1} dimensions"
    )
    if x.dim() < 2 or not -x.dim() <= dim < x.dim():
        raise ValueError(
            f"{name}: expected an {what} of shape {layout} to split along dimension {dim}, "
            f"got shape {tuple(x.shape)}"
        )
    size = x.shape[dim]
    if size % 2 and dim == 1:
        raise ValueError(
            f"{name}: the {what} has an odd number of channels ({size}, shape {tuple(x.shape)}); "
            "a coupling splits the channels into two equal halves"
        )
    if size % 2:
        raise ValueError(
            f"{name}: the {what} has an odd size ({size}) along dimension {dim} (shape "
            f"{tuple(x.shape)}); a coupling splits that dimension into two equal halves"
        )
    x1, x2 = x.chunk(2, dim=dim)
    return x1, x2


def join_halves(block: nn.Module, first: Tensor, second: Tensor) -> Tensor:
    """Concatenate two halves along the block's split dimension (the inverse of
    :func:`split_halves`)."""
    return torch.cat([first, second], dim=split_dim(block))


class Halves(NamedTuple):
    """A block's input, carried as its two halves from one backward step of a chain to the next.

    ``buffer`` is a full-size tensor whose first half along ``dim`` is
    ``first``; its second half need not hold ``second`` (a tensor of its own).
    A coupling's backward step writes its reconstructed first half straight
    into such a buffer (:func:`halves_of_difference`), so the step before it
    reads that half with the strides a concatenation would have given it, and
    no concatenation is spent on a tensor the next step splits again.
    :meth:`join` gives the full tensor, equal in value and layout to
    ``torch.cat([first, second], dim)``, for a block that takes whole tensors.
    """

    first: Tensor
    second: Tensor
    buffer: Tensor
    dim: int

    @classmethod
    def of(cls, block: nn.Module, y: Tensor | Halves, what: str = "output") -> Halves:
        """``y`` as halves along the block's split dimension (views of ``y`` if it is a whole
        tensor)."""
        if isinstance(y, Halves):
            if y.dim % y.buffer.dim() == split_dim(block) % y.buffer.dim():
                return y
            y = y.join()
        first, second = split_halves(block, y, what)
        return cls(first, second, y, split_dim(block))

    def join(self) -> Tensor:
        """Write ``second`` into the buffer's second half (unless it is that half) and return the
        buffer."""
        half = self.buffer.chunk(2, dim=self.dim)[1]
        if not (
            half.data_ptr() == self.second.data_ptr() and half.stride() == self.second.stride()
        ):
            half.copy_(self.second)
        return self.buffer


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


def _same_dtype_contiguous(*tensors: Tensor | None) -> bool:
    first = tensors[0]
    if first is None:
        return False
    return all(t is not None and t.is_contiguous() and t.dtype == first.dtype for t in tensors)


def _empty_whole(block: nn.Module, half: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """An unwritten contiguous tensor made of two ``half``-shaped halves, and the two halves."""
    dim = split_dim(block)
    shape = list(half.shape)
    shape[dim] *= 2
    whole = torch.empty(shape, dtype=half.dtype, device=half.device)
    first, second = whole.chunk(2, dim=dim)
    return whole, first, second


def halves_of_difference(block: nn.Module, y: Halves, f: Tensor, second: Tensor) -> Halves:
    """``Halves(y.first - f, second)``, the difference written into the first half of a full-size
    buffer.

    Bit for bit (values and strides) the halves of
    ``join_halves(block, y.first - f, second)``: an elementwise result does not
    depend on the layout it is written in. Falls back to that concatenation
    unless the tensors are contiguous and of one dtype. For a backward step:
    the result carries no graph.
    """
    if not (
        y.buffer.is_contiguous() and _same_dtype_contiguous(f, second) and y.first.dtype == f.dtype
    ):
        return Halves.of(block, join_halves(block, y.first - f, second))
    buffer, first, _ = _empty_whole(block, f)
    torch.sub(y.first.detach(), f.detach(), out=first)
    return Halves(first, second, buffer, split_dim(block))


def join_halves_with_sum(
    block: nn.Module, first: Tensor, whole: Tensor, addend: Tensor | None
) -> Tensor:
    """``join_halves(block, first, second + addend)`` with ``second`` the second half of ``whole``.

    The sum is written straight into the result (no concatenation copies it);
    bit for bit the concatenation. Falls back to it unless the tensors are
    contiguous and of one dtype. ``addend=None`` adds nothing. For a
    backward step: the result carries no graph.
    """
    second = whole.chunk(2, dim=split_dim(block))[1]
    if addend is None or not _same_dtype_contiguous(whole, first, addend):
        return join_halves(block, first, second if addend is None else second + addend)
    out, out_first, out_second = _empty_whole(block, first)
    out_first.copy_(first.detach())
    torch.add(second.detach(), addend.detach(), out=out_second)
    return out


def check_same_shape(block: nn.Module, fn_name: str, out: Tensor, like: Tensor) -> Tensor:
    """Raise ``ValueError`` unless sub-function ``fn_name`` kept the shape of its argument.

    A reversible block must not change shapes: a strided or channel-changing
    layer inside F or G breaks invertibility.
    """
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
       hook inside F that keeps an activation (which has no graph in this
       mode), raises. A global module hook
       (``torch.nn.modules.module.register_module_forward_hook``) sees every
       evaluation, the replay included: use it to count evaluations.
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
        and FSDP's unshard/reshard run as in autograd mode).
        """
        step = ENGINE_CALL.step
        if step is not None and step.block is self:
            ENGINE_CALL.step = None
            return step(x, extras)
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


@contextlib.contextmanager
def detached_parameters(module: nn.Module, aliases: dict[int, Tensor]) -> Iterator[None]:
    """Run the body with each parameter of ``module`` listed in ``aliases`` swapped for its alias.

    ``aliases`` maps ``id(parameter)`` to a detached leaf sharing its storage
    (``p.detach().requires_grad_()``, no copy). Gradients taken inside the body
    with respect to ``module.parameters()`` are then gradients with respect to
    the aliases, so the hooks registered on the real parameters do not fire
    there; the engine fires them once, when the chain's autograd function
    returns the summed gradients for the real parameters.
    """
    swapped = []
    for m in submodules(module):
        for name, p in m._parameters.items():
            if p is not None and id(p) in aliases:
                swapped.append((m, name, p))
                # a plain tensor where torch types a Parameter (torch's own
                # _named_member_accessor swaps tensors in the same way, ignore included)
                m._parameters[name] = aliases[id(p)]  # type: ignore[assignment]
    try:
        yield
    finally:
        for m, name, p in swapped:
            m._parameters[name] = p
