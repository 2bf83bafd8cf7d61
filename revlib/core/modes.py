"""Backward modes, validated in one place, and how a whole model switches between them.

Every reversible piece of a network runs its backward pass in one of three
modes (:data:`MODES`):

* ``"reversible"``: store no block activations; reconstruct them from the
  outputs during the backward pass (Gomez et al. 2017, Algorithm 1);
* ``"autograd"``: plain autograd, everything stored (the A/B reference);
* ``"checkpoint"``: :func:`torch.utils.checkpoint.checkpoint` per block
  (Chen et al. 2016), block inputs stored.

:class:`HasMode` is the attribute with its check; :class:`CheckpointedModule`
is a non-invertible layer that keeps only its input in the memory-saving
modes; :func:`set_mode` / :func:`get_mode` switch and read every such piece of
a model, and :class:`ModelMode` gives a whole model a ``mode`` property that
does exactly that.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, Protocol, TypeGuard, get_args

import torch
from torch import Tensor, nn

from .engine import in_reversible_block
from .replay import checkpoint_updating_stats_once

__all__ = [
    "Mode",
    "MODES",
    "validate_mode",
    "HasMode",
    "CheckpointedModule",
    "ModelMode",
    "set_mode",
    "get_mode",
]

Mode = Literal["reversible", "autograd", "checkpoint"]
MODES: tuple[str, ...] = get_args(Mode)


def _is_mode(mode: object) -> TypeGuard[Mode]:
    return mode in MODES


def validate_mode(owner: str, mode: object) -> Mode:
    """Return ``mode`` if it is one of :data:`MODES`, else raise ``ValueError`` naming ``owner``."""
    if not _is_mode(mode):
        raise ValueError(f"{owner}: mode must be one of {MODES}, got {mode!r}")
    return mode


class _ModeProperty:
    """The one ``mode`` property: an assignment is validated once, then :meth:`_store_mode` applies
    it."""

    @property
    def mode(self) -> Mode:
        """The backward mode: ``"reversible"``, ``"autograd"`` or ``"checkpoint"``."""
        return self._read_mode()

    @mode.setter
    def mode(self, value: Mode) -> None:
        self._store_mode(validate_mode(type(self).__name__, value))

    def _read_mode(self) -> Mode:
        raise NotImplementedError

    def _store_mode(self, mode: Mode) -> None:
        """Apply ``mode``, already validated."""
        raise NotImplementedError


class HasMode(_ModeProperty, nn.Module):
    """A module with a validated backward ``mode`` attribute (one of :data:`MODES`)."""

    def _read_mode(self) -> Mode:
        return self._mode

    def _store_mode(self, mode: Mode) -> None:
        self._mode = mode

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class CheckpointedModule(HasMode):
    """A non-invertible layer of a reversible network that keeps only its input for the backward.

    Subclasses implement :meth:`compute`. In modes ``"reversible"`` and
    ``"checkpoint"`` the forward runs under non-reentrant checkpointing: the
    input is stored, the inside recomputed in the backward, and BatchNorm
    running statistics are updated once. In mode ``"autograd"`` autograd
    stores everything. :func:`set_mode` switches it together with the model's
    sequences.
    """

    def __init__(self, mode: Mode = "reversible") -> None:
        super().__init__()
        self.mode = mode

    def compute(self, x: Tensor) -> Tensor:
        raise NotImplementedError(
            f"{type(self).__name__}: implement compute(x), the layer's forward"
        )

    def forward(self, x: Tensor) -> Tensor:
        # inside a reversible block the engine already recomputes: checkpointing again would only
        # run outside its replay, so the layer runs plainly there
        if (
            self.mode != "autograd"
            and self.training
            and torch.is_grad_enabled()
            and not in_reversible_block()
        ):
            return checkpoint_updating_stats_once(self, self.compute, x)
        return self.compute(x)

    def kept_activations(self, x: Tensor, y: Tensor) -> int | None:
        """For :mod:`revlib.core.memcalc`: ``None`` (list its layers) in mode autograd, else 0.

        When checkpointed the only tensor kept is the input, which the layer
        before has already counted as its output.
        """
        return None if self.mode == "autograd" else 0


class _ModuleTree(Protocol):
    """What reading and switching modes uses of a model: its modules (an ``nn.Module`` has them)."""

    def modules(self) -> Iterator[nn.Module]: ...


class _CheckedModuleTree(_ModuleTree, Protocol):
    """A :class:`ModelMode` model: its modules and its check of a mode."""

    def _check_mode(self, mode: Mode) -> None: ...


def _switchable(model: _ModuleTree) -> list[HasMode]:
    return [m for m in model.modules() if isinstance(m, HasMode)]


def set_mode(model: nn.Module, mode: Mode) -> nn.Module:
    """Set ``mode`` on every :class:`HasMode` piece of ``model`` (sequences, checkpointed layers).

    Works on any module (a RevNet, Rev-VGG, or a model of the reader's own);
    returns ``model``. Raises ``ValueError`` for an unknown mode.
    """
    _store_everywhere(model, validate_mode("set_mode", mode))
    return model


def _store_everywhere(model: _ModuleTree, mode: Mode) -> None:
    for m in _switchable(model):
        m._store_mode(mode)


def get_mode(model: nn.Module) -> Mode:
    """The mode shared by the reversible pieces of ``model``; ``"autograd"`` if it has none.

    A model without reversible pieces (a ResNet) stores everything, which is
    mode ``"autograd"``. Raises ``ValueError`` when the pieces disagree.
    """
    return _shared_mode(model)


def _shared_mode(model: _ModuleTree) -> Mode:
    modes = {m.mode for m in _switchable(model)}
    if len(modes) > 1:
        raise ValueError(f"get_mode: the model mixes modes {sorted(modes)}")
    return modes.pop() if modes else "autograd"


class ModelMode(_ModeProperty):
    """Mixin for a whole model: a ``mode`` property that reads and sets every reversible piece.

    Reading it is :func:`get_mode`, setting it :func:`set_mode`. A subclass
    may override :meth:`_check_mode` to refuse a mode (a ResNet has only
    ``"autograd"``).
    """

    # the mixin's class is an nn.Module subclass (a model), which has modules()
    def _read_mode(self: _ModuleTree) -> Mode:
        return _shared_mode(self)

    def _store_mode(self: _CheckedModuleTree, mode: Mode) -> None:
        self._check_mode(mode)
        _store_everywhere(self, mode)

    def _check_mode(self, mode: Mode) -> None:
        """Raise ``ValueError`` if this model cannot run in ``mode``."""
