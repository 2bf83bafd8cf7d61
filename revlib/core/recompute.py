"""What a recomputation must replay so that it sees exactly what the forward saw.

A reversible backward pass runs every sub-function (F, G, ...) a second time.
The second run must compute the very function the first run computed, or the
reconstruction and the gradients are silently wrong (see the book's chapter on
reversible backprop). A :class:`Tape` records, per sub-function call, what the
second run needs:

* **random numbers**: the generator states before the call (CPU and the
  input's accelerator), kept only when the call drew from them (the state
  moved), so any random layer (dropout, RReLU, attention dropout, a call of
  ``torch.nn.functional.dropout``, ``torch.rand``) is replayed and a
  deterministic call keeps nothing; the replay runs inside
  :func:`torch.random.fork_rng`, so the global streams are left as they were;
* **the autocast state** of the call's device type and of the CPU, entered
  again in the replay whether it was on or off;
* **state updated by the forward**: the running statistics of normalisation
  layers in training mode are not touched by a replay (the forward updated
  them once); any other buffer that the call changed (a spectral norm's power
  iteration vectors, a user's moving average) is copied before the call, and
  the replay runs on that copy, so it reads what the forward read and the
  module keeps the forward's update.

The tensors a tape keeps (generator states, buffer copies) are listed by
:meth:`Tape.tensors` so that the chain saves them for backward, where
:class:`~revlib.core.memory.SavedTensorMeter` counts them.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeGuard

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.utils.checkpoint import checkpoint, get_device_states, set_device_states

__all__ = [
    "RNGState",
    "AutocastState",
    "BufferCopy",
    "Tape",
    "frozen_norm_stats",
    "updating_norm_layers",
    "updated_once_buffers",
    "checkpoint_updating_stats_once",
    "has_random_layers",
    "ModuleState",
    "submodules",
    "cached_walks",
]

_RANDOM_LAYERS = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")


def has_random_layers(module: nn.Module) -> bool:
    """True if ``module`` holds a ``torch.nn`` dropout layer that draws random numbers now.

    A hint only: the engine does not rely on it. It detects a random call by
    its effect on the generator state (see :class:`Tape`).
    """
    return any(isinstance(m, _RANDOM_LAYERS) and m.training and m.p > 0 for m in module.modules())


@dataclass(frozen=True)
class RNGState:
    """The CPU generator state and the generator states of the accelerators some tensors live on."""

    cpu: Tensor
    device_type: str | None
    devices: list[int]
    device_states: list[Tensor]

    @classmethod
    def capture(cls, *tensors: Tensor) -> RNGState:
        """Record the states that a call on ``tensors`` would draw from.

        Device generators are read at call time (through
        :func:`torch.get_device_module`), so a CUDA context created after the
        model was built is handled. A call that draws on a device none of
        ``tensors`` lives on is not covered (as in :mod:`torch.utils.checkpoint`).
        """
        device_types = {t.device.type for t in tensors if t.device.type not in ("cpu", "meta")}
        device_type = device_types.pop() if len(device_types) == 1 else None
        if device_type is not None:
            devices, states = get_device_states(*tensors)
        else:
            devices, states = [], []
        return cls(torch.get_rng_state(), device_type, list(devices), list(states))

    def is_current(self) -> bool:
        """True if the generators are still in this state (nothing drew since the capture)."""
        if not torch.equal(self.cpu, torch.get_rng_state()):
            return False
        if self.device_type is None:
            return True
        module = torch.get_device_module(self.device_type)
        return all(
            torch.equal(state, module.get_rng_state(device))
            for device, state in zip(self.devices, self.device_states, strict=True)
        )

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the body with these states in a fork of the RNG, then restore the global ones."""
        fork_kwargs = {"devices": self.devices, "enabled": True}
        if self.device_type is not None:
            fork_kwargs["device_type"] = self.device_type
        with torch.random.fork_rng(**fork_kwargs):
            torch.set_rng_state(self.cpu)
            if self.device_type is not None:
                set_device_states(self.devices, self.device_states, device_type=self.device_type)
            yield

    def tensors(self) -> list[Tensor]:
        return [self.cpu, *self.device_states]

    def with_tensors(self, tensors: Iterator[Tensor]) -> RNGState:
        cpu = next(tensors)
        return replace(self, cpu=cpu, device_states=[next(tensors) for _ in self.device_states])


@dataclass(frozen=True)
class AutocastState:
    """The autocast state (enabled flag and dtype) of some device types, and the cache flag."""

    states: tuple[tuple[str, bool, torch.dtype], ...]
    cache_enabled: bool

    @classmethod
    def capture(cls, device_type: str) -> AutocastState:
        """Read the autocast state of ``device_type`` and of the CPU in the current thread.

        Device types without autocast (``torch.amp.is_autocast_available``) are skipped.
        """
        types = dict.fromkeys([device_type, "cpu"])
        return cls(
            tuple(
                (t, torch.is_autocast_enabled(t), torch.get_autocast_dtype(t))
                for t in types
                if torch.amp.is_autocast_available(t)
            ),
            torch.is_autocast_cache_enabled(),
        )

    def context(self) -> contextlib.AbstractContextManager[object]:
        """Autocast contexts that set the captured state, on or off (nothing where it already
        holds)."""
        if self == AutocastState.capture(self.states[0][0] if self.states else "cpu"):
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for device_type, enabled, dtype in self.states:
            stack.enter_context(
                torch.autocast(
                    device_type, dtype=dtype, enabled=enabled, cache_enabled=self.cache_enabled
                )
            )
        return stack


def submodules(module: nn.Module) -> list[nn.Module]:
    """``list(module.modules())`` (pre-order, each module once), without the generator's per-step
    cost.

    The engine walks the sub-functions' modules several times per step; this
    plain loop over ``_modules`` is several times faster than ``named_modules``,
    and inside :func:`cached_walks` each module is walked once.
    """
    cache = _WALKS.cache
    if cache is not None:
        hit = cache.get(id(module))
        if hit is not None and hit[0] is module:
            return hit[1]
    out: list[nn.Module] = []
    seen: set[int] = set()
    stack = [module]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        out.append(m)
        stack.extend(reversed([c for c in m._modules.values() if c is not None]))
    if cache is not None:
        cache[id(module)] = (module, out)
    return out


class _Walks(threading.local):
    cache: dict[int, tuple[nn.Module, list[nn.Module]]] | None = None


_WALKS = _Walks()


@contextlib.contextmanager
def cached_walks() -> Iterator[None]:
    """Within the body, :func:`submodules` walks each module once (the engine's forward or backward
    step of a block).

    The module tree must not change inside the body; the engine's own guard
    (:class:`~revlib.core.module_state.ModuleState`) checks it between the forward and the backward.
    """
    if _WALKS.cache is not None:
        yield
        return
    _WALKS.cache = {}
    try:
        yield
    finally:
        _WALKS.cache = None


def _updating_norm(m: nn.Module) -> TypeGuard[_NormBase]:
    return isinstance(m, _NormBase) and m.training and m.track_running_stats


def updating_norm_layers(module: nn.Module) -> list[_NormBase]:
    """The normalisation layers of ``module`` that update running statistics in a forward now."""
    return [m for m in submodules(module) if _updating_norm(m)]


@contextlib.contextmanager
def frozen_norm_stats(module: nn.Module) -> Iterator[None]:
    """Run the body with the running statistics of normalisation layers left untouched, versions
    included.

    A BatchNorm layer in training mode normalises with the batch statistics
    either way. Inside this context its running statistics and
    ``num_batches_tracked`` are copies, which the body may update and which are
    then dropped; the module gets its own tensors back, with their values and
    their version counters as they were. So it saves the same tensors for
    backward as in the first run (which non-reentrant checkpointing checks),
    and another graph that saved the statistics (an ``inverse`` call, the
    module used outside the sequence) still finds them unmodified.
    """
    saved = [
        (m, [(name, b) for name in _NORM_STATS if (b := m._buffers.get(name)) is not None])
        for m in updating_norm_layers(module)
    ]
    for m, buffers in saved:
        for name, b in buffers:
            m._buffers[name] = b.clone()
    try:
        yield
    finally:
        for m, buffers in saved:
            for name, b in buffers:
                m._buffers[name] = b


@contextlib.contextmanager
def _norm_stats_not_updated(fn: nn.Module) -> Iterator[None]:
    """The replay's version of :func:`frozen_norm_stats`: BatchNorm layers write nothing at all.

    A ``_BatchNorm`` in training mode with ``track_running_stats=False``
    normalises with the batch statistics, as in the forward, and passes no
    running buffers to the kernel, so nothing is written (and nothing copied).
    Other normalisation layers (InstanceNorm with running statistics) fall
    back to :func:`frozen_norm_stats`.
    """
    batch_norms, others = [], False
    for m in submodules(fn):
        if _updating_norm(m):
            if isinstance(m, _BatchNorm):
                batch_norms.append(m)
            else:
                others = True
    for m in batch_norms:
        object.__setattr__(
            m, "track_running_stats", False
        )  # a plain attribute: skip Module.__setattr__
    try:
        if others:
            with frozen_norm_stats(fn):
                yield
        else:
            yield
    finally:
        for m in batch_norms:
            object.__setattr__(m, "track_running_stats", True)


def updated_once_buffers(module: nn.Module) -> list[tuple[nn.Module, str, Tensor]]:
    """The buffers of ``module`` a forward may change and a recomputation must not change again.

    All buffers except the running statistics of normalisation layers in
    training mode, which :func:`frozen_norm_stats` handles without copies.
    """
    out = []
    for m in submodules(module):
        skip = _NORM_STATS if _updating_norm(m) else ()
        for name, b in m._buffers.items():
            if b is not None and name not in skip:
                out.append((m, name, b))
    return out


@dataclass(frozen=True)
class BufferCopy:
    """A buffer as it was before the forward call that changed it."""

    module: nn.Module
    name: str
    before: Tensor


@contextlib.contextmanager
def _buffers_as_before(copies: list[BufferCopy]) -> Iterator[None]:
    """Run the body with each buffer set to (a copy of) its value before the forward, then put it
    back."""
    current = [(c.module, c.name, c.module._buffers[c.name]) for c in copies]
    for c in copies:
        c.module._buffers[c.name] = c.before.clone()
    try:
        yield
    finally:
        for module, name, b in current:
            module._buffers[name] = b


def checkpoint_updating_stats_once(
    module: nn.Module, fn: Callable[[Tensor], Tensor], x: Tensor
) -> Tensor:
    """``fn(x)`` under non-reentrant :func:`torch.utils.checkpoint.checkpoint`, BatchNorm-safe.

    Plain checkpointing updates the running statistics of ``module``'s
    BatchNorm layers twice per step (forward and recomputation; PyTorch issue
    96136). Here the recomputation runs under :func:`frozen_norm_stats`.
    """
    calls = 0

    def run(h: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            return fn(h)
        with frozen_norm_stats(module):
            return fn(h)

    return checkpoint(run, x, use_reentrant=False, preserve_rng_state=True)


def _accepted_keywords(fn: Callable[..., Any]) -> frozenset[str] | None:
    """The keyword arguments ``fn`` accepts (``None``: any, it takes ``**kwargs``)."""
    target = fn.forward if isinstance(fn, nn.Module) else fn
    key = type(fn) if isinstance(fn, nn.Module) else target
    cached = _KEYWORDS.get(key, False)
    if not isinstance(cached, bool):  # False: not cached yet
        return cached
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        accepted = None
    else:
        if any(p.kind is p.VAR_KEYWORD for p in params):
            accepted = None
        else:
            accepted = frozenset(
                p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            )
    try:
        _KEYWORDS[key] = accepted
    except TypeError:
        pass
    return accepted


_KEYWORDS: weakref.WeakKeyDictionary[Any, frozenset[str] | None] = weakref.WeakKeyDictionary()


def keywords_for(
    fn: Callable[..., Any], extras: dict[str, Any], used: set[str] | None = None
) -> dict[str, Any]:
    """The chain's extra arguments that ``fn`` takes by name (all of them if it takes
    ``**kwargs``)."""
    if not extras:
        return {}
    accepted = _accepted_keywords(fn)
    out = extras if accepted is None else {k: v for k, v in extras.items() if k in accepted}
    if used is not None:
        used.update(out)
    return out


@dataclass
class Tape:
    """Everything one block's forward records so that a later recomputation matches it.

    ``rng`` maps the name of a sub-function call (``"F"``, ``"G"``) to the
    generator states it drew from, ``buffers`` to the buffers it changed
    as they were before, ``host`` to the host generators and Python
    attributes it changed (:mod:`~revlib.core.sidestate`) and ``hooks`` to
    which of its module hooks acted; all stay empty for a deterministic,
    stateless block, so a plain RevNet chain keeps no per-block state at all.
    ``record_rng=False`` skips the RNG bookkeeping (the user's opt-out).
    ``extras`` are the chain's extra arguments (conditioning, masks): every
    sub-function receives those it takes by name, in the forward and in the
    replay (where the engine swaps in detached leaves, to differentiate).
    """

    autocast: AutocastState
    record_rng: bool
    rng: dict[str, RNGState] = field(default_factory=dict)
    buffers: dict[str, list[BufferCopy]] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    hooks: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    used_extras: set[str] = field(default_factory=set)
    names: dict[int, str] = field(default_factory=dict)
    compiled: bool = False

    def _callable(self, fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """``fn``, or its compiled version when the sequence runs under ``torch.compile``
        (:mod:`~revlib.core.compiled`)."""
        if not self.compiled:
            return fn
        from .compiled import compiled_function

        return compiled_function(fn)

    @classmethod
    def start(
        cls, x: Tensor, record_rng: bool = True, extras: dict[str, Any] | None = None
    ) -> Tape:
        """A tape for a forward pass on ``x`` in the current autocast state."""
        return cls(AutocastState.capture(x.device.type), record_rng, extras=dict(extras or {}))

    def record(self, name: str, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """First run of ``fn(x)``: keep the RNG states if it draws, the buffers and host state it
        changes."""
        from .sidestate import HookLog, HostState, recording_hooks

        rng = RNGState.capture(x) if self.record_rng else None
        host = HostState.capture(fn) if self.record_rng else None
        watched = updated_once_buffers(fn) if isinstance(fn, nn.Module) else []
        before = [(m, n, b, b._version, b.clone()) for m, n, b in watched]
        log = HookLog()
        with recording_hooks(fn, log, self.names):
            out = self._callable(fn)(x, **keywords_for(fn, self.extras, self.used_extras))
        if log.acting or log.kept:
            self.hooks[name] = log
        if rng is not None and not rng.is_current():
            self.rng[name] = rng
        changes = host.changes() if host is not None else None
        if changes:
            self.host[name] = changes
        # a buffer counts as changed if it was replaced, its version moved, or (for kernels and
        # .data writes that move no version counter) its value differs from the copy
        changed = [
            BufferCopy(m, n, copy)
            for m, n, b, version, copy in before
            if m._buffers.get(n) is not b or b._version != version or not _same_values(b, copy)
        ]
        if changed:
            self.buffers[name] = changed
        return out

    def replay(self, name: str, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """Second run of ``fn(x)``: same random draws, same autocast, same buffers, no state
        update."""
        from .sidestate import replaying_hooks

        rng = self.rng.get(name)
        copies = self.buffers.get(name)
        host = self.host.get(name)
        with contextlib.ExitStack() as stack:
            if rng is not None:
                stack.enter_context(rng.replay())
            if host is not None:
                stack.enter_context(host.replay())
            stack.enter_context(self.autocast.context())
            if isinstance(fn, nn.Module):
                stack.enter_context(_norm_stats_not_updated(fn))
                stack.enter_context(replaying_hooks(fn, self.hooks.get(name)))
            if copies:
                stack.enter_context(_buffers_as_before(copies))
            return self._callable(fn)(x, **keywords_for(fn, self.extras))

    def grad_targets(self, fn: nn.Module) -> list[Tensor]:
        """What a backward step differentiates a call of ``fn`` with respect to, besides its input.

        ``fn``'s trainable parameters and the extra arguments it takes that
        require gradients (conditioning tensors).
        """
        params = [
            p
            for m in submodules(fn)
            for p in m._parameters.values()
            if p is not None and p.requires_grad
        ]
        params = list({id(p): p for p in params}.values())
        extras = keywords_for(fn, self.extras)
        return params + [v for v in extras.values() if isinstance(v, Tensor) and v.requires_grad]

    def tensors(self) -> list[Tensor]:
        """The tensors this tape keeps (generator states, buffer copies), in a fixed order."""
        out = [t for state in self.rng.values() for t in state.tensors()]
        return out + [c.before for copies in self.buffers.values() for c in copies]

    def with_tensors(self, tensors: Iterator[Tensor]) -> Tape:
        """This tape with :meth:`tensors` replaced, in order, by ``tensors`` (as unpacked by
        autograd)."""
        rng = {name: state.with_tensors(tensors) for name, state in self.rng.items()}
        buffers = {
            name: [replace(c, before=next(tensors)) for c in copies]
            for name, copies in self.buffers.items()
        }
        return replace(self, rng=rng, buffers=buffers)


def _same_values(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(
            torch.equal(a, b)
            or torch.equal(a.isnan(), b.isnan())
            and torch.equal(a.nan_to_num(), b.nan_to_num())
        )
    return bool(torch.equal(a, b))


from .module_state import ModuleState  # noqa: E402  (re-exported: it uses submodules above)
