"""revlib.core.device.synchronize: a no-op on the CPU, torch.accelerator where it exists, else the
device's module."""

from __future__ import annotations

import types

import torch

from revlib.core.device import synchronize


def _recorder(calls: list) -> types.SimpleNamespace:
    return types.SimpleNamespace(synchronize=lambda *args: calls.append(args))


def test_synchronize_is_a_no_op_on_the_cpu(monkeypatch):
    calls: list = []
    monkeypatch.setattr(torch, "accelerator", _recorder(calls), raising=False)
    synchronize("cpu")
    synchronize(torch.device("cpu"))
    assert calls == []


def test_synchronize_waits_on_the_accelerator(monkeypatch):
    calls: list = []
    monkeypatch.setattr(torch, "accelerator", _recorder(calls), raising=False)
    synchronize("cuda:1")
    assert calls == [(torch.device("cuda:1"),)]


def test_synchronize_falls_back_to_the_device_module_before_torch_2_6(monkeypatch):
    calls: list = []
    monkeypatch.delattr(torch, "accelerator", raising=False)
    modules: list = []
    monkeypatch.setattr(
        torch, "get_device_module", lambda device: modules.append(device) or _recorder(calls)
    )
    synchronize("mps")
    assert modules == [torch.device("mps")] and calls == [()]
