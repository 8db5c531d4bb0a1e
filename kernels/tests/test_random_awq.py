"""awqgemm.testing.random_awq: the one random AWQ checkpoint generator of tests, benchmarks and package tests."""

from __future__ import annotations

import pytest
import torch

import awqgemm
from awqgemm import _layout
from awqgemm.testing import random_awq


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("k", "n", "group", "groups"), [(256, 48, 64, 4), (128, 16, 128, 1), (96, 8, -1, 1)])
def test_shapes_dtypes_and_value_ranges(k, n, group, groups, dtype):
    qweight, qzeros, scales = random_awq(k, n, group, dtype, seed=1)
    assert (qweight.shape, qweight.dtype) == ((k, n // 8), torch.int32)
    assert (qzeros.shape, qzeros.dtype) == ((groups, n // 8), torch.int32)
    assert (scales.shape, scales.dtype) == ((groups, n), dtype)
    assert qweight.device.type == qzeros.device.type == scales.device.type == "cpu"
    # AWQ nibble order round trip: the words are exactly the packing of 4-bit values
    q = _layout.unpack_awq_int4(qweight)
    assert torch.equal(_layout.pack_awq_int4(q), qweight)
    assert int(q.max()) <= 15
    s = scales.float()
    lo, hi = 0.5 / (8 * k**0.5), 1.5 / (8 * k**0.5)
    assert bool(((s >= lo * 0.99) & (s <= hi * 1.01)).all()), (s.min(), s.max(), lo, hi)


def test_weights_use_all_sixteen_levels_and_every_nibble():
    qweight, qzeros, _ = random_awq(512, 64, 128, seed=0)
    q, z = _layout.unpack_awq_int4(qweight), _layout.unpack_awq_int4(qzeros)
    assert set(q.unique().tolist()) == set(range(16))
    assert set(z.unique().tolist()) == set(range(16))
    # top nibble >= 8 appears, so some words are negative int32 as in real checkpoints
    assert bool((qweight < 0).any())


def test_seed_is_deterministic_and_seeds_differ():
    a, b = random_awq(128, 32, 64, seed=5), random_awq(128, 32, 64, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    c = random_awq(128, 32, 64, seed=6)
    assert not torch.equal(a[0], c[0])
    d, e = random_awq(128, 32, 64), random_awq(128, 32, 64)  # seed=None: a fresh draw each call
    assert not torch.equal(d[0], e[0])


def test_layer_output_has_unit_scale():
    """The realistic-magnitude promise: x @ W stays O(1) for unit-variance x."""
    k, n, g = 1024, 256, 128
    w = awqgemm.dequantize_awq(*random_awq(k, n, g, torch.float32, seed=3), g)
    x = torch.randn(64, k, generator=torch.Generator().manual_seed(0))
    rms = (x @ w).pow(2).mean().sqrt().item()
    assert 0.1 < rms < 3.0, rms


def test_usable_by_the_public_api():
    qweight, qzeros, scales = random_awq(256, 64, 64, torch.float32, seed=2)
    packed = awqgemm.pack_awq(qweight, qzeros, scales, 64)
    assert (packed.K, packed.N, packed.group_size) == (256, 64, 64)
    x = torch.randn(3, 256)
    ref = x.double() @ awqgemm.dequantize_awq(qweight, qzeros, scales, 64).double()
    torch.testing.assert_close(awqgemm.gemm(x, packed).double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((128, 30, 64), {}, ValueError, "multiple of 8"),
        ((100, 32, 64), {}, ValueError, "divisor of k=100"),
        ((128, 32, 0), {}, ValueError, "group=0"),
        ((128, 32, -2), {}, ValueError, "group=-2"),
        ((0, 32, 64), {}, ValueError, "positive"),
        ((128, -8, 64), {}, ValueError, "positive"),
        ((128.0, 32, 64), {}, TypeError, "k must be an int"),
        ((128, 32, True), {}, TypeError, "group must be an int"),
        ((128, 32, 64), {"dtype": torch.int32}, TypeError, "floating-point"),
        ((128, 32, 64), {"dtype": "float16"}, TypeError, "floating-point"),
        ((128, 32, 64), {"seed": -1}, ValueError, "seed"),
        ((128, 32, 64), {"seed": 1.5}, ValueError, "seed"),
    ],
)
def test_bad_arguments_are_refused_clearly(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        random_awq(*args, **kwargs)


@pytest.mark.gpu
def test_draws_on_the_gpu_deterministically():
    a = random_awq(4096, 1024, 128, torch.float16, "cuda", seed=9)
    b = random_awq(4096, 1024, 128, torch.float16, "cuda", seed=9)
    assert all(t.is_cuda for t in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    q = _layout.unpack_awq_int4(a[0])
    assert int(q.max()) == 15 and int(q.min()) == 0
