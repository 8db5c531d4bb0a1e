"""Shared fixtures: GPU availability (random AWQ checkpoints: awqgemm.testing.random_awq)."""

from __future__ import annotations

import pytest
import torch


def has_gpu() -> bool:
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if has_gpu():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU here: GPU tests run on the GPU machine (see ci/device_kernels.sh)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
