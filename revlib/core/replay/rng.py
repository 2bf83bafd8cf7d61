"""Random numbers and autocast: the generator states a call drew from, the autocast state it ran in.

:class:`RNGWatch` keeps the states before the call only when the call drew
(the state moved), so any random layer is replayed and a deterministic call
keeps nothing; the replay runs inside :func:`torch.random.fork_rng`, so the
global streams are left as they were (as :mod:`torch.utils.checkpoint` does,
device-generic through :func:`torch.get_device_module`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import get_device_states, set_device_states

__all__ = ["AutocastState", "RNGState", "RNGWatch", "has_random_layers"]

_RANDOM_LAYERS = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


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


class RNGWatch:
    """The :class:`~revlib.core.replay.protocol.Watch` of the generators a call on ``x`` draws
    from."""

    __slots__ = ("before",)

    def __init__(
        self,
        fn: Callable[..., Any],
        x: Tensor,
        names: dict[int, str],
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.before = RNGState.capture(x)

    def __enter__(self) -> RNGWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def record(self) -> RNGState | None:
        return None if self.before.is_current() else self.before
