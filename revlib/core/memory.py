"""Measure activation memory exactly: the bytes autograd saves for the backward pass.

:class:`SavedTensorMeter` installs :func:`torch.autograd.graph.saved_tensors_hooks`
and records every tensor that an operation saves for its backward. Each
storage is counted once (a tensor saved by two operations, or two views of
one storage, cost memory once), and parameters are left out, since they exist
whether or not a graph is built. The count is the same on every device, so it
can be checked in a test; on CUDA, :func:`cuda_peak_bytes` adds the
allocator's peak for comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["SavedTensorMeter", "saved_tensor_bytes", "cuda_peak_bytes", "MiB"]

MiB = 2**20


@dataclass
class SavedTensorMeter:
    """Context manager that adds up the storages saved for backward inside it.

    Args:
        exclude: tensors (usually ``model.parameters()``) whose storages are not
            counted; every ``nn.Parameter`` is left out in any case.
        on_save: called as ``on_save(tensor, nbytes)`` for each storage when it
            is first counted, with the bytes it added (e.g. to charge them to
            the layer that is running, as :mod:`revlib.core.memcalc` does).

    After the ``with`` block, ``bytes`` is the total, ``count`` the number of
    distinct storages and ``by_dtype`` the bytes per dtype.
    """

    exclude: Iterable[Tensor] = ()
    on_save: Callable[[Tensor, int], None] | None = None
    bytes: int = 0
    count: int = 0
    by_dtype: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._excluded = {_storage_key(t) for t in self.exclude}
        self._seen: dict[_StorageKey, Any] = {}
        self._hooks: Any = None

    def _pack(self, t: Tensor) -> Tensor:
        if isinstance(t, nn.Parameter):
            return t
        key = _storage_key(t)
        if key in self._excluded or key in self._seen:
            return t
        storage = t.untyped_storage()
        self._seen[key] = storage  # held, so the address cannot be reused while measuring
        nbytes = storage.nbytes()
        self.bytes += nbytes
        self.count += 1
        name = str(t.dtype).replace("torch.", "")
        self.by_dtype[name] = self.by_dtype.get(name, 0) + nbytes
        if self.on_save is not None:
            self.on_save(t, nbytes)
        return t

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)
        self._seen.clear()


_StorageKey = tuple[str, int | None, int]


def _storage_key(t: Tensor) -> _StorageKey:
    return (t.device.type, t.device.index, t.untyped_storage().data_ptr())


def saved_tensor_bytes(model: nn.Module, *inputs: Any, **kwargs: Any) -> int:
    """Bytes that one forward of ``model(*inputs, **kwargs)`` saves for its backward.

    The model's parameters and buffers are not counted. The graph is discarded
    afterwards; the model runs in whatever train/eval mode it is in.
    """
    owned = [*model.parameters(), *model.buffers()]
    with torch.enable_grad(), SavedTensorMeter(exclude=owned) as meter:
        out = model(*inputs, **kwargs)
    del out
    return meter.bytes


def cuda_peak_bytes(fn: Callable[[], Any], device: torch.device | str | None = None) -> int:
    """Peak CUDA memory allocated while ``fn()`` runs, above what was allocated before it.

    Raises ``RuntimeError`` when CUDA is not available.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("cuda_peak_bytes: CUDA is not available on this machine")
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before
