"""What a recomputation reads besides its input, captured after the forward and checked before the
backward.

The engine's guard: a parameter or buffer replaced or modified in place
between the forward and the backward (an optimizer step, a weight swap)
would make the reconstruction silently wrong, so it raises instead; and the
train/eval flags of every submodule are put back as the forward had them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor, nn

from .recompute import _NORM_STATS, _updating_norm, submodules

if TYPE_CHECKING:
    from .recompute import Tape

__all__ = ["ModuleState"]


@dataclass
class ModuleState:
    """What a recomputation of ``module`` reads besides its input, as the forward left it.

    The train/eval flag of every submodule, and every parameter and buffer
    (frozen ones included) with its version counter. A buffer the
    recomputation does not read from the module (the running statistics of a
    BatchNorm in training mode, a buffer that a tape replays from its copy)
    is checked for identity only.
    """

    modules: list[nn.Module]
    training: list[bool]
    tensors: list[tuple[int, str, Tensor, int | None]]

    @classmethod
    def capture(cls, module: nn.Module, tapes: Iterable[Tape] = ()) -> ModuleState:
        replayed = {
            (id(c.module), c.name)
            for tape in tapes
            for copies in tape.buffers.values()
            for c in copies
        }
        modules = submodules(module)
        tensors: list[tuple[int, str, Tensor, int | None]] = []
        for i, m in enumerate(modules):
            for name, p in m._parameters.items():
                if p is not None:
                    tensors.append((i, name, p, p._version))
            stats = _NORM_STATS if _updating_norm(m) else ()
            for name, b in m._buffers.items():
                if b is not None:
                    unread = name in stats or (id(m), name) in replayed
                    tensors.append((i, name, b, None if unread else b._version))
        return cls(modules, [m.training for m in modules], tensors)

    def check(self, module: nn.Module, owner: str, prefix: str = "") -> None:
        """Raise ``RuntimeError`` naming the tensor if a parameter or buffer was replaced or
        modified in place.

        ``prefix`` is the module's name in the model the user sees (``"3."`` for block 3), put
        before each name.
        """
        modules = submodules(module)
        if len(modules) != len(self.modules) or any(
            a is not b for a, b in zip(modules, self.modules, strict=True)
        ):
            raise RuntimeError(
                f"{owner}: the blocks' submodules changed between forward and backward"
            )
        replaced_at: list[tuple[nn.Module, str]] = []
        modified_at: list[tuple[nn.Module, str]] = []
        for i, name, t, version in self.tensors:
            m = modules[i]
            now = m._parameters.get(name) if name in m._parameters else m._buffers.get(name)
            if now is not t:
                replaced_at.append((m, name))
            elif version is not None and t._version != version:
                modified_at.append((m, name))
        if not replaced_at and not modified_at:
            return
        names = {id(m): n for n, m in module.named_modules()}
        replaced, modified = (
            [prefix + f"{names[id(m)]}.{name}".lstrip(".") for m, name in found]
            for found in (replaced_at, modified_at)
        )
        if replaced:
            raise RuntimeError(
                f"{owner}: parameters or buffers were replaced between forward and backward "
                f"({', '.join(replaced[:3])}{', ...' if len(replaced) > 3 else ''}; e.g. by "
                "torch.func.functional_call or a weight swap). The reconstruction needs the "
                "forward's weights and buffers. Use mode='autograd' for functional calls."
            )
        if modified:
            raise RuntimeError(
                f"{owner}: parameters or buffers were modified in place between forward and "
                f"backward ({', '.join(modified[:3])}{', ...' if len(modified) > 3 else ''}; e.g. "
                "an optimizer step before backward). The reconstruction would use the new values "
                "and give wrong gradients. Call backward first. (A fused optimizer step, which "
                "moves no version counter, cannot be detected: PyTorch limitation.)"
            )

    @contextlib.contextmanager
    def forward_training_flags(self) -> Iterator[None]:
        """Run the body with every submodule in the train/eval mode it had in the forward."""
        changed = [
            (m, m.training)
            for m, flag in zip(self.modules, self.training, strict=True)
            if m.training != flag
        ]
        for m, now in changed:
            m.training = not now
        try:
            yield
        finally:
            for m, now in changed:
                m.training = now
