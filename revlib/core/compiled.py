"""Reversible training under ``torch.compile``: the engine stays eager, F and G run compiled.

``torch.compile(model)`` traces the model's forward. The engine cannot be
traced: it records generator states, swaps buffers and parameters, wraps
hooks and runs a custom autograd node per block, all of which would break
the graph dozens of times per step and recompile per block. So when Dynamo
reaches a :class:`~revlib.core.sequence.ReversibleSequence` in mode
``"reversible"`` it calls :func:`run_compiled`, which Dynamo does not trace
(``torch.compiler.disable``): one graph break per sequence. Inside, the engine
runs as in eager mode, but each sub-function it calls through ``run`` (every
F and G, in the forward, in the replay and in the backward step) runs through
one shared ``torch.compile``'d call that takes the module as an argument (so
modules of one structure share graphs, and nothing keeps a module alive), so
the work of a step is compiled while the engine's guarantees stay those of
eager mode. Where a block's tape would record nothing (revlib's own block, made
only of torch's plain layers, no hook: :func:`compiled_block_forward`), its
whole forward is one compiled graph instead, F, G and the arithmetic between
them fused; and on the CPU, for an image coupling, so is its backward step
(:func:`compiled_backward_step`), with a chain of such blocks handing its tensors
from block to block channels-last (:func:`carries_channels_last`).

Three choices keep the replay exact and portable. The sub-functions are compiled with
Inductor's ``fallback_random``, so a compiled dropout draws the numbers eager
PyTorch would from the same generator state (the inference graph of the
forward and the training graph of the replay would otherwise draw
differently). A sub-function with module hooks inside, or any while a global
module hook is set, runs eagerly (the engine swaps hook dictionaries, which
would recompile it every call), and so does one with a parametrization
(spectral norm, weight norm: torch gives each parametrized module a class of
its own, so each block would recompile the shared graph until Dynamo's
recompile limit). And
with PyTorch's generic CPU kernels (``ATEN_CPU_CAPABILITY=default``, how the
book checks that its outputs do not depend on the machine's vector unit) the
sub-functions are compiled to scalar C++, since Inductor's vectorised C++ does
not compile there.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeGuard, TypeVar, cast

import torch
import torch.nn.modules.module as _torch_module
from torch import Tensor, nn
from torch.func import functional_call, vjp

from .blocks import ParamGrads, ReversibleBlock, plain_run
from .couplings import AdditiveCoupling
from .engine.function import needs_no_tape
from .halves import Halves, split_dim
from .replay import Tape, submodules
from .replay.buffers import norm_stats_not_updated

if TYPE_CHECKING:
    from .sequence import ReversibleSequence  # it imports this module

__all__ = [
    "carries_channels_last",
    "compiled_backward_step",
    "compiled_block_forward",
    "compiled_function",
    "run_compiled",
    "COMPILE_OPTIONS",
]

COMPILE_OPTIONS: dict[str, Any] = {"fallback_random": True}
"""Inductor options for the sub-functions: random draws as in eager mode, so the replay draws the
same numbers."""


def _options() -> dict[str, Any]:
    options = dict(COMPILE_OPTIONS)
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        # with PyTorch's generic CPU kernels (ATEN_CPU_CAPABILITY=default) Inductor's vectorised
        # C++ does not compile (torch 2.14.1: "'at::vec' has not been declared"): ask for scalar
        # code
        options["cpp.simdlen"] = 1
    return options


def _runs_eagerly(fn: nn.Module) -> bool:
    """Module hooks inside or global ones (the engine swaps their dictionaries per call) or a
    parametrization (each parametrized module has a class of its own, so every instance would
    recompile the shared graph)."""
    if _torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks:
        return True
    # parametrize registers a ModuleDict named "parametrizations" (what is_parametrized reads, here
    # without nn.Module.__getattr__); submodules: the engine's walk, cached for the step
    return any(
        m._forward_hooks
        or m._forward_pre_hooks
        or isinstance(m._modules.get("parametrizations"), nn.ModuleDict)
        for m in submodules(fn)
    )


def _call(fn: nn.Module, x: Tensor, kwargs: dict[str, Any]) -> Tensor:
    out: Tensor = fn(x, **kwargs)
    return out


def _whole_forward(block: ReversibleBlock, x: Tensor) -> Tensor:
    """A block's forward with its sub-functions called plainly: one graph spans the block (the
    halves, F, G and the coupling's arithmetic)."""
    return block._forward(x, plain_run)


_SHARED: dict[tuple[Any, ...], Callable[..., Any]] = {}
_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def _shared(fn: _Fn) -> _Fn:
    """``torch.compile(fn)``, one per process. The module is an argument, so modules of one
    structure share its graphs (Dynamo guards on their structure) and the compiled function keeps
    no module alive (a per-module ``torch.compile`` held its module for the process's life)."""
    options = _options()
    key = (fn.__name__, *sorted(options.items()))
    compiled = _SHARED.get(key)
    if compiled is None:
        # torch's default shapes: static graphs first, a dynamic one only once a shape changes
        # (dynamic=True from the start made every step of the benchmark stack 7 % slower)
        compiled = _SHARED[key] = torch.compile(fn, options=options)
    return cast(_Fn, compiled)


class _Bound:
    """A module's compiled call: the shared compiled function with a weak reference to the
    module (a cache value must not keep its key alive)."""

    __slots__ = ("module", "shared")

    def __init__(self, module: nn.Module, shared: Callable[..., Tensor]) -> None:
        self.module, self.shared = weakref.ref(module), shared

    def __call__(self, x: Tensor, **kwargs: Any) -> Tensor:
        # one layout for every call (the forward passes views, the backward step fresh tensors),
        # so the sub-functions of a network share a few graphs instead of one per stride pattern
        return self.shared(self.module(), x.contiguous(), kwargs)


_CACHE: weakref.WeakKeyDictionary[nn.Module, _Bound] = weakref.WeakKeyDictionary()
_WHOLE: weakref.WeakKeyDictionary[nn.Module, Callable[[Tensor], Tensor]] = (
    weakref.WeakKeyDictionary()
)


def compiled_function(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """The compiled call of a module ``fn`` (made once, cached), or ``fn`` itself if it should
    run eagerly."""
    if not isinstance(fn, nn.Module) or _runs_eagerly(fn):
        return fn
    bound = _CACHE.get(fn)
    if bound is None:
        bound = _CACHE[fn] = _Bound(fn, _shared(_call))
    return bound


def _image_coupling(block: ReversibleBlock, x: Tensor) -> TypeGuard[AdditiveCoupling]:
    """revlib's :class:`~revlib.core.couplings.AdditiveCoupling` (this class, not a subclass) on
    a CPU batch of images ``x`` split along the channels: where, if its tape records nothing, its
    halves are carried channels-last."""
    return (
        type(block) is AdditiveCoupling
        and x.dim() == 4
        and x.device.type == "cpu"
        and split_dim(block) % 4 == 1
    )


def compiled_block_forward(block: ReversibleBlock) -> Callable[[Tensor], Tensor] | None:
    """The block's whole forward compiled as one graph (made once, cached), or ``None`` where the
    tape must record its sub-functions.

    Only where the recording would come back empty
    (:func:`~revlib.core.engine.function.needs_no_tape`): then the eager arithmetic and the
    concatenation between the separately compiled F and G (about 7 % of a compiled step on the
    benchmark stack) are fused.
    """
    if not needs_no_tape(block):
        return None
    whole = _WHOLE.get(block)
    if whole is None:
        shared, ref = _shared(_whole_forward), weakref.ref(block)
        whole = _WHOLE[block] = lambda x: shared(cast(ReversibleBlock, ref()), x)
    return whole


def carries_channels_last(blocks: Iterable[nn.Module], x: Tensor) -> bool:
    """Whether a chain's tensors travel channels-last from block to block: every block an image
    coupling whose backward step is one graph (:func:`compiled_backward_step`), with no hook of
    its own (a hook would see another layout than in eager mode), on an input that is
    contiguous or channels-last. Each block's forward then takes and gives channels-last
    tensors, the layout Inductor's convolutions use on the CPU; the chain converts its input
    and its output once."""
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return False
    return all(
        isinstance(b, ReversibleBlock)
        and _image_coupling(b, x)
        and not (b._forward_hooks or b._forward_pre_hooks)
        and needs_no_tape(b)
        for b in blocks
    )


def _additive_step(
    f: nn.Module,
    g: nn.Module,
    f_params: dict[str, Tensor],
    g_params: dict[str, Tensor],
    y1: Tensor,
    y2: Tensor,
    dy: Tensor,
) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """:meth:`AdditiveCoupling.backward_step` as one function of tensors, traced as one graph:
    ``x1``, ``x2``, ``dx`` and the gradients of the parameters in ``f_params`` and ``g_params``
    (both vector-Jacobian products through ``torch.func.vjp``)."""
    dy1, dy2 = dy.chunk(2, dim=1)
    g_out, g_vjp = vjp(lambda p, z: functional_call(g, p, (z,)), g_params, y1)[:2]
    g_grads, dz1_from_g = g_vjp(dy2)
    x2 = y2 - g_out
    dz1 = dy1 + dz1_from_g
    f_out, f_vjp = vjp(lambda p, z: functional_call(f, p, (z,)), f_params, x2)[:2]
    f_grads, dx2_from_f = f_vjp(dz1)
    return y1 - f_out, x2, torch.cat([dz1, dy2 + dx2_from_f], dim=1), f_grads, g_grads


def _trainable(fn: nn.Module) -> dict[str, Tensor]:
    """``fn``'s parameters that take gradients, by name (the engine's aliases while it steps):
    ``named_parameters()``'s names and order, a shared parameter under its first name, walked
    without its generators (twice per block and step)."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    todo: list[tuple[str, nn.Module]] = [("", fn)]
    while todo:
        prefix, m = todo.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        for name, p in m._parameters.items():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                if p.requires_grad:
                    out[prefix + name] = p
        children = [(f"{prefix}{n}.", c) for n, c in m._modules.items() if c is not None]
        todo.extend(reversed(children))
    return out


def _fused_step(
    block: AdditiveCoupling, y: Halves, dy: Tensor, tape: Tape
) -> tuple[Halves, Tensor, ParamGrads]:
    """One step of Algorithm 1 through :func:`_additive_step`, compiled: as the replay runs F and
    G (the forward's autocast state, normalisation statistics left alone), the halves
    channels-last; the gradients paired with the parameters (aliases) they belong to."""
    f, g = block.F, block.G
    f_params, g_params = _trainable(f), _trainable(g)
    cl = torch.channels_last  # the layout Inductor gives convolutions on the CPU
    halves = (y.first.detach(), y.second.detach(), dy)
    y1, y2, dy = (t.contiguous(memory_format=cl) for t in halves)
    # no graph around the step: torch.func.vjp differentiates inside, whatever the grad mode
    with (
        torch.no_grad(),
        tape.autocast.context(),
        norm_stats_not_updated(f),
        norm_stats_not_updated(g),
    ):
        x1, x2, dx, f_grads, g_grads = _shared(_additive_step)(f, g, f_params, g_params, y1, y2, dy)
    grads: ParamGrads = [(f_params[n], d) for n, d in f_grads.items()]
    grads += [(g_params[n], d) for n, d in g_grads.items()]
    return Halves(x1, x2, None, y.dim), dx, grads


def compiled_backward_step(
    block: ReversibleBlock, y: Tensor | Halves, tape: Tape
) -> Callable[[Halves, Tensor, Tape], tuple[Halves, Tensor, ParamGrads]] | None:
    """The backward step of ``block`` as one compiled graph, or ``None`` where the engine's own
    step must run.

    Only for revlib's :class:`~revlib.core.couplings.AdditiveCoupling` (this
    class, not a subclass) whose tape records nothing
    (:func:`~revlib.core.engine.function.needs_no_tape`), with no extra
    arguments, on a CPU batch of images split along the channels. Its halves are
    then carried channels-last from step to step, the layout Inductor's
    convolutions use on the CPU: the step's arithmetic fuses with F and G and no
    layout is converted between them (with the halves contiguous, one graph per
    step was slower than F and G compiled one at a time;
    ``benchmarks/engine_share.py``). Gradients are those of the engine's step,
    to rounding.
    """
    if tape.extras or not isinstance(y, Halves) or not _image_coupling(block, y.first):
        return None
    if not needs_no_tape(block):
        return None
    return lambda halves, dy, tape: _fused_step(block, halves, dy, tape)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _not_traced(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """``torch.compiler.disable(fn)``: Dynamo calls ``fn`` without tracing it; typed."""
    # torch.compiler.disable is unannotated; it returns a wrapper with fn's signature
    return torch.compiler.disable(fn)  # type: ignore[no-untyped-call,no-any-return]


@_not_traced
def run_compiled(seq: ReversibleSequence, x: Tensor, extras: dict[str, Any]) -> Tensor:
    """The reversible engine, eager, with every sub-function compiled (what ``torch.compile(model)``
    runs)."""
    return seq._run_reversible(x, extras, compiled=True)
