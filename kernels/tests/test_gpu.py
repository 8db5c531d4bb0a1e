"""GPU tests: every kernel family against a float64 reference.

Run on a GPU machine (ci/device_kernels.sh does it on the H100). Older families
are forced onto newer GPUs through awqgemm.testing.force: their instructions
remain valid there, so the same code that runs on a V100 / T4 is checked here.
"""

from __future__ import annotations

import math

import pytest
import torch

import awqgemm
from awqgemm import _layout
from awqgemm.reference import dequantize_packed
from awqgemm.testing import random_awq
from conftest import has_gpu

pytestmark = pytest.mark.gpu

M_SWEEP = [*range(1, 18), 31, 64, 127, 256, 1000, 4096]
MODEL_SHAPES = {  # (K, N) of the linear layers
    "llama3-8b": [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)],
    "qwen2.5-7b": [(3584, 4608), (3584, 3584), (3584, 37888), (18944, 3584)],
    "llama2-7b": [(4096, 12288), (4096, 4096), (4096, 22016), (11008, 4096)],
    # tensor-parallel shards: N not a multiple of 64, K not of 64*4 ...
    "tp-shards": [(4096, 1376), (2752, 4096), (5504, 4096), (4736, 3584), (4096, 2368), (1120, 104)],
}


def families():
    """The kernel families this GPU can run: older ones forced onto it, and the
    sm90 (wgmma) family on a 9.0 GPU when the build carries it."""
    if not has_gpu():
        return []
    cap = torch.cuda.get_device_capability()
    cc = 10 * cap[0] + cap[1]
    out = [f for f, need in (("sm70", 70), ("sm75", 75), ("sm80", 80)) if cc >= need]
    if cc == 90 and "sm90a_m64nNk16" in awqgemm.build_info()["kernel_families"]:
        out.append("sm90")
    return out


def dtypes_for(family):
    return [torch.float16, torch.bfloat16] if family in ("sm80", "sm90") else [torch.float16]


CASES = [(f, d) for f in ("sm70", "sm75", "sm80", "sm90") for d in dtypes_for(f)]


def skip_unless_family(family):
    if family not in families():
        if family == "sm90" and has_gpu() and torch.cuda.get_device_capability() == (9, 0):
            pytest.fail("this 9.0 GPU's awqgemm build lacks the sm90 family: build with CUDA_ARCHITECTURES 90a-real")
        pytest.skip(f"{family} family needs a newer GPU (or, for sm90, a 9.0 GPU)")


def rel_err(out, ref):
    return (torch.linalg.vector_norm(out.double() - ref) / torch.linalg.vector_norm(ref)).item()


def check(x, qweight, qzeros, scales, group, bias=None, label=""):
    """Runs awqgemm.gemm and checks it against float64 with a principled bound."""
    packed = awqgemm.pack_awq(qweight, qzeros, scales, group)
    w = awqgemm.dequantize_awq(qweight, qzeros, scales, group)
    m, n = x.shape[0], w.shape[1]
    # Poison the allocator's free blocks so unwritten outputs show up as NaN.
    torch.empty(max(m * n * 4, 1 << 20), dtype=torch.uint8, device=x.device).fill_(0xFF)
    out = awqgemm.gemm(x, packed, bias)
    ref = x.double() @ w.double() if bias is None else x.double() @ w.double() + bias.double()
    # An honest 16-bit pipeline: dequantized weight in the dtype, fp32 accumulate, rounded output.
    emulated = (x.float() @ w.float() + (0 if bias is None else bias.float())).to(x.dtype)
    fixed = 2e-3 if x.dtype == torch.float16 else 1e-2
    bound = max(fixed, 2 * rel_err(emulated, ref))
    assert torch.isfinite(out).all(), f"{label}: non-finite output (unwritten or overflow)"
    err = rel_err(out, ref)
    assert err <= bound, f"{label}: rel err {err:.3e} > bound {bound:.3e}"
    return err


def assert_graph_replay_equals_eager(x, packed, replays=1):
    """awqgemm.gemm captured in a CUDA graph (after a warm-up call) replays what an eager call computes, bit
    for bit, under whatever testing.force the caller holds."""
    eager = awqgemm.gemm(x, packed)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        replayed = awqgemm.gemm(x, packed)
    for _ in range(replays):
        graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(replayed, eager)


def _m_sweep(family, dtype, group, paths):
    skip_unless_family(family)
    k, n = 1152, 1376  # N a TP-style shard; K = 18 tiles of 64
    qweight, qzeros, scales = random_awq(k, n, group, dtype, "cuda")
    worst = 0.0
    for path in paths:
        with awqgemm.testing.force(family=family, path=path):
            for m in M_SWEEP:
                x = torch.randn(m, k, dtype=dtype, device="cuda")
                worst = max(worst, check(x, qweight, qzeros, scales, group, label=f"{family} {path} M={m}"))
    print(f"{family} {'/'.join(paths)} {dtype} g{group}: worst rel err {worst:.2e}")


@pytest.mark.parametrize("family,dtype", CASES)
@pytest.mark.parametrize("group", [32, 64, 128])
def test_m_sweep(family, dtype, group):
    # sm80: the weight-tile kernel forced at every M too (the dispatcher picks it only for some M).
    _m_sweep(family, dtype, group, ("fused", "auto", *(("wtile",) if family == "sm80" else ())))


@pytest.mark.parametrize("family,dtype", CASES)
@pytest.mark.parametrize("model", sorted(MODEL_SHAPES))
def test_model_shapes(family, dtype, model):
    skip_unless_family(family)
    with awqgemm.testing.force(family=family):
        for k, n in MODEL_SHAPES[model]:
            group = 128 if k % 128 == 0 else 32
            qweight, qzeros, scales = random_awq(k, n, group, dtype, "cuda")
            for m in (1, 5, 16, 33, 300):
                x = torch.randn(m, k, dtype=dtype, device="cuda")
                check(x, qweight, qzeros, scales, group, label=f"{family} {model} {k}x{n} M={m}")


@pytest.mark.parametrize("family,dtype", CASES)
@pytest.mark.parametrize("path", ["fused", "wtile"])
def test_bias_and_k_tail(family, dtype, path):
    skip_unless_family(family)
    if path == "wtile" and family != "sm80":
        pytest.skip("the weight-tile kernel is the sm80 family's")
    k, n = 1120, 104  # K % 64 == 32: the last k-tile is half padding
    qweight, qzeros, scales = random_awq(k, n, 32, dtype, "cuda")
    bias = torch.randn(n, dtype=dtype, device="cuda")
    with awqgemm.testing.force(family=family, path=path):
        for m in (1, 9, 40, 130):
            x = torch.randn(3, m, k, dtype=dtype, device="cuda")
            packed = awqgemm.pack_awq(qweight, qzeros, scales, 32)
            out = awqgemm.gemm(x, packed, bias)
            assert out.shape == (3, m, n)
            check(x.view(-1, k), qweight, qzeros, scales, 32, bias, label=f"{family} bias M={m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_wgmma_x_staging_chunks_and_the_v9_fallback(dtype):
    """v11.1 stages x tile-major through the workspace in row chunks of <= 32 MiB: M = 4100 at K = 4128
    is two chunks. Where not even 256 rows fit (K > 65536) the v9 kernel runs, gathering x itself.
    Both with a K tail (K % 64 == 32: the last k-tile is half padding), v9 at each of its tile heights
    (64, 128, 256 tokens) and with a bias."""
    skip_unless_family("sm90")
    v9 = ((40, "wgmma", 64), (300, "wgmma", 128), (600, "wgmma", 256))
    for k, cases in ((4128, ((200, "wgmma_ws", None), (4100, "wgmma_ws", None))), (65568, v9)):
        qweight, qzeros, scales = random_awq(k, 264, 32, dtype, "cuda")
        bias = torch.randn(264, dtype=dtype, device="cuda")
        with awqgemm.testing.force(family="sm90", path="fused"):
            for m, kernel, tokens in cases:
                info = awqgemm.plan_info(m, 264, k, dtype)
                assert info["kernel"] == kernel and tokens in (None, info["tile_tokens"]), (k, m, info)
                x = torch.randn(m, k, dtype=dtype, device="cuda")
                check(x, qweight, qzeros, scales, 32, bias, label=f"sm90 {kernel} K={k} M={m}")


def test_pack_on_gpu_matches_cpu():
    qweight, qzeros, scales = random_awq(1152, 1376, 128, torch.float16)
    cpu = awqgemm.pack_awq(qweight, qzeros, scales, 128)
    gpu = awqgemm.pack_awq(qweight.cuda(), qzeros.cuda(), scales.cuda(), 128)
    # The GPU packs for its own family: layout 2 on a Volta, layout 1 (as on the CPU) on every newer GPU.
    volta_gpu = torch.cuda.get_device_capability() < (7, 5)
    assert gpu.layout == (_layout.LAYOUT_VOLTA884 if volta_gpu else cpu.layout)
    if not volta_gpu:
        assert torch.equal(gpu.qweight.cpu(), cpu.qweight)
    assert torch.equal(gpu.scales.cpu(), cpu.scales)
    assert torch.equal(awqgemm.dequantize_packed(gpu).cpu(), awqgemm.dequantize_packed(cpu))
    with awqgemm.testing.force(family="sm70"):
        volta = awqgemm.pack_awq(qweight.cuda(), qzeros.cuda(), scales.cuda(), 128)
    assert volta.layout == _layout.LAYOUT_VOLTA884
    assert torch.equal(awqgemm.dequantize_packed(volta).cpu(), awqgemm.dequantize_awq(qweight, qzeros, scales, 128))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_wtile_model_shapes(dtype):
    """The sm80 weight-tile kernel forced on real and TP-shard layers (N, K tails), every block height."""
    skip_unless_family("sm80")
    with awqgemm.testing.force(family="sm80", path="wtile"):
        for k, n in MODEL_SHAPES["tp-shards"] + [(4096, 6144), (14336, 4096)]:
            group = 128 if k % 128 == 0 else 32
            qweight, qzeros, scales = random_awq(k, n, group, dtype, "cuda")
            for m in (17, 32, 33, 64, 65, 128, 300, 512):
                x = torch.randn(m, k, dtype=dtype, device="cuda")
                check(x, qweight, qzeros, scales, group, label=f"wtile {k}x{n} M={m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_wgmma_ws_model_shapes(dtype):
    """The warp-specialized persistent wgmma kernel (v11.1) forced on real and TP-shard layers (N, K
    tails), every tile height (32, 48, 64, 128, 256 tokens) and K splits on the small grids."""
    skip_unless_family("sm90")
    with awqgemm.testing.force(family="sm90", path="fused"):
        seen = set()
        for k, n in MODEL_SHAPES["tp-shards"] + [(4096, 6144), (14336, 4096), (4096, 28672)]:
            group = 128 if k % 128 == 0 else 32
            qweight, qzeros, scales = random_awq(k, n, group, dtype, "cuda")
            for m in (1, 17, 40, 64, 65, 128, 129, 300, 512, 1024):
                info = awqgemm.plan_info(m, n, k, dtype, torch.device("cuda"))
                assert info["kernel"] == "wgmma_ws", info
                seen.add((info["tile_tokens"], info["splits"] > 1))
                x = torch.randn(m, k, dtype=dtype, device="cuda")
                check(x, qweight, qzeros, scales, group, label=f"wgmma_ws {k}x{n} M={m} {info}")
        assert {t for t, _ in seen} == {32, 48, 64, 128, 160, 256} and (64, True) in seen, seen


# (K, N, M, group): problems whose plan takes the stream-K tail (dispatch.cu plan_wgws): fewer units
# than SMs with K tails and 8-tile pieces (1120 x 4096), whole rounds then a tail (2048 x 4096 at
# M = 2107: 176 units of 192 tokens), two rounds then a tail (M = 4100), 64-token (256-column) tiles
# with rows past M (M = 17), and the two-chunk staging of x with a partial n-block (4128 x 232 at
# M = 4100).
STREAM_K_CASES = (
    (1120, 4096, 130, 32),
    (2048, 4096, 2107, 128),
    (2048, 4096, 4100, 64),
    (2048, 14336, 17, 128),
    (4128, 232, 4100, 32),
)


def _ws_cases(dtype, cases, plan_flag, bias=False):
    """(K, N, M, group) cases on the sm90 v11.1 kernel, forced, whose plans must have `plan_flag`
    (stream_k, wide), against float64; returns the worst relative error."""
    skip_unless_family("sm90")
    worst = 0.0
    with awqgemm.testing.force(family="sm90", path="fused"):
        for k, n, m, group in cases:
            info = awqgemm.plan_info(m, n, k, dtype, torch.device("cuda"))
            assert info["kernel"] == "wgmma_ws" and info[plan_flag], (k, n, m, info)
            qweight, qzeros, scales = random_awq(k, n, group, dtype, "cuda")
            b = torch.randn(n, dtype=dtype, device="cuda") if bias else None
            x = torch.randn(m, k, dtype=dtype, device="cuda")
            worst = max(worst, check(x, qweight, qzeros, scales, group, b, label=f"{plan_flag} {k}x{n} M={m} {info}"))
    return worst


def _ws_racecheck_cases(cases, plan_flag):
    """The racecheck variant of _ws_cases: fp16, references on the CPU (see test_racecheck_subset)."""
    skip_unless_family("sm90")
    for k, n, m, group in cases:
        qweight, qzeros, scales = random_awq(k, n, group, torch.float16, "cpu")
        w = awqgemm.dequantize_awq(qweight, qzeros, scales, group).double()
        with awqgemm.testing.force(family="sm90", path="fused"):
            assert awqgemm.plan_info(m, n, k, torch.float16, torch.device("cuda"))[plan_flag], (k, n, m)
            packed = awqgemm.pack_awq(qweight.cuda(), qzeros.cuda(), scales.cuda(), group)
            x = torch.randn(m, k, dtype=torch.float16)
            out = awqgemm.gemm(x.cuda(), packed).cpu()
        err = rel_err(out, x.double() @ w)
        assert err < 5e-3, (k, n, m, err)


def _stream_k_cases(dtype, cases=STREAM_K_CASES, bias=False):
    return _ws_cases(dtype, cases, "stream_k", bias)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_stream_k_tail(dtype):
    """Every schedule shape of the stream-K tail against float64, with a bias, and twice in a row (the
    flags are cleared by each call's staging kernel, not left raised by the last)."""
    for _ in range(2):
        worst = _stream_k_cases(dtype, bias=True)
    print(f"stream-K {dtype}: worst rel err {worst:.2e}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_stream_k_model_shapes(dtype):
    """A sweep of layer shapes and M where the planner takes the stream-K tail on about 40 % of the
    plans, against float64, and the Llama-3-8B gate_up at M = 256 in a CUDA graph as well as eagerly."""
    skip_unless_family("sm90")
    taken = 0
    with awqgemm.testing.force(family="sm90", path="fused"):
        for k, n in MODEL_SHAPES["tp-shards"] + [(4096, 6144), (14336, 4096), (4096, 28672)]:
            group = 128 if k % 128 == 0 else 32
            qweight, qzeros, scales = random_awq(k, n, group, dtype, "cuda")
            for m in (17, 64, 65, 128, 129, 300, 512, 1024):
                info = awqgemm.plan_info(m, n, k, dtype, torch.device("cuda"))
                taken += bool(info["stream_k"])
                x = torch.randn(m, k, dtype=dtype, device="cuda")
                check(x, qweight, qzeros, scales, group, label=f"stream-K {k}x{n} M={m} {info}")
        k, n, m = 4096, 28672, 256
        qweight, qzeros, scales = random_awq(k, n, 128, dtype, "cuda")
        packed = awqgemm.pack_awq(qweight, qzeros, scales, 128)
        x = torch.randn(m, k, dtype=dtype, device="cuda")
        assert_graph_replay_equals_eager(x, packed, replays=2)
    assert taken >= 10, f"only {taken} of the sweep's plans took the stream-K tail"


def test_sanitizer_subset_stream_k():
    """The stream-K tail for compute-sanitizer memcheck: each schedule shape once, fp16 and bf16."""
    _stream_k_cases(torch.float16, STREAM_K_CASES[:1] + STREAM_K_CASES[3:])
    _stream_k_cases(torch.bfloat16, STREAM_K_CASES[1:2])


def test_racecheck_subset_stream_k():
    """The stream-K tail's ring and epilogue for compute-sanitizer racecheck, references on the CPU (see
    test_racecheck_subset)."""
    _ws_racecheck_cases(STREAM_K_CASES[:1] + STREAM_K_CASES[3:4], "stream_k")


# v11.1's 256-column blocks (up to 64 tokens; describe_plan's "wide").
# (K, N, M, group): the stream-K tail over 112 wide units (Llama-3-8B gate_up at M = 64), a block whose
# second half is partly past N (4128 x 232: 15 column tiles) with K splits, a last block whose second
# half is wholly past N (1376: 86 tiles) at M = 1, deep K split 8 ways, rows past M (M = 17).
WIDE_CASES = (
    (4096, 28672, 64, 128),
    (4128, 232, 33, 32),
    (2752, 1376, 1, 64),
    (14336, 4096, 64, 64),
    (2048, 8192, 17, 128),
)


def _wide_cases(dtype, cases=WIDE_CASES, bias=False):
    return _ws_cases(dtype, cases, "wide", bias)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ws_wide(dtype):
    """The 256-column blocks against float64 on every case, with a bias, twice in a row (its stream-K flags
    cleared by each call's staging kernel), and in a CUDA graph as well as eagerly."""
    for _ in range(2):
        worst = _wide_cases(dtype, bias=True)
    print(f"wide {dtype}: worst rel err {worst:.2e}")
    k, n, m = WIDE_CASES[0][:3]
    qweight, qzeros, scales = random_awq(k, n, 128, dtype, "cuda")
    packed = awqgemm.pack_awq(qweight, qzeros, scales, 128)
    x = torch.randn(m, k, dtype=dtype, device="cuda")
    with awqgemm.testing.force(family="sm90", path="fused"):
        assert_graph_replay_equals_eager(x, packed)


def test_sanitizer_subset_wide():
    """The 256-column blocks for compute-sanitizer memcheck: the stream-K case, the partial second half, M = 1."""
    _wide_cases(torch.float16, WIDE_CASES[:3])
    _wide_cases(torch.bfloat16, WIDE_CASES[4:])


def test_racecheck_subset_wide():
    """The 256-column blocks' ring and epilogue for compute-sanitizer racecheck, references on the CPU (see
    test_racecheck_subset)."""
    _ws_racecheck_cases(WIDE_CASES[1:3], "wide")


# The kernels a family's auto path reaches only at some M, forced at every M of the test.
_FORCED_PATHS = ("sm80-wtile", "sm90-fused")


@pytest.mark.parametrize(
    "family,dtype", [*CASES, *((f, d) for f in _FORCED_PATHS for d in (torch.float16, torch.bfloat16))]
)
def test_cuda_graph_replay_equals_eager(family, dtype):
    family, _, path = family.partition("-")
    skip_unless_family(family)
    k, n = 2048, 1376
    qweight, qzeros, scales = random_awq(k, n, 128, dtype, "cuda")
    with awqgemm.testing.force(family=family, path=path or "auto"):
        packed = awqgemm.pack_awq(qweight, qzeros, scales, 128)
        for m in (1, 16, 64, 512) if not path else (17, 64, 100, 512):
            static_x = torch.randn(m, k, dtype=dtype, device="cuda")
            awqgemm.gemm(static_x, packed)  # warm-up outside capture
            graph = torch.cuda.CUDAGraph()
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
                static_out = awqgemm.gemm(static_x, packed)
            for _ in range(2):
                static_x.copy_(torch.randn(m, k, dtype=dtype, device="cuda"))
                graph.replay()
                torch.cuda.synchronize()
                assert torch.equal(static_out, awqgemm.gemm(static_x, packed)), f"M={m}"


# Two chained GEMMs (y2 = gemm(gemm(x, W1), W2)) replayed in a CUDA graph. On
# sm90+ the second kernel is a programmatic dependent launch: it may start
# while the first drains and must not read y1 before griddepcontrol.wait. y1 is
# poisoned with NaN between replays and x changes, so a read that jumps the
# wait shows up as NaN or as y2 != y1 @ W2. The PDL mode is read once per
# process (AWQGEMM_PDL), hence one subprocess per mode.
_PDL_CHAIN = """
import contextlib, sys, torch, awqgemm
from awqgemm.testing import random_awq
family, _, path = sys.argv[1].partition("-")
force = awqgemm.testing.force(family=family, path=path or "fused") if family != "auto" else contextlib.nullcontext()
force.__enter__()
k = 4096
packs = [awqgemm.pack_awq(*random_awq(k, k, 128, torch.float16, "cuda", seed=s), 128) for s in (1, 2)]
w2 = awqgemm.dequantize_awq(*random_awq(k, k, 128, torch.float16, "cuda", seed=2), 128).double()
for m in (1, 16, 64, 200):
    x = torch.randn(m, k, dtype=torch.float16, device="cuda")
    awqgemm.gemm(awqgemm.gemm(x, packs[0]), packs[1])  # warm-up outside capture
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        y1 = awqgemm.gemm(x, packs[0])
        y2 = awqgemm.gemm(y1, packs[1])
    for _ in range(3):
        x.copy_(torch.randn(m, k, dtype=torch.float16, device="cuda"))
        y1.fill_(float("nan"))
        y2.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.isfinite(y1).all() and torch.isfinite(y2).all(), f"M={m}: NaN reached the output"
        ref = y1.double() @ w2
        err = (torch.linalg.vector_norm(y2.double() - ref) / torch.linalg.vector_norm(ref)).item()
        assert err < 2e-3, f"M={m}: y2 is not y1 @ W2 (rel err {err:.2e})"
print("chain ok")
"""


@pytest.mark.parametrize("family", ["auto", "sm90"])
@pytest.mark.parametrize("pdl_mode", ["0", "1"])
def test_chained_gemms_in_graph_respect_pdl_wait(pdl_mode, family):
    import os
    import subprocess
    import sys

    env = {**os.environ, "AWQGEMM_PDL": pdl_mode}
    if family != "auto":
        skip_unless_family(family.partition("-")[0])
    r = subprocess.run([sys.executable, "-c", _PDL_CHAIN, family], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "chain ok" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_compile_fullgraph_equals_eager(dtype):
    if dtype == torch.bfloat16 and "sm80" not in families():
        pytest.skip("bf16 needs sm80")
    k, n = 1024, 768
    qweight, qzeros, scales = random_awq(k, n, 64, dtype, "cuda")
    packed = awqgemm.pack_awq(qweight, qzeros, scales, 64)
    bias = torch.randn(n, dtype=dtype, device="cuda")

    def layer(x):
        y = awqgemm.gemm(x, packed, bias)
        return y, torch.nn.functional.silu(y)

    compiled = torch.compile(layer, fullgraph=True, dynamic=True)
    for m in (1, 3, 17, 300):
        x = torch.randn(m, k, dtype=dtype, device="cuda")
        (y_c, act_c), (y_e, act_e) = compiled(x), layer(x)
        # The GEMM is deterministic: bit-identical. Inductor fuses silu its own
        # way, so that part may differ by an ulp.
        torch.testing.assert_close(y_c, y_e, rtol=0, atol=0)
        torch.testing.assert_close(act_c, act_e)


def test_opcheck_cuda():
    qweight, qzeros, scales = random_awq(256, 64, 64, torch.float16, "cuda")
    p = awqgemm.pack_awq(qweight, qzeros, scales, 64)
    for m in (1, 40):
        x = torch.randn(m, 256, dtype=torch.float16, device="cuda")
        torch.library.opcheck(torch.ops.awqgemm.gemm.default, (x, p.qweight, p.scales, None, p.K, p.N, 64, p.layout))


def test_no_device_memory_outside_torch():
    """pack + gemm allocate only through torch's caching allocator."""
    k, n = 4096, 11008
    qweight, qzeros, scales = random_awq(k, n, 128, torch.float16, "cuda")
    # Warm-up: module load, cuBLAS handle and context memory are one-time costs.
    packed = awqgemm.pack_awq(qweight, qzeros, scales, 128)
    for m in (1, 16, 64, 2048):
        awqgemm.gemm(torch.randn(m, k, dtype=torch.float16, device="cuda"), packed)
    torch.cuda.synchronize()
    for trial in range(2):
        free0, _ = torch.cuda.mem_get_info()
        reserved0 = torch.cuda.memory_reserved()
        packed = awqgemm.pack_awq(qweight, qzeros, scales, 128)
        outs = [awqgemm.gemm(torch.randn(m, k, dtype=torch.float16, device="cuda"), packed) for m in (1, 7, 64, 2048)]
        torch.cuda.synchronize()
        free1, _ = torch.cuda.mem_get_info()
        reserved1 = torch.cuda.memory_reserved()
        outside = (free0 - free1) - (reserved1 - reserved0)
        assert abs(outside) <= 2 << 20, f"trial {trial}: {outside} bytes allocated outside torch"
        del outs


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dense_path_bounded_workspace(dtype):
    """The dequantize + dense path works in column chunks through <= 64 MiB of workspace: a layer whose
    dense weight is 166 MiB (K = 8192, N = 10616, three chunks, the last one ending in a half tile)
    stays within x + out + 64 MiB + cuBLAS's own scratch, and matches fp64."""
    k, n, m = 8192, 10616, 300
    qweight, qzeros, scales = random_awq(k, n, 128, dtype, "cuda")
    packed = awqgemm.pack_awq(qweight, qzeros, scales, 128)
    x = torch.randn(m, k, dtype=dtype, device="cuda")
    bias = torch.randn(n, dtype=dtype, device="cuda")
    with awqgemm.testing.force(path="dense"):
        assert awqgemm.plan_info(m, n, k, dtype)["workspace_bytes"] <= 64 << 20
        check(x, qweight, qzeros, scales, 128, bias=bias, label="dense chunks")
        awqgemm.gemm(x, packed, bias)  # warm-up: cuBLAS workspace
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = awqgemm.gemm(x, packed, bias)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base - out.numel() * out.element_size()
    dense_weight = n * k * x.element_size()
    assert extra <= (64 << 20) + (8 << 20), f"dense path used {extra} extra bytes (dense weight: {dense_weight})"


def _dequantize_chunk(packed, dtype, n_begin, n_count):
    from awqgemm._ext import _C
    from awqgemm._ops import _DTYPE_CODE

    # 16 guard rows after the chunk, NaN like the chunk: a write past n_count shows up there.
    buf = torch.full((n_count + 16, packed.K), float("nan"), dtype=dtype, device="cuda")
    wt = buf[:n_count]
    _C.dequantize_t(
        packed.layout,
        _DTYPE_CODE[dtype],
        packed.N,
        packed.K,
        packed.group_size,
        n_begin,
        n_count,
        packed.qweight.data_ptr(),
        packed.scales.data_ptr(),
        wt.data_ptr(),
        torch.cuda.current_device(),
        torch.cuda.current_stream().cuda_stream,
    )
    assert torch.isnan(buf[n_count:]).all(), ("write past the chunk", n_begin, n_count)
    return wt


def _dequant_cases():
    """(K, N, group) with a half last k-tile (K = 1120) and a half last column tile (N = 104)."""
    return ((1120, 104, 32), (512, 272, 64), (4096, 1376, 128), (96, 48, 32))


# The two packed layouts (Volta 884: fp16 only, like its family; m16n8: both dtypes).
@pytest.mark.parametrize(
    ("family", "dtype"), [("sm70", torch.float16), ("sm80", torch.float16), ("sm80", torch.bfloat16)]
)
def test_dequantize_chunks_match_the_reference(family, dtype):
    """The dense path's dequantization writes every element of every chunk (NaN-filled first: a missed
    element fails), nothing past it, and the reference's values to one rounding ((q - z) is exact, the
    product with the scale rounds once), for chunks starting mid-layer."""
    skip_unless_family(family)
    tol = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}[dtype]
    for k, n, group in _dequant_cases():
        qweight, qzeros, scales = random_awq(k, n, group, dtype, "cuda")
        with awqgemm.testing.force(family=family):
            packed = awqgemm.pack_awq(qweight, qzeros, scales, group)
        ref = dequantize_packed(packed).t()
        for n_begin, n_count in ((0, n), (16, n - 16), (n - n % 16 if n % 16 else n - 16, n % 16 or 16), (0, 32)):
            got = _dequantize_chunk(packed, dtype, n_begin, n_count)
            assert not torch.isnan(got).any(), (k, n, group, n_begin, n_count)
            case = (k, n, group, n_begin, n_count)
            want = ref[n_begin : n_begin + n_count].float()
            assert torch.allclose(got.float(), want, rtol=tol, atol=0), (case, (got.float() - want).abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dense_path_in_three_chunks(dtype):
    """The dense path end to end: three chunks, the last one ending in a half tile."""
    k, n, m = 8192, 10616, 300
    qweight, qzeros, scales = random_awq(k, n, 128, dtype, "cuda")
    x = torch.randn(m, k, dtype=dtype, device="cuda")
    with awqgemm.testing.force(path="dense"):
        check(x, qweight, qzeros, scales, 128, bias=torch.randn(n, dtype=dtype, device="cuda"), label="dense chunks")


def test_build_info_archs_cover_this_gpu():
    info = awqgemm.build_info()
    assert info["cuda_version"] is not None, "GPU tests need a CUDA build of awqgemm"
    cap = torch.cuda.get_device_capability()
    cc = 10 * cap[0] + cap[1]
    assert cc in info["sass_archs"] or any(p <= cc for p in info["ptx_archs"]), info


def _racecheck(paths_of_family):
    for family in families():
        for dtype in dtypes_for(family):
            for path in paths_of_family.get(family, ()):
                # v11.1 (sm90) picks 256-token tiles only on wide grids: the third shape reaches them at M = 1500.
                shapes = ((1120, 104, 32), (512, 272, 128), *(((256, 8192, 64),) if family == "sm90" else ()))
                for k, n, group in shapes:
                    qweight, qzeros, scales = random_awq(k, n, group, dtype, "cpu")
                    w = awqgemm.dequantize_awq(qweight, qzeros, scales, group).double()
                    with awqgemm.testing.force(family=family, path=path):
                        packed = awqgemm.pack_awq(qweight.cuda(), qzeros.cuda(), scales.cuda(), group)
                        for m in (1, 9, 33, 130, 600) if n < 8192 else (1500,):
                            x = torch.randn(m, k, dtype=dtype)
                            out = awqgemm.gemm(x.cuda(), packed).cpu()
                            err = rel_err(out, x.double() @ w)
                            assert err < (5e-3 if dtype == torch.float16 else 2e-2), (family, path, m, err)


def test_racecheck_subset():
    """Every fused kernel (each family, tile height and K split the subset reaches) for compute-sanitizer
    racecheck (ci/device_kernels.sh). References run on the CPU: cuBLAS's own kernels report WAR hazards
    of their own under racecheck and would drown ours, so no GPU matmul runs here (nor the dense path)."""
    _racecheck({"sm70": ("fused",), "sm75": ("fused",), "sm80": ("fused", "wtile"), "sm90": ("fused",)})


def test_racecheck_subset_dequantize():
    """The dequantization's shared-memory staging alone (no cuBLAS, see above) for compute-sanitizer
    racecheck, on both packed layouts, from a mid-layer column."""
    for family, dtype in (("sm70", torch.float16), ("sm80", torch.float16), ("sm80", torch.bfloat16)):
        skip_unless_family(family)
        for k, n, group in ((1120, 104, 32), (512, 272, 64)):
            qweight, qzeros, scales = random_awq(k, n, group, dtype, "cuda")
            with awqgemm.testing.force(family=family):
                packed = awqgemm.pack_awq(qweight, qzeros, scales, group)
            got = _dequantize_chunk(packed, dtype, 16, n - 16)
            assert not torch.isnan(got).any(), (family, k, n)


def test_sanitizer_subset():
    """Small cases for compute-sanitizer memcheck (run by ci/device_kernels.sh)."""
    for family in families():
        for dtype in dtypes_for(family):
            with awqgemm.testing.force(family=family):
                for k, n, group in ((1120, 104, 32), (512, 272, 128)):
                    qweight, qzeros, scales = random_awq(k, n, group, dtype, "cuda")
                    for m in (1, 9, 33):
                        x = torch.randn(m, k, dtype=dtype, device="cuda")
                        check(x, qweight, qzeros, scales, group, label=f"sanitizer {family} M={m}")
                    with awqgemm.testing.force(family=family, path="dense"):
                        check(torch.randn(70, k, dtype=dtype, device="cuda"), qweight, qzeros, scales, group)
                    # The fused kernels at every tile height the dispatcher can pick (sm90: BM 64, 128, 256).
                    with awqgemm.testing.force(family=family, path="fused"):
                        for m in (17, 130, 600):
                            x = torch.randn(m, k, dtype=dtype, device="cuda")
                            check(x, qweight, qzeros, scales, group, label=f"sanitizer fused {family} M={m}")
                    if family == "sm80":  # the weight-tile kernel at every block height (32, 64, 128 tokens)
                        with awqgemm.testing.force(family=family, path="wtile"):
                            for m in (9, 33, 70, 130):
                                x = torch.randn(m, k, dtype=dtype, device="cuda")
                                check(x, qweight, qzeros, scales, group, label=f"sanitizer wtile M={m}")


def test_sanitizer_subset_wgmma_ws():
    """v11.1 for compute-sanitizer memcheck: BM 64 (K split), 128, a second persistent round, the
    256-token tiles (wide grid) and the two-chunk staging of x; and v9, which dense problems reach only
    at K > 65536, at its three tile heights."""
    skip_unless_family("sm90")
    for dtype in dtypes_for("sm90"):
        for k, n, group in ((1120, 104, 32), (512, 272, 128)):
            qweight, qzeros, scales = random_awq(k, n, group, dtype, "cuda")
            with awqgemm.testing.force(family="sm90", path="fused"):
                for m in (1, 17, 130, 600):
                    x = torch.randn(m, k, dtype=dtype, device="cuda")
                    check(x, qweight, qzeros, scales, group, label=f"sanitizer wgmma_ws M={m}")
    with awqgemm.testing.force(family="sm90", path="fused"):
        for k, n, m in ((256, 8192, 1500), (4128, 264, 4100)):
            qweight, qzeros, scales = random_awq(k, n, 32, torch.float16, "cuda")
            x = torch.randn(m, k, dtype=torch.float16, device="cuda")
            check(x, qweight, qzeros, scales, 32, label=f"sanitizer wgmma_ws {k}x{n} M={m}")
        qweight, qzeros, scales = random_awq(65568, 104, 32, torch.float16, "cuda")
        for m in (9, 130, 600):
            assert awqgemm.plan_info(m, 104, 65568)["kernel"] == "wgmma", m
            x = torch.randn(m, 65568, dtype=torch.float16, device="cuda")
            check(x, qweight, qzeros, scales, 32, label=f"sanitizer v9 M={m}")


def test_plan_info_names_the_dispatchers_choice():
    """The public plan query agrees with the dispatch rules in docs/design.md."""
    assert awqgemm.plan_info(1, 4096, 4096)["kernel"] == "k_split"
    assert awqgemm.plan_info(4096, 4096, 4096)["dense"]
    wide = awqgemm.plan_info(128, 28672, 4096)
    if "sm90" in families():
        assert (wide["family"], wide["kernel"]) == ("sm90", "wgmma_ws"), wide
        # Below 64 tokens (wgmma_auto): v11.1 in the smallest tile holding M above 32 tokens where K > 2048,
        # at 17-32 on those layers of >= 25 Mi weights; the sm80 rules' kernels elsewhere. Every layer up
        # to 255 tokens (a shallow one at 192 too); at 256-384 where K > 2048, K >= 1.75 N or the grid holds
        # half a block per SM (dequantize + cuBLAS on the shallow layers of smaller grids); every layer at
        # 385-1024.
        for m, n, k, kernel in ((48, 4096, 4096, "wgmma_ws"), (33, 4096, 2048, "x_shared"),
                                (24, 4096, 14336, "wgmma_ws"), (24, 4096, 4096, "x_shared"),
                                (192, 2304, 3584, "wgmma_ws"), (600, 4096, 7168, "wgmma_ws"),
                                (256, 3584, 1792, "dequantize+dense"), (320, 4608, 3584, "wgmma_ws"),
                                (512, 3584, 1792, "wgmma_ws"), (1024, 4096, 4096, "wgmma_ws")):  # fmt: skip
            info = awqgemm.plan_info(m, n, k)
            tokens = _short_tile(m) if m <= 64 else info["tile_tokens"]
            assert info["kernel"] == kernel and (kernel != "wgmma_ws" or info["tile_tokens"] == tokens), (m, n, k, info)
    else:
        assert wide["kernel"] == "w_tile", wide
    with awqgemm.testing.force(family="sm80"):  # wtile_auto in dispatch.cu
        assert awqgemm.plan_info(128, 28672, 4096)["kernel"] == "w_tile"
        assert awqgemm.plan_info(48, 4096, 4096)["kernel"] == "x_shared"
        assert awqgemm.plan_info(32, 4096, 4096)["kernel"] == "x_shared"
        assert awqgemm.plan_info(32, 8192, 8192)["kernel"] == "w_tile"
    if "sm90" in families():  # v11.1 forced at every M: tile heights by M and grid (plan_wgws)
        with awqgemm.testing.force(family="sm90", path="fused"):
            for m, n, tokens in ((1, 4096, 32), (40, 4096, 48), (64, 4096, 64), (65, 4096, 128), (300, 4096, 160),
                                 (1024, 28672, 256)):  # fmt: skip
                info = awqgemm.plan_info(m, n, 4096)
                assert (info["kernel"], info["tile_tokens"]) == ("wgmma_ws", tokens), (m, n, info)
            assert awqgemm.plan_info(64, 4096, 4096)["splits"] > 1
    with awqgemm.testing.force(path="dense"):
        assert awqgemm.plan_info(1, 4096, 4096)["kernel"] == "dequantize+dense"


# 64-column K-split blocks up to 16 tokens (plan_ksplit's wide decode blocks: the sm80 family, and on a 9.0
# GPU the decode plans the sm90 family hands to it, where the 64-column grid keeps >= 7/8 of the SMs'
# count of blocks). Widths in column tiles of 16 per SM: (K, N tiles per SM, extra columns, group): a K
# tail (1120: 17.5 k-tiles) with a last block partly past N (40 extra columns: 2.5 tiles), a deep K the
# planner splits, and Llama-3-8B's gate_up.
def _wide_decode_shapes():
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    return ((1120, 64 * sms + 40, 32), (14336, 64 * sms, 128), (4096, 28672, 64))


def _wide_decode_cases(dtype, cases=None, ms=(1, 3, 8, 9, 16), bias=False):
    worst = 0.0
    for k, n, group in cases or _wide_decode_shapes():
        qweight, qzeros, scales = random_awq(k, n, group, dtype, "cuda")
        b = torch.randn(n, dtype=dtype, device="cuda") if bias else None
        for m in ms:
            info = awqgemm.plan_info(m, n, k, dtype, torch.device("cuda"))
            assert info["kernel"] == "k_split" and info["block_columns"] == 64, (k, n, m, info)
            x = torch.randn(m, k, dtype=dtype, device="cuda")
            worst = max(worst, check(x, qweight, qzeros, scales, group, b, label=f"wide {k}x{n} M={m} {info}"))
    return worst


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_wide_decode_blocks(dtype):
    """The 64-column K-split blocks against float64 on every case and M (with a bias), in a CUDA graph as
    well as eagerly; a small layer keeps 32-column blocks; and the MoE decode path (grouped K-split) on
    64-column blocks (64 experts of 1024 x 1024: >= 4 blocks per SM), 8- and 16-row tiles, groups 32/64/128."""
    skip_unless_family("sm80")
    worst = _wide_decode_cases(dtype, bias=True)
    print(f"wide decode blocks {dtype}: worst rel err {worst:.2e}")
    assert awqgemm.plan_info(16, 4096, 4096, dtype, torch.device("cuda"))["block_columns"] == 32
    k, n, m = 4096, 28672, 16
    qweight, qzeros, scales = random_awq(k, n, 64, dtype, "cuda")
    packed = awqgemm.pack_awq(qweight, qzeros, scales, 64)
    x = torch.randn(m, k, dtype=dtype, device="cuda")
    assert_graph_replay_equals_eager(x, packed)
    from awqgemm.moe import grouped_plan_info
    from test_gpu_moe import run_case  # the MoE suite's float64 reference and routing

    for tokens, rows_per_tile in ((37, 8), (128, 16)):  # 148 / 512 rows over 64 experts, top 4
        info = grouped_plan_info(4 * tokens, 64, 1024, 1024, dtype)
        assert info["block_columns"] == 64 and info["tile_tokens"] == rows_per_tile, info
        for group in (32, 64, 128):
            run_case("auto", dtype, group, tokens, num=64, hidden=1024, inter=512, top_k=4, zero=(3,))


def test_sanitizer_subset_wide_decode_blocks():
    """The 64-column K-split blocks for compute-sanitizer memcheck: the partial block and the K tail."""
    _wide_decode_cases(torch.float16, _wide_decode_shapes()[:1], ms=(1, 16))
    _wide_decode_cases(torch.bfloat16, _wide_decode_shapes()[:1], ms=(9,))


def test_racecheck_subset_wide_decode_blocks():
    """The 64-column K-split blocks' cross-warp reduction for compute-sanitizer racecheck, references on
    the CPU (see test_racecheck_subset): 8- and 16-token tiles, with and without a K split."""
    skip_unless_family("sm80")
    for k, n, group in _wide_decode_shapes()[:2]:
        qweight, qzeros, scales = random_awq(k, n, group, torch.float16, "cpu")
        w = awqgemm.dequantize_awq(qweight, qzeros, scales, group).double()
        packed = awqgemm.pack_awq(qweight.cuda(), qzeros.cuda(), scales.cuda(), group)
        for m in (1, 16):
            assert awqgemm.plan_info(m, n, k, torch.float16, torch.device("cuda"))["block_columns"] == 64
            x = torch.randn(m, k, dtype=torch.float16)
            err = rel_err(awqgemm.gemm(x.cuda(), packed).cpu(), x.double() @ w)
            assert err < 5e-3, (k, n, m, err)


def _grouped_garbage_rows(force, dtype, group, rows_per_expert, n=200):
    """3 experts (the middle one empty) with garbage row indices and rows past offsets[E] (zero) under
    testing.force(**force): every expert's rows against float64, the padding rows zero. Returns the
    grouped plan (grouped_plan_info) the call ran."""
    r = rows_per_expert
    parts = [random_awq(512, n, group, dtype, "cuda", seed=70 + e) for e in range(3)]
    ck = tuple(torch.stack([p[i] for p in parts]) for i in range(3))
    x = torch.randn(3 * r // 2, 512, dtype=dtype, device="cuda")
    offsets = torch.tensor([0, r, r, 2 * r + r // 6], dtype=torch.int32, device="cuda")
    rows = torch.randint(-5, 2 * r, (5 * r // 2,), dtype=torch.int32, device="cuda")
    with awqgemm.testing.force(**force):
        packed = awqgemm.pack_awq_experts(*ck, group)
        info = awqgemm.moe.grouped_plan_info(5 * r // 2, 3, n, 512, dtype)
        got = awqgemm.moe_gemm(x, packed, offsets, rows)
    torch.cuda.synchronize()
    assert (got[2 * r + r // 6 :] == 0).all() and torch.isfinite(got).all()
    w = torch.stack([awqgemm.dequantize_awq(ck[0][e], ck[1][e], ck[2][e], group) for e in range(3)]).double()
    safe = rows.clamp(0, x.shape[0] - 1).long()
    for e, (lo, hi) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)):
        if hi > lo:
            bound = 5e-3 if dtype == torch.float16 else 2e-2
            assert rel_err(got[lo:hi], x[safe[lo:hi]].double() @ w[e]) < bound, (dtype, group, r, e, info)
    return info


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_xshared_grouped_garbage_rows(dtype, group):
    """The sm80 family's grouped x-shared kernel (its x row addresses set up once per thread from the
    gathered row indices)."""
    skip_unless_family("sm80")
    for r in (40, 64):  # 34 and 54 rows per active expert (grouped plans take 64-token tiles above 32)
        assert _grouped_garbage_rows({"family": "sm80"}, dtype, group, r)["kernel"] == "x_shared"


def _forced_v11_cases(expect, dtype, group, tokens, shapes, graph_ms=(), bias_ms=(), **switches):
    """v11.1 forced (sm90 family, fused path) at each (K, N) x M: plan_info has the items of expect(m),
    fp64 check (a bias at bias_ms; at graph_ms a replayed CUDA graph equal to eager too). Returns the set
    of schedule kinds planned."""
    skip_unless_family("sm90")
    kinds = set()
    for k, n in shapes:
        if k % group:  # the K-tail shape exists only for groups that divide K (group 32 for K = 1120)
            continue
        qweight, qzeros, scales = random_awq(k, n, group, dtype, "cuda")
        with awqgemm.testing.force(family="sm90", path="fused", **switches):
            packed = awqgemm.pack_awq(qweight, qzeros, scales, group)
            for m in tokens:
                info = awqgemm.plan_info(m, n, k, dtype)
                assert {key: info[key] for key in expect(m)} == expect(m), (m, n, k, info)
                kinds.add("stream-K" if info["stream_k"] else f"{info['splits']} splits")
                x = torch.randn(m, k, dtype=dtype, device="cuda")
                b = torch.randn(n, dtype=dtype, device="cuda") if m in bias_ms else None
                check(x, qweight, qzeros, scales, group, b, label=f"v11.1 M={m} K={k} N={n} {info}")
                if m in graph_ms:
                    assert_graph_replay_equals_eager(x, packed, replays=2)
    return kinds


def _v11_racecheck_cases(expect, cases, group=32, **switches):
    """The racecheck variant of _forced_v11_cases: fp16, group 32 unless given, references on the CPU
    (see test_racecheck_subset)."""
    skip_unless_family("sm90")
    for k, n, m in cases:
        qweight, qzeros, scales = random_awq(k, n, group, torch.float16, "cpu")
        w = awqgemm.dequantize_awq(qweight, qzeros, scales, group).double()
        with awqgemm.testing.force(family="sm90", path="fused", **switches):
            info = awqgemm.plan_info(m, n, k, torch.float16, torch.device("cuda"))
            assert {key: info[key] for key in expect(m)} == expect(m), (m, n, k, info)
            packed = awqgemm.pack_awq(qweight.cuda(), qzeros.cuda(), scales.cuda(), group)
            x = torch.randn(m, k, dtype=torch.float16)
            out = awqgemm.gemm(x.cuda(), packed).cpu()
        assert rel_err(out, x.double() @ w) < 5e-3, (k, n, m)


# v11.1 below 49 tokens: 32- and 48-token tiles (m64n32k16 / m64n48k16). Shapes: a K tail (1120, group 32
# only), N shards, K-split plans (qkv-like) and stream-K ones (gate_up).
SHORT_TOKENS = (1, 5, 16, 17, 24, 32, 33, 40, 48)
SHORT_SHAPES = ((1152, 1376), (1120, 104), (4096, 6144), (2752, 4096), (4096, 28672))


def _short_tile(m):
    return 32 if m <= 32 else 48 if m <= 48 else 64


def _short_expect(m):
    return {"kernel": "wgmma_ws", "tile_tokens": _short_tile(m)}


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_v11_short_tiles(dtype, group):
    graph_ms = SHORT_TOKENS if group == 128 else ()
    kinds = _forced_v11_cases(_short_expect, dtype, group, SHORT_TOKENS, SHORT_SHAPES, graph_ms)
    assert "stream-K" in kinds and any(s.endswith("splits") for s in kinds), kinds


def test_v11_short_tiles_auto_plans():
    """The auto path (dispatch.cu wgmma_auto) takes v11.1 in the short tile at 17-32 tokens on layers of
    >= 25 Mi weights with K > 2048, at 33-63 on every layer with K > 2048; the sm80 rules elsewhere."""
    skip_unless_family("sm90")
    for m, tokens in ((17, 32), (24, 32), (32, 32), (40, 48), (48, 48), (49, 64)):
        info = awqgemm.plan_info(m, 28672, 4096)
        assert (info["kernel"], info["tile_tokens"]) == ("wgmma_ws", tokens), (m, info)
    assert awqgemm.plan_info(24, 4096, 4096)["kernel"] == "x_shared"  # 16 Mi weights
    assert awqgemm.plan_info(40, 4096, 4096)["tile_tokens"] == 48
    assert awqgemm.plan_info(40, 4096, 2048)["kernel"] == "x_shared"  # K <= 2048
    assert awqgemm.plan_info(16, 28672, 4096)["kernel"] == "k_split"


def test_sanitizer_subset_v11_short_tiles():
    """v11.1's short tiles for compute-sanitizer memcheck: the K tail, partial row blocks, a K split, the
    stream-K tail."""
    for dtype in (torch.float16, torch.bfloat16):
        shapes = ((1120, 104), (4096, 6144), (4096, 28672))
        _forced_v11_cases(_short_expect, dtype, 32, (5, 24, 40), shapes)


def test_racecheck_subset_v11_short_tiles():
    """v11.1's short tiles for compute-sanitizer racecheck (their ring and epilogue)."""
    _v11_racecheck_cases(_short_expect, ((1120, 104, 24), (1152, 1376, 40), (4096, 6144, 17)))


# v11.1's 160-, 192- and 224-token tiles (m64n160k16 ... m64n224k16; the default since 2026-11-29).
# Shapes: a K tail (K = 1120, group 32 only), a partial last column block (N = 1376: 160-token tiles with
# a K split at 129 tokens), Llama-3-8B qkv and gate_up (stream-K plans in 160-, 192- and 224-token tiles);
# tokens around and in those tiles, partial ones included, and 65 / 600 where other tiles win.
MID_TOKENS = (65, 129, 150, 192, 200, 255, 300, 384, 600)
MID_SHAPES = ((1120, 1376), (4096, 1376), (4096, 6144), (4096, 28672))


def _mid_expect(m):
    return {"kernel": "wgmma_ws"}


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ws_mid_tiles(dtype, group):
    graph_ms = (150, 384) if group == 128 else ()
    _forced_v11_cases(_mid_expect, dtype, group, MID_TOKENS, MID_SHAPES, graph_ms, bias_ms=(129,))
    cases = ((150, 28672), (192, 28672), (200, 28672), (129, 1376))
    with awqgemm.testing.force(family="sm90", path="fused"):
        plans = {(m, n): awqgemm.plan_info(m, n, 4096, dtype) for m, n in cases}
    assert [plans[c]["tile_tokens"] for c in cases] == [160, 192, 224, 160], plans
    assert plans[(129, 1376)]["splits"] > 1, plans  # a K split (partials + reduction) in a mid tile too


def test_sanitizer_subset_mid_tiles():
    """160-224-token tiles for compute-sanitizer memcheck: partial tiles, a K split, a partial column block,
    grouped tiles with garbage row indices."""
    for dtype in (torch.float16, torch.bfloat16):
        shapes = ((4096, 1376), (4096, 6144))
        _forced_v11_cases(_mid_expect, dtype, 32, (129, 200, 384), shapes, bias_ms=(129,))
        _grouped_garbage_rows({"family": "sm90"}, dtype, 32, 180)


def test_racecheck_subset_mid_tiles():
    """160-224-token tiles for compute-sanitizer racecheck: their rings and epilogues."""
    _v11_racecheck_cases(_mid_expect, ((4096, 1376, 129), (4096, 6144, 192), (4096, 6144, 200)))


# Dense v11.1 reads x through a tensor map from the caller's tensor (no staging kernel; the default since
# 2026-11-29) and takes layout 1's words in the wgmma's k order from shared memory; groups of 64 / 128
# (32 keeps the staged path). Shapes: an odd number of k-tiles (K = 1088, groups of 64), a K tail (K =
# 1120, group 32: the staged path), a partial last column block (N = 1376), Llama-3-8B qkv and gate_up;
# tokens from the 32-token tile to a 256-token one, partial tiles, K splits and stream-K plans among them.
TMA_X_TOKENS = (1, 17, 40, 64, 100, 129, 192, 300)
TMA_X_SHAPES = ((1088, 1376), (1120, 1376), (4096, 1376), (4096, 6144), (4096, 28672))


def _tma_x_expect(m):
    return {"kernel": "wgmma_ws", "tma_x": True}


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ws_tma_x(dtype, group):
    """Group 32 plans the same but its launch stages x (the kTmaX kernels take groups of 64 / 128)."""
    graph_ms = (64, 192) if group == 128 else ()
    kinds = _forced_v11_cases(_tma_x_expect, dtype, group, TMA_X_TOKENS, TMA_X_SHAPES, graph_ms, bias_ms=(40,))
    assert "stream-K" in kinds and any(k != "1 splits" and k != "stream-K" for k in kinds), kinds
    # Rows past one staged chunk (32 MiB of x: 4096 rows at K = 4096) keep the staged path.
    with awqgemm.testing.force(family="sm90", path="fused"):
        assert not awqgemm.plan_info(8192, 6144, 4096, dtype)["tma_x"]


def test_ws_tma_x_strided_x():
    """x as column slices of a wider tensor (rows 6 bytes off alignment, 16 bytes off, and a padded row
    stride): bit for bit the result of a contiguous copy (the op copies what the tensor map cannot read)."""
    skip_unless_family("sm90")
    k, n = 4096, 6144
    qweight, qzeros, scales = random_awq(k, n, 128, torch.float16, "cuda")
    with awqgemm.testing.force(family="sm90", path="fused"):
        packed = awqgemm.pack_awq(qweight, qzeros, scales, 128)
        wide = torch.randn(64, k + 24, dtype=torch.float16, device="cuda")
        for x in (wide[:, 3 : 3 + k], wide[:, 8 : 8 + k], wide[:, :k]):
            out = awqgemm.gemm(x, packed)
            ref = awqgemm.gemm(x.contiguous(), packed)
            assert torch.equal(out, ref), (x.stride(), x.storage_offset())


def test_sanitizer_subset_ws_tma_x():
    """x through a tensor map for compute-sanitizer memcheck: the x box past M (zero-filled by the TMA), a
    partial column block, a K split and a stream-K plan."""
    for dtype in (torch.float16, torch.bfloat16):
        shapes = ((1088, 1376), (4096, 6144))
        _forced_v11_cases(_tma_x_expect, dtype, 64, (17, 64, 129), shapes, bias_ms=(17,))


def test_racecheck_subset_ws_tma_x():
    """x through a tensor map for compute-sanitizer racecheck: the consumers' reads of other lanes' words and the
    producer's next copies into the slot."""
    cases = ((4096, 1376, 64), (4096, 6144, 129), (1088, 1376, 40))
    _v11_racecheck_cases(_tma_x_expect, cases, group=64)


# Four consumer warpgroups (TileConfig::four_wg, the default since the H200 run of 2026-11-29 22:03): where
# v11.1 reads x through its map in 48- or 64-token tiles without stream-K, 20 warps, warp w owning weight
# tile w of the 256-column block. Shapes: an odd number of k-tiles (K = 1088), a partial column block (N =
# 1376), K splits (qkv, down) and one split with the bias in the kernel's epilogue (N = 32768, K = 1024).
# Group 32 plans the same but its launch stages x (the staged kernels, two warpgroups).
FOUR_WG_TOKENS = (33, 40, 48, 49, 64)
FOUR_WG_SHAPES = ((1088, 1376), (4096, 6144), (14336, 4096), (1024, 32768))


def _four_wg_expect(m):
    return {"kernel": "wgmma_ws", "tma_x": True, "stream_k": False, "four_wg": True, "block_warps": 20}


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ws_four_wg(dtype, group):
    graph_ms = (40, 64) if group == 128 else ()
    kinds = _forced_v11_cases(_four_wg_expect, dtype, group, FOUR_WG_TOKENS, FOUR_WG_SHAPES, graph_ms, bias_ms=(40,))
    assert "1 splits" in kinds and len(kinds) > 1, kinds
    # Around them two warpgroups: the 32-token tile, a stream-K plan (gate_up), the 128-token tile.
    with awqgemm.testing.force(family="sm90", path="fused"):
        for m, n in ((32, 6144), (64, 28672), (65, 6144)):
            info = awqgemm.plan_info(m, n, 4096, dtype)
            assert not info["four_wg"] and info["block_warps"] == 12, (m, n, info)


def test_sanitizer_subset_ws_four_wg():
    """Four consumer warpgroups for compute-sanitizer memcheck: 48- and 64-token tiles, a partial x tile and
    column block, K splits and one split with a bias."""
    for dtype in (torch.float16, torch.bfloat16):
        shapes = ((1088, 1376), (1024, 32768))
        _forced_v11_cases(_four_wg_expect, dtype, 64, (33, 64), shapes, bias_ms=(33,))


def test_racecheck_subset_ws_four_wg():
    """Four consumer warpgroups for compute-sanitizer racecheck: sixteen consumer warps on one ring, the
    producer's next copies into each slot, and the partials of a K split."""
    cases = ((4096, 1376, 64), (4096, 6144, 40), (1024, 32768, 49))
    _v11_racecheck_cases(_four_wg_expect, cases, group=64)


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_grouped_mid_tiles(dtype, group):
    """Grouped v11.1 in 160-, 192- and 224-token tiles: 110, 150 and 180 routed rows per
    expert as planned (R / E; mean + 2 sd 131, 175, 207), experts of r and r + r / 6 rows (the larger one
    spilling into a second tile), garbage row indices, against fp64."""
    skip_unless_family("sm90")
    tiles = set()
    for r in (132, 180, 216):
        info = _grouped_garbage_rows({"family": "sm90"}, dtype, group, r)
        assert info["kernel"] == "wgmma_ws", info
        tiles.add(info["tile_tokens"])
    assert tiles == {160, 192, 224}, tiles


# Grouped experts of 17-64 rows on v11.1 in the short tiles (the default since 2026-11-29).
def _short_grouped(dtype, group, rows_per_expert):
    """Grouped v11.1 with short tiles: the plan's tile holds mean + 2 sd of the routed rows per expert."""
    skip_unless_family("sm90")
    info = _grouped_garbage_rows({"family": "sm90"}, dtype, group, rows_per_expert)
    mean = (5 * rows_per_expert // 2) / 3  # routed rows per expert as the planner sees them (R / E)
    assert info["kernel"] == "wgmma_ws", info
    assert info["tile_tokens"] == _short_tile(min(64, math.ceil(mean + 2 * math.sqrt(mean)))), info
    return info["tile_tokens"]


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_grouped_short_tiles(dtype, group):
    # 16.7, 24 and 46.7 rows per expert as planned (R / E): tiles of 32, 48 and 64 tokens (mean + 2 sd).
    assert {_short_grouped(dtype, group, r) for r in (20, 29, 56)} == {32, 48, 64}


def test_sanitizer_subset_grouped_short_tiles():
    """Grouped short tiles of 32 and 48 rows with garbage row indices, for compute-sanitizer memcheck."""
    for dtype in (torch.float16, torch.bfloat16):
        for r in (20, 29):
            _short_grouped(dtype, 32, r)
