"""Shared test helpers: GPU availability and an independent AWQ dequantization (random AWQ checkpoints:
awqgemm.testing.random_awq)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def has_gpu() -> bool:
    return torch.cuda.is_available()


# Work in progress behind a test-only switch (awqgemm.testing.force), not yet run on a GPU. Its tests are
# marked @pytest.mark.wip("<feature>"). ci/device_kernels.sh runs each suite with --wip none first, then
# each feature in a process of its own: a kernel that traps (a hung mbarrier, a bad TMA box) kills the
# CUDA context, and with it every later test of its process. When a feature becomes the default, its
# switch, its name here and the device script's list of it go together. None today (after the H200 run
# of 2026-11-29 22:03 four consumer warpgroups became the default where they won; ws_regroup went).
WIP_FEATURES: tuple[str, ...] = ()


def pytest_addoption(parser):
    parser.addoption(
        "--wip",
        default="all",
        help=f"work-in-progress tests to run: all (default), none, or only those of one feature: {WIP_FEATURES}",
    )


def _select_wip(config, items):
    choice = config.getoption("--wip")
    if choice not in ("all", "none", *WIP_FEATURES):
        raise pytest.UsageError(f"--wip={choice!r}: expected all, none or one of {WIP_FEATURES}")
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("wip")
        feature = marker.args[0] if marker is not None and marker.args else None
        if marker is not None and feature not in WIP_FEATURES:
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.wip needs one of {WIP_FEATURES}, got {feature!r}")
        wanted = choice == "all" or (feature is None if choice == "none" else feature == choice)
        (keep if wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_collection_modifyitems(config, items):
    _select_wip(config, items)
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
