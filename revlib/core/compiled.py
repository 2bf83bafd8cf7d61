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
them fused.

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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import torch
import torch.nn.modules.module as _torch_module
from torch import Tensor, nn

from .blocks import ReversibleBlock, plain_run
from .engine.function import needs_no_tape
from .replay import submodules

if TYPE_CHECKING:
    from .sequence import ReversibleSequence  # it imports this module

__all__ = ["compiled_block_forward", "compiled_function", "run_compiled", "COMPILE_OPTIONS"]

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


_SHARED: dict[tuple[Any, ...], Callable[..., Tensor]] = {}


def _shared(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
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
    return compiled


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
        whole = _WHOLE[block] = lambda x: shared(ref(), x)
    return whole


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
