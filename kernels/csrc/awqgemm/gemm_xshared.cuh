// The sm80 kernel for 16 < M below the dense threshold (dispatch.cu): warps split N, not K, so the
// activation tile of each 64-k step is loaded once per block into shared
// memory and read by every warp -- at M = 64 the per-warp activation loads of
// gemm_tc_kernel move twice the bytes of the weights. Weights and (scale, zero)
// pairs still travel through per-thread cp.async rings (packed layout 1).
//
// Grouped (MoE) problems of more than 32 rows per expert (make_grouped_plan): like gemm_tc_kernel, a block row resolves its expert and row range from the expert
// offsets (resolve_group_tile: every warp scans them itself, so the block agrees without a barrier),
// offsets the weight and (scale, zero) pointers by the expert, gathers x rows through the row index
// and stores only its expert's rows; block rows past the last expert zero the rows of no expert.
#pragma once

#include "gemm_tile.cuh"

namespace awqgemm {

// Activation rows padded by 16 bytes: lanes (g, q) read 32 bytes at row g,
// column 32 q; with a 144-byte row stride the 8 lanes of each 16-byte phase
// land in 8 distinct 4-bank groups (no conflicts).
constexpr int kXsRowBytes = kTileK * 2 + 16;

template <int MT, int NT, int WN, int STAGES>
struct XsSmem {
  static constexpr int kThreads = WN * 32;
  static constexpr int kW = NT * kThreads * 16;
  static constexpr int kSz = NT * kThreads * 8;
  static constexpr int kX = MT * 8 * kXsRowBytes;
  static constexpr int kStage = kW + kSz + kX;
  static constexpr int kBytes = STAGES * kStage;
};

// kGrouped: its own instantiation, so the dense kernel's code (and registers:
// the grouped bookkeeping made the 64-token variant spill) stay as they were.
// The copy sources are set up once per thread and the scale group is a shift,
// as in the weight-tile kernel: a fetch that recomputed every x row address
// (a 64-bit multiply each), ran the chunk loop with a remainder path and
// divided by the group size spent ~250 of the k-tile's ~530 instructions for
// 64 MMAs in the 64-token build, where ncu found the kernel latency-bound
// (issue 46 %, tensor pipe 37 %); hoisted, 324 (H200: 0.90x the time at
// M = 33-64, docs/perf-notes.md).
template <typename T, int MT, int NT, int WN, int STAGES, class Fam, bool kGrouped = false>
__global__ void __launch_bounds__(WN * 32, xs_min_blocks(MT)) gemm_xs_kernel(const GemmProblem p, const int splits, const int pdl_flags) {
  if constexpr (!Fam::template supported<T>()) {
    __trap();
  } else {
    using L = XsSmem<MT, NT, WN, STAGES>;
    constexpr int kThreads = L::kThreads;
    constexpr int kXChunks = MT * 8 * 8;  // 16-byte chunks of one activation tile
    extern __shared__ uint4 smem[];
    unsigned char* base = reinterpret_cast<unsigned char*>(smem);

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int g = lane >> 2;
    const int q = lane & 3;

    const int ktiles = padded_k(p.K) / kTileK;
    const int ntiles = padded_n(p.N) / kTileN;
    const int nt0 = (blockIdx.x * WN + warp) * NT;
    int m0 = blockIdx.y * (8 * MT);
    // Grouped: the rows this block may store, [m0, min(m0 + 8 MT, m_end)),
    // and the x row each of its tile rows gathers (in shared memory: looked up
    // per stage, they would cost the 64-token variant registers it lacks).
    int m_end = p.M;
    __shared__ int x_rows_s[kGrouped ? 8 * MT : 1];
    const void* qweight = p.qweight;
    const void* scale_zero = p.scale_zero;
    if constexpr (kGrouped) {
      // PDL: the offsets and row indices come from the kernels just before.
      if (pdl_flags & kPdlLaunched) pdl_wait();
      int e;
      resolve_group_tile(p, 8 * MT, blockIdx.y, e, m0, m_end);
      if (e < 0) {  // block-uniform: every warp resolved the same tile
        zero_rows<T>(p, m0, m_end, 8 * MT, blockIdx.x * WN * NT * kTileN, WN * NT * kTileN);
        return;  // the whole block, before any barrier
      }
      qweight = reinterpret_cast<const uint32_t*>(qweight) + e * p.qweight_batch_stride;
      scale_zero = reinterpret_cast<const T*>(scale_zero) + e * p.scale_zero_batch_stride;
      for (int r = threadIdx.x; r < 8 * MT; r += kThreads) x_rows_s[r] = x_row_of(p, min(m0 + r, m_end - 1));
      __syncthreads();
    }
    const int per_split = ceil_div(ktiles, splits);
    const int kt_begin = blockIdx.z * per_split;
    const int n_k = max(0, min(ktiles, kt_begin + per_split) - kt_begin);  // block-uniform

    const uint4* wptr[NT];
    int ntc[NT];
    if constexpr (kGrouped) {
      weight_strips<NT>(qweight, nt0, ntiles, ktiles, lane, wptr, ntc);
    } else {
      weight_strips<NT>(p, nt0, ntiles, ktiles, lane, wptr, ntc);
    }
    const uint2* szptr = reinterpret_cast<const uint2*>(kGrouped ? scale_zero : p.scale_zero) + Fam::w_row(lane);
    const T* x = reinterpret_cast<const T*>(p.x);

    // This thread's x chunks are rows (tid >> 3) + (kThreads / 8) j, 16-byte column (tid & 7) of every
    // k-tile (kThreads is a multiple of 8), so their row addresses are fixed for the whole loop.
    static_assert(kXChunks % kThreads == 0 && kThreads % 8 == 0, "even activation copy split");
    constexpr int kXPer = kXChunks / kThreads;
    const T* xsrc[kXPer];
    const uint2* szsrc[NT];
    // Group sizes are powers of two (checked at the C++ boundary): a shift, not a division.
    const int gshift = 31 - __clz(p.group_size);
#pragma unroll
    for (int j = 0; j < kXPer; ++j) {
      const int r = (j * kThreads + static_cast<int>(threadIdx.x)) >> 3;
      const int row = kGrouped ? x_rows_s[r] : min(m0 + r, p.M - 1);
      xsrc[j] = x + static_cast<size_t>(row) * p.x_row_stride;
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) szsrc[nt] = szptr + static_cast<size_t>(ntc[nt]) * 8;

    auto stage = [&](int slot) { return base + slot * L::kStage; };
    auto sw = [&](int slot, int nt) { return reinterpret_cast<uint4*>(stage(slot)) + nt * kThreads + threadIdx.x; };
    auto ssz = [&](int slot, int nt) {
      return reinterpret_cast<uint2*>(stage(slot) + L::kW) + nt * kThreads + threadIdx.x;
    };
    auto sx = [&](int slot) { return stage(slot) + L::kW + L::kSz; };

    float acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.f;

    auto fetch = [&](int slot, int i) {
      if (i < n_k) {
        const int kt = kt_begin + i;
        const size_t sz_off = static_cast<size_t>((kt * kTileK + Fam::x_koff(lane)) >> gshift) * ntiles * 8;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          cp_async_16(sw(slot, nt), wptr[nt] + static_cast<size_t>(kt) * 32);
          cp_async_8(ssz(slot, nt), szsrc[nt] + sz_off);
        }
        // K tail: the padded weights are zero, and so must x be (0 * NaN).
        const int k = kt * kTileK + 8 * (threadIdx.x & 7);
        const int kk = k < p.K ? k : 0;
        unsigned char* dst = sx(slot) + (threadIdx.x >> 3) * kXsRowBytes + 16 * (threadIdx.x & 7);
#pragma unroll
        for (int j = 0; j < kXPer; ++j) {
          cp_async_16_ca_zfill(dst + j * (kThreads / 8) * kXsRowBytes, xsrc[j] + kk, k < p.K ? 16 : 0);
        }
      }
      cp_async_commit();
    };

    auto compute = [&](int slot) {
      uint4 w[NT];
      uint32_t scale2[NT][2], zero2[NT][2];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        w[nt] = *sw(slot, nt);
        const uint2 sz = *ssz(slot, nt);
        split_scale_zero(sz.x, scale2[nt][0], zero2[nt][0]);
        split_scale_zero(sz.y, scale2[nt][1], zero2[nt][1]);
      }
      // Two halves of the k-tile: dequantize 2 steps x NT fragments, then feed
      // each token tile from one 16-byte activation load (this lane's
      // activations 8 h .. 8 h + 7). With the 144-byte row stride each 8-lane
      // phase of a 16-byte load hits 8 distinct 4-bank groups; the 8-byte
      // loads per step they replace were 2-way conflicted and twice as many.
      const unsigned char* xs = sx(slot) + g * kXsRowBytes + 32 * q;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        uint32_t a[2][NT][4];
#pragma unroll
        for (int s2 = 0; s2 < 2; ++s2)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            const uint32_t word = h == 0 ? (s2 == 0 ? w[nt].x : w[nt].y) : (s2 == 0 ? w[nt].z : w[nt].w);
            Fam::template dequant<T>(word, zero2[nt], scale2[nt], a[s2][nt]);
          }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          const uint4 b = *reinterpret_cast<const uint4*>(xs + mt * 8 * kXsRowBytes + 16 * h);
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
    for (int i = 0; i < n_k; ++i) {
      cp_async_wait<STAGES - 2>();
      __syncthreads();  // tile i visible to all warps; everyone is done with tile i - 1's slot
      fetch((i + STAGES - 1) % STAGES, i + STAGES - 1);
      compute(i % STAGES);
    }
    cp_async_wait<0>();
    if (pdl_flags & kPdlEarlyTrigger) pdl_launch_dependents();

#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          int mo, no;
          Fam::coord(lane, i, mo, no);
          const int m = m0 + mt * 8 + mo;
          const int n = (nt0 + nt) * kTileN + no;
          if (m < (kGrouped ? m_end : p.M) && n < p.N) store_result<T>(p, splits, m, n, acc[mt][nt][i]);
        }
  }
}

}  // namespace awqgemm
