"""fused_moe's routing-kernel path without a GPU: a Python model of the routing kernel's stable
counting sort (its tile / warp / lane index math) against torch.sort, the kernel path's glue run
through the ops' CPU impls (the torch path's own expressions) against the torch path, bit for bit,
the ops' fake impls (torch.library.opcheck), and the path's launch count."""

from __future__ import annotations

import pytest
import torch

from awqgemm import moe
from test_moe_launches import device_path_ops, experts, garbage_ids

TILE, WARPS, MAX_BLOCKS = 1024, 32, 128


def route_chunk(pairs: int) -> int:
    """moe_routing.cu's pairs per block: one tile per block up to MAX_BLOCKS tiles, then whole tiles."""
    tiles = -(-pairs // TILE)
    return max(1, -(-tiles // MAX_BLOCKS)) * TILE


def counting_sort_model(key: list[int], bins: int) -> tuple[list[int], list[int], list[int]]:
    """The routing kernels step by step: every block counts its chunk of pairs (one block: the
    whole sort, up to one tile); the scan of all counts gives the offsets; each block's chunk starts
    each key after that key's pairs in earlier chunks (before), then places each pair of a 1024-pair
    tile after the earlier tiles' (base), the earlier warps' (table[key][warp]) and the lower lanes'
    pairs of its key. Returns (order, offsets, pos)."""
    n = len(key)
    chunk = max(n, 1) if n <= TILE else route_chunk(n)
    starts = list(range(0, n, chunk)) or [0]
    counts = []
    for c0 in starts:
        row = [0] * bins
        for k in key[c0 : c0 + chunk]:
            row[k] += 1
        counts.append(row)
    offsets, run = [], 0
    for k in range(bins):
        offsets.append(run)
        run += sum(row[k] for row in counts)
    order, pos = [0] * n, [0] * n
    for blk, c0 in enumerate(starts):
        base = [offsets[k] + sum(row[k] for row in counts[:blk]) for k in range(bins)]
        for t0 in range(c0, min(n, c0 + chunk), TILE):
            tile = key[t0 : min(t0 + TILE, c0 + chunk)]
            table = [[0] * WARPS for _ in range(bins)]
            for w in range(WARPS):
                for k in set(tile[32 * w : 32 * w + 32]):
                    table[k][w] = tile[32 * w : 32 * w + 32].count(k)  # popc of match_any's peers
            for tid, k in enumerate(tile):
                warp, lane = divmod(tid, 32)
                rank = tile[32 * warp : 32 * warp + lane].count(k)  # popc(peers & lower lanes)
                r = base[k] + sum(table[k][:warp]) + rank
                pos[t0 + tid], order[r] = r, t0 + tid
            for k in set(tile):
                base[k] += sum(table[k])
    return order, offsets, pos


@pytest.mark.parametrize(
    ("pairs", "num"),
    [(1, 8), (7, 8), (1024, 8), (1025, 3), (3000, 128), (2048, 1), (131072 + 5000, 4), (0, 2)],
)
def test_counting_sort_model_is_torch_stable_sort(pairs, num):
    """(131072 + 5000 pairs: past 128 one-tile blocks, so each block sorts two tiles.)"""
    gen = torch.Generator().manual_seed(pairs + num)
    key = torch.randint(0, num + 1, (pairs,), generator=gen)
    if pairs > 1500:  # long runs of one key, across warps, tiles and blocks
        key[200:1700] = num // 2
    order, offsets, pos = counting_sort_model(key.tolist(), num + 1)
    sorted_key, want_order = torch.sort(key, stable=True)
    want_offsets = torch.searchsorted(sorted_key, torch.arange(num + 1))
    assert order == want_order.tolist()
    assert offsets == want_offsets.tolist()
    assert [order[p] for p in pos] == list(range(pairs))


@pytest.mark.parametrize(("pairs", "chunk", "blocks"), [(1025, 1024, 2), (131072, 1024, 128), (131073, 2048, 65)])
def test_route_chunks(pairs, chunk, blocks):
    assert route_chunk(pairs) == chunk
    assert -(-pairs // chunk) == blocks
    if moe._C is not None:  # the extension's own count of scratch ints: one row of bins per block
        assert moe._C.route_scratch_ints(pairs, 7) == blocks * 8
        assert moe._C.route_scratch_ints(1024, 7) == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("case", ["plain", "fp16-weights", "garbage-ids", "expert-map", "on-input", "k8"])
def test_kernel_path_glue_equals_torch_path(dtype, case):
    """_experts_and_combine_kernels through the ops' CPU impls == _experts_and_combine (rounded
    to the activation dtype, as the combine kernel rounds it), bit for bit."""
    gen = torch.Generator().manual_seed(3)
    num, hidden, inter, tokens, top_k = 6, 64, 32, 11, 3
    w13, w2 = experts(num, hidden, inter, dtype)
    x = torch.randn(tokens, hidden, generator=gen).to(dtype)
    if case == "k8":
        top_k = 6
    ti = torch.rand(tokens, num, generator=gen).topk(top_k, dim=1).indices.to(torch.int32)
    tw = torch.softmax(torch.randn(tokens, top_k, generator=gen), dim=1)
    emap, on_input = None, False
    if case == "fp16-weights":
        tw = tw.to(torch.float16)
    elif case == "garbage-ids":
        ti = garbage_ids(tokens, top_k, num, torch.int64, gen)
    elif case == "expert-map":
        emap = torch.tensor([1, -1, 0, 5, 3, -1, 2, 4, -9, 6], dtype=torch.int32)
        ti = garbage_ids(tokens, top_k, 10, torch.int32, gen)
    elif case == "on-input":
        top_k, on_input = 1, True
        ti, tw = ti[:, :1].contiguous(), torch.rand(tokens, 1, generator=gen) + 0.5
    args = (x, w13, w2, tw, ti, on_input, emap)
    got = moe._experts_and_combine_kernels(*args)
    want = moe._experts_and_combine(*args).to(dtype)
    assert got.dtype == dtype
    assert torch.equal(got, want), (got - want).abs().max()


def test_ops_fake_impls():
    gen = torch.Generator().manual_seed(0)
    ti = garbage_ids(9, 2, 5, torch.int32, gen)
    tw = torch.rand(9, 2, generator=gen)
    emap = torch.tensor([0, -1, 3, 1, 2, 4, -1], dtype=torch.int64)
    torch.library.opcheck(torch.ops.awqgemm.moe_route.default, (ti, tw, None, 5, False))
    torch.library.opcheck(torch.ops.awqgemm.moe_route.default, (ti, tw.half(), emap, 5, True))
    h = torch.randn(18, 24, generator=gen).half()
    torch.library.opcheck(torch.ops.awqgemm.moe_silu_mul.default, (h,))
    pos = torch.randperm(18, generator=gen).to(torch.int32).view(9, 2)
    for fp32_out in (True, False):
        torch.library.opcheck(torch.ops.awqgemm.moe_combine.default, (h, pos, tw, fp32_out))


def test_kernel_path_launches():
    """Switch on: route, gate_up, silu-mul, down, combine (which writes x.dtype: fused_moe's
    output cast is then a no-op)."""
    kernels, _ = device_path_ops(moe._experts_and_combine_kernels)
    assert kernels == ["moe_route", "moe_gemm", "moe_silu_mul", "moe_gemm", "moe_combine"], kernels
    kernels, _ = device_path_ops(moe._experts_and_combine_kernels, expert_map=True, weights_dtype=torch.float16)
    assert len(kernels) == 5, kernels
    kernels, _ = device_path_ops(moe._experts_and_combine_kernels, top_k=1, on_input=True)
    assert kernels == ["moe_route", "mul", "moe_gemm", "moe_silu_mul", "moe_gemm", "moe_combine"], kernels


def test_route_kernel_bound():
    assert moe.route_kernel_fits(1 << 30, 1024)
    assert not moe.route_kernel_fits((1 << 30) + 1, 8)
    assert not moe.route_kernel_fits(8, 1025)
