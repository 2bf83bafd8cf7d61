"""Pick the device a notebook or training run will use, describe it, and wait for it."""

from __future__ import annotations

import os
import platform

import torch

__all__ = ["default_device", "hardware", "synchronize"]


def default_device() -> torch.device:
    """CUDA if available, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on ``device``, so that a timer measures it; a no-op on the CPU.

    Uses :func:`torch.accelerator.synchronize` (torch 2.6 and later), else the
    device's own module (``torch.cuda.synchronize``, ``torch.mps.synchronize``).
    """
    device = torch.device(device)
    if device.type == "cpu":
        return
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "synchronize"):
        accelerator.synchronize(device)
    else:
        torch.get_device_module(device).synchronize()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware(device: torch.device | str | None = None) -> dict[str, str | int | None]:
    """What a run ran on: the device kind, its name (GPU model or CPU model) and the CPU."""
    device = torch.device(device) if device is not None else default_device()
    info: dict[str, str | int | None] = {
        "device": device.type,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    elif device.type == "mps":
        info["name"] = f"Apple MPS ({platform.machine()})"
    else:
        info["name"] = (
            f"CPU: {info['cpu']} ({info['cpu_count']} logical cores, {info['torch_threads']} torch "
            "threads)"
        )
    return info
