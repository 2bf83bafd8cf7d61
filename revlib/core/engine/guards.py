"""The engine's guards: what may reach a block's forward, and what must not change before its
backward.

:class:`SideInputGuard` refuses a tensor that requires grad and reaches F other
than as an input (its gradient would be lost; :func:`check_attribute_tensors`
is its static form under ``torch.compile``). :class:`ModuleState` refuses a
parameter or buffer replaced or modified in place between the forward and the
backward (the reconstruction would be silently wrong), and puts the
train/eval flags back as the forward had them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import refusals
from ..replay import Slot, Tape, forward_reads, submodules, swapped
from ..replay.buffers import NORM_STATS, updating_norm
from ..replay.calls import user_code

__all__ = [
    "ModuleState",
    "SideInputGuard",
    "Signature",
    "check_attribute_tensors",
    "fingerprint",
    "signature",
]

Signature = tuple[int, torch.Size, tuple[int, ...], int]


def signature(t: Tensor) -> Signature:
    return (t.data_ptr(), t.shape, t.stride(), t._version)


class SideInputGuard:
    """Refuse a tensor that requires grad and reaches a block's forward other than as an input.

    The engine's forward builds no graph, so the gradient of a tensor F reads
    from an attribute (a conditioning tensor set on F, an unregistered
    ``nn.Parameter``) would silently be lost. The forward therefore runs with
    grad mode on but with its input, the chain's extra arguments and the
    block's parameters detached: no graph is built unless some other tensor
    that requires grad is used, and then an output requires grad.
    :meth:`check` refuses that output, naming the tensor where the graph
    leaves the forward (autograd's sequence numbers tell which nodes the
    forward made). Nothing is paid per operation.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.start = torch._C._autograd._get_sequence_nr()

    def check(self, outputs: Iterable[Tensor]) -> None:
        for t in outputs:
            if t.requires_grad:
                raise refusals.side_input(self.owner, self._entry_shape(t))

    def _entry_shape(self, t: Tensor) -> tuple[int, ...]:
        """The shape of a tensor from outside the forward that ``t``'s graph reaches."""
        todo: list[tuple[Any, int]] = [(t.grad_fn, 0)]
        seen: set[int] = set()
        while todo:
            node, nr = todo.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if hasattr(node, "variable"):  # AccumulateGrad: a leaf, e.g. a stray nn.Parameter
                return tuple(node.variable.shape)
            if node._sequence_nr() < self.start:  # made before the forward: a side input
                return tuple(node._input_metadata[nr].shape)
            todo.extend(node.next_functions)
        return tuple(t.shape)


_MODULE_INTERNALS = frozenset(vars(nn.Module()))
"""What ``nn.Module.__init__`` sets on every module (the registries of parameters, buffers and
children, the hook dictionaries, the train flag): scanned elsewhere or never a tensor."""

_PLAIN = frozenset({int, float, bool, str, type(None)})


def _grad_tensors(m: nn.Module) -> Iterator[Tensor]:
    """The tensors that require grad among ``m``'s own attributes (one level into lists, tuples
    and dicts) and what its ``forward`` reads from closures and globals."""
    for key, value in vars(m).items():
        if type(value) in _PLAIN or key in _MODULE_INTERNALS:
            continue
        if isinstance(value, Tensor):
            if value.requires_grad:
                yield value
            continue
        values = (
            value.values()
            if isinstance(value, dict)
            else value
            if isinstance(value, (list, tuple))
            else ()
        )
        for v in values:
            if isinstance(v, Tensor) and v.requires_grad:
                yield v
    if user_code(type(m)):  # torch's own modules read nothing beyond their attributes
        for v in forward_reads(m):
            if isinstance(v, Tensor) and v.requires_grad:
                yield v


def check_attribute_tensors(block: nn.Module, allowed: set[int], owner: str) -> None:
    """The static form of :class:`SideInputGuard`, used under ``torch.compile``: scan the modules'
    attributes.

    A tensor that requires grad and is not a registered parameter raises when a
    module of the block holds it as a plain attribute or inside a list, tuple
    or dict attribute, or when the ``forward`` of a module defined outside
    torch reads it from a closure cell or a global name (what the eager guard
    sees as it happens; a tensor reached by a deeper path is not seen here).
    """
    modules = submodules(block)
    registered: set[int] | None = None  # built only when a candidate is found
    for m in modules:
        for v in _grad_tensors(m):
            if registered is None:
                registered = {id(p) for m in modules for p in m._parameters.values()} | allowed
            if id(v) not in registered:
                raise refusals.side_input(owner, tuple(v.shape))


def fingerprint(value: Any, depth: int = 2) -> Any:
    """What a forward could change in place in an extra argument, in a comparable form: the
    structure of lists, tuples, dicts and sets, each tensor's identity and version counter, plain
    values, and the attributes of other objects (``depth`` objects deep; below, identity).

    The engine compares an extra's fingerprint before and after a block's forward: in mode
    ``"reversible"`` the forward receives rebuilt containers (and copies of mutable objects), so
    what it stores there never reaches the caller, and a tensor it stores has no graph.
    """
    if isinstance(value, Tensor):
        return (id(value), value._version)
    if isinstance(value, list | tuple):
        return (type(value), tuple(fingerprint(v, depth) for v in value))
    if isinstance(value, dict):
        return (type(value), tuple((k, fingerprint(v, depth)) for k, v in value.items()))
    if isinstance(value, set | frozenset):
        return (type(value), frozenset(fingerprint(v, 0) for v in value))
    if type(value) in _PLAIN:
        return value
    attributes = getattr(value, "__dict__", None)
    if depth > 0 and isinstance(attributes, dict) and not isinstance(value, nn.Module | type):
        return (type(value), tuple((k, fingerprint(v, depth - 1)) for k, v in attributes.items()))
    return id(value)


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
        replayed = {key for tape in tapes for key in tape.replayed_buffers()}
        modules = submodules(module)
        tensors: list[tuple[int, str, Tensor, int | None]] = []
        for i, m in enumerate(modules):
            for name, p in m._parameters.items():
                if p is not None:
                    tensors.append((i, name, p, p._version))
            stats = NORM_STATS if updating_norm(m) else ()
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
            raise refusals.submodules_changed(owner)
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
            raise refusals.weights_replaced(owner, replaced)
        if modified:
            raise refusals.weights_modified(owner, modified)

    @contextlib.contextmanager
    def forward_training_flags(self) -> Iterator[None]:
        """Run the body with every submodule in the train/eval mode it had in the forward."""
        changed = [
            (m, m.training)
            for m, flag in zip(self.modules, self.training, strict=True)
            if m.training != flag
        ]
        with swapped((Slot.attribute(m, "training"), not now) for m, now in changed):
            yield
