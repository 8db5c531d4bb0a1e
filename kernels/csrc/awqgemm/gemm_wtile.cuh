// The sm80 weight-tile kernel for M = 17..512 (KernelKind::kWTile): a block
// stages each 64-k step of its weight tile, the matching (scale, zero) rows and
// its activation tile in shared memory ONCE, with one cooperative multi-stage
// cp.async pipeline, and every warp of the block feeds its MMAs from there.
//
// Block = WM x WN x WK warps; block tile = BM = 8 MT WM tokens x BN = 16 NT WN
// columns. Warp (wm, wn, wk) owns tokens [8 MT wm, +8 MT) x column tiles
// [NT wn, +NT) and, with WK = 2, half of each 64-k step (m16n8k16 steps 2 wk and
// 2 wk + 1); the two K halves are summed through shared memory at the end (no
// extra launch). Why these pieces:
//  - Packed layout 1 is unchanged: a 16 x 64 weight tile is 512 contiguous
//    bytes, lane l's A fragments for the 4 k-steps are bytes 16 l .. 16 l + 15,
//    so the staged copy is read back with one conflict-free 16-byte load per
//    lane and tile, and the copy into shared memory is plain 16-byte cp.async
//    of contiguous chunks (no permutation on either side).
//  - A dequantized A fragment feeds MT MMAs (MT = 8: one dequant word, 15
//    integer/half instructions, per 8 MMAs), the activation fragment NT.
//  - WM > 1 (BM = 128) reads each weight byte from L2/DRAM once per 128 tokens
//    instead of once per 64 as the x-shared kernel does; its warps dequantize
//    the same words (cheap next to the MMAs they feed).
//  - WK = 2 doubles the warps per output tile without more activation traffic:
//    at M <= 64 the grid is small (N / BN column blocks), so latency hiding has
//    to come from warps inside the block rather than from more blocks.
//  - One __syncthreads per 64-k step; cp.async groups keep STAGES - 1 steps in
//    flight while the tensor cores work on the current one.
#pragma once

#include "gemm_tile.cuh"

namespace awqgemm {

// Activation rows padded to 144 bytes: lanes (g, q) read 16 bytes at row g,
// byte 32 q + 16 h; with the 16-byte pad the 8 lanes of each phase fall in 8
// distinct 4-bank groups (the same argument as kXsRowBytes).
constexpr int kWtRowBytes = kTileK * 2 + 16;

template <int MT, int WM, int WN, int WK, int NT, int STAGES>
struct WtSmem {
  static constexpr int kWarps = WM * WN * WK;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBm = 8 * MT * WM;
  static constexpr int kTiles = NT * WN;          // 16-column tiles per block
  static constexpr int kW = kTiles * 512;         // weight bytes per 64-k step
  // Two (scale, zero) rows per step: with groups of 32 the lanes q = 0, 1 and
  // q = 2, 3 of one k-tile use different groups; for 64 / 128 the two rows are
  // the same group (64 bytes per tile, a negligible second copy).
  static constexpr int kSz = 2 * kTiles * 64;
  static constexpr int kX = kBm * kWtRowBytes;
  static constexpr int kStage = kW + kSz + kX;
  static constexpr int kRing = STAGES * kStage;
  // The WK = 2 reduction parks the upper half's accumulators in the ring.
  static constexpr int kReduce = WK > 1 ? WM * WN * MT * NT * 4 * 32 * 4 : 0;
  static constexpr int kBytes = kRing > kReduce ? kRing : kReduce;
  static_assert(WK == 1 || WK == 2, "a warp takes a whole 64-k step or half of it");
};

// Two blocks per SM (128 registers): one block per SM with 155-160 registers
// and no spills measured 2-11 % slower at BM = 128 (docs/perf-notes.md, v10).
template <typename T, int MT, int WM, int WN, int WK, int NT, int STAGES, class Fam>
__global__ void __launch_bounds__(32 * WM * WN * WK, 2)
    gemm_wt_kernel(const GemmProblem p, const int splits, const int pdl_flags) {
  if constexpr (!Fam::template supported<T>()) {
    __trap();  // never launched: the dispatcher checks the family first
  } else {
    using L = WtSmem<MT, WM, WN, WK, NT, STAGES>;
    constexpr int kThreads = L::kThreads;
    constexpr int kWChunks = L::kW / 16;
    constexpr int kSzChunks = L::kSz / 16;
    constexpr int kXChunks = L::kBm * 8;
    extern __shared__ uint4 smem[];
    unsigned char* base = reinterpret_cast<unsigned char*>(smem);

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int wn = warp % WN;
    const int wm = (warp / WN) % WM;
    const int wk = warp / (WN * WM);
    const int g = lane >> 2;
    const int q = lane & 3;

    const int ktiles = padded_k(p.K) / kTileK;
    const int ntiles = padded_n(p.N) / kTileN;
    const int nt0 = blockIdx.x * L::kTiles;
    const int m0 = blockIdx.y * L::kBm;
    const int per_split = ceil_div(ktiles, splits);
    const int kt_begin = blockIdx.z * per_split;
    const int n_k = max(0, min(ktiles, kt_begin + per_split) - kt_begin);  // block-uniform
    // Group sizes are powers of two (checked at the C++ boundary): a shift, not a division.
    const int gshift = 31 - __clz(p.group_size);

    const uint4* qw = reinterpret_cast<const uint4*>(p.qweight);
    const unsigned char* szb = reinterpret_cast<const unsigned char*>(p.scale_zero);
    const T* x = reinterpret_cast<const T*>(p.x);

    auto stage = [&](int slot) { return base + slot * L::kStage; };

    // This thread's copy sources, set up once so the loop only adds k offsets
    // (recomputing them per step cost ~50 integer instructions per 64 MMAs and
    // pushed the 128-register build into spills). Column tiles past the end
    // re-read the last real tile and rows past M re-read row M - 1: their
    // results are never stored, and every other output depends only on its own
    // column of A and row of B.
    static_assert(kWChunks % kThreads == 0 && kXChunks % kThreads == 0 && kSzChunks <= kThreads, "even copy split");
    constexpr int kWPer = kWChunks / kThreads;
    constexpr int kXPer = kXChunks / kThreads;
    const uint4* wsrc[kWPer];
#pragma unroll
    for (int j = 0; j < kWPer; ++j) {
      const int c = j * kThreads + tid;
      wsrc[j] = qw + static_cast<size_t>(min(nt0 + (c >> 5), ntiles - 1)) * ktiles * 32 + (c & 31);
    }
    const bool sz_copier = tid < kSzChunks;
    const int sz_row = tid / (L::kTiles * 4);  // row 0: k 0..31 of the step, row 1: k 32..63
    const unsigned char* szsrc =
        szb + static_cast<size_t>(min(nt0 + (tid % (L::kTiles * 4)) / 4, ntiles - 1)) * 64 + 16 * (tid & 3);
    const size_t sz_group_bytes = static_cast<size_t>(ntiles) * 64;
    const T* xsrc[kXPer];
#pragma unroll
    for (int j = 0; j < kXPer; ++j) {
      const int r = (j * kThreads + tid) >> 3;
      xsrc[j] = x + static_cast<size_t>(min(m0 + r, p.M - 1)) * p.x_row_stride;
    }
    const int xdst = L::kW + L::kSz + (tid >> 3) * kWtRowBytes + 16 * (tid & 7);

    auto fetch = [&](int slot, int i) {
      if (i < n_k) {
        const int kt = kt_begin + i;
        unsigned char* st = stage(slot);
#pragma unroll
        for (int j = 0; j < kWPer; ++j) cp_async_16(st + 16 * (j * kThreads + tid), wsrc[j] + kt * 32);
        if (sz_copier) {
          const int grp = (kt * kTileK + 32 * sz_row) >> gshift;
          cp_async_16(st + L::kW + 16 * tid, szsrc + grp * sz_group_bytes);
        }
        // K tail: the padded weights are zero, and so must x be (0 * NaN).
        const int k = kt * kTileK + 8 * (tid & 7);
        const int kk = k < p.K ? k : 0;
#pragma unroll
        for (int j = 0; j < kXPer; ++j) {
          cp_async_16_ca_zfill(st + xdst + j * (kThreads / 8) * kWtRowBytes, xsrc[j] + kk, k < p.K ? 16 : 0);
        }
      }
      cp_async_commit();  // empty groups keep the wait counts uniform
    };

    float acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.f;

    auto compute = [&](int slot) {
      const unsigned char* st = stage(slot);
      const uint4* sw = reinterpret_cast<const uint4*>(st) + wn * NT * 32 + lane;
      // Row (q >> 1) holds the group of this lane's 16 k (k 16 q .. 16 q + 15).
      const uint2* ssz = reinterpret_cast<const uint2*>(st + L::kW) + (q >> 1) * L::kTiles * 8 + wn * NT * 8 + g;
      const unsigned char* xs = st + L::kW + L::kSz + (wm * 8 * MT + g) * kWtRowBytes + 32 * q;
      uint4 w[NT];
      uint32_t scale2[NT][2], zero2[NT][2];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        w[nt] = sw[nt * 32];
        const uint2 sz = ssz[nt * 8];
        split_scale_zero(sz.x, scale2[nt][0], zero2[nt][0]);
        split_scale_zero(sz.y, scale2[nt][1], zero2[nt][1]);
      }
#pragma unroll
      for (int hh = 0; hh < 2 / WK; ++hh) {
        const int h = WK == 1 ? hh : wk;  // which half of the step (m16n8k16 steps 2 h, 2 h + 1)
        uint32_t a[2][NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          Fam::template dequant<T>(h == 0 ? w[nt].x : w[nt].z, zero2[nt], scale2[nt], a[0][nt]);
          Fam::template dequant<T>(h == 0 ? w[nt].y : w[nt].w, zero2[nt], scale2[nt], a[1][nt]);
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          const uint4 b = *reinterpret_cast<const uint4*>(xs + mt * 8 * kWtRowBytes + 16 * h);
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            Fam::template mma<T>(acc[mt][nt], a[0][nt], b.x, b.y);
            Fam::template mma<T>(acc[mt][nt], a[1][nt], b.z, b.w);
          }
        }
      }
    };

    // PDL: x may still be being written by the previous kernel (see pdl_wait in gemm_tile.cuh).
    if (pdl_flags & kPdlLaunched) pdl_wait();

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) fetch(s, s);
    int slot = 0, fill = STAGES - 1;
    for (int i = 0; i < n_k; ++i) {
      cp_async_wait<STAGES - 2>();
      __syncthreads();  // step i visible to all warps; everyone is done with the slot refilled next
      fetch(fill, i + STAGES - 1);
      compute(slot);
      slot = slot + 1 == STAGES ? 0 : slot + 1;
      fill = fill + 1 == STAGES ? 0 : fill + 1;
    }
    cp_async_wait<0>();
    if (pdl_flags & kPdlEarlyTrigger) pdl_launch_dependents();

    if constexpr (WK > 1) {
      // The upper K half hands its sums to the lower one through the (now idle) ring.
      __syncthreads();
      float* red = reinterpret_cast<float*>(smem) + (wm * WN + wn) * (MT * NT * 4 * 32) + lane;
      if (wk == 1) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) red[((mt * NT + nt) * 4 + i) * 32] = acc[mt][nt][i];
      }
      __syncthreads();
      if (wk == 1) return;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[mt][nt][i] += red[((mt * NT + nt) * 4 + i) * 32];
    }

#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          int mo, no;
          Fam::coord(lane, i, mo, no);
          const int m = m0 + (wm * MT + mt) * 8 + mo;
          const int n = (nt0 + wn * NT + nt) * kTileN + no;
          if (m < p.M && n < p.N) store_result<T>(p, splits, m, n, acc[mt][nt][i]);
        }
  }
}

}  // namespace awqgemm
