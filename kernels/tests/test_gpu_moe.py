"""GPU tests of the MoE path: the grouped K-split kernel on every family (older
ones forced onto this GPU), against a float64 per-expert reference; fuzzed
routings (zero-token experts, expert parallel, ids out of range), CUDA graph
replay with new routings, torch.compile, and a compute-sanitizer subset."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import awqgemm
from awqgemm import moe
from awqgemm.moe import grouped_plan_info
from awqgemm.testing import random_awq
from conftest import has_gpu

pytestmark = pytest.mark.gpu

CASES = [("sm70", torch.float16), ("sm75", torch.float16), ("sm80", torch.float16), ("sm80", torch.bfloat16)]
CASES += [("auto", torch.float16), ("auto", torch.bfloat16)]


def skip_unless(family):
    if not has_gpu():
        pytest.skip("no GPU")
    cap = torch.cuda.get_device_capability()
    need = {"sm70": (7, 0), "sm75": (7, 5), "sm80": (8, 0), "auto": (7, 0)}[family]
    if cap < need:
        pytest.skip(f"{family} needs compute capability {need}")


def experts(num, k, n, group, dtype, seed):
    parts = [random_awq(k, n, group, dtype, "cuda", seed=seed * 1000 + e) for e in range(num)]
    return tuple(torch.stack([p[i] for p in parts]) for i in range(3))


def dense(ck, group):
    return torch.stack([awqgemm.dequantize_awq(ck[0][e], ck[1][e], ck[2][e], group) for e in range(ck[0].shape[0])])


def reference(x, w13, w2, tw, ti, expert_map=None):
    """float64 per expert: sum_j w_j * down(silu(gate) * up); pairs of non-local or invalid ids add 0."""
    w13, w2 = w13.double(), w2.double()
    num, inter = w13.shape[0], w2.shape[1]
    ids = ti.long()
    if expert_map is not None:
        ok = (ids >= 0) & (ids < expert_map.shape[0])
        ids = torch.where(ok, expert_map.long()[ids.clamp(0, expert_map.shape[0] - 1)], -1)
    out = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    xd = x.double()
    for e in range(num):
        tok, slot = (ids == e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        h = xd[tok] @ w13[e]
        a = F.silu(h[:, :inter]) * h[:, inter:]
        out.index_add_(0, tok, (a @ w2[e]) * tw[tok, slot].double()[:, None])
    return out


def rel_err(y, ref):
    return (torch.linalg.vector_norm(y.double() - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30)).item()


def routing(tokens, num, top_k, seed, zero=(), device="cuda"):
    gen = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([e for e in range(num) if e not in zero])
    ti = allowed[torch.rand(tokens, allowed.numel(), generator=gen).topk(top_k, dim=1).indices]
    tw = torch.softmax(torch.randn(tokens, top_k, generator=gen), dim=1)
    return tw.to(device), ti.to(torch.int32).to(device)


def tolerance(dtype):
    return 1.5e-2 if dtype == torch.float16 else 4e-2


def run_case(
    family,
    dtype,
    group,
    tokens,
    num=8,
    hidden=256,
    inter=128,
    top_k=2,
    seed=0,
    zero=(1, 6),
    kernels=True,
):
    ck13 = experts(num, hidden, 2 * inter, group, dtype, seed)
    ck2 = experts(num, inter, hidden, group, dtype, seed + 50)
    with awqgemm.testing.force(family=family, moe_routing_kernels=kernels):
        w13 = awqgemm.pack_awq_experts(*ck13, group)
        w2 = awqgemm.pack_awq_experts(*ck2, group)
        x = torch.randn(tokens, hidden, dtype=dtype, device="cuda")
        tw, ti = routing(tokens, num, top_k, seed, zero)
        y = awqgemm.fused_moe(x, w13, w2, tw, ti)
    ref = reference(x, dense(ck13, group), dense(ck2, group), tw, ti)
    err = rel_err(y, ref)
    assert y.dtype == dtype and y.shape == x.shape and torch.isfinite(y).all()
    assert err < tolerance(dtype), f"{family} {dtype} g={group} T={tokens}: rel err {err:.2e}"
    return err


@pytest.mark.parametrize("tokens", [1, 5, 37, 300])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize(("family", "dtype"), CASES)
def test_fused_moe_every_family(family, dtype, group, tokens):
    skip_unless(family)
    err = run_case(family, dtype, group, tokens)
    print(f"moe {family} {dtype} g={group} T={tokens}: worst rel err {err:.2e}")


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_one_warp_grouped_blocks(dtype, group):
    """Grouped decode GEMMs of short K on one-warp blocks (dispatch.cu plan_ksplit), the default plans:
    128 experts, top 8, hidden 1024, intermediate 512, at T = 64 (8-row tiles), 128 (16-row tiles), 160
    and 256 (32 x 64 tiles, experts of 9-32 rows), against fp64. With groups of 128 a one-warp block's
    64-k step stays in a group every other k-tile."""
    skip_unless("auto")
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("one-warp blocks are the sm80 family's (this GPU runs an older one)")
    for tokens, tile in ((64, 8), (128, 16), (160, 32), (256, 32)):
        for n, k in ((1024, 1024), (1024, 512)):  # gate_up, down
            info = grouped_plan_info(8 * tokens, 128, n, k, dtype)
            assert (info["kernel"], info["block_warps"], info["tile_tokens"]) == ("k_split", 1, tile), (n, k, info)
        err = run_case("auto", dtype, group, tokens, num=128, hidden=1024, inter=512, top_k=8, zero=(5,))
        print(f"moe one-warp blocks {dtype} g={group} T={tokens}: worst rel err {err:.2e}")


@pytest.mark.parametrize("tokens", [37, 300, 1000])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize(("family", "dtype"), [c for c in CASES if c[0] == "sm80"])
def test_grouped_xshared(family, dtype, group, tokens):
    """Experts of more than 32 rows on the sm80 x-shared kernel (forced: a 9.0 GPU runs them on v11.1),
    against fp64, with zero-token experts, and a long-K case for its split-K partials; the plan really is
    the x-shared kernel. (At T = 37 both cases have 9-19 rows per expert and stay on the K-split kernel.)"""
    skip_unless(family)
    err = run_case(family, dtype, group, tokens)
    run_case(family, dtype, group, tokens, num=4, hidden=4096, inter=256, seed=tokens, zero=())
    print(f"moe x-shared {family} {dtype} g={group} T={tokens}: worst rel err {err:.2e}")
    with awqgemm.testing.force(family=family):
        assert grouped_plan_info(600, 6, 256, 256, dtype)["kernel"] == "x_shared"
        assert grouped_plan_info(8, 8, 256, 256, dtype)["kernel"] == "k_split"  # 1 row per expert
        assert grouped_plan_info(192, 6, 256, 256, dtype)["kernel"] == "k_split"  # 32 rows per expert
        assert grouped_plan_info(198, 6, 256, 256, dtype)["kernel"] == "x_shared"  # 33


def skip_unless_sm90():
    skip_unless("auto")
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the grouped wgmma kernel is the sm90 family's: a 9.0 GPU")
    if "sm90a_m64nNk16" not in awqgemm.build_info()["kernel_families"]:
        pytest.fail("this 9.0 GPU's awqgemm build lacks the sm90 family: build with CUDA_ARCHITECTURES 90a-real")


@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize(("family", "dtype"), CASES)
def test_grouped_tall_tiles(family, dtype, group):
    """The K-split kernel's token tile is sized for mean + 2 sd rows per expert: against fp64 where that
    makes the tile taller than the mean, 8 rows per expert on average over 32 experts (16-row tiles), 16
    over 16 (32-row tiles; Volta stays at 16), ~9 over 8 with zero-token experts."""
    skip_unless(family)
    worst = 0.0
    for num, top_k, tokens, zero in ((32, 4, 64, ()), (16, 4, 64, ()), (8, 2, 37, (1, 6))):
        worst = max(worst, run_case(family, dtype, group, tokens, num=num, top_k=top_k, zero=zero))
    print(f"moe tall tiles {family} {dtype} g={group}: worst rel err {worst:.2e}")
    with awqgemm.testing.force(family=family):
        tall = grouped_plan_info(256, 32, 256, 256, dtype)
    assert (tall["kernel"], tall["tile_tokens"]) == ("k_split", 16), tall


def test_sanitizer_subset_tall_tiles():
    """The taller grouped K-split tiles for compute-sanitizer memcheck (ci/device_kernels.sh)."""
    skip_unless("auto")
    run_case("auto", torch.float16, 32, 64, num=32, top_k=4, zero=())
    run_case("auto", torch.bfloat16, 64, 37, num=8, top_k=2)


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_grouped_wgmma(dtype, group):
    """Experts of more than 32 rows on grouped v11.1, the sm90 family's default for them (tile table, x
    gathered into per-tile staging, 3-D weight map), against fp64: 128-token tiles (~67 and ~330 rows per
    expert), 64-token tiles (~50: hidden 4096, a long K), 40 experts, K and N tails (g32), zero-token
    experts and a sub-32-row case that stays on the K-split kernel; the plans really are those."""
    skip_unless_sm90()
    worst = 0.0
    for tokens in (200, 1000, 9):
        worst = max(worst, run_case("auto", dtype, group, tokens))
    worst = max(worst, run_case("auto", dtype, group, 100, num=4, hidden=4096, inter=256, seed=7, zero=()))
    # 40 experts: the offsets scan over two chunks of 32 (resolve_group_tile), ~50 rows each.
    worst = max(worst, run_case("auto", dtype, group, 1000, num=40, seed=9, zero=(5, 33)))
    if group == 32:  # hidden 288: K % 64 == 32 (gate_up's half last k-tile), N % 128 == 32 (down's column tail)
        worst = max(worst, run_case("auto", dtype, group, 300, hidden=288, seed=11))
    print(f"moe wgmma {dtype} g={group}: worst rel err {worst:.2e}")
    p64 = grouped_plan_info(360, 6, 256, 256, dtype)
    p128 = grouped_plan_info(400, 6, 256, 256, dtype)
    long_k = grouped_plan_info(200, 4, 512, 4096, dtype)
    small = grouped_plan_info(18, 6, 256, 256, dtype)
    assert (p64["family"], p64["kernel"], p64["tile_tokens"]) == ("sm90", "wgmma_ws", 64), p64
    assert (p128["kernel"], p128["tile_tokens"]) == ("wgmma_ws", 128), p128
    assert (long_k["kernel"], long_k["tile_tokens"], long_k["splits"]) == ("wgmma_ws", 64, 1), long_k
    assert small["kernel"] == "k_split", small


def fp16_layer(num, hidden, inter, tokens, top_k):
    """An fp16 g64 MoE layer (checkpoints, packed weights), activations and a routing that leaves expert 3
    without tokens."""
    ck13 = experts(num, hidden, 2 * inter, 64, torch.float16, 1)
    ck2 = experts(num, inter, hidden, 64, torch.float16, 2)
    w13, w2 = awqgemm.pack_awq_experts(*ck13, 64), awqgemm.pack_awq_experts(*ck2, 64)
    x = torch.randn(tokens, hidden, dtype=torch.float16, device="cuda")
    return (ck13, ck2, w13, w2, x, *routing(tokens, num, top_k, 0, zero=(3,)))


def replay_new_routings(x, w13, w2, tw, ti, num, top_k, zeros):
    """Captures fused_moe in a CUDA graph (under whatever switches are on), replays it with new routings
    (zeros(seed): the experts left without tokens) and asserts each replay is bitwise the eager result;
    returns the graph's output tensor (the last routing's result)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        awqgemm.fused_moe(x, w13, w2, tw, ti)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = awqgemm.fused_moe(x, w13, w2, tw, ti)
    for seed in range(1, 4):
        tw2, ti2 = routing(x.shape[0], num, top_k, seed, zero=zeros(seed))
        x.copy_(torch.randn_like(x))
        tw.copy_(tw2)
        ti.copy_(ti2)
        graph.replay()
        eager = awqgemm.fused_moe(x, w13, w2, tw, ti)
        torch.cuda.synchronize()
        assert_bitwise(out, eager, f"graph replay vs eager (routing seed {seed})")
    return out


def test_grouped_wgmma_graph_replay_and_rows_of_no_expert():
    """The grouped wgmma kernel captured in a CUDA graph replays new routings bitwise as eager does; rows
    past offsets[E] are zero and garbage row indices are clamped."""
    skip_unless_sm90()
    num, hidden, inter, tokens, top_k = 6, 512, 256, 150, 2
    ck13, ck2, w13, w2, x, tw, ti = fp16_layer(num, hidden, inter, tokens, top_k)
    assert grouped_plan_info(tokens * top_k, num, 2 * inter, hidden)["kernel"] == "wgmma_ws"
    out = replay_new_routings(x, w13, w2, tw, ti, num, top_k, lambda seed: (seed,))
    ref = reference(x, dense(ck13, 64), dense(ck2, 64), tw, ti)
    assert rel_err(out, ref) < tolerance(torch.float16)
    offsets = torch.tensor([0, 70, 70, 140, 200, 200, 260], dtype=torch.int32, device="cuda")
    rows = torch.randint(-5, tokens + 5, (300,), dtype=torch.int32, device="cuda")  # clamped in the kernel
    y = awqgemm.moe_gemm(x, w13, offsets, rows)
    torch.cuda.synchronize()
    assert (y[260:] == 0).all() and torch.isfinite(y).all()
    wd = dense(ck13, 64).double()
    safe = rows.clamp(0, tokens - 1).long()
    for e, (lo, hi) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)):
        if hi > lo:
            ref_e = x[safe[lo:hi]].double() @ wd[e]
            assert rel_err(y[lo:hi], ref_e) < 5e-3, (e, lo, hi)


@pytest.mark.parametrize("family", ["sm70", "sm75", "sm80", "auto"])
def test_split_k_and_tile_heights(family):
    """Long K (split-K partials + reduction) and every K-split tile height (8, 16, 32 rows per expert:
    60 tokens x top-2 over 4 experts is 30, below the x-shared kernel's bound)."""
    skip_unless(family)
    for tokens in (1, 12, 60):
        run_case(family, torch.float16, 128, tokens, num=4, hidden=4096, inter=256, top_k=2, seed=tokens)
    with awqgemm.testing.force(family=family):
        plan = grouped_plan_info(2, 4, 512, 4096)
    assert plan["kernel"] == "k_split"
    with awqgemm.testing.force(family=family):
        assert grouped_plan_info(8, 128, 64, 8192)["splits"] > 1, "decode of a long K should split K"


@pytest.mark.parametrize("seed", range(12))
def test_fuzzed_routings(seed):
    skip_unless("auto")
    gen = torch.Generator().manual_seed(seed)
    pick = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))
    num = pick(1, 24)
    top_k = pick(1, min(num, 8))
    tokens = pick(1, 160)
    group = (32, 64, 128)[seed % 3]
    dtype = (torch.float16, torch.bfloat16)[seed % 2]
    hidden, inter = group * pick(1, 4), 16 * pick(1, 12)
    inter = max(inter, group) // group * group  # w2's K must be a multiple of the group
    zero = tuple(e for e in range(num) if torch.rand(1, generator=gen).item() < 0.3)
    if len(zero) > num - top_k:
        zero = ()
    ck13 = experts(num, hidden, 2 * inter, group, dtype, seed)
    ck2 = experts(num, inter, hidden, group, dtype, seed + 50)
    w13 = awqgemm.pack_awq_experts(*ck13, group)
    w2 = awqgemm.pack_awq_experts(*ck2, group)
    x = torch.randn(tokens, hidden, dtype=dtype, device="cuda")
    tw, ti = routing(tokens, num, top_k, seed, zero)
    if seed % 3 == 0:
        ti = ti.long()
    if seed % 4 == 1:
        tw = tw.to(dtype)
    y = awqgemm.fused_moe(x, w13, w2, tw, ti)
    ref = reference(x, dense(ck13, group), dense(ck2, group), tw.float(), ti)
    assert rel_err(y, ref) < tolerance(dtype), (num, top_k, tokens, group, dtype, rel_err(y, ref))


def test_expert_parallel_and_ids_out_of_range():
    """Non-local experts (expert_map -1) and ids outside [0, E) contribute zero, without a sync or a fault."""
    skip_unless("auto")
    num_global, local = 10, [7, 2, 9, 4]
    ck13 = experts(len(local), 256, 256, 64, torch.float16, 3)
    ck2 = experts(len(local), 128, 256, 64, torch.float16, 4)
    w13, w2 = awqgemm.pack_awq_experts(*ck13, 64), awqgemm.pack_awq_experts(*ck2, 64)
    emap = torch.full((num_global,), -1, dtype=torch.int32, device="cuda")
    emap[torch.tensor(local)] = torch.arange(len(local), dtype=torch.int32, device="cuda")
    x = torch.randn(50, 256, dtype=torch.float16, device="cuda")
    tw, ti = routing(50, num_global, 3, 11)
    y = awqgemm.fused_moe(x, w13, w2, tw, ti, expert_map=emap)
    ref = reference(x, dense(ck13, 64), dense(ck2, 64), tw, ti, emap)
    assert rel_err(y, ref) < 1.5e-2
    bad = ti.clone()
    bad[::3, 0] = 1000
    bad[1::4, 1] = -5
    y = awqgemm.fused_moe(x, w13, w2, tw, bad, expert_map=emap)
    assert rel_err(y, reference(x, dense(ck13, 64), dense(ck2, 64), tw, bad, emap)) < 1.5e-2
    # Without a map: ids >= E and < 0 are dropped too.
    tw4, ti4 = routing(50, 4, 2, 12)
    ti4[::2, 1] = 4
    ti4[1::5, 0] = -1
    y = awqgemm.fused_moe(x, w13, w2, tw4, ti4)
    assert rel_err(y, reference(x, dense(ck13, 64), dense(ck2, 64), tw4, ti4)) < 1.5e-2


def test_moe_gemm_rows_of_no_expert_are_zero():
    skip_unless("auto")
    ck = experts(3, 2048, 64, 128, torch.float16, 5)
    packed = awqgemm.pack_awq_experts(*ck, 128)
    x = torch.randn(6, 2048, dtype=torch.float16, device="cuda")
    offsets = torch.tensor([0, 2, 2, 5], dtype=torch.int32, device="cuda")
    row_index = torch.tensor([3, 0, 1, 1, 5, 0, 3, 2], dtype=torch.int32, device="cuda")
    y = awqgemm.moe_gemm(x, packed, offsets, row_index)
    w = dense(ck, 128).double()
    for r, e in enumerate([0, 0, 2, 2, 2]):
        ref = x[int(row_index[r])].double() @ w[e]
        assert rel_err(y[r], ref) < 1e-2
    assert (y[5:] == 0).all()


@pytest.mark.parametrize("routing_kernels", [False, True])
def test_cuda_graph_replay_matches_eager_with_new_routing(routing_kernels):
    """A captured fused_moe replays new routings bitwise as eager does; with the routing kernels
    (testing.force(moe_routing_kernels=True)) also bitwise what the torch path gives."""
    skip_unless("auto")
    num, hidden, inter, tokens, top_k = 16, 512, 256, 24, 4
    _, _, w13, w2, x, tw, ti = fp16_layer(num, hidden, inter, tokens, top_k)
    with awqgemm.testing.force(moe_routing_kernels=routing_kernels):
        out = replay_new_routings(x, w13, w2, tw, ti, num, top_k, lambda seed: (seed, 2 * seed))
    if routing_kernels:
        with awqgemm.testing.force(moe_routing_kernels=False):
            torch_path = awqgemm.fused_moe(x, w13, w2, tw, ti)
        assert_bitwise(out, torch_path, "graph (kernels) vs torch path")


@pytest.mark.parametrize("routing_kernels", [False, True])
def test_torch_compile_fullgraph_matches_eager(routing_kernels):
    skip_unless("auto")
    ck13 = experts(4, 256, 256, 64, torch.bfloat16, 8)
    ck2 = experts(4, 128, 256, 64, torch.bfloat16, 9)
    w13, w2 = awqgemm.pack_awq_experts(*ck13, 64), awqgemm.pack_awq_experts(*ck2, 64)
    x = torch.randn(9, 256, dtype=torch.bfloat16, device="cuda")
    tw, ti = routing(9, 4, 2, 5)
    with awqgemm.testing.force(moe_routing_kernels=routing_kernels):
        eager = awqgemm.fused_moe(x, w13, w2, tw, ti)
        fn = torch.compile(lambda a, b, c: awqgemm.fused_moe(a, w13, w2, b, c), fullgraph=True)
        compiled = fn(x, tw, ti)
    torch.testing.assert_close(compiled, eager, rtol=2e-2, atol=2e-2)


def test_bad_inputs_on_gpu():
    skip_unless("auto")
    ck = experts(2, 64, 64, 32, torch.float16, 1)
    w = awqgemm.pack_awq_experts(*ck, 32)
    x = torch.randn(3, 64, dtype=torch.float16, device="cuda")
    with pytest.raises(ValueError, match="is on cpu"):
        awqgemm.moe_gemm(x, w, torch.zeros(3, dtype=torch.int32))
    with pytest.raises(TypeError, match="packed with"):
        awqgemm.moe_gemm(x.bfloat16(), w, torch.zeros(3, dtype=torch.int32, device="cuda"))
    with pytest.raises(TypeError, match="float16, bfloat16 on cuda"):
        awqgemm.moe_gemm(x.float(), w, torch.zeros(3, dtype=torch.int32, device="cuda"))


def test_sanitizer_subset():
    """Small grouped cases on every family for compute-sanitizer memcheck: gather, zero-token experts,
    split-K, rows of no expert, ids out of range (ci/device_kernels.sh moe)."""
    skip_unless("auto")
    for family, dtype in CASES:
        with awqgemm.testing.force(family=family):
            run_case(family, dtype, 64, 7, num=5, hidden=1024, inter=128, top_k=2, seed=3, zero=(2,))
            # 30 rows per expert: the K-split kernel's 32-row tile (x-shared above 32: its own subset).
            run_case(family, dtype, 32, 30, num=3, hidden=96 * 2, inter=64, top_k=3, seed=4, zero=())
            ck = experts(3, 1024, 72, 128, dtype, 6)
            packed = awqgemm.pack_awq_experts(*ck, 128)
            x = torch.randn(5, 1024, dtype=dtype, device="cuda")
            offsets = torch.tensor([0, 1, 1, 4], dtype=torch.int32, device="cuda")
            rows = torch.tensor([4, 0, 9, -3, 2, 2, 1], dtype=torch.int32, device="cuda")  # clamped in the kernel
            y = awqgemm.moe_gemm(x, packed, offsets, rows)
            torch.cuda.synchronize()
            assert (y[4:] == 0).all()


def check_rows_of_no_expert(dtype, family, kernel, rows_per_expert):
    """moe_gemm (kernel family `family`) on 3 experts (the middle one empty) whose plan is `kernel`, with garbage
    row indices (clamped in the kernel) and rows past offsets[E], which must come out zero; every
    expert's rows against fp64 (N = 200: a column tail)."""
    r = rows_per_expert
    ck = experts(3, 512, 200, 64, dtype, 7)
    with awqgemm.testing.force(family=family):
        packed = awqgemm.pack_awq_experts(*ck, 64)
        assert grouped_plan_info(5 * r // 2, 3, 200, 512, dtype)["kernel"] == kernel
        x = torch.randn(3 * r // 2, 512, dtype=dtype, device="cuda")
        offsets = torch.tensor([0, r, r, 2 * r + r // 6], dtype=torch.int32, device="cuda")
        rows = torch.randint(-5, 2 * r, (5 * r // 2,), dtype=torch.int32, device="cuda")
        y = awqgemm.moe_gemm(x, packed, offsets, rows)
        torch.cuda.synchronize()
        assert (y[2 * r + r // 6 :] == 0).all() and torch.isfinite(y).all()
    w, safe = dense(ck, 64).double(), rows.clamp(0, x.shape[0] - 1).long()
    for e, (lo, hi) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)):
        if hi > lo:
            assert rel_err(y[lo:hi], x[safe[lo:hi]].double() @ w[e]) < tolerance(dtype), (family, e)


def test_sanitizer_subset_one_warp_blocks():
    """One-warp grouped blocks for compute-sanitizer memcheck: T = 64 (8-row tiles) and 256 (32 x 64 tiles)
    with groups of 128 (the uneven scale-row advance), fp16."""
    skip_unless("auto")
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("one-warp blocks are the sm80 family's")
    for tokens, tile in ((64, 8), (256, 32)):
        info = grouped_plan_info(8 * tokens, 128, 1024, 512)
        assert (info["block_warps"], info["tile_tokens"]) == (1, tile), info
        run_case("auto", torch.float16, 128, tokens, num=128, hidden=1024, inter=512, top_k=8, zero=(5,))


def test_sanitizer_subset_grouped_xshared():
    """The grouped x-shared kernel for compute-sanitizer memcheck: gather, a zero-token expert, split-K
    over a long K, and rows of no expert (past offsets[E]) with clamped garbage row indices."""
    skip_unless("sm80")
    for dtype in (torch.float16, torch.bfloat16):
        run_case("sm80", dtype, 64, 60, num=3, hidden=1024, inter=128, top_k=2, seed=5, zero=(1,))
        run_case("sm80", dtype, 128, 40, num=2, hidden=8192, inter=128, top_k=2, seed=6, zero=())
        check_rows_of_no_expert(dtype, "sm80", "x_shared", 40)


def test_sanitizer_subset_grouped_wgmma():
    """Grouped v11.1 for compute-sanitizer memcheck: 64- and 128-token tiles, a long K, a zero-token
    expert, rows of no expert with clamped garbage row indices."""
    skip_unless_sm90()
    for dtype in (torch.float16, torch.bfloat16):
        run_case("auto", dtype, 64, 120, num=3, hidden=1024, inter=128, top_k=2, seed=5, zero=(1,))
        run_case("auto", dtype, 128, 300, num=2, hidden=512, inter=128, top_k=2, seed=6, zero=())
        run_case("auto", dtype, 32, 60, num=2, hidden=8192, inter=64, top_k=2, seed=8, zero=())
        check_rows_of_no_expert(dtype, "auto", "wgmma_ws", 60)


def test_sanitizer_subset_moe_routing_kernels():
    """fused_moe's routing / silu-mul / combine kernels (vectorized and scalar widths), and the routing
    kernels over 2,100 pairs (the counting launch and three sorting blocks) with garbage ids and an expert
    map, for compute-sanitizer memcheck."""
    skip_unless("auto")
    run_case("auto", torch.float16, 64, 7, num=5, hidden=1024, inter=128, top_k=2, seed=3, zero=(2,), kernels=True)
    run_case("auto", torch.bfloat16, 32, 40, num=3, hidden=96 * 2, inter=64, top_k=3, seed=4, zero=(), kernels=True)
    h = misaligned(torch.randn(9, 2 * 20, device="cuda").half())
    torch.ops.awqgemm.moe_silu_mul(h)
    pos = torch.randperm(12, device="cuda").to(torch.int32).view(4, 3)
    for y in (torch.randn(12, 20, device="cuda").bfloat16(), misaligned(torch.randn(12, 64, device="cuda").half())):
        torch.ops.awqgemm.moe_combine(y, pos, torch.rand(4, 3, device="cuda"), False)
    gen = torch.Generator().manual_seed(9)
    for ids_dtype, map_dtype in ((torch.int32, None), (torch.int64, torch.int64), (torch.int32, torch.int32)):
        emap = None if map_dtype is None else garbage_map(40, 6, map_dtype, gen)
        ti = garbage_ids(700, 3, 6 if emap is None else 40, ids_dtype, gen)
        tw = torch.rand(700, 3, generator=gen).cuda()
        torch.ops.awqgemm.moe_route(ti, tw, emap, 6, False)
    torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------
# fused_moe's routing / silu-mul / combine kernels (testing.force(moe_routing_kernels=True)):
# each bit for bit equal to the torch path they replace.


def garbage_ids(tokens, top_k, high, dtype, gen):
    """Ids in [0, high) mostly (some experts get none), with negatives, ids past high and the
    dtype's extremes mixed in; on the GPU."""
    ids = torch.randint(0, high, (tokens, top_k), generator=gen, dtype=torch.int64)
    info = torch.iinfo(dtype)
    specials = torch.tensor([-1, -7, high, high + 3, info.min, info.max], dtype=torch.int64)
    mask = torch.rand(tokens, top_k, generator=gen) < 0.2
    pick = specials[torch.randint(0, specials.numel(), (tokens, top_k), generator=gen)]
    return torch.where(mask, pick, ids).to(dtype).cuda()


def garbage_map(num_global, num_local, dtype, gen):
    """global -> local: a random subset of the local experts, -1 for most others, and a few
    entries out of range (num_local, a negative other than -1) as device garbage would be."""
    emap = torch.full((num_global,), -1, dtype=torch.int64)
    held = torch.randperm(num_global, generator=gen)[:num_local]
    emap[held] = torch.randperm(num_local, generator=gen)
    emap[torch.randint(0, num_global, (2,), generator=gen)] = torch.tensor([num_local, -5])
    return emap.to(dtype).cuda()


def assert_bitwise(got, want, what):
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype, got.shape, want.shape)
    if got.is_floating_point():
        view = {2: torch.int16, 4: torch.int32}[got.element_size()]
        got, want = got.contiguous().view(view), want.contiguous().view(view)
    bad = (got != want).nonzero()
    assert bad.numel() == 0, f"{what}: {bad.shape[0]} elements differ, first at {bad[0].tolist()}"


# Up to 1024 pairs one block sorts them; above, one-tile blocks (2048 x top-8: 16 of them), and past
# 128 tiles (17,000 x top-8 = 136,000 pairs) blocks of two tiles.
ROUTE_TOKENS = [1, 2, 3, 4, 37, 1000, 2048, 17000]


@pytest.mark.parametrize("num", [8, 128])
@pytest.mark.parametrize("top_k", [1, 2, 8])
@pytest.mark.parametrize("tokens", ROUTE_TOKENS)
def test_route_kernel_bitwise_equals_torch(num, top_k, tokens):
    """order, offsets, token_of_row, pos and weights of the routing kernel == the torch path's, over
    ids/map/weight dtypes, ids out of range, expert maps with -1 and garbage, a NaN weight on pairs
    of no local expert, all pairs on one expert, and T * k past one 1024-pair tile and past 128 blocks."""
    skip_unless("auto")
    gen = torch.Generator().manual_seed(tokens * 1000 + top_k * 10 + num)
    for variant in range(6):
        ids_dtype = (torch.int32, torch.int64)[variant % 2]
        w_dtype = (torch.float32, torch.float16, torch.bfloat16)[variant % 3]
        emap = None
        if variant in (2, 3, 5):
            num_global = num + 5 + variant
            emap = garbage_map(num_global, num, (torch.int64, torch.int32)[variant % 2], gen)
            ti = garbage_ids(tokens, top_k, num_global, ids_dtype, gen)
        elif variant == 4:  # every pair on one expert: the longest runs of equal keys in a warp
            ti = torch.full((tokens, top_k), num // 2, dtype=ids_dtype, device="cuda")
        else:
            ti = garbage_ids(tokens, top_k, num, ids_dtype, gen)
        tw = torch.rand(tokens, top_k, generator=gen).to(w_dtype).cuda()
        key = moe._sort_key(ti, num, emap).view(tokens, top_k)
        tw = torch.where(key == num, torch.tensor(float("nan"), dtype=w_dtype, device="cuda"), tw)
        on_input = top_k == 1 and variant == 1
        got = torch.ops.awqgemm.moe_route(ti, tw, emap, num, on_input)
        want = moe.route_torch(ti, tw, emap, num, on_input)
        for g, w, name in zip(got, want, ("order", "offsets", "token_of_row", "pos", "weights"), strict=True):
            assert_bitwise(g, w, f"{name} (T={tokens} k={top_k} E={num} variant {variant})")
        # pos is the inverse of order
        order, pos = got[0], got[3].reshape(-1)
        assert torch.equal(order[pos.long()], torch.arange(tokens * top_k, device="cuda"))


def test_route_kernel_largest_expert_count_and_bad_inputs():
    skip_unless("auto")
    gen = torch.Generator().manual_seed(1)
    num = moe.ROUTE_KERNEL_MAX_EXPERTS
    ti = garbage_ids(300, 4, num, torch.int32, gen)
    tw = torch.rand(300, 4, generator=gen).cuda()
    for g, w, name in zip(
        torch.ops.awqgemm.moe_route(ti, tw, None, num, False),
        moe.route_torch(ti, tw, None, num, False),
        "ootpw",
        strict=True,
    ):
        assert_bitwise(g, w, name)
    # more experts than the kernel's table: the op routes with torch (same results)
    got = torch.ops.awqgemm.moe_route(ti, tw, None, num + 1, False)
    # several blocks share the 1200-pair sort: no scratch is a clear error, not a null write
    assert awqgemm._C.route_scratch_ints(1200, 8) == 2 * 9
    with pytest.raises(ValueError, match="scratch buffer"):
        awqgemm._C.moe_route(ti.data_ptr(), 0, tw.data_ptr(), 2, False, 0, 0, 0, 1200, 4, 8, 1, 1, 1, 1, 1, 0, 0, 0)
    assert_bitwise(got[1], moe.route_torch(ti, tw, None, num + 1, False)[1], "offsets")
    with pytest.raises(TypeError, match="topk_ids must be 2-D int32/int64"):
        torch.ops.awqgemm.moe_route(ti.float(), tw, None, 8, False)
    with pytest.raises(TypeError, match="topk_weights must be"):
        torch.ops.awqgemm.moe_route(ti, tw[:, :2], None, 8, False)
    with pytest.raises(ValueError, match="num_experts must be >= 1"):
        torch.ops.awqgemm.moe_route(ti, tw, None, 0, False)
    with pytest.raises(ValueError, match="one device"):
        torch.ops.awqgemm.moe_route(ti, tw, torch.zeros(4, dtype=torch.int32), 8, False)
    with pytest.raises(ValueError, match="local experts"):
        awqgemm._C.moe_route(
            ti.data_ptr(), 0, tw.data_ptr(), 2, False, 0, 0, 0, 1200, 4, num + 1, 1, 1, 1, 1, 1, 1, 0, 0
        )
    with pytest.raises(ValueError, match="multiple of top_k"):
        awqgemm._C.moe_route(ti.data_ptr(), 0, tw.data_ptr(), 2, False, 0, 0, 0, 1201, 4, 8, 1, 1, 1, 1, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="null pointer"):
        awqgemm._C.moe_route(0, 0, tw.data_ptr(), 2, False, 0, 0, 0, 1200, 4, 8, 1, 1, 1, 1, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="ids type"):
        awqgemm._C.moe_route(ti.data_ptr(), 3, tw.data_ptr(), 2, False, 0, 0, 0, 1200, 4, 8, 1, 1, 1, 1, 1, 1, 0, 0)


def misaligned(t):
    """t's values in a buffer one element off 16-byte alignment (the kernels' scalar path)."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("rows", "inter"), [(1, 8), (7, 12), (300, 768), (64, 5), (33, 1)])
def test_silu_mul_kernel_bitwise(dtype, rows, inter):
    skip_unless("auto")
    gen = torch.Generator().manual_seed(rows + inter)
    h = (torch.randn(rows, 2 * inter, generator=gen) * 6).to(dtype)
    big = torch.finfo(dtype).max
    h.view(-1)[: min(8, h.numel())] = torch.tensor([0.0, -0.0, 1e-7, -1e-7, 30.0, -30.0, big, -big])[
        : min(8, h.numel())
    ].to(dtype)
    h = h.cuda()
    for src in (h, misaligned(h)):
        assert_bitwise(torch.ops.awqgemm.moe_silu_mul(src), moe.silu_mul_torch(src), f"act {rows}x{inter}")
    with pytest.raises(ValueError, match="2 \\* inter"):
        torch.ops.awqgemm.moe_silu_mul(h[:, :-1] if h.shape[1] > 2 else h[:, :1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("top_k", [1, 2, 3, 5, 8, 15])
@pytest.mark.parametrize("tokens", [1, 4, 257])
def test_combine_kernel_bitwise(dtype, top_k, tokens):
    """The fp32 sum over k in torch's reduction order (4 accumulators, slot j -> j % 4: Reduce.cuh,
    one thread per output for k < 16): bitwise, and the x.dtype output == .to() of the fp32 one."""
    skip_unless("auto")
    gen = torch.Generator().manual_seed(tokens * 100 + top_k)
    rows = tokens * top_k
    for hidden in (2048, 72, 20):
        y = (torch.randn(rows, hidden, generator=gen) * 3).to(dtype)
        y[torch.rand(rows, generator=gen) < 0.2] = 0.0  # rows of no local expert
        y[0, :4] = -0.0
        pos = torch.randperm(rows, generator=gen).to(torch.int32).view(tokens, top_k)
        w = torch.rand(tokens, top_k, generator=gen)
        w[torch.rand(tokens, top_k, generator=gen) < 0.2] = 0.0
        y, pos, w = y.cuda(), pos.cuda(), w.cuda()
        for ys in (y, misaligned(y)):
            for fp32_out in (True, False):
                got = torch.ops.awqgemm.moe_combine(ys, pos, w, fp32_out)
                assert_bitwise(got, moe.combine_torch(ys, pos, w, fp32_out), f"combine H={hidden} fp32={fp32_out}")
    with pytest.raises(ValueError, match="rows but pos has"):
        torch.ops.awqgemm.moe_combine(y[1:], pos, w, True)
    with pytest.raises(TypeError, match="pos int32"):
        torch.ops.awqgemm.moe_combine(y, pos.long(), w, True)


FUSED_CASES = ["plain", "fp16-weights", "int64-ids", "garbage-ids", "expert-map", "on-input", "k8-e128", "large"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", FUSED_CASES)
def test_fused_moe_kernels_bitwise_equal_torch_path(dtype, case):
    """fused_moe with the routing kernels (the default) == the torch path, bit for bit ("large": T * k
    of 32 routing blocks)."""
    skip_unless("auto")
    gen = torch.Generator().manual_seed(FUSED_CASES.index(case))
    num, hidden, inter, tokens, top_k = 8, 256, 128, 37, 2
    emap, on_input = None, False
    if case == "k8-e128":
        num, top_k, tokens = 128, 8, 300
    elif case == "large":
        top_k, tokens = 8, 4096
        assert awqgemm._C.route_scratch_ints(tokens * top_k, num) == 32 * (num + 1)
    ck13 = experts(num, hidden, 2 * inter, 64, dtype, 3)
    ck2 = experts(num, inter, hidden, 64, dtype, 4)
    w13, w2 = awqgemm.pack_awq_experts(*ck13, 64), awqgemm.pack_awq_experts(*ck2, 64)
    x = torch.randn(tokens, hidden, generator=gen).to(dtype).cuda()
    tw, ti = routing(tokens, num, top_k, 5, zero=(1,) if num - 1 >= top_k else ())
    if case == "fp16-weights":
        tw = tw.to(dtype)
    elif case == "int64-ids":
        ti = ti.long()
    elif case == "garbage-ids":
        ti = garbage_ids(tokens, top_k, num, torch.int32, gen)
    elif case == "expert-map":
        emap = garbage_map(num + 6, num, torch.int32, gen)
        ti = garbage_ids(tokens, top_k, num + 6, torch.int32, gen)
    elif case == "on-input":
        top_k, on_input = 1, True
        ti, tw = ti[:, :1].contiguous(), (torch.rand(tokens, 1, generator=gen) + 0.5).cuda()
    kw = {"apply_router_weight_on_input": on_input, "expert_map": emap}
    with awqgemm.testing.force(moe_routing_kernels=False):  # the torch path
        off = awqgemm.fused_moe(x, w13, w2, tw, ti, **kw)
        off_body = moe._experts_and_combine(x, w13, w2, tw, ti, on_input, emap)
    on = awqgemm.fused_moe(x, w13, w2, tw, ti, **kw)  # the default: the kernels
    on_body = moe._experts_and_combine(x, w13, w2, tw, ti, on_input, emap)
    assert torch.isfinite(off).all()
    assert_bitwise(on, off, f"fused_moe {case}")
    assert_bitwise(on_body.to(dtype), off_body.to(dtype), f"body {case}")
