"""What a recomputation must replay so that it sees exactly what the forward saw.

A reversible backward pass runs F and G a second time. Three pieces of global
state must then match the first run, or the reconstruction and the gradients
are silently wrong (see the book's chapter on reversible backprop):

* the random number generators (dropout masks): recorded before each call in
  the forward, replayed inside :func:`torch.random.fork_rng` so the global
  RNG stream after the step is unchanged;
* the autocast state (dtype and enabled flag) of the forward;
* normalisation layers' running statistics, which must be updated once per
  step, so a recomputation runs with their updates switched off.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils.checkpoint import checkpoint, get_device_states, set_device_states

__all__ = [
    "RNGState",
    "AutocastState",
    "Tape",
    "frozen_norm_stats",
    "checkpoint_updating_stats_once",
    "has_random_layers",
]

_RANDOM_LAYERS = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def has_random_layers(module: nn.Module) -> bool:
    """True if ``module`` holds a dropout layer that draws random numbers now.

    Only the layers of ``torch.nn`` are recognised; a module that calls
    ``torch.nn.functional.dropout`` itself needs ``preserve_rng_state=True``.
    """
    return any(
        isinstance(m, _RANDOM_LAYERS) and m.training and m.p > 0 for m in module.modules()
    )


@dataclass(frozen=True)
class RNGState:
    """The CPU generator state and the accelerator generator states of some tensors."""

    cpu: torch.Tensor
    device_type: str | None
    devices: list[int]
    device_states: list[torch.Tensor]

    @classmethod
    def capture(cls, *tensors: torch.Tensor) -> "RNGState":
        """Record the states that a call on ``tensors`` would draw from.

        Device generators are read at call time, never at construction time, so
        a CUDA context created after the model was built is handled.
        """
        device_types = {t.device.type for t in tensors if t.device.type not in ("cpu", "meta")}
        device_type = device_types.pop() if len(device_types) == 1 else None
        if device_type is not None:
            devices, states = get_device_states(*tensors)
        else:
            devices, states = [], []
        return cls(torch.get_rng_state(), device_type, list(devices), list(states))

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


@dataclass(frozen=True)
class AutocastState:
    """Whether autocast was on for a device type, and with which dtype."""

    device_type: str
    enabled: bool
    dtype: torch.dtype
    cache_enabled: bool

    @classmethod
    def capture(cls, device_type: str) -> "AutocastState":
        """Read the autocast state of ``device_type`` in the current thread."""
        if device_type not in ("cpu", "cuda", "xpu", "mps", "hpu", "xla"):
            return cls(device_type, False, torch.float32, True)
        return cls(
            device_type,
            torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type),
            torch.is_autocast_cache_enabled(),
        )

    def context(self) -> contextlib.AbstractContextManager:
        """An autocast context equal to the captured state (a no-op when it was off)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(
            self.device_type, dtype=self.dtype, enabled=True, cache_enabled=self.cache_enabled
        )


@contextlib.contextmanager
def frozen_norm_stats(module: nn.Module) -> Iterator[None]:
    """Run the body with the running statistics of normalisation layers left unchanged.

    A BatchNorm layer in training mode normalises with the batch statistics
    either way. Inside this context its momentum is 0, so the update
    ``running = (1 - 0) * running + 0 * batch`` leaves ``running_mean`` and
    ``running_var`` bit for bit as they were, and ``num_batches_tracked`` is
    restored on exit. The layer saves the same tensors for backward as in the
    first run, which non-reentrant checkpointing checks.
    """
    layers = [
        m
        for m in module.modules()
        if isinstance(m, _NormBase) and m.training and m.track_running_stats
    ]
    saved = [(m, m.momentum, m.num_batches_tracked.clone()) for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, batches in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(batches)


def checkpoint_updating_stats_once(module: nn.Module, fn, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` under non-reentrant :func:`torch.utils.checkpoint.checkpoint`, BatchNorm-safe.

    Plain checkpointing updates the running statistics of ``module``'s
    BatchNorm layers twice per step (forward and recomputation; PyTorch issue
    96136). Here the recomputation runs under :func:`frozen_norm_stats`.
    """
    calls = 0

    def run(h: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            return fn(h)
        with frozen_norm_stats(module):
            return fn(h)

    return checkpoint(run, x, use_reentrant=False, preserve_rng_state=True)


@dataclass
class Tape:
    """Everything a block's forward records so that a later recomputation matches it.

    ``rng`` maps a name of a sub-function (``"F"``, ``"G"``) to the RNG state
    it drew from; it stays empty when the block draws no random numbers, so a
    deterministic chain keeps no per-block state at all.
    """

    autocast: AutocastState
    record_rng: bool
    rng: dict[str, RNGState] = field(default_factory=dict)

    @classmethod
    def start(cls, x: torch.Tensor, record_rng: bool) -> "Tape":
        """A tape for a forward pass on ``x`` in the current autocast state."""
        return cls(AutocastState.capture(x.device.type), record_rng)

    def call(self, name: str, fn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """First run of ``fn(x)``: record the RNG state under ``name`` if needed."""
        if self.record_rng:
            self.rng[name] = RNGState.capture(x)
        return fn(x)

    def recall(self, name: str, fn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Second run of ``fn(x)``: same RNG draws, same autocast, no running-stat update."""
        rng = self.rng.get(name)
        replay = rng.replay() if rng is not None else contextlib.nullcontext()
        with replay, self.autocast.context(), frozen_norm_stats(fn):
            return fn(x)
