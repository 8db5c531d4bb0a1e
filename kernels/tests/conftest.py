"""Shared fixtures: random AWQ checkpoints and GPU availability."""

from __future__ import annotations

import pytest
import torch

from awqgemm import _layout


def random_awq(k: int, n: int, group: int, dtype=torch.float16, device="cpu", seed: int | None = None):
    """A random AWQ triple (qweight, qzeros, scales) with realistic magnitudes.

    Scales ~ U(0.5, 1.5) / (8 * sqrt(K)) keep x @ W at unit-ish scale, as in a
    real layer; zero points and weights are uniform over 0..15.
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed if seed is not None else torch.randint(0, 2**31 - 1, ()).item())
    q = torch.randint(0, 16, (k, n), generator=gen, dtype=torch.uint8)
    z = torch.randint(0, 16, (k // group, n), generator=gen, dtype=torch.uint8)
    s = (torch.rand(k // group, n, generator=gen) + 0.5) / (8 * k**0.5)
    qweight = _layout.pack_awq_int4(q).to(device)
    qzeros = _layout.pack_awq_int4(z).to(device)
    return qweight, qzeros, s.to(dtype).to(device)


def has_gpu() -> bool:
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if has_gpu():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU here: GPU tests run on the GPU machine (see ci/device_kernels.sh)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
