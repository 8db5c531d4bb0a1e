"""Stored tests of the awqgemm conda package (run by `rattler-build test` / ci/conda_matrix.py test).

CPU part: the public API imports and the CPU reference path agrees with an independent float64 numpy
dequantization. GPU part: awqgemm.gemm on CUDA tensors against that float64 reference, for fp16 (and
bf16 on sm_80+), group sizes 32/64/128, several M and real model shapes. Without a GPU, a driver or a
CUDA build of torch, the GPU tests are skipped with a message that says which one is missing.
Running this file by hand, AWQGEMM_REQUIRE_GPU=1 turns that skip into a failure. (rattler-build runs
stored tests in a clean environment, so `ci/conda_matrix.py test --require-gpu` checks the output instead.)
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import awqgemm

AWQ_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]  # column j of each group of 8 sits in nibble AWQ_ORDER[j]


def _gpu_skip_reason() -> str | None:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build: GPU GEMM tests skipped"
    if not torch.cuda.is_available():
        return (
            f"no CUDA GPU or driver visible to torch {torch.__version__} (CUDA {torch.version.cuda}): "
            "GPU GEMM tests skipped"
        )
    major, minor = torch.cuda.get_device_capability()
    cc = 10 * major + minor
    info = awqgemm.build_info()
    sass, ptx = set(info.get("sass_archs") or []), set(info.get("ptx_archs") or [])
    if cc not in sass and not any(p <= cc for p in ptx):
        return (
            f"this awqgemm build (SASS {sorted(sass)}, PTX {sorted(ptx)}) has no code for sm_{cc} "
            f"({torch.cuda.get_device_name()}): take a build whose arch list covers it"
        )
    return None


GPU_SKIP = _gpu_skip_reason()
if GPU_SKIP and os.environ.get("AWQGEMM_REQUIRE_GPU") == "1":
    raise RuntimeError(f"AWQGEMM_REQUIRE_GPU=1 but: {GPU_SKIP}")
needs_gpu = pytest.mark.skipif(GPU_SKIP is not None, reason=GPU_SKIP or "")


def unpack_nibbles(words: torch.Tensor) -> np.ndarray:
    """[R, C/8] int32 in AWQ nibble order -> [R, C] ints in 0..15 (numpy, independent of awqgemm's layout code)."""
    w = words.numpy().view(np.uint32)
    cols = [(w >> np.uint32(4 * AWQ_ORDER[j])) & np.uint32(0xF) for j in range(8)]
    return np.stack(cols, axis=-1).reshape(w.shape[0], -1).astype(np.int64)


def make_awq(k: int, n: int, g: int, dtype: torch.dtype, seed: int):
    """A random AWQ triple (awqgemm.testing.random_awq) and its exact float64 weights, decoded here with numpy."""
    qw, qz, s = awqgemm.testing.random_awq(k, n, g, dtype, seed=seed)
    q, z = unpack_nibbles(qw), unpack_nibbles(qz)
    w64 = (q - np.repeat(z, g, axis=0)) * np.repeat(s.double().numpy(), g, axis=0)  # exact fp64 weights
    return qw, qz, s, w64


def rel_err(out: torch.Tensor, ref: np.ndarray) -> float:
    o = out.double().cpu().numpy()
    return float(np.linalg.norm(o - ref) / np.linalg.norm(ref))


def test_public_api_works_and_reports_this_package():
    """Each public entry point does its job on CPU tensors, and build_info() names this package."""
    from importlib.metadata import version

    qw, qz, s, w64 = make_awq(128, 32, 64, torch.float16, seed=7)
    packed = awqgemm.pack_awq(qw, qz, s, 64)
    assert isinstance(packed, awqgemm.PackedWeight)
    assert (packed.K, packed.N, packed.group_size) == (128, 32, 64)
    q2, z2, s2 = awqgemm.unpack_awq(packed)  # lossless: the checkpoint tensors come back bit for bit
    assert torch.equal(q2, qw) and torch.equal(z2, qz) and torch.equal(s2, s)
    np.testing.assert_allclose(awqgemm.dequantize_awq(qw, qz, s, 64).double().numpy(), w64, rtol=1e-3, atol=1e-6)
    info = awqgemm.build_info()
    assert info["version"] == awqgemm.__version__ == version("awqgemm")
    assert info["kernel_families"][-1] == "reference"
    assert info["torch_version"] == torch.__version__
    if awqgemm.have_cuda_kernels():
        assert info["cuda_version"] and info["sass_archs"], info
        assert len(info["kernel_families"]) > 1, info
    else:
        assert info["cuda_version"] is None and info["kernel_families"] == ["reference"], info


@pytest.mark.parametrize("g", [32, 64, 128])
def test_cpu_reference_matches_fp64(g):
    rng = np.random.default_rng(1000 + g)
    qw, qz, s, w64 = make_awq(256, 64, g, torch.float16, seed=1000 + g)
    w = awqgemm.dequantize_awq(qw, qz, s, g)
    assert tuple(w.shape) == (256, 64)
    np.testing.assert_allclose(w.double().numpy(), w64, rtol=1e-3, atol=1e-6)
    x = torch.from_numpy(rng.standard_normal((5, 256)).astype(np.float32)).half()
    out = awqgemm.gemm(x, awqgemm.pack_awq(qw, qz, s, g))
    assert out.dtype == torch.float16 and tuple(out.shape) == (5, 64)
    ref = x.double().numpy() @ w64
    assert rel_err(out, ref) < 1e-2


def poison_blocks(shape: tuple[int, int], dtype: torch.dtype, count: int = 8) -> set[int]:
    """Fill `count` caching-allocator blocks of the op's output size with NaN and free them: the op's
    own output then takes one of them (the caller checks which), so an element it never writes stays NaN."""
    blocks = [torch.full(shape, float("nan"), dtype=dtype, device="cuda") for _ in range(count)]
    torch.cuda.synchronize()
    ptrs = {b.data_ptr() for b in blocks}
    del blocks
    return ptrs


SHAPES = [(4096, 4096), (4096, 14336), (11008, 1376), (3584, 512)]  # Llama-3-8B, its MLP, Llama-2 TP shard, Qwen2.5


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("g", [32, 64, 128])
@pytest.mark.parametrize("k,n", SHAPES)
def test_gpu_gemm_vs_fp64(dtype, g, k, n):
    if dtype == torch.bfloat16 and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bf16 needs sm_80+")
    torch.backends.cuda.matmul.allow_tf32 = False  # the emulated pipeline below must really be fp32
    rng = np.random.default_rng(k * 7 + n * 3 + g)
    qw, qz, s, w64 = make_awq(k, n, g, dtype, seed=k * 7 + n * 3 + g)
    packed = awqgemm.pack_awq(qw.cuda(), qz.cuda(), s.cuda(), g)
    w64_d = torch.from_numpy(w64).cuda()  # exact dequantized weights, float64, from numpy (not awqgemm)
    w16_d = w64_d.to(dtype).float()
    for m in (1, 7, 16, 33, 128, 1000):
        x = torch.from_numpy(rng.standard_normal((m, k)).astype(np.float32)).to(dtype).cuda()
        ref = (x.double() @ w64_d).cpu().numpy()  # float64 GEMM
        poisoned = poison_blocks((m, n), dtype)
        out = awqgemm.gemm(x, packed)
        torch.cuda.synchronize()
        assert out.data_ptr() in poisoned, "the output did not land in a NaN-filled block: poison check void"
        assert out.dtype == dtype and tuple(out.shape) == (m, n)
        assert torch.isfinite(out).all(), f"non-finite output (m={m})"
        # Bound: a fixed 2e-3 (fp16) / 1e-2 (bf16), or twice the error of an honest 16-bit pipeline
        # (weights rounded to dtype, fp32 accumulation, output rounded to dtype) on the same inputs.
        emu = (x.float() @ w16_d).to(dtype)
        bound = max(2e-3 if dtype == torch.float16 else 1e-2, 2 * rel_err(emu, ref))
        err = rel_err(out, ref)
        assert err <= bound, f"m={m} k={k} n={n} g={g} {dtype}: rel err {err:.3e} > {bound:.3e}"
