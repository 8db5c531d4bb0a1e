"""CPU model of the warp-specialized wgmma kernel's data movement (v11, gemm_wgws_sm90a.cuh).

v11 moves every operand by byte offsets the GPU cannot be asked about without
a device: the staging kernel writes x tile-major and pre-swizzled
(``[k-tile][M][128 bytes]``), the producer copies a box of 8 512-byte weight tiles,
(scale, zero) rows and a contiguous x tile per stage, and the consumers read
their weight word and (scale, zero) pair at fixed offsets in the stage. This
test replays exactly those offsets (each function below mirrors one
expression of the C++, named in its docstring) on the real packer's bytes
(``_layout.pack_qweight`` / ``pack_scale_zero``), builds the A fragments the
way ``dequant_word`` does, reads B through the 128-byte-swizzle descriptor
model of ``test_wgmma_staging.py``, and checks the product against x @ W over
a problem with an N tail (a partial 128-column block), a K tail, several
m-blocks (the last partial), K splits and every group size. A pass pins the
index algebra; a GPU failure then points at the hardware protocol (mbarrier
phases, transaction bytes), not at an offset.
"""

from __future__ import annotations

import pytest
import torch

from awqgemm import _layout

TILE_K = 64


def wgmma_reads(smem: torch.Tensor, s: int, r: int, j: int) -> float:
    """The element a K-major SW128 descriptor at +32 s bytes yields for token r, logical k j
    (the model of test_wgmma_staging.py, returning the value: holes are NaN here)."""
    plain = 128 * r + 32 * s + 16 * (j // 8) + 2 * (j % 8)
    swizzled = (plain & ~(7 << 4)) | ((((plain >> 4) & 7) ^ ((plain >> 7) & 7)) << 4)
    return smem[swizzled // 2].item()


def staged_x(x: torch.Tensor, ktiles: int) -> torch.Tensor:
    """stage_x_tiles_kernel: x [rows, K] -> [ktiles * rows * 64] elements; chunk c of row r of
    k-tile kt holds the pairs at 64 kt + 4 (c >> 1) + 2 (c & 1) + 16 q' (q' = 0..3), stored at
    chunk c ^ (r & 7). Zeros past K. (NaN marks holes.)"""
    rows, k_dim = x.shape
    out = torch.full((ktiles * rows * 64,), float("nan"), dtype=torch.float64)
    for kt in range(ktiles):
        for r in range(rows):
            for c in range(8):
                k0 = TILE_K * kt + 4 * (c >> 1) + 2 * (c & 1)
                dst = (kt * rows + r) * 64 + 8 * (c ^ (r & 7))
                for qq in range(4):
                    for t in range(2):
                        k = k0 + 16 * qq + t
                        out[dst + 2 * qq + t] = x[r, k].item() if k < k_dim else 0.0
    return out


def producer_stage(qbytes, szbytes, xs, m_rows, ntiles, ktiles, gshift, bm, mb, nb, kt, ntw=1, staged_rows=None):
    """One stage as the producer thread fills it (v11.1): the weight box of the tensor map over the
    packed weight seen as [ntiles rows][ktiles * 128 uint32] at (column kt * 128, row 8 nb), 8 rows x
    512 bytes, i.e. row j from byte ((8 nb + j) * ktiles + kt) * 512, rows past the last tile (j >=
    nvalid) zero-filled and all 4096 bytes counted; the (scale, zero) row(s) r = 0 (and 1 when groups
    are 32): nvalid * 64 bytes of row ((kt * 64 + 32 r) >> gshift) from byte (grp * ntiles + 8 nb) * 64;
    rows * 128 bytes of x from element (kt * M + mb * BM) * 64. What is not copied keeps stale contents
    (NaN / 0xEE here). Returns the stage and the bytes the copies complete, which the kernel's
    expect_tx must announce. ntw = 2 (the wide variant): 16-row box and 1024-byte (scale, zero) rows.
    staged_rows (grouped problems): rows of a staged k-tile when it is not m_rows (the launch's tiles x BM)."""
    nbt = 8 * ntw  # column tiles per block (kNB)
    nvalid = min(nbt, ntiles - nbt * nb)
    rows = min(bm, m_rows - mb * bm)
    w = torch.zeros((nbt * 512,), dtype=torch.uint8)  # the box: out-of-bounds rows read as zeros
    for j in range(nbt):
        if nbt * nb + j < ntiles:
            src = ((nbt * nb + j) * ktiles + kt) * 512
            w[512 * j : 512 * j + 512] = qbytes[src : src + 512]
    sz = torch.full((2 * nbt * 64,), 0xEE, dtype=torch.uint8)
    for r in (0, 1) if gshift == 5 else (0,):
        grp = (kt * TILE_K + 32 * r) >> gshift
        src = (grp * ntiles + nbt * nb) * 64
        sz[nbt * 64 * r : nbt * 64 * r + nvalid * 64] = szbytes[src : src + nvalid * 64]
    xt = torch.full((bm * 64,), float("nan"), dtype=torch.float64)
    src = (kt * (staged_rows or m_rows) + mb * bm) * 64
    xt[: rows * 64] = xs[src : src + rows * 64]
    copied = rows * 128 + nbt * 512 + (2 if gshift == 5 else 1) * nvalid * 64
    return w, sz, xt, copied


def scale_zero_at(pairs, e, magic):
    """split_scale_zero on the (scale, zero) pairs of rows g and g + 8 at element e of the scale region:
    the scales and the zeros with the magic number taken off."""
    return (pairs[e].item(), pairs[e + 2].item()), (pairs[e + 1].item() - magic, pairs[e + 3].item() - magic)


def consumer_a(w, sz, gshift, dtype, ntw=1):
    """The A operand of the stage, [128 rows][4 steps][16 logical k], as the consumers build it:
    warp j reads its word at j * 512 + lane * 16 of the weight region and its
    (scale, zero) pair at ((q >> 1) * 512 if groups are 32) + j * 64 + g * 8 of the scale
    region; dequant_word<T, true>: register i of word s takes nibbles i (low half) and i + 4
    (high half), row half i & 1, logical k 2 q + 8 (i >> 1) + {0, 1}. ntw = 2: warp w also owns
    tile w + 8, its word and pair 8 x 512 and 8 x 64 bytes further, the scale rows ntw x 512 long."""
    magic = _layout.MAGIC[dtype]
    words = w.view(torch.int32)  # little-endian, as the GPU reads them
    pairs = sz.view(dtype).to(torch.float64)
    a = torch.zeros(128 * ntw, 4, 16, dtype=torch.float64)
    for j in range(8 * ntw):  # tile j: warp j % 8, its tile set j // 8
        for lane in range(32):
            g, q = lane >> 2, lane & 3
            sz_off = ((q >> 1) * 512 * ntw if gshift == 5 else 0) + j * 64 + g * 8
            e = sz_off // 2
            scale, zero = scale_zero_at(pairs, e, magic)
            for s in range(4):
                word = int(words[(j * 512 + lane * 16) // 4 + s].item()) & 0xFFFFFFFF
                dequant_word_into(a, word, scale, zero, 16 * j + g, s, q, dtype)
    return a


def dequant_word_into(a, word, scale, zero, row, s, q, dtype):
    """dequant_word<T, true>: register i takes nibbles i (low half) and i + 4 (high half) of the word,
    row half i & 1 (row, row + 8), logical k 2 q + 8 (i >> 1) + {0, 1} of step s; (q - z) * s in dtype."""
    for i in range(4):
        h = i & 1
        for t, nib in enumerate(((word >> (4 * i)) & 0xF, (word >> (16 + 4 * i)) & 0xF)):
            v = torch.tensor((nib - zero[h]), dtype=dtype) * torch.tensor(scale[h], dtype=dtype)
            a[row + 8 * h, s, 2 * q + 8 * (i >> 1) + t] = v.to(torch.float64)


def consumer_b(xt, bm):
    """B of the stage, [4 steps][16 logical k][BM tokens], through the descriptor at +32 s bytes."""
    b = torch.empty(4, 16, bm, dtype=torch.float64)
    for s in range(4):
        for r in range(bm):
            for jl in range(16):
                b[s, jl, r] = wgmma_reads(xt, s, r, jl)
    return b


def run_model(x, q, z, scales, group, bm, splits, ntw=1, tma_x=False):
    """The kernel's units over the whole problem, summed over K splits. tma_x: kTmaX's stages and
    consumers (producer_stage_tma_x, consumer_a_tma_x) instead of the staged ones."""
    dtype = scales.dtype
    m_rows, k_dim = x.shape
    n_dim = q.shape[1]
    packed_q = _layout.pack_qweight(q, _layout.LAYOUT_TC16X64)
    scale_zero = _layout.pack_scale_zero(scales, z, k_dim, group)
    qbytes = packed_q.contiguous().view(torch.uint8).flatten()
    szbytes = scale_zero.contiguous().view(torch.uint8).flatten()
    ktiles = (k_dim + TILE_K - 1) // TILE_K
    ntiles = (n_dim + 15) // 16
    nbt = 8 * ntw
    nblocks = (ntiles + nbt - 1) // nbt
    mblocks = (m_rows + bm - 1) // bm
    gshift = group.bit_length() - 1
    xs = None if tma_x else staged_x(x.to(torch.float64), ktiles)
    per_split = (ktiles + splits - 1) // splits
    partials = torch.full((splits, m_rows, n_dim), float("nan"), dtype=torch.float64)
    for u in range(nblocks * mblocks * splits):  # ws_unit: m fastest, then n, then the split
        rest = u // mblocks
        mb, nb, split = u - rest * mblocks, rest % nblocks, rest // nblocks
        kt0 = split * per_split
        acc = torch.zeros(16 * nbt, bm, dtype=torch.float64)
        for kt in range(kt0, min(ktiles, kt0 + per_split)):
            stage = (qbytes, szbytes, x.to(torch.float64) if tma_x else xs)
            if tma_x:
                w, sz, xt, copied = producer_stage_tma_x(*stage, ntiles, ktiles, gshift, bm, mb, nb, kt, ntw)
            else:
                w, sz, xt, copied = producer_stage(*stage, m_rows, ntiles, ktiles, gshift, bm, mb, nb, kt, ntw)
            # gemm_ws_kernel's expect_tx: rows * 128 (kTmaX: the whole box, BM * 128) + kNB * 512 (the whole
            # weight box) + sz_rows * nvalid * 64.
            nvalid, rows = min(nbt, ntiles - nbt * nb), bm if tma_x else min(bm, m_rows - mb * bm)
            assert copied == rows * 128 + nbt * 512 + (2 if gshift == 5 else 1) * nvalid * 64
            a = (consumer_a_tma_x if tma_x else consumer_a)(w, sz, gshift, dtype, ntw)
            b = consumer_b(xt, bm)
            acc += torch.einsum("nsj,sjm->nm", a, b)
        for n_local in range(16 * nbt):
            n = nb * 16 * nbt + n_local
            for m_local in range(bm):
                m = mb * bm + m_local
                if m < m_rows and n < n_dim:
                    partials[split, m, n] = acc[n_local, m_local]
    return partials.sum(0)


@pytest.mark.parametrize(
    "group,splits,ntw,m_rows,bm",
    [(32, 2, 1, 20, 16), (64, 1, 1, 20, 16), (128, 3, 1, 20, 16), (32, 1, 2, 20, 16), (128, 2, 2, 20, 16),
     (32, 2, 2, 60, 48), (64, 1, 2, 40, 32), (32, 2, 1, 200, 192)],
)  # fmt: skip
def test_model_matches_x_at_w(group, splits, ntw, m_rows, bm):
    """ntw = 2: the 256-column blocks of BM <= 64 (tile_config.h ws_ntw), BM = 48 and 32 included (the
    tiles of M <= 48); BM = 192: one of the mid tiles (128 columns)."""
    torch.manual_seed(group)
    k_dim = 3 * 64 - 32 if group == 32 else 3 * 128  # a K tail where the group allows one
    check_model(group, splits, ntw, m_rows, bm, k_dim, tma_x=False)


def check_model(group, splits, ntw, m_rows, bm, k_dim, tma_x):
    """run_model on random AWQ data against x @ W in float64 (fp16 dequantized weights)."""
    # two blocks, the second partial (and a partial 16-column tile); wide: its second half partial too
    n_dim = 8 * 16 + 40 if ntw == 1 else 16 * 16 + 11 * 16 + 8
    # the model takes any BM divisible by 8: two m-blocks, the last partial
    dtype = torch.float16
    groups = k_dim // group
    q = torch.randint(0, 16, (k_dim, n_dim), dtype=torch.uint8)
    z = torch.randint(0, 16, (groups, n_dim), dtype=torch.uint8)
    scales = ((torch.rand(groups, n_dim) + 0.5) / 16).to(dtype)
    x = torch.randn(m_rows, k_dim).to(dtype)
    out = run_model(x, q, z, scales, group, bm, splits, ntw, tma_x)
    wq = (q.double() - z.double().repeat_interleave(group, 0)).to(dtype) * scales.repeat_interleave(group, 0)
    ref = x.double() @ wq.double()
    assert torch.isfinite(out).all(), "an output reads a hole (unstaged x, uncopied weight or scale)"
    assert torch.allclose(out, ref, rtol=1e-9, atol=1e-9), (out - ref).abs().max()


# ---- kTmaX (dense plans, TileConfig::tma_x): x through a tensor map, the weights' k order rearranged
# in shared memory


def sw128(offset: int) -> int:
    """The 128-byte swizzle of a byte offset from a 1024-byte aligned base: 16-byte chunk ^= line & 7."""
    return offset ^ (((offset >> 7) & 7) << 4)


def producer_stage_tma_x(qbytes, szbytes, x, ntiles, ktiles, gshift, bm, mb, nb, kt, ntw=1):
    """One stage as the kTmaX producer fills it: the weight box of the 3-D map [tiles][ktiles x 4
    lines][32 words] (weight_tensor_map_lines) at (0, 4 kt, kNB nb) -- tile j's 4 lines of k-tile kt,
    128-byte swizzled, tiles past the last zero-filled; the (scale, zero) rows as producer_stage; x from
    the map over the caller's [M][K] (x_tensor_map) at (64 kt, BM mb): BM rows of 64 k, 128-byte
    swizzled, rows past M and k past K zero. Returns the stage and the bytes the copies complete
    (the whole x box: BM x 128)."""
    nbt = 8 * ntw
    nvalid = min(nbt, ntiles - nbt * nb)
    plain = torch.zeros((nbt * 512,), dtype=torch.uint8)
    for j in range(nbt):
        if nbt * nb + j < ntiles:
            src = ((nbt * nb + j) * ktiles + kt) * 512
            plain[512 * j : 512 * j + 512] = qbytes[src : src + 512]
    w = torch.empty_like(plain)
    for off in range(0, nbt * 512, 16):  # the box lands at a 1024-byte aligned offset of the stage
        w[sw128(off) : sw128(off) + 16] = plain[off : off + 16]
    sz = torch.full((2 * nbt * 64,), 0xEE, dtype=torch.uint8)
    for r in (0, 1) if gshift == 5 else (0,):
        grp = (kt * TILE_K + 32 * r) >> gshift
        src = (grp * ntiles + nbt * nb) * 64
        sz[nbt * 64 * r : nbt * 64 * r + nvalid * 64] = szbytes[src : src + nvalid * 64]
    m_rows, k_dim = x.shape
    xt = torch.empty((bm * 64,), dtype=torch.float64)
    for r in range(bm):
        for kk in range(64):
            m, k = mb * bm + r, kt * TILE_K + kk
            xt[sw128(128 * r + 2 * kk) // 2] = x[m, k].item() if m < m_rows and k < k_dim else 0.0
    copied = bm * 128 + nbt * 512 + (2 if gshift == 5 else 1) * nvalid * 64
    return w, sz, xt, copied


def consumer_a_tma_x(w, sz, gshift, dtype, ntw=1):
    """The A operand as kTmaX's consumers build it (dequant_smem_tile_natural): thread (g, q) of warp
    w, tile t = w + 8 j, reads in step s the words at stage offset w_nat ^ (16 s) and + 8, w_nat =
    sw128(t * 512 + 64 g) + 4 (q >> 1); prmt with 0x6240 + 0x1111 (q & 1) puts bytes (q & 1) and
    2 + (q & 1) of the first word in bytes 0 and 2, of the second in 1 and 3; dequant_word as in
    consumer_a; its (scale, zero) pair at t * 64 + g * 8 (groups of 64 / 128 only: launch_ws stages x
    for groups of 32)."""
    magic = _layout.MAGIC[dtype]
    raw = w.numpy().tobytes()
    pairs = sz.view(dtype).to(torch.float64)
    a = torch.zeros(128 * ntw, 4, 16, dtype=torch.float64)

    def word_at(off):
        return int.from_bytes(raw[off : off + 4], "little")

    for t in range(8 * ntw):
        for lane in range(32):
            g, q = lane >> 2, lane & 3
            w_nat = sw128(t * 512 + 64 * g) + 4 * (q >> 1)
            sel = 0x6240 + 0x1111 * (q & 1)
            for s in range(4):
                lo, hi = word_at(w_nat ^ (16 * s)), word_at((w_nat ^ (16 * s)) + 8)
                src = lo | (hi << 32)
                word = 0
                for b in range(4):
                    word |= ((src >> (8 * ((sel >> (4 * b)) & 7))) & 0xFF) << (8 * b)
                assert gshift >= 6, "kTmaX takes groups of 64 / 128"
                e = (t * 64 + g * 8) // 2
                scale, zero = scale_zero_at(pairs, e, magic)
                dequant_word_into(a, word, scale, zero, 16 * t + g, s, q, dtype)
    return a


@pytest.mark.parametrize(
    "group,splits,ntw,m_rows,bm",
    [(64, 2, 1, 20, 16), (64, 1, 1, 20, 16), (128, 3, 1, 20, 16), (64, 1, 2, 20, 16), (128, 2, 2, 20, 16),
     (64, 2, 2, 60, 48), (128, 1, 2, 40, 32), (64, 1, 1, 200, 192)],
)  # fmt: skip
def test_tma_x_model_matches_x_at_w(group, splits, ntw, m_rows, bm):
    """kTmaX's data movement (x through the tensor map, layout 1's words read across the quad in the
    wgmma's k order) gives x @ W on test_model_matches_x_at_w's shapes with the kernels' groups, 64 and
    128 (no K tail: K is a multiple of the group, so of the 64-k tile)."""
    torch.manual_seed(group + splits + bm)
    check_model(group, splits, ntw, m_rows, bm, 5 * 64 if group == 64 else 3 * 128, tma_x=True)


def test_tma_x_weight_reads_hit_eight_bank_groups():
    """Every kTmaX consumer load of a warp (one step, one tile) touches 16-byte chunks in 8 different
    bank groups (chunk index mod 8 of the 128-byte line): one wavefront per load, no conflict."""
    for t in range(16):
        for s in range(4):
            chunks = set()
            for g in range(8):
                off = sw128(t * 512 + 64 * g) ^ (16 * s)
                chunks.add((off >> 4) & 7)
            assert len(chunks) == 8, (t, s, chunks)


def test_stage_rows_sit_in_their_swizzle_atom():
    # A unit's x tile starts at row mb * BM of the staged k-tile (BM a multiple of 8), so the
    # staged swizzle (by r & 7 of the row in the chunk) is the one the descriptor applies to the
    # row inside the shared-memory tile: check it for BM = 64 over a chunk of 200 rows.
    rows, bm = 200, 64
    x = torch.arange(rows * 64, dtype=torch.float64).view(rows, 64)
    xs = staged_x(x, 1)
    for mb in range((rows + bm - 1) // bm):
        n = min(bm, rows - mb * bm)
        tile = torch.full((bm * 64,), float("nan"), dtype=torch.float64)
        tile[: n * 64] = xs[mb * bm * 64 : (mb * bm + n) * 64]
        for r in range(0, n, 7):
            for s in range(4):
                for jl in range(16):
                    qq, t, half = (jl % 8) // 2, jl % 2, jl // 8
                    want = x[mb * bm + r, 16 * qq + 4 * s + 2 * half + t].item()
                    assert wgmma_reads(tile, s, r, jl) == want, (mb, r, s, jl)


def group_tiles(offsets: list[int], m_rows: int, bm: int) -> list[tuple[int, int, int]]:
    """resolve_group_tile (gemm_tile.cuh) for every tile grouped_ws_tiles_kernel lists: each expert's
    clamped rows in ceil(rows / bm) tiles, then the rows of no expert (offsets[E] .. M) as e = -1, up to
    grouped_grid_rows(M, bm, E) = ceil(M / bm) + min(E, M) entries (the rest empty: m0 >= m_end)."""
    num = len(offsets) - 1
    tiles, prev = [], 0
    for e in range(num):
        lo = min(max(offsets[e], 0), m_rows)
        hi = min(max(offsets[e + 1], lo), m_rows)
        tiles += [(e, lo + j * bm, hi) for j in range(-(-(hi - lo) // bm))]
        prev = hi
    start = max(prev, min(max(offsets[num], 0), m_rows))
    count = -(-m_rows // bm) + min(num, m_rows)
    tiles += [(-1, start + j * bm, m_rows) for j in range(count - len(tiles))]
    assert len(tiles) == count, "more tiles than grouped_grid_rows"
    return tiles


def staged_x_grouped(x, row_index, tiles, t0, count, bm, ktiles):
    """stage_x_grouped_kernel: rows r < m_end - m0 of tiles t0 .. t0 + count - 1 of an expert, x row
    row_index[m0 + r], to staged row (t - t0) * bm + r of [ktiles][count * bm][64], swizzled by r & 7
    (the row within its tile). Other rows stay holes (NaN)."""
    k_dim = x.shape[1]
    rows_all = count * bm
    out = torch.full((ktiles * rows_all * 64,), float("nan"), dtype=torch.float64)
    for j in range(count):
        e, m0, m_end = tiles[t0 + j]
        if e < 0:
            continue
        for r in range(min(bm, m_end - m0)):
            src = x[row_index[m0 + r]]
            for kt in range(ktiles):
                for c in range(8):
                    k0 = TILE_K * kt + 4 * (c >> 1) + 2 * (c & 1)
                    dst = (kt * rows_all + j * bm + r) * 64 + 8 * (c ^ (r & 7))
                    for qq in range(4):
                        for t in range(2):
                            k = k0 + 16 * qq + t
                            out[dst + 2 * qq + t] = src[k].item() if k < k_dim else 0.0
    return out


@pytest.mark.parametrize("bm,ntw,chunk", [(16, 1, 3), (8, 2, 100)])
def test_grouped_model_matches_each_expert(bm, ntw, chunk):
    """Grouped v11.1 (launch_ws_grouped): the tile table, per-tile staging in chunks of
    `chunk` tiles, the producer's expert box (the 3-D map's third coordinate: expert e's packed bytes)
    and scale rows, the consumers' rows [m0, m_end) and the zeros of tiles of no expert, against
    x[row_index] @ W_e per expert. Experts: one of 21 rows (tiles 16 + 5 at BM 16), an empty one, one of
    3 rows, then rows of no expert."""
    torch.manual_seed(bm + ntw)
    group, k_dim, dtype = 64, 2 * 64, torch.float16
    n_dim = 8 * 16 * ntw + 24  # a second, partial block
    offsets, m_rows = [0, 21, 21, 24], 30
    x = torch.randn(11, k_dim).to(dtype)
    row_index = torch.randint(0, 11, (m_rows,)).tolist()
    experts = []
    for _ in range(3):
        q = torch.randint(0, 16, (k_dim, n_dim), dtype=torch.uint8)
        z = torch.randint(0, 16, (k_dim // group, n_dim), dtype=torch.uint8)
        scales = ((torch.rand(k_dim // group, n_dim) + 0.5) / 16).to(dtype)
        experts.append((q, z, scales))
    packed = [
        (
            _layout.pack_qweight(q, _layout.LAYOUT_TC16X64).contiguous().view(torch.uint8).flatten(),
            _layout.pack_scale_zero(sc, z, k_dim, group).contiguous().view(torch.uint8).flatten(),
        )
        for q, z, sc in experts
    ]
    ktiles, ntiles, nbt, gshift = k_dim // TILE_K, (n_dim + 15) // 16, 8 * ntw, group.bit_length() - 1
    nblocks = (ntiles + nbt - 1) // nbt
    tiles = group_tiles(offsets, m_rows, bm)
    out = torch.full((m_rows, n_dim), float("nan"), dtype=torch.float64)
    for t0 in range(0, len(tiles), chunk):  # launch_ws_grouped's chunks
        count = min(chunk, len(tiles) - t0)
        xs = staged_x_grouped(x.to(torch.float64), row_index, tiles, t0, count, bm, ktiles)
        for u in range(nblocks * count):  # ws_unit: m fastest
            mb, nb = u % count, u // count
            e, m0, m_end = tiles[t0 + mb]
            acc = torch.zeros(16 * nbt, bm, dtype=torch.float64)
            for kt in range(ktiles if e >= 0 else 0):  # units of no expert skip the k-loop on both sides
                qb, szb = packed[e]
                rows = min(bm, m_end - m0)  # the producer's rows: staged_rows is count * bm
                w, sz, xt, copied = producer_stage(
                    qb, szb, xs, mb * bm + rows, ntiles, ktiles, gshift, bm, mb, nb, kt, ntw, staged_rows=count * bm
                )
                assert copied == rows * 128 + nbt * 512 + min(nbt, ntiles - nbt * nb) * 64
                acc += torch.einsum("nsj,sjm->nm", consumer_a(w, sz, gshift, dtype, ntw), consumer_b(xt, bm))
            for n_local in range(16 * nbt):
                n = nb * 16 * nbt + n_local
                for m_local in range(bm):
                    m = m0 + m_local
                    if m < m_end and n < n_dim:
                        out[m, n] = acc[n_local, m_local]
    assert torch.isfinite(out).all(), "a row was never stored, or read a hole"
    for e, (q, z, sc) in enumerate(experts):
        lo, hi = offsets[e], offsets[e + 1]
        wq = (q.double() - z.double().repeat_interleave(group, 0)).to(dtype) * sc.repeat_interleave(group, 0)
        ref = x[row_index[lo:hi]].double() @ wq.double()
        assert torch.allclose(out[lo:hi], ref, rtol=1e-9, atol=1e-9), (e, (out[lo:hi] - ref).abs().max())
    assert (out[offsets[-1] :] == 0).all(), "rows of no expert must be zero"
