"""Mixture-of-experts: stacked expert packing, the grouped GEMM op and fused_moe.

Routing is prepared with torch ops on the device, without a host sync (a
captured CUDA graph replays it): the ``T * k`` (token, slot) pairs are sorted
by expert, stably, so expert ``e`` owns the contiguous sorted rows
``expert_offsets[e] .. expert_offsets[e + 1]``. Pairs whose expert is not
served here (expert parallel, or an id out of range) sort past the last
offset and contribute zero. The grouped GEMM ``awqgemm::moe_gemm`` reads its
input rows through an optional row index (gate_up gathers token rows straight
from ``x``: no ``[T * k, H]`` copy) and writes output rows in sorted order;
the combine un-sorts, weights and sums over ``k`` in fp32, without atomics, so
the result is deterministic.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from . import _layout, _ops
from ._ext import _C
from ._validate import (
    ACTIVATION_DTYPES,
    check_aligned_packed,
    check_awq_inputs,
    check_kernels_for,
    check_packed_tensors,
    check_tensor,
)
from .packed import PackedWeight
from .reference import dequantize_packed

ACTIVATIONS = ("silu",)


def pack_awq_experts(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int
) -> PackedWeight:
    """Packs stacked per-expert AWQ tensors once, at load.

    Args:
        qweight: int32 ``[E, K, N/8]`` (each expert in AWQ checkpoint order).
        qzeros: int32 ``[E, K/G, N/8]``.
        scales: float16 or bfloat16 ``[E, K/G, N]`` (float32 on CPU only).
        group_size: 32, 64 or 128.

    Returns a :class:`PackedWeight` whose ``qweight``/``scales`` have a leading
    ``E`` dimension and ``num_experts = E``. Tensor- or expert-parallel shards
    are packed the same way: pass the shard's slice (K split on group
    boundaries for a row-parallel shard, N on multiples of 8 for a column one,
    the local experts' rows of dim 0 for expert parallel).
    """
    for name, t in (("qweight", qweight), ("qzeros", qzeros), ("scales", scales)):
        check_tensor(name, t)
        if t.dim() != 3:
            raise ValueError(
                f"awqgemm: pack_awq_experts wants stacked experts: {name} must be 3-D [E, ...], "
                f"got shape {list(t.shape)}"
            )
    num = qweight.shape[0]
    if num == 0:
        raise ValueError("awqgemm: pack_awq_experts needs at least one expert, got E = 0")
    if qzeros.shape[0] != num or scales.shape[0] != num:
        raise ValueError(
            f"awqgemm: qweight, qzeros and scales must have the same number of experts (dim 0), got "
            f"{qweight.shape[0]}, {qzeros.shape[0]}, {scales.shape[0]}"
        )
    k_dim, n_dim = check_awq_inputs(qweight[0], qzeros[0], scales[0], group_size)
    check_kernels_for("scales", scales)
    if scales.dtype == torch.float32 and scales.device.type == "cuda":
        raise TypeError("awqgemm: float32 scales are only supported on CPU (reference path); use float16 or bfloat16")
    layout = _ops.layout_for_device(scales.device, scales.dtype)
    packed_q, packed_sz = [], []
    for e in range(num):  # per expert: temporaries stay one expert's size
        packed_q.append(_layout.pack_qweight(_layout.unpack_awq_int4(qweight[e]), layout))
        z = _layout.unpack_awq_int4(qzeros[e])
        packed_sz.append(_layout.pack_scale_zero(scales[e], z, k_dim, group_size))
    return PackedWeight(torch.stack(packed_q), torch.stack(packed_sz), k_dim, n_dim, group_size, layout, num)


def unpack_awq_experts(packed: PackedWeight) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverse of :func:`pack_awq_experts`: stacked ``(qweight, qzeros, scales)`` in checkpoint layout."""
    check_experts("packed", packed)
    parts = [_layout_unpack_one(_expert(packed, e)) for e in range(packed.num_experts)]
    return tuple(torch.stack([p[i] for p in parts]) for i in range(3))


def _layout_unpack_one(p: PackedWeight):
    q = _layout.unpack_qweight(p.qweight, p.K, p.N, p.layout)
    s, z = _layout.unpack_scale_zero(p.scales, p.K, p.N, p.group_size)
    return _layout.pack_awq_int4(q), _layout.pack_awq_int4(z.to(torch.uint8)), s.contiguous()


def _expert(packed: PackedWeight, e: int) -> PackedWeight:
    return PackedWeight(packed.qweight[e], packed.scales[e], packed.K, packed.N, packed.group_size, packed.layout)


def dequantize_experts(packed: PackedWeight) -> torch.Tensor:
    """Dense ``[E, K, N]`` weights of packed experts (tests and debugging only: E x K x N memory)."""
    check_experts("packed", packed)
    return torch.stack([dequantize_packed(_expert(packed, e)) for e in range(packed.num_experts)])


def check_experts(name: str, packed: object) -> PackedWeight:
    if not isinstance(packed, PackedWeight):
        raise TypeError(f"awqgemm: {name} must be an awqgemm.PackedWeight, got {type(packed).__name__}")
    if packed.num_experts is None:
        raise ValueError(
            f"awqgemm: {name} is a dense weight (from pack_awq); MoE needs stacked experts from pack_awq_experts"
        )
    if packed.qweight.dim() != 3 or packed.scales.dim() != 3 or packed.qweight.shape[0] != packed.num_experts:
        raise ValueError(
            f"awqgemm: {name} claims {packed.num_experts} experts but its tensors have shapes "
            f"{list(packed.qweight.shape)}, {list(packed.scales.shape)}"
        )
    if packed.layout not in _layout.LAYOUTS:
        raise ValueError(f"awqgemm: unknown packed layout {packed.layout}")
    check_packed_tensors(
        name, packed.qweight, packed.scales, packed.K, packed.N, packed.group_size, experts=packed.num_experts
    )
    return packed


# --------------------------------------------------------------------------------------------
# The grouped GEMM custom op.

_lib = torch.library.Library("awqgemm", "FRAGMENT")
_lib.define(
    "moe_gemm(Tensor x, Tensor qweight, Tensor scales, Tensor expert_offsets, Tensor? row_index, "
    "int K, int N, int group_size, int layout) -> Tensor"
)


def _rows(x, row_index):
    return x.shape[0] if row_index is None else row_index.shape[0]


def _moe_gemm_cpu(x, qweight, scales, expert_offsets, row_index, K, N, group_size, layout):
    rows = _rows(x, row_index)
    num = qweight.shape[0]
    out = torch.zeros((rows, N), dtype=torch.float32)
    offs = expert_offsets.tolist()
    src = x if row_index is None else x[row_index.long()]
    for e in range(num):
        lo, hi = offs[e], offs[e + 1]
        if hi > lo:
            w = dequantize_packed(PackedWeight(qweight[e], scales[e], K, N, group_size, layout)).float()
            out[lo:hi] = src[lo:hi].float() @ w
    return out.to(x.dtype)


def _moe_gemm_cuda(x, qweight, scales, expert_offsets, row_index, K, N, group_size, layout):
    if _C is None:
        raise RuntimeError("awqgemm: this build has no CUDA kernels; run on CPU tensors or install a CUDA build")
    rows = _rows(x, row_index)
    num = qweight.shape[0]
    if rows == 0:
        return x.new_empty((0, N))
    if _ops.state.path == "reference":
        return _moe_gemm_cpu_like(x, qweight, scales, expert_offsets, row_index, K, N, group_size, layout)
    check_aligned_packed("experts", "qweight", qweight)
    check_aligned_packed("experts", "scales", scales)
    if not x.is_contiguous() or x.data_ptr() % 16 != 0:
        x = x.contiguous() if not x.is_contiguous() else x.clone()
    device = _ops.device_index(x.device)
    stream = torch.cuda.current_stream(x.device).cuda_stream
    dtype_code = _ops._DTYPE_CODE[x.dtype]
    code, family, family_layout, ws_bytes = _C.plan_grouped(
        _ops.state.family, dtype_code, rows, num, N, K, device, _ops.state.wip
    )
    if family_layout != layout:
        raise ValueError(
            f"awqgemm: the experts were packed in layout {layout} but kernel family sm{family} reads layout "
            f"{family_layout}; pack them (awqgemm.pack_awq_experts) on the device and settings that run them"
        )
    out = torch.empty((rows, N), dtype=x.dtype, device=x.device)
    ws = torch.empty((ws_bytes + 3) // 4, dtype=torch.float32, device=x.device) if ws_bytes else None
    _C.gemm_grouped(
        code,
        dtype_code,
        rows,
        N,
        K,
        group_size,
        num,
        x.data_ptr(),
        x.shape[0],
        K,
        0 if row_index is None else row_index.data_ptr(),
        expert_offsets.data_ptr(),
        qweight.data_ptr(),
        qweight.stride(0),
        scales.data_ptr(),
        scales.stride(0),
        out.data_ptr(),
        N,
        0 if ws is None else ws.data_ptr(),
        ws_bytes,
        device,
        stream,
    )
    return out


def _moe_gemm_cpu_like(x, qweight, scales, expert_offsets, row_index, K, N, group_size, layout):
    # The forced "reference" path on a GPU: the CPU algorithm on the device, without a sync
    # per expert (masks instead of offsets read back), for tests only.
    rows = _rows(x, row_index)
    src = x if row_index is None else x[row_index.long()]
    r = torch.arange(rows, device=x.device)
    out = torch.zeros((rows, N), dtype=torch.float32, device=x.device)
    for e in range(qweight.shape[0]):
        w = dequantize_packed(PackedWeight(qweight[e], scales[e], K, N, group_size, layout)).float()
        mask = (r >= expert_offsets[e]) & (r < expert_offsets[e + 1])
        out += torch.where(mask[:, None], src.float() @ w, 0.0)
    return out.to(x.dtype)


def _moe_gemm_fake(x, qweight, scales, expert_offsets, row_index, K, N, group_size, layout):
    return x.new_empty((_rows(x, row_index), N))


_lib.impl("moe_gemm", _moe_gemm_cpu, "CPU")
_lib.impl("moe_gemm", _moe_gemm_cuda, "CUDA")
torch.library.register_fake("awqgemm::moe_gemm", _moe_gemm_fake, lib=_lib)


def _check_index(name: str, t: object, device: torch.device, length: int | None = None) -> torch.Tensor:
    check_tensor(name, t)
    if t.dtype != torch.int32:
        raise TypeError(f"awqgemm: {name} must be int32, got {t.dtype}")
    if t.dim() != 1 or (length is not None and t.shape[0] != length):
        want = f"[{length}]" if length is not None else "1-D"
        raise ValueError(f"awqgemm: {name} must have shape {want}, got {list(t.shape)}")
    if t.device != device:
        raise ValueError(f"awqgemm: {name} is on {t.device} but x is on {device}")
    return t.contiguous()


def _check_activations(x: object, packed: PackedWeight, what: str) -> torch.Tensor:
    check_tensor("x", x)
    check_kernels_for("x", x)
    allowed = ACTIVATION_DTYPES if x.device.type == "cuda" else (*ACTIVATION_DTYPES, torch.float32)
    if x.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"awqgemm: x must be {names} on {x.device.type}, got {x.dtype}")
    if x.device.type == "cuda" and x.dtype != packed.dtype:
        raise TypeError(
            f"awqgemm: x is {x.dtype} but {what} was packed with {packed.dtype} scales; "
            "pack with scales in the activation dtype"
        )
    if x.device != packed.qweight.device or x.device != packed.scales.device:
        raise ValueError(f"awqgemm: x is on {x.device} but {what} is on {packed.qweight.device}; move one of them")
    return x


def moe_gemm(
    x: torch.Tensor,
    experts: PackedWeight,
    expert_offsets: torch.Tensor,
    row_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """The grouped GEMM over stacked experts: ``out[r] = x[row_index[r]] @ W[e]`` for
    ``expert_offsets[e] <= r < expert_offsets[e + 1]``.

    Args:
        x: ``[T, K]`` activations.
        experts: stacked experts from :func:`pack_awq_experts` (``E`` of them).
        expert_offsets: int32 ``[E + 1]``, non-decreasing, ``expert_offsets[0] = 0``.
        row_index: int32 ``[R]``: the row of ``x`` each output row reads (gather); ``None``
            means row ``r`` of ``x`` (then ``R = T``).

    Returns ``[R, N]`` in ``x.dtype``; rows from ``expert_offsets[E]`` on are zero. The
    offsets and indices are not read back on a GPU (no sync): there, values out of
    range cannot raise, but the kernel clamps them, so they never read or write
    out of bounds. On CPU they are checked.
    """
    check_experts("experts", experts)
    x = _check_activations(x, experts, "experts")
    if x.dim() != 2 or x.shape[1] != experts.K:
        raise ValueError(f"awqgemm: x must have shape [T, K={experts.K}], got {list(x.shape)}")
    offsets = _check_index("expert_offsets", expert_offsets, x.device, experts.num_experts + 1)
    rows = x.shape[0]
    if row_index is not None:
        row_index = _check_index("row_index", row_index, x.device)
        rows = row_index.shape[0]
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        offs = offsets.tolist()
        if offs[0] != 0 or any(b < a for a, b in itertools.pairwise(offs)) or offs[-1] > rows:
            raise ValueError(
                f"awqgemm: expert_offsets must start at 0, not decrease and end at most at R = {rows}, got {offs}"
            )
        if row_index is not None and rows and (int(row_index.min()) < 0 or int(row_index.max()) >= x.shape[0]):
            raise ValueError(f"awqgemm: row_index values must be in [0, {x.shape[0]}) (rows of x)")
    return torch.ops.awqgemm.moe_gemm(
        x, experts.qweight, experts.scales, offsets, row_index, experts.K, experts.N, experts.group_size, experts.layout
    )


# --------------------------------------------------------------------------------------------
# fused_moe


def _sort_key(topk_ids: torch.Tensor, num_experts: int, expert_map: torch.Tensor | None) -> torch.Tensor:
    """Flat ``[T * k]`` sort keys: the local expert of each (token, slot) pair, or ``num_experts``
    for pairs of no local expert (ids out of range, or mapped to -1 / out of range by ``expert_map``).
    Keeps the ids' dtype (int32 from vLLM's router: no cast, and half the radix-sort passes of int64)."""
    ids = topk_ids.reshape(-1)
    if expert_map is not None:
        safe = ids.clamp(0, expert_map.shape[0] - 1)
        ids = torch.where(ids == safe, expert_map[safe], -1)  # global ids out of range -> -1
    # x < 0 -> -1 -> E, x >= E -> E, else x: two elementwise ops for the sentinel.
    return ids.clamp(-1, num_experts).remainder(num_experts + 1)


def _sort_pairs(key: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    sorted_key, order = torch.sort(key, stable=True)
    bounds = torch.arange(num_experts + 1, device=key.device, dtype=key.dtype)
    offsets = torch.searchsorted(sorted_key, bounds, out_int32=True)
    return sorted_key, order, offsets


def route(
    topk_ids: torch.Tensor, num_experts: int, expert_map: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorts the ``T * k`` (token, slot) pairs by local expert, on the device, without a sync.

    Returns ``(order, expert_offsets, local)``: ``order[r]`` is the flat (token * k + slot)
    index of sorted row ``r``; ``expert_offsets`` int32 ``[E + 1]``; ``local[r]`` whether
    sorted row ``r`` belongs to a local expert (the rest sort past ``expert_offsets[E]``).
    """
    sorted_key, order, offsets = _sort_pairs(_sort_key(topk_ids, num_experts, expert_map), num_experts)
    return order, offsets, sorted_key < num_experts


def fused_moe(
    x: torch.Tensor,
    w13: PackedWeight,
    w2: PackedWeight,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    activation: str = "silu",
    apply_router_weight_on_input: bool = False,
    expert_map: torch.Tensor | None = None,
) -> torch.Tensor:
    """An AWQ mixture-of-experts MLP: ``sum_j w_j * down_e(silu(gate_e(x)) * up_e(x))``, ``e = topk_ids[t, j]``.

    Args:
        x: ``[T, H]`` activations (float16/bfloat16; float32 too on CPU).
        w13: experts from :func:`pack_awq_experts` with ``K = H``, ``N = 2I``: columns
            ``0..I-1`` are gate, ``I..2I-1`` up (vLLM's w13 order).
        w2: experts with ``K = I``, ``N = H``; the same number of experts as ``w13``.
        topk_weights: ``[T, k]`` router weights (float32 or ``x.dtype``).
        topk_ids: ``[T, k]`` int32/int64 expert ids (global ids when ``expert_map`` is given).
        activation: ``"silu"``.
        apply_router_weight_on_input: scale ``x`` by the router weight before the experts
            instead of their outputs (vLLM's option; needs ``k = 1``).
        expert_map: int ``[E_global]``, global id -> local expert index or -1 (expert
            parallel): pairs routed to experts not held here contribute zero.

    Returns ``[T, H]`` in ``x.dtype``. The top-k weighting and the sum over ``k`` happen here
    (fp32, deterministic), so the result is the layer's output, not per-slot rows.
    CPU tensors run the reference path in fp32; CUDA tensors the grouped kernels. Ids out of
    range contribute zero (CPU raises instead: there they can be checked without a sync).
    """
    check_experts("w13", w13)
    check_experts("w2", w2)
    x = _check_activations(x, w13, "w13")
    _check_activations(x, w2, "w2")
    if x.dim() != 2:
        raise ValueError(f"awqgemm: x must be 2-D [T, H], got shape {list(x.shape)}")
    if w13.num_experts != w2.num_experts:
        raise ValueError(f"awqgemm: w13 has {w13.num_experts} experts but w2 has {w2.num_experts}")
    if w13.N % 2:
        raise ValueError(f"awqgemm: w13 must have N = 2 * intermediate (gate then up), got N = {w13.N}")
    inter = w13.N // 2
    if x.shape[1] != w13.K:
        raise ValueError(f"awqgemm: x has hidden size {x.shape[1]} but w13 has K = {w13.K}")
    if inter != w2.K or w2.N != w13.K:
        raise ValueError(
            f"awqgemm: w2 must be [K = I = {inter}, N = H = {w13.K}] to match w13, got K = {w2.K}, N = {w2.N}"
        )
    if activation not in ACTIVATIONS:
        raise ValueError(f"awqgemm: activation {activation!r} is not supported; supported: {list(ACTIVATIONS)}")
    check_tensor("topk_ids", topk_ids)
    check_tensor("topk_weights", topk_weights)
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"awqgemm: topk_ids must be int32 or int64, got {topk_ids.dtype}")
    if topk_weights.dtype not in (torch.float32, x.dtype):
        raise TypeError(f"awqgemm: topk_weights must be float32 or {x.dtype} (x's dtype), got {topk_weights.dtype}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != x.shape[0] or topk_ids.shape[1] < 1:
        raise ValueError(f"awqgemm: topk_ids must have shape [T = {x.shape[0]}, k >= 1], got {list(topk_ids.shape)}")
    if topk_weights.shape != topk_ids.shape:
        raise ValueError(
            f"awqgemm: topk_weights must have topk_ids' shape {list(topk_ids.shape)}, got {list(topk_weights.shape)}"
        )
    for name, t in (("topk_ids", topk_ids), ("topk_weights", topk_weights)):
        if t.device != x.device:
            raise ValueError(f"awqgemm: {name} is on {t.device} but x is on {x.device}")
    top_k = topk_ids.shape[1]
    if apply_router_weight_on_input and top_k != 1:
        raise ValueError(f"awqgemm: apply_router_weight_on_input needs top-k = 1, got k = {top_k}")
    num_global = w13.num_experts
    if expert_map is not None:
        check_tensor("expert_map", expert_map)
        if expert_map.dtype not in (torch.int32, torch.int64) or expert_map.dim() != 1:
            raise TypeError(
                f"awqgemm: expert_map must be a 1-D int32/int64 tensor, got {expert_map.dtype} {list(expert_map.shape)}"
            )
        if expert_map.device != x.device:
            raise ValueError(f"awqgemm: expert_map is on {expert_map.device} but x is on {x.device}")
        if expert_map.shape[0] == 0:
            raise ValueError("awqgemm: expert_map is empty: it needs one entry (local index or -1) per global expert")
        num_global = expert_map.shape[0]
    # Value checks read the tensors back: eager CPU only (a compiled graph cannot branch on them).
    if x.device.type == "cpu" and topk_ids.numel() and not torch.compiler.is_compiling():
        lo, hi = int(topk_ids.min()), int(topk_ids.max())
        if lo < 0 or hi >= num_global:
            raise ValueError(f"awqgemm: topk_ids must be in [0, {num_global}), got values in [{lo}, {hi}]")
        if expert_map is not None and expert_map.numel():
            lo, hi = int(expert_map.min()), int(expert_map.max())
            if lo < -1 or hi >= w13.num_experts:
                raise ValueError(
                    f"awqgemm: expert_map values must be -1 or a local expert in [0, {w13.num_experts}), "
                    f"got values in [{lo}, {hi}]"
                )
    tokens, hidden = x.shape
    if tokens == 0:
        return x.new_zeros((0, hidden))

    # CPU: the same routing and grouped op, with fp32 activations between the steps.
    work = x.float() if x.device.type == "cpu" else x
    return _experts_and_combine(work, w13, w2, topk_weights, topk_ids, apply_router_weight_on_input, expert_map).to(
        x.dtype
    )


def _experts_and_combine(work, w13, w2, topk_weights, topk_ids, apply_router_weight_on_input, expert_map):
    """fused_moe after its checks, on activations ``work``; returns fp32 ``[T, H]`` (``work.dtype``
    on the routing-kernel path: the fp32 sum rounded once, as fused_moe's ``.to()`` would).

    Each line is one elementwise/reduction op (one kernel on a GPU) unless noted; views are free.
    Rounding is the same as computing every step in fp32 and rounding the activation and the
    outputs of the GEMMs to ``work.dtype``: mixed-dtype products promote to fp32, and an fp32
    result written into a ``work.dtype`` ``out=`` tensor is rounded once, as ``.to()`` would."""
    tokens, hidden = work.shape
    top_k = topk_ids.shape[1]
    num = w13.num_experts
    kernels = work.is_cuda and _ops.state.moe_routing_kernels
    if kernels:
        return _experts_and_combine_kernels(
            work, w13, w2, topk_weights, topk_ids, apply_router_weight_on_input, expert_map
        )
    key = _sort_key(topk_ids, num, expert_map)  # 2 ops (+4 with an expert map)
    _, order, offsets = _sort_pairs(key, num)  # sort (a few kernels), arange, searchsorted
    rows = order.shape[0]
    # Router weights in (token, slot) order; pairs of no local expert weigh 0 (their down rows are
    # zero; the select keeps a NaN/inf weight of theirs out).
    local = key.view(tokens, top_k) < num
    if apply_router_weight_on_input:  # k = 1: scale x, and weigh the outputs by 1 (or 0)
        scaled = torch.empty_like(work)
        work = torch.mul(work, topk_weights.float(), out=scaled)
        weights = local.float()
    else:
        weights = torch.where(local, topk_weights.float(), 0.0)
    token_of_row = torch.empty(rows, dtype=torch.int32, device=work.device)
    torch.div(order, top_k, rounding_mode="floor", out=token_of_row)
    h = torch.ops.awqgemm.moe_gemm(
        work, w13.qweight, w13.scales, offsets, token_of_row, w13.K, w13.N, w13.group_size, w13.layout
    )
    act = silu_mul_torch(h)
    y = torch.ops.awqgemm.moe_gemm(act, w2.qweight, w2.scales, offsets, None, w2.K, w2.N, w2.group_size, w2.layout)
    # Combine: rows back to (token, slot) order (rows of no local expert are zero), weigh in fp32,
    # sum over k in fp32 in slot order: no atomics, deterministic.
    unsorted = torch.empty_like(y).index_copy_(0, order, y)
    return torch.mul(unsorted.view(tokens, top_k, hidden), weights[:, :, None]).sum(dim=1)


# --------------------------------------------------------------------------------------------
# fused_moe's routing, activation and combine as three CUDA kernels (moe_routing.cu; the torch
# path above runs on the CPU and in tests under testing.force(moe_routing_kernels=False); above
# the routing kernel's limits only its sort falls back to torch ops, inside moe_route), each
# giving bit for bit what the torch path gives.
# Custom ops with fake impls, so torch.compile(fullgraph=True) sees opaque calls; their CPU
# impls are the torch path's own expressions (tests of the glue).

_IDS_CODE = {torch.int32: 0, torch.int64: 1}
_WEIGHTS_CODE = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}
# The routing kernel sorts up to one 1024-pair tile in one block and launch; above, a counting
# launch and the sort spread the tiles over up to 128 blocks (moe_routing.cu), so its time no
# longer grows with T * k on one SM (the one-block kernel took 45 us at 8,192 pairs and 165 at
# 32,768 on the H200, past torch's sort at ~13,000). The activation and combine kernels run at
# any size (the torch combine's gather, fp32 product and sum were ~500 us of a Qwen3 T = 4096
# layer). Past the kernel's limits below, moe_route sorts with torch ops (same results).
ROUTE_KERNEL_MAX_PAIRS = 1 << 30
# Each block's shared memory holds a byte per (expert, warp): kMaxRouteExperts in moe_routing.h.
ROUTE_KERNEL_MAX_EXPERTS = 1024


def route_kernel_fits(pairs: int, num_experts: int) -> bool:
    """Whether ``moe_route`` on a GPU sorts ``pairs`` = T * k pairs with its kernel (else torch ops)."""
    return pairs <= ROUTE_KERNEL_MAX_PAIRS and num_experts <= ROUTE_KERNEL_MAX_EXPERTS


_lib.define(
    "moe_route(Tensor topk_ids, Tensor topk_weights, Tensor? expert_map, int num_experts, "
    "bool weights_on_input) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)
_lib.define("moe_silu_mul(Tensor h) -> Tensor")
_lib.define("moe_combine(Tensor y, Tensor pos, Tensor weights, bool fp32_out) -> Tensor")


def route_torch(topk_ids, topk_weights, expert_map, num_experts, weights_on_input):
    """The routing outputs of the torch path, plus the inverse permutation ``pos``: ``(order``
    int64 ``[T*k]``, ``offsets`` int32 ``[E+1]``, ``token_of_row`` int32 ``[T*k]``, ``pos`` int32
    ``[T, k]``, ``weights`` fp32 ``[T, k]``); what ``awqgemm::moe_route`` must equal bit for bit."""
    tokens, top_k = topk_ids.shape
    key = _sort_key(topk_ids, num_experts, expert_map)
    _, order, offsets = _sort_pairs(key, num_experts)
    local = key.view(tokens, top_k) < num_experts
    weights = local.float() if weights_on_input else torch.where(local, topk_weights.float(), 0.0)
    token_of_row = torch.div(order, top_k, rounding_mode="floor").to(torch.int32)
    rows = order.shape[0]
    ramp = torch.arange(rows, dtype=torch.int32, device=order.device)
    pos = torch.empty(rows, dtype=torch.int32, device=order.device).index_copy_(0, order, ramp)
    return order, offsets, token_of_row, pos.view(tokens, top_k), weights


def _check_same_device(what: str, *tensors: torch.Tensor) -> None:
    dev = tensors[0].device
    for t in tensors[1:]:
        if t.device != dev:
            raise ValueError(f"awqgemm: {what}: tensors on {dev} and {t.device}; put them on one device")


def _check_route_args(topk_ids, topk_weights, expert_map, num_experts):
    if topk_ids.dtype not in _IDS_CODE or topk_ids.dim() != 2:
        raise TypeError(
            f"awqgemm: moe_route: topk_ids must be 2-D int32/int64, got {topk_ids.dtype} {list(topk_ids.shape)}"
        )
    if topk_weights.dtype not in _WEIGHTS_CODE or topk_weights.shape != topk_ids.shape:
        raise TypeError(
            f"awqgemm: moe_route: topk_weights must be float16/bfloat16/float32 of shape {list(topk_ids.shape)}, "
            f"got {topk_weights.dtype} {list(topk_weights.shape)}"
        )
    if expert_map is not None and (expert_map.dtype not in _IDS_CODE or expert_map.dim() != 1):
        raise TypeError(
            f"awqgemm: moe_route: expert_map must be 1-D int32/int64, got {expert_map.dtype} {list(expert_map.shape)}"
        )
    if expert_map is not None and expert_map.shape[0] == 0:
        # (On the GPU an empty map's data pointer is null, which the kernel would read as "no map".)
        raise ValueError("awqgemm: moe_route: expert_map is empty: it needs one entry per global expert")
    if isinstance(num_experts, bool) or num_experts < 1:
        raise ValueError(f"awqgemm: moe_route: num_experts must be >= 1, got {num_experts}")
    _check_same_device("moe_route", topk_ids, topk_weights, *(() if expert_map is None else (expert_map,)))


def _moe_route_cpu(topk_ids, topk_weights, expert_map, num_experts, weights_on_input):
    _check_route_args(topk_ids, topk_weights, expert_map, num_experts)
    return route_torch(topk_ids, topk_weights, expert_map, num_experts, weights_on_input)


def _moe_route_cuda(topk_ids, topk_weights, expert_map, num_experts, weights_on_input):
    _check_route_args(topk_ids, topk_weights, expert_map, num_experts)
    if _C is None or not route_kernel_fits(topk_ids.numel(), num_experts):
        return route_torch(topk_ids, topk_weights, expert_map, num_experts, weights_on_input)
    return route_with_kernel(topk_ids, topk_weights, expert_map, num_experts, weights_on_input)


def route_with_kernel(topk_ids, topk_weights, expert_map, num_experts, weights_on_input):
    """``moe_route``'s outputs from the routing kernels (checked arguments on a GPU; ``benchmarks/moe.py``
    times it against ``route_torch``)."""
    tokens, top_k = topk_ids.shape
    rows = tokens * top_k
    ids, tw = topk_ids.contiguous(), topk_weights.contiguous()
    emap = None if expert_map is None else expert_map.contiguous()
    dev = ids.device
    order = torch.empty(rows, dtype=torch.int64, device=dev)
    offsets = torch.empty(num_experts + 1, dtype=torch.int32, device=dev)
    token_of_row = torch.empty(rows, dtype=torch.int32, device=dev)
    pos = torch.empty((tokens, top_k), dtype=torch.int32, device=dev)
    weights = torch.empty((tokens, top_k), dtype=torch.float32, device=dev)
    # Per-block key counts when several blocks share the sort (a few KB, from torch's allocator).
    scratch = torch.empty(_C.route_scratch_ints(rows, num_experts), dtype=torch.int32, device=dev)
    _C.moe_route(
        ids.data_ptr(),
        _IDS_CODE[ids.dtype],
        tw.data_ptr(),
        _WEIGHTS_CODE[tw.dtype],
        weights_on_input,
        0 if emap is None else emap.data_ptr(),
        0 if emap is None else _IDS_CODE[emap.dtype],
        0 if emap is None else emap.shape[0],
        rows,
        top_k,
        num_experts,
        order.data_ptr(),
        offsets.data_ptr(),
        token_of_row.data_ptr(),
        pos.data_ptr(),
        weights.data_ptr(),
        scratch.data_ptr() if scratch.numel() else 0,
        _ops.device_index(dev),
        torch.cuda.current_stream(dev).cuda_stream,
    )
    return order, offsets, token_of_row, pos, weights


def _moe_route_fake(topk_ids, topk_weights, expert_map, num_experts, weights_on_input):
    tokens, top_k = topk_ids.shape
    rows = tokens * top_k
    new = topk_ids.new_empty
    return (
        new(rows, dtype=torch.int64),
        new(num_experts + 1, dtype=torch.int32),
        new(rows, dtype=torch.int32),
        new((tokens, top_k), dtype=torch.int32),
        new((tokens, top_k), dtype=torch.float32),
    )


def _check_silu_mul_args(h):
    if h.dim() != 2 or h.shape[1] % 2 or h.shape[1] == 0:
        raise ValueError(f"awqgemm: moe_silu_mul: h must be [R, 2 * inter] with inter >= 1, got {list(h.shape)}")


def silu_mul_torch(h: torch.Tensor) -> torch.Tensor:
    """The torch path's activation (what ``awqgemm::moe_silu_mul`` must equal bit for bit): silu of
    an fp32 copy of gate (2 ops), times up in fp32, rounded once into ``h.dtype`` through ``out=``."""
    inter = h.shape[1] // 2
    act = torch.empty((h.shape[0], inter), dtype=h.dtype, device=h.device)
    return torch.mul(F.silu(h[:, :inter].float()), h[:, inter:], out=act)


def _moe_silu_mul_cpu(h):
    _check_silu_mul_args(h)
    return silu_mul_torch(h)


def _moe_silu_mul_cuda(h):
    _check_silu_mul_args(h)
    if h.dtype not in _ops._DTYPE_CODE:
        raise TypeError(f"awqgemm: moe_silu_mul: h must be float16 or bfloat16 on cuda, got {h.dtype}")
    if _C is None:
        return silu_mul_torch(h)
    h = h.contiguous()
    rows, inter = h.shape[0], h.shape[1] // 2
    act = torch.empty((rows, inter), dtype=h.dtype, device=h.device)
    if rows:
        _C.moe_silu_mul(
            _ops._DTYPE_CODE[h.dtype],
            rows,
            inter,
            h.data_ptr(),
            act.data_ptr(),
            _ops.device_index(h.device),
            torch.cuda.current_stream(h.device).cuda_stream,
        )
    return act


def _moe_silu_mul_fake(h):
    return h.new_empty((h.shape[0], h.shape[1] // 2))


def _check_combine_args(y, pos, weights):
    if y.dim() != 2 or pos.dim() != 2 or pos.dtype != torch.int32:
        raise TypeError(
            f"awqgemm: moe_combine: y must be [R, H] and pos int32 [T, k], got {list(y.shape)} and "
            f"{pos.dtype} {list(pos.shape)}"
        )
    if weights.dtype != torch.float32 or weights.shape != pos.shape:
        raise TypeError(
            f"awqgemm: moe_combine: weights must be float32 {list(pos.shape)}, "
            f"got {weights.dtype} {list(weights.shape)}"
        )
    if y.shape[0] != pos.numel():
        raise ValueError(f"awqgemm: moe_combine: y has {y.shape[0]} rows but pos has {pos.numel()} pairs")
    _check_same_device("moe_combine", y, pos, weights)


def combine_torch(y: torch.Tensor, pos: torch.Tensor, weights: torch.Tensor, fp32_out: bool) -> torch.Tensor:
    """The torch path's combine (+ fused_moe's cast unless ``fp32_out``), through ``pos`` instead
    of ``order``: what ``awqgemm::moe_combine`` must equal bit for bit (for k < 16)."""
    tokens, top_k = pos.shape
    unsorted = y[pos.reshape(-1).long()]  # the same rows index_copy_ puts back through order
    out = torch.mul(unsorted.view(tokens, top_k, y.shape[1]), weights[:, :, None]).sum(dim=1)
    return out if fp32_out else out.to(y.dtype)


def _moe_combine_cpu(y, pos, weights, fp32_out):
    _check_combine_args(y, pos, weights)
    return combine_torch(y, pos, weights, fp32_out)


def _moe_combine_cuda(y, pos, weights, fp32_out):
    _check_combine_args(y, pos, weights)
    if y.dtype not in _ops._DTYPE_CODE:
        raise TypeError(f"awqgemm: moe_combine: y must be float16 or bfloat16 on cuda, got {y.dtype}")
    if _C is None:
        return combine_torch(y, pos, weights, fp32_out)
    tokens, top_k = pos.shape
    hidden = y.shape[1]
    y, pos, weights = y.contiguous(), pos.contiguous(), weights.contiguous()
    out = torch.empty((tokens, hidden), dtype=torch.float32 if fp32_out else y.dtype, device=y.device)
    if tokens and hidden:
        _C.moe_combine(
            _ops._DTYPE_CODE[y.dtype],
            fp32_out,
            y.data_ptr(),
            y.shape[0],
            pos.data_ptr(),
            weights.data_ptr(),
            tokens,
            top_k,
            hidden,
            out.data_ptr(),
            _ops.device_index(y.device),
            torch.cuda.current_stream(y.device).cuda_stream,
        )
    return out


def _moe_combine_fake(y, pos, weights, fp32_out):
    return y.new_empty((pos.shape[0], y.shape[1]), dtype=torch.float32 if fp32_out else y.dtype)


for _name, _cpu, _cuda, _fake in (
    ("moe_route", _moe_route_cpu, _moe_route_cuda, _moe_route_fake),
    ("moe_silu_mul", _moe_silu_mul_cpu, _moe_silu_mul_cuda, _moe_silu_mul_fake),
    ("moe_combine", _moe_combine_cpu, _moe_combine_cuda, _moe_combine_fake),
):
    _lib.impl(_name, _cpu, "CPU")
    _lib.impl(_name, _cuda, "CUDA")
    torch.library.register_fake(f"awqgemm::{_name}", _fake, lib=_lib)


def _experts_and_combine_kernels(work, w13, w2, topk_weights, topk_ids, apply_router_weight_on_input, expert_map):
    """_experts_and_combine with the routing, activation and combine kernels: route, the two
    GEMMs, silu-mul, combine (five launches; six with the router weight on the input). Returns
    ``[T, H]`` in ``work.dtype``: the combine rounds the fp32 sum itself, as ``.to()`` would."""
    _, offsets, token_of_row, pos, weights = torch.ops.awqgemm.moe_route(
        topk_ids, topk_weights, expert_map, w13.num_experts, apply_router_weight_on_input
    )
    if apply_router_weight_on_input:  # k = 1: scale x (the torch path's op); weights are 1 or 0
        scaled = torch.empty_like(work)
        work = torch.mul(work, topk_weights.float(), out=scaled)
    h = torch.ops.awqgemm.moe_gemm(
        work, w13.qweight, w13.scales, offsets, token_of_row, w13.K, w13.N, w13.group_size, w13.layout
    )
    act = torch.ops.awqgemm.moe_silu_mul(h)
    y = torch.ops.awqgemm.moe_gemm(act, w2.qweight, w2.scales, offsets, None, w2.K, w2.N, w2.group_size, w2.layout)
    return torch.ops.awqgemm.moe_combine(y, pos, weights, False)


def grouped_plan_info(
    rows: int, num_experts: int, N: int, K: int, dtype: torch.dtype = torch.float16, device="cuda"
) -> dict:
    """The dispatcher's plan for a grouped GEMM of ``rows`` (= tokens x top-k) over
    ``num_experts`` experts of ``[K, N]``: family, kernel, tokens per tile, K splits,
    workspace bytes (benchmarks and tests; :func:`moe_gemm` makes the same plan)."""
    for name, v in (("rows", rows), ("num_experts", num_experts), ("N", N), ("K", K)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"awqgemm: {name} must be a positive int, got {v!r}")
    if dtype not in ACTIVATION_DTYPES:
        raise TypeError(f"awqgemm: dtype must be float16 or bfloat16, got {dtype}")
    device = torch.device(device)
    if device.type != "cuda" or _C is None or _ops.state.path == "reference":
        return {"family": None, "kernel": "reference", "workspace_bytes": 0}
    index = _ops.device_index(device)
    code, family, _, ws = _C.plan_grouped(
        _ops.state.family,
        _ops._DTYPE_CODE[dtype],
        rows,
        num_experts,
        N,
        K,
        index,
        _ops.state.wip,
    )
    return {"family": f"sm{family}", "workspace_bytes": ws, **_C.describe_plan(code)}
