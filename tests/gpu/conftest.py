"""Shared by the GPU tests: skip `gpu`-marked tests without CUDA (saying why), and NaN-poisoned buffers."""

from __future__ import annotations

import pytest
import torch

NO_CUDA_REASON = "no CUDA GPU (torch.cuda.is_available() is False)"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_CUDA_REASON)
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def nan_buffer():
    """nan_buffer(*shape, dtype=float32): a new device tensor full of NaN, so unwritten outputs show."""

    def make(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.full(shape, float("nan"), dtype=dtype, device="cuda")

    return make


@pytest.fixture
def poison():
    """poison(t): fill an existing device tensor with NaN before a kernel writes it; returns t."""

    def fill(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(float("nan"))

    return fill
