"""Weight layouts: the AWQ checkpoint format and awqgemm's packed layouts.

This module is the only place that knows how nibbles are arranged. The CUDA
kernels read the packed layouts described in ``csrc/awqgemm/packed_layout.h``;
the functions here build them with plain torch ops, on whatever device the
checkpoint tensors live on, so repacking needs no extra kernel and allocates
only through torch.

Packed layout, per 16 (n) x 64 (k) tile, lane ``l`` of 32, word ``s`` of 4,
nibble ``p`` of 8; ``i = p % 4`` is the A-operand register the nibble feeds and
``hi = p // 4`` its half:

* layout 1 (sm75/sm80, m16n8k16 fragments):
  ``n = 16 nt + l // 4 + 8 (i % 2)``, ``k = 64 kt + 16 (l % 4) + 4 s + hi + 2 (i // 2)``
* layout 2 (sm70, m8n8k4 quad pairs):
  ``n = 16 nt + l % 4 + 4 (l // 16) + 8 (i // 2)``, ``k = 64 kt + 16 ((l // 4) % 4) + 4 s + hi + 2 (i % 2)``

``scale_zero`` holds, per group and column, the pair ``(scale, zero + magic)``
in the activation dtype, ordered ``[group][n // 16][row r][half h]`` with
``n = 16 nt + r + 8 h``; magic is 1024 for fp16, 128 for bf16 (0 for the fp32
reference-only case), the bias of the kernels' int4 -> float conversion.
"""

from __future__ import annotations

import torch

TILE_N = 16
TILE_K = 64
LAYOUT_TC16X64 = 1  # sm75 / sm80 families
LAYOUT_VOLTA884 = 2  # sm70 family
LAYOUTS = (LAYOUT_TC16X64, LAYOUT_VOLTA884)

# AWQ stores column j of each 8 in nibble AWQ_ORDER[j] of an int32.
AWQ_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
_AWQ_SHIFTS = tuple(4 * o for o in AWQ_ORDER)

MAGIC = {torch.float16: 1024.0, torch.bfloat16: 128.0, torch.float32: 0.0}


def round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


def packed_shapes(k_dim: int, n_dim: int, group_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The shapes :func:`pack_qweight` and :func:`pack_scale_zero` give a [K, N] layer: qweight
    ``[N_pad / 16, K_pad / 64 * 128]`` and scale_zero ``[G_pad, N_pad * 2]``."""
    k_pad, n_pad = round_up(k_dim, TILE_K), round_up(n_dim, TILE_N)
    return (n_pad // TILE_N, k_pad // TILE_K * 128), (-(-k_pad // group_size), n_pad * 2)


def unpack_awq_int4(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C/8] in AWQ nibble order -> uint8 [R, C] in column order."""
    shifts = torch.tensor(_AWQ_SHIFTS, dtype=torch.int32, device=packed.device)
    vals = (packed.unsqueeze(-1) >> shifts) & 0xF
    return vals.to(torch.uint8).reshape(packed.shape[0], packed.shape[1] * 8)


def pack_awq_int4(values: torch.Tensor) -> torch.Tensor:
    """uint8/int [R, C] values in 0..15 -> int32 [R, C/8] in AWQ nibble order."""
    r, c = values.shape
    v = values.to(torch.int32).reshape(r, c // 8, 8)
    out = torch.zeros(r, c // 8, dtype=torch.int32, device=values.device)
    for j, shift in enumerate(_AWQ_SHIFTS):
        out |= v[:, :, j] << shift
    return out


def _lane_maps(layout: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For every (lane, word, nibble) of a tile: its n and k offsets in the tile."""
    lane = torch.arange(32, device=device).view(32, 1, 1)
    s = torch.arange(4, device=device).view(1, 4, 1)
    p = torch.arange(8, device=device).view(1, 1, 8)
    i, hi = p % 4, p // 4
    if layout == LAYOUT_TC16X64:
        n = lane // 4 + 8 * (i % 2)
        k = 16 * (lane % 4) + 4 * s + hi + 2 * (i // 2)
    elif layout == LAYOUT_VOLTA884:
        n = lane % 4 + 4 * (lane // 16) + 8 * (i // 2)
        k = 16 * ((lane // 4) % 4) + 4 * s + hi + 2 * (i % 2)
    else:
        raise ValueError(f"unknown packed layout {layout}; known: {LAYOUTS}")
    n, k = torch.broadcast_tensors(n, k)
    return n.reshape(-1), k.reshape(-1)


def _chunk_tiles(n_tiles: int, k_tiles: int, budget_bytes: int = 64 << 20) -> int:
    # Each n-tile row costs ~K_pad * 16 * 4 bytes of int32 temporaries; bound
    # the peak so repacking a 28672 x 8192 layer stays far below one GiB.
    per_tile = k_tiles * TILE_K * TILE_N * 4
    return max(1, min(n_tiles, budget_bytes // max(per_tile, 1)))


def pack_qweight(q: torch.Tensor, layout: int) -> torch.Tensor:
    """uint8 [K, N] values 0..15 -> int32 [N_pad/16, K_pad/64 * 128] packed tiles."""
    k_dim, n_dim = q.shape
    k_pad, n_pad = round_up(k_dim, TILE_K), round_up(n_dim, TILE_N)
    n_tiles, k_tiles = n_pad // TILE_N, k_pad // TILE_K
    n_off, k_off = _lane_maps(layout, q.device)  # [32 * 4 * 8]
    out = torch.empty(n_tiles, k_tiles * 128, dtype=torch.int32, device=q.device)
    shifts = (4 * torch.arange(8, device=q.device, dtype=torch.int32)).view(1, 1, 1, 8)
    step = _chunk_tiles(n_tiles, k_tiles)
    kt_base = (torch.arange(k_tiles, device=q.device) * TILE_K).view(1, k_tiles, 1)
    for t0 in range(0, n_tiles, step):
        t1 = min(n_tiles, t0 + step)
        nt_base = (torch.arange(t0, t1, device=q.device) * TILE_N).view(-1, 1, 1)
        n_idx = nt_base + n_off.view(1, 1, -1)  # [nt, 1, 1024]
        k_idx = kt_base + k_off.view(1, 1, -1)  # [1, kt, 1024]
        valid = (n_idx < n_dim) & (k_idx < k_dim)
        vals = q[k_idx.clamp(max=k_dim - 1), n_idx.clamp(max=n_dim - 1)]  # [nt, kt, 1024]
        vals = torch.where(valid, vals, torch.zeros((), dtype=vals.dtype, device=q.device))
        words = (vals.to(torch.int32).view(t1 - t0, k_tiles, 128, 8) << shifts).sum(-1, dtype=torch.int64)
        # Two's-complement wrap of the top nibble into int32.
        words = torch.where(words >= 2**31, words - 2**32, words)
        out[t0:t1] = words.to(torch.int32).view(t1 - t0, k_tiles * 128)
    return out


def unpack_qweight(packed: torch.Tensor, k_dim: int, n_dim: int, layout: int) -> torch.Tensor:
    """Inverse of :func:`pack_qweight`: uint8 [K, N]."""
    n_tiles, row = packed.shape
    k_tiles = row // 128
    n_off, k_off = _lane_maps(layout, packed.device)
    shifts = (4 * torch.arange(8, device=packed.device, dtype=torch.int32)).view(1, 1, 1, 8)
    vals = ((packed.view(n_tiles, k_tiles, 128, 1) >> shifts) & 0xF).to(torch.uint8).view(n_tiles, k_tiles, -1)
    n_idx = (torch.arange(n_tiles, device=packed.device) * TILE_N).view(-1, 1, 1) + n_off.view(1, 1, -1)
    k_idx = (torch.arange(k_tiles, device=packed.device) * TILE_K).view(1, -1, 1) + k_off.view(1, 1, -1)
    n_idx, k_idx = torch.broadcast_tensors(n_idx, k_idx)
    dense = torch.zeros(k_tiles * TILE_K, n_tiles * TILE_N, dtype=torch.uint8, device=packed.device)
    dense[k_idx.reshape(-1), n_idx.reshape(-1)] = vals.reshape(-1)
    return dense[:k_dim, :n_dim]


def pack_scale_zero(scales: torch.Tensor, zeros: torch.Tensor, k_dim: int, group_size: int) -> torch.Tensor:
    """scales [G, N] (dtype T), zeros uint8 [G, N] -> T [G_pad, N_pad / 16 * 32]."""
    groups, n_dim = scales.shape
    dtype = scales.dtype
    n_pad = round_up(n_dim, TILE_N)
    groups_pad = packed_shapes(k_dim, n_dim, group_size)[1][0]
    # Padding: scale 0 (so padded weights are exactly 0), zero = magic.
    s = torch.zeros(groups_pad, n_pad, dtype=dtype, device=scales.device)
    z = torch.zeros(groups_pad, n_pad, dtype=dtype, device=scales.device)
    s[:groups, :n_dim] = scales
    z[:groups, :n_dim] = zeros.to(dtype)
    z += MAGIC[dtype]  # exact: magic + (0..15) is representable in fp16 and bf16
    # [g, nt, h, r] -> [g, nt, r, h, (s, z)]
    s = s.view(groups_pad, n_pad // 16, 2, 8).transpose(2, 3)
    z = z.view(groups_pad, n_pad // 16, 2, 8).transpose(2, 3)
    return torch.stack([s, z], dim=-1).reshape(groups_pad, n_pad * 2).contiguous()


def unpack_scale_zero(
    scale_zero: torch.Tensor, k_dim: int, n_dim: int, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_scale_zero`: (scales [G, N], zeros as dtype [G, N])."""
    groups_pad, width = scale_zero.shape
    n_pad = width // 2
    v = scale_zero.view(groups_pad, n_pad // 16, 8, 2, 2)
    s = v[..., 0].transpose(2, 3).reshape(groups_pad, n_pad)
    z = v[..., 1].transpose(2, 3).reshape(groups_pad, n_pad) - MAGIC[scale_zero.dtype]
    groups = k_dim // group_size
    return s[:groups, :n_dim], z[:groups, :n_dim]
