"""Fixtures for every test: a fixed seed, one thread, the devices to run on, the stand-in data
sets. Helper functions are in helpers.py."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The test tensors are tiny: one thread is as fast, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every available device: the CPU always, CUDA when present (as MemCNN's tests do)."""
    return torch.device(request.param)


@pytest.fixture(scope="session")
def standin_root(tmp_path_factory):
    """A folder with small stand-ins of CIFAR-10, CIFAR-100 and STL-10 (tests/standin_data.py);
    yields (root, written)."""
    import standin_data

    root = tmp_path_factory.mktemp("standin-data")
    written = standin_data.write_all(root)
    standin_data.accept_standin_checksums()
    return root, written
