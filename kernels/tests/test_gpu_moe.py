"""GPU tests of the MoE path: the grouped K-split kernel on every family (older
ones forced onto this GPU), against a float64 per-expert reference; fuzzed
routings (zero-token experts, expert parallel, ids out of range), CUDA graph
replay with new routings, torch.compile, and a compute-sanitizer subset."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import awqgemm
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


def run_case(family, dtype, group, tokens, num=8, hidden=256, inter=128, top_k=2, seed=0, zero=(1, 6)):
    ck13 = experts(num, hidden, 2 * inter, group, dtype, seed)
    ck2 = experts(num, inter, hidden, group, dtype, seed + 50)
    with awqgemm.testing.force(family=family):
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


@pytest.mark.parametrize("family", ["sm70", "sm75", "sm80", "auto"])
def test_split_k_and_tile_heights(family):
    """Long K (split-K partials + reduction) and every tile height (8, 16, 32 rows per expert)."""
    skip_unless(family)
    for tokens in (1, 12, 200):
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


def test_cuda_graph_replay_matches_eager_with_new_routing():
    skip_unless("auto")
    num, hidden, inter, tokens, top_k = 16, 512, 256, 24, 4
    ck13 = experts(num, hidden, 2 * inter, 64, torch.float16, 1)
    ck2 = experts(num, inter, hidden, 64, torch.float16, 2)
    w13, w2 = awqgemm.pack_awq_experts(*ck13, 64), awqgemm.pack_awq_experts(*ck2, 64)
    x = torch.randn(tokens, hidden, dtype=torch.float16, device="cuda")
    tw, ti = routing(tokens, num, top_k, 0, zero=(3,))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        awqgemm.fused_moe(x, w13, w2, tw, ti)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = awqgemm.fused_moe(x, w13, w2, tw, ti)
    for seed in range(1, 4):
        tw2, ti2 = routing(tokens, num, top_k, seed, zero=(seed, 2 * seed))
        x.copy_(torch.randn_like(x))
        tw.copy_(tw2)
        ti.copy_(ti2)
        graph.replay()
        eager = awqgemm.fused_moe(x, w13, w2, tw, ti)
        torch.cuda.synchronize()
        assert torch.equal(out, eager), f"graph replay differs from eager (routing seed {seed})"


def test_torch_compile_fullgraph_matches_eager():
    skip_unless("auto")
    ck13 = experts(4, 256, 256, 64, torch.bfloat16, 8)
    ck2 = experts(4, 128, 256, 64, torch.bfloat16, 9)
    w13, w2 = awqgemm.pack_awq_experts(*ck13, 64), awqgemm.pack_awq_experts(*ck2, 64)
    x = torch.randn(9, 256, dtype=torch.bfloat16, device="cuda")
    tw, ti = routing(9, 4, 2, 5)
    eager = awqgemm.fused_moe(x, w13, w2, tw, ti)
    fn = torch.compile(lambda a, b, c: awqgemm.fused_moe(a, w13, w2, b, c), fullgraph=True)
    torch.testing.assert_close(fn(x, tw, ti), eager, rtol=2e-2, atol=2e-2)


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
            run_case(family, dtype, 32, 40, num=3, hidden=96 * 2, inter=64, top_k=3, seed=4, zero=())
            ck = experts(3, 1024, 72, 128, dtype, 6)
            packed = awqgemm.pack_awq_experts(*ck, 128)
            x = torch.randn(5, 1024, dtype=dtype, device="cuda")
            offsets = torch.tensor([0, 1, 1, 4], dtype=torch.int32, device="cuda")
            rows = torch.tensor([4, 0, 9, -3, 2, 2, 1], dtype=torch.int32, device="cuda")  # clamped in the kernel
            y = awqgemm.moe_gemm(x, packed, offsets, rows)
            torch.cuda.synchronize()
            assert (y[4:] == 0).all()
