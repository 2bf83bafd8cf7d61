"""Helpers for the book's notebooks that work with or without the book's build tools.

:func:`glue` stores a value for the rendered book exactly as ``myst_nb.glue``
does, without importing myst-nb, so that a chapter runs unchanged, with the
same outputs, on Colab, where only ``revlib[train]`` is installed.

:class:`RunSettings` is the one switch between a chapter's fast CPU run and
its full GPU experiments. A chapter writes ``RUN = RunSettings.from_env(full_run=False)``
at its top; a reader sets ``full_run=True`` on a GPU, and tests override any
field through environment variables, so the full branch of every chapter can
run on the CPU on small stand-in data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["glue", "GLUE_PREFIX", "RunSettings", "peak_memory_bytes"]


GLUE_PREFIX = "application/papermill.record/"


def glue(name: str, value: Any, display: bool = True) -> None:
    """Store ``value`` under ``name`` for the rendered book: the output ``myst_nb.glue`` writes,
    without myst-nb.

    myst-nb's ``glue`` displays the value's MIME bundle, with each type prefixed by
    ``application/papermill.record/`` when ``display=False`` (a front end shows
    nothing for it), and metadata ``{"scrapbook": {"name": ..., "mime_prefix": ...}}``
    from which the book build reads it. This writes the same display output, so a
    notebook run on Colab, where myst-nb is not installed, has exactly the outputs of
    one run by the book's tools (nbval compares them; a test checks against myst-nb).
    """
    from IPython.core.formatters import format_display_data
    from IPython.display import display as show

    bundle, metadata = format_display_data(value)
    prefix = "" if display else GLUE_PREFIX
    metadata["scrapbook"] = dict(name=name, mime_prefix=prefix)
    show({prefix + k: v for k, v in bundle.items()}, raw=True, metadata=metadata)


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"RunSettings: {name} must be 1/0 (or true/false), got {value!r}")


@dataclass(frozen=True)
class RunSettings:
    """How much of a chapter runs, and where its data and results live.

    Attributes:
        full_run: run the full (GPU) experiments, not only the fast CPU path.
        data_root: where torchvision finds (or downloads) CIFAR-10/100 and STL-10.
        runs_dir: where ``python -m revlib.harness.experiments`` writes results
            (``*.json``) and checkpoints that a chapter tabulates.
        max_iterations: if set, every full-run training stops after this many
            iterations (tests use it to run the full branch on the CPU).
        require_gpu: whether the full run insists on an accelerator.

    Environment variables override the chapter's values: ``REVLIB_FULL_RUN``
    (1/0), ``REVLIB_DATA_ROOT``, ``REVLIB_RUNS_DIR``, ``REVLIB_MAX_ITERATIONS``
    and ``REVLIB_REQUIRE_GPU`` (1/0).
    """

    full_run: bool = False
    data_root: Path = Path("data")
    runs_dir: Path = Path("runs")
    max_iterations: int | None = None
    require_gpu: bool = True

    @classmethod
    def from_env(
        cls,
        full_run: bool = False,
        data_root: str | Path = "data",
        runs_dir: str | Path = "runs",
        max_iterations: int | None = None,
        require_gpu: bool = True,
    ) -> RunSettings:
        """The chapter's settings, each overridden by its environment variable when set."""
        env_full = _env_flag("REVLIB_FULL_RUN")
        env_gpu = _env_flag("REVLIB_REQUIRE_GPU")
        env_iters = os.environ.get("REVLIB_MAX_ITERATIONS")
        if env_iters:
            try:
                max_iterations = int(env_iters)
            except ValueError as err:
                raise ValueError(
                    f"RunSettings: REVLIB_MAX_ITERATIONS must be an integer, got {env_iters!r}"
                ) from err
            if max_iterations <= 0:
                raise ValueError(
                    f"RunSettings: REVLIB_MAX_ITERATIONS must be positive, got {max_iterations}"
                )
        return cls(
            full_run=full_run if env_full is None else env_full,
            data_root=Path(os.environ.get("REVLIB_DATA_ROOT") or data_root),
            runs_dir=Path(os.environ.get("REVLIB_RUNS_DIR") or runs_dir),
            max_iterations=max_iterations,
            require_gpu=require_gpu if env_gpu is None else env_gpu,
        )

    def device(self) -> torch.device:
        """The device of the full run: CUDA if available; else the CPU, unless ``require_gpu``.

        Raises ``RuntimeError`` (with the Colab fix) when ``require_gpu`` is set and
        there is no GPU; tests set ``REVLIB_REQUIRE_GPU=0`` to run the full branch on the CPU.
        """
        if torch.cuda.is_available():
            return torch.device("cuda")
        if self.require_gpu:
            raise RuntimeError(
                "RunSettings: full_run=True needs a GPU and this machine has none. On Colab choose "
                "Runtime > Change runtime type > GPU; to run the full branch on the CPU anyway "
                "(slowly), set REVLIB_REQUIRE_GPU=0."
            )
        return torch.device("cpu")

    def iterations(self, full: int) -> int:
        """``full`` iterations, or ``max_iterations`` if that is set and smaller."""
        return full if self.max_iterations is None else min(full, self.max_iterations)


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device | str) -> int | None:
    """Peak memory the allocator of ``device`` holds while ``fn()`` runs, above what it held before.

    On CUDA: :func:`revlib.core.memory.cuda_peak_bytes` (``torch.cuda.synchronize``
    around ``fn``, ``max_memory_allocated``). Other devices have no such counter
    in PyTorch: ``fn()`` still runs, and the result is ``None`` ("not measured"),
    which the caller prints as such rather than a number.
    """
    device = torch.device(device)
    if device.type == "cuda":
        from ..core.memory import cuda_peak_bytes

        return cuda_peak_bytes(fn, device)
    fn()
    return None
