"""Fixtures of the harness tests."""

from __future__ import annotations

import pytest
import torch

from revlib.harness import data


@pytest.fixture(scope="session")
def tiny_splits() -> data.FmnistSplits:
    """Fashion-MNIST cut to 384 training, 100 validation and 100 test images."""
    s = data.fmnist_splits()
    return data.FmnistSplits(
        s.train.subset(torch.arange(384)),
        s.val.subset(torch.arange(100)),
        s.test.subset(torch.arange(100)),
    )
