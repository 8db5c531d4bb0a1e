"""Shared test helpers: GPU availability and an independent AWQ dequantization (random AWQ checkpoints:
awqgemm.testing.random_awq)."""

from __future__ import annotations

import numpy as np
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


def numpy_dequant(qweight, qzeros, scales, group):
    """Independent float64 dequantization straight from the AWQ spec."""
    order = [0, 4, 1, 5, 2, 6, 3, 7]
    qw = qweight.numpy().view(np.uint32)
    qz = qzeros.numpy().view(np.uint32)
    k, n8 = qw.shape
    q = np.zeros((k, n8 * 8))
    z = np.zeros((qz.shape[0], n8 * 8))
    for j in range(8):
        q[:, j::8] = (qw >> (4 * order[j])) & 0xF
        z[:, j::8] = (qz >> (4 * order[j])) & 0xF
    s = scales.float().numpy().astype(np.float64)
    return (q - np.repeat(z, group, axis=0)) * np.repeat(s, group, axis=0)
