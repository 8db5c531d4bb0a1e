"""fused_moe's small ops: how many kernels one call of its torch path issues on a GPU (counted on the
CPU from the aten ops it dispatches; on a GPU the routing kernels are the default and this path is
their reference, under testing.force(moe_routing_kernels=False)), and that the leaner version computes
exactly what the previous one did (a frozen copy of it below), bit for bit, on every routing.

    PYTHONPATH=kernels/python python kernels/tests/test_moe_launches.py   # prints both op lists
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import awqgemm
from awqgemm.moe import _experts_and_combine, route
from awqgemm.packed import PackedWeight
from awqgemm.testing import random_awq

# aten ops that launch nothing on a GPU: views, allocations, and the CPU scalar a Python number
# becomes (torch.where(c, t, 0.0)).
NO_KERNEL = {
    "view",
    "_unsafe_view",
    "slice",
    "select",
    "unsqueeze",
    "squeeze",
    "expand",
    "reshape",
    "alias",
    "as_strided",
    "t",
    "transpose",
    "detach",
    "empty",
    "empty_like",
    "empty_strided",
    "scalar_tensor",
    "lift_fresh",
}


# --------------------------------------------------------------------------------------------
# The version before this change (commit 3779478), frozen: the reference for bitwise equality.


def old_route(topk_ids, num_experts, expert_map=None):
    ids = topk_ids.reshape(-1).long()
    if expert_map is not None:
        n_global = expert_map.shape[0]
        ok = (ids >= 0) & (ids < n_global)
        ids = torch.where(ok, expert_map.long()[ids.clamp(0, n_global - 1)], -1)
    ids = torch.where((ids >= 0) & (ids < num_experts), ids, num_experts)
    sorted_ids, order = torch.sort(ids, stable=True)
    bounds = torch.arange(num_experts + 1, device=ids.device, dtype=sorted_ids.dtype)
    offsets = torch.searchsorted(sorted_ids, bounds).to(torch.int32)
    return order, offsets, sorted_ids < num_experts


def old_experts_and_combine(work, w13, w2, topk_weights, topk_ids, apply_router_weight_on_input, expert_map):
    tokens, hidden = work.shape
    top_k = topk_ids.shape[1]
    inter = w13.N // 2
    order, offsets, local = old_route(topk_ids, w13.num_experts, expert_map)
    weights = topk_weights.reshape(-1)[order].float()
    if apply_router_weight_on_input:
        work = (work.float() * topk_weights.float()).to(work.dtype)
        weights = torch.ones_like(weights)
    token_of_row = torch.div(order, top_k, rounding_mode="floor").to(torch.int32)
    h = torch.ops.awqgemm.moe_gemm(
        work, w13.qweight, w13.scales, offsets, token_of_row, w13.K, w13.N, w13.group_size, w13.layout
    )
    act = (F.silu(h[:, :inter].float()) * h[:, inter:].float()).to(work.dtype)
    y = torch.ops.awqgemm.moe_gemm(act, w2.qweight, w2.scales, offsets, None, w2.K, w2.N, w2.group_size, w2.layout)
    y = torch.where(local[:, None], y.float() * weights[:, None], 0.0)
    unsorted = torch.empty_like(y).index_copy_(0, order, y)
    return unsorted.view(tokens, top_k, hidden).sum(dim=1)


# --------------------------------------------------------------------------------------------


def experts(num, hidden, inter, dtype, group=32):
    def stack(k, n, seed):
        parts = [random_awq(k, n, group, dtype, seed=seed + e) for e in range(num)]
        return tuple(torch.stack([p[i] for p in parts]) for i in range(3))

    w13 = awqgemm.pack_awq_experts(*stack(hidden, 2 * inter, 0), group)
    w2 = awqgemm.pack_awq_experts(*stack(inter, hidden, 100), group)
    return w13, w2


def garbage_ids(tokens, top_k, high, dtype, gen):
    """Ids in [0, high) mostly, with negatives, ids past high and the dtype's extremes mixed in."""
    ids = torch.randint(0, high, (tokens, top_k), generator=gen, dtype=torch.int64)
    info = torch.iinfo(dtype)
    specials = torch.tensor([-1, -7, high, high + 3, info.min, info.max], dtype=torch.int64)
    mask = torch.rand(tokens, top_k, generator=gen) < 0.25
    pick = specials[torch.randint(0, specials.numel(), (tokens, top_k), generator=gen)]
    return torch.where(mask, pick, ids).to(dtype)


@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("with_map", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_route_equals_previous_on_any_ids(ids_dtype, with_map, seed):
    gen = torch.Generator().manual_seed(seed)
    num, n_global = 5, 9
    emap = None
    ti = garbage_ids(13, 3, n_global if with_map else num, ids_dtype, gen)
    if with_map:
        # local experts, -1, out-of-range locals and a negative other than -1 (device garbage)
        emap = torch.tensor([2, -1, 0, 7, 4, -1, 1, 3, -5], dtype=torch.int32 if seed % 2 else torch.int64)
    got, want = route(ti, num, emap), old_route(ti, num, emap)
    for g, w, name in zip(got, want, ("order", "offsets", "local"), strict=True):
        assert g.dtype == w.dtype and torch.equal(g, w), (name, g, w)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    "case", ["plain", "fp16-weights", "garbage-ids", "expert-map", "nan-weight-off-rank", "on-input"]
)
def test_experts_and_combine_bitwise_equal_to_previous(dtype, case):
    """The device path's body (work in the activation dtype, as on a GPU), on CPU tensors."""
    gen = torch.Generator().manual_seed(7)
    num, hidden, inter, tokens, top_k = 6, 64, 32, 11, 3
    w13, w2 = experts(num, hidden, inter, dtype)
    x = torch.randn(tokens, hidden, generator=gen).to(dtype)
    ti = torch.rand(tokens, num, generator=gen).topk(top_k, dim=1).indices.to(torch.int32)
    tw = torch.softmax(torch.randn(tokens, top_k, generator=gen), dim=1)
    emap, on_input = None, False
    if case == "fp16-weights":
        tw = tw.to(dtype)
    elif case == "garbage-ids":
        ti = garbage_ids(tokens, top_k, num, torch.int32, gen)
    elif case in ("expert-map", "nan-weight-off-rank"):
        emap = torch.tensor([1, -1, 0, 5, 3, -1, 2, 4, -1], dtype=torch.int64)  # 9 global, 6 local
        ti = torch.rand(tokens, 9, generator=gen).topk(top_k, dim=1).indices.to(torch.int32)
        if case == "nan-weight-off-rank":
            off = emap[ti.long()] < 0
            assert off.any()
            tw = torch.where(off, torch.tensor(float("nan")), tw)
    elif case == "on-input":
        top_k = 1
        ti, tw = ti[:, :1].contiguous(), torch.rand(tokens, 1, generator=gen) + 0.5
        on_input = True
    args = (x, w13, w2, tw, ti, on_input, emap)
    got, want = _experts_and_combine(*args), old_experts_and_combine(*args)
    assert got.dtype == want.dtype == torch.float32
    assert torch.isfinite(want).all()
    assert torch.equal(got, want), (got - want).abs().max()


# --------------------------------------------------------------------------------------------
# Launch counts


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.name().split("::")[-1].split(".")[0])
        return func(*args, **(kwargs or {}))


def device_path_ops(body, *, tokens=4, top_k=2, num=8, weights_dtype=torch.float32, expert_map=False, on_input=False):
    """The aten ops of one call of ``body`` on meta tensors shaped like a GPU call (fp16 activations
    and GEMM outputs, int32 ids), those that launch a kernel on a GPU and those that do not."""
    w13, w2 = experts(num, 64, 32, torch.float16)

    def meta(p):
        return PackedWeight(p.qweight.to("meta"), p.scales.to("meta"), p.K, p.N, p.group_size, p.layout, p.num_experts)

    w13, w2 = meta(w13), meta(w2)
    x = torch.empty(tokens, 64, dtype=torch.float16, device="meta")
    ti = torch.empty(tokens, top_k, dtype=torch.int32, device="meta")
    tw = torch.empty(tokens, top_k, dtype=weights_dtype, device="meta")
    emap = torch.empty(num + 2, dtype=torch.int32, device="meta") if expert_map else None
    log = _OpLog()
    with log:
        out = body(x, w13, w2, tw, ti, on_input, emap)
    assert out.shape == (tokens, 64)
    kernels = [op for op in log.ops if op not in NO_KERNEL]
    return kernels, log.ops


# One CUDA call of the torch path, top_k > 1, fp32 router weights, int32 ids, no expert map.
# ``sort`` is several kernels itself (fill indices, copy keys, sort; a radix sort's passes above
# 4096 rows); moe_gemm is the grouped kernel (+ a reduction when it splits K).
NEW_KERNELS = [
    "clamp",  # route: sentinel for ids out of range
    "remainder",
    "sort",
    "arange",
    "searchsorted",  # int32 offsets directly
    "lt",  # local pairs, (token, slot) order
    "where",  # router weights, 0 for pairs of no local expert
    "div",  # token of each sorted row, written as int32
    "moe_gemm",  # gate_up
    "_to_copy",  # gate in fp32
    "silu",
    "mul",  # silu(gate) * up, rounded into the activation dtype
    "moe_gemm",  # down
    "index_copy",  # rows back to (token, slot) order
    "mul",  # weigh (fp32)
    "sum",  # over k (fp32)
]


def test_device_path_launches():
    kernels, _ = device_path_ops(_experts_and_combine)
    # the final .to(x.dtype) is fused_moe's, after the body: one more kernel
    assert [k.rstrip("_") for k in kernels] == NEW_KERNELS, kernels
    old, _ = device_path_ops(old_experts_and_combine)
    assert len(old) == len(NEW_KERNELS) + 9, old


def test_device_path_launches_in_other_modes():
    new_map, _ = device_path_ops(_experts_and_combine, expert_map=True)
    old_map, _ = device_path_ops(old_experts_and_combine, expert_map=True)
    assert len(new_map) == len(NEW_KERNELS) + 4 and len(old_map) - len(new_map) == 12, (new_map, old_map)
    new_h, _ = device_path_ops(_experts_and_combine, weights_dtype=torch.float16)
    assert len(new_h) == len(NEW_KERNELS) + 1, new_h  # the fp32 copy of fp16 router weights


def test_fused_moe_adds_only_the_output_cast_on_the_device_path():
    """fused_moe = checks (no ops on a non-CPU tensor) + the body + one cast to x.dtype."""
    w13, w2 = experts(8, 64, 32, torch.float16)

    def meta(p):
        return PackedWeight(p.qweight.to("meta"), p.scales.to("meta"), p.K, p.N, p.group_size, p.layout, p.num_experts)

    w13, w2 = meta(w13), meta(w2)
    x = torch.empty(4, 64, dtype=torch.float16, device="meta")
    ti = torch.empty(4, 2, dtype=torch.int32, device="meta")
    tw = torch.empty(4, 2, dtype=torch.float32, device="meta")
    log = _OpLog()
    with log:
        awqgemm.fused_moe(x, w13, w2, tw, ti)
    kernels = [op.rstrip("_") for op in log.ops if op not in NO_KERNEL]
    assert kernels == [*NEW_KERNELS, "_to_copy"], kernels


if __name__ == "__main__":
    for label, body in (("before", old_experts_and_combine), ("after", _experts_and_combine)):
        for mode in ({}, {"expert_map": True}, {"weights_dtype": torch.float16}):
            kernels, ops = device_path_ops(body, **mode)
            print(f"{label:6s} {mode or 'default'}: {len(kernels)} launching ops (+1: fused_moe's output cast)")
            print("   ", " ".join(kernels))
