// The tensor-core W4A16 kernel skeleton shared by the sm70, sm75 and sm80
// families. A family supplies its MMA (a 16n x 8m x 16k step with the
// m16n8k16 fragment layout, however its hardware spells that) and says whether
// weights may travel by cp.async.
//
// Work split:
//   blockIdx.x -> NT tiles of 16 output columns n
//   blockIdx.y -> MT tiles of 8 tokens m
//   blockIdx.z -> a slice of K (split-K across blocks; fp32 partials go to the
//                 caller's workspace and a second kernel sums them)
//   warps      -> interleaved 64-wide k-tiles inside the slice (split-K inside
//                 the block, summed through shared memory). Interleaving keeps
//                 a block's concurrent weight reads contiguous in DRAM.
// Every lane loads its own 16 bytes of each weight tile and its own 32 bytes of
// activations (see packed_layout.h), so no data is exchanged between lanes
// before the MMA.
#pragma once

#include "device_utils.cuh"
#include "packed_layout.h"
#include "problem.h"
#include "tile_config.h"

namespace awqgemm {


__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  // .cg: cache in L2 only -- each weight byte is used by exactly one block.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
#endif
}
// Activations: .ca (through L1) -- every block along N re-reads the same x, and
// with .cg those re-reads all went to L2 (measured: 2-7x slower at M <= 16).
// src_bytes = 0 fills the 16 bytes with zeros (the K tail of x).
__device__ __forceinline__ void cp_async_16_ca_zfill(void* smem, const void* gmem, int src_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
#endif
}
__device__ __forceinline__ void cp_async_8(void* smem, const void* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(s), "l"(gmem));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Programmatic dependent launch (sm90+). A kernel launched with the PDL
// attribute may start while the previous kernel on the stream is finishing;
// until pdl_wait() returns it must not read anything that kernel may write (x)
// or write anything it may still read (out, workspace), so our kernels wait
// before their first load. (Hinting the first weight tiles into L2 before the
// wait was tried and measured 3-4 % slower: docs/perf-notes.md, v8.)
// Without the attribute (or before sm90) both calls are no-ops.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Lane roles of the m16n8k8 / m16n8k16 fragments (sm75, sm80): lane 4 g + q
// holds weight rows g and g + 8, activation row g, and k 16 q .. 16 q + 15 of
// every 64-k tile (packed layout 1).
struct M16n8Lanes {
  static constexpr int kAcc = 4;
  __device__ __forceinline__ static int w_row(int lane) { return lane >> 2; }
  __device__ __forceinline__ static int x_row(int lane) { return lane >> 2; }
  __device__ __forceinline__ static int x_koff(int lane) { return 16 * (lane & 3); }
  template <typename T>
  __device__ __forceinline__ static void dequant(uint32_t w, const uint32_t z[2], const uint32_t s[2], uint32_t a[4]) {
    dequant_word<T, true>(w, z, s, a);
  }
  template <typename T>
  __device__ __forceinline__ static void dequant_offsets(uint32_t w, const uint32_t z[2], uint32_t a[4]) {
    dequant_word_offsets<T, true>(w, z, a);
  }
  // Row half (row g or g + 8, i.e. row pair entry) of accumulator i: see coord.
  __device__ __forceinline__ static int acc_row_half(int i) { return i >> 1; }
  // Register i of a dequantized word: row half and first k (it holds k, k + 1).
  __device__ __forceinline__ static int reg_row_half(int i) { return i & 1; }
  __device__ __forceinline__ static int reg_k(int i) { return 2 * (i >> 1); }
  static constexpr int kOwn = 4;
  __device__ __forceinline__ static void finish(const float (&c)[kAcc], float (&own)[kOwn], int) {
#pragma unroll
    for (int i = 0; i < kOwn; ++i) own[i] = c[i];
  }
  // C fragment: c0, c1 -> row g, columns 2q, 2q + 1; c2, c3 -> row g + 8.
  __device__ __forceinline__ static void coord(int lane, int i, int& m, int& n) {
    m = 2 * (lane & 3) + (i & 1);
    n = (lane >> 2) + 8 * (i >> 1);
  }
};

// Lane roles of Volta's m8n8k4 (packed layout 2); see gemm_sm70_m8n8k4.cu.
// A (.row) / B (.col) fragments: lane holds row / column (lane % 4) +
// 4 (lane >= 16) of its quad pair's 8x8 block; quad pair j = (lane >> 2) & 3
// takes k chunk j of every 16-k step.
struct Volta884Lanes {
  static constexpr int kAcc = 16;  // 2 instructions x 8 fp32 accumulators
  __device__ __forceinline__ static int w_row(int lane) { return (lane & 3) + 4 * (lane >> 4); }
  __device__ __forceinline__ static int x_row(int lane) { return (lane & 3) + 4 * (lane >> 4); }
  __device__ __forceinline__ static int x_koff(int lane) { return 16 * ((lane >> 2) & 3); }
  template <typename T>
  __device__ __forceinline__ static void dequant(uint32_t w, const uint32_t z[2], const uint32_t s[2], uint32_t a[4]) {
    dequant_word<T, false>(w, z, s, a);  // registers {0,1}: row r, {2,3}: row r + 8
  }
  __device__ __forceinline__ static int reg_row_half(int i) { return i >> 1; }
  __device__ __forceinline__ static int reg_k(int i) { return 2 * (i & 1); }
  // Quad pairs differ in lane bits 2 and 3: a butterfly over them gives every
  // quad pair the full sums; quad pair j then keeps accumulators 4j .. 4j + 3,
  // so each lane owns 4 outputs, as in the m16n8 families.
  static constexpr int kOwn = 4;
  __device__ __forceinline__ static void finish(float (&c)[kAcc], float (&own)[kOwn], int lane) {
#pragma unroll
    for (int i = 0; i < kAcc; ++i) {
      c[i] += __shfl_xor_sync(0xffffffffu, c[i], 4);
      c[i] += __shfl_xor_sync(0xffffffffu, c[i], 8);
    }
    const int qp = (lane >> 2) & 3;
#pragma unroll
    for (int t = 0; t < kOwn; ++t) {
      // Selects with constant indices: a lane-dependent index would spill c.
      own[t] = qp == 0 ? c[t] : qp == 1 ? c[4 + t] : qp == 2 ? c[8 + t] : c[12 + t];
    }
  }
  // f32 accumulator j of an m8n8k4 block sits at
  //   row (lane & 1) + (j & 2) + 4 (lane >= 16), column (j & 4) + (lane & 2) + (j & 1);
  // rows are weight columns n (8 h + row), columns are tokens m.
  __device__ __forceinline__ static void coord(int lane, int t, int& m, int& n) {
    const int i = 4 * ((lane >> 2) & 3) + t;
    const int h = i >> 3, j = i & 7;
    n = 8 * h + (lane & 1) + (j & 2) + 4 * (lane >> 4);
    m = (j & 4) + (lane & 2) + (j & 1);
  }
};

// This lane's 16-byte slot in the first k-tile of each of NT consecutive
// 16-column strips (tiles of a strip are 512 bytes apart along K). Strips past
// the end re-read the last real one; their results are never stored.
template <int NT>
__device__ __forceinline__ void weight_strips(const void* qweight, int nt0, int ntiles, int ktiles, int lane,
                                              const uint4* (&wptr)[NT], int (&ntc)[NT]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    ntc[nt] = min(nt0 + nt, ntiles - 1);
    wptr[nt] = reinterpret_cast<const uint4*>(qweight) + static_cast<size_t>(ntc[nt]) * ktiles * 32 + lane;
  }
}
template <int NT>
__device__ __forceinline__ void weight_strips(const GemmProblem& p, int nt0, int ntiles, int ktiles, int lane,
                                              const uint4* (&wptr)[NT], int (&ntc)[NT]) {
  weight_strips<NT>(p.qweight, nt0, ntiles, ktiles, lane, wptr, ntc);
}

// Grouped problems: block row `tile` of the grid -> its expert e and rows
// [m0, m_end) (m_end: the expert's last row + 1; the block takes up to bm of
// them). Tiles are numbered expert by expert, each expert ceil(rows / bm) of
// them; the tiles after the last expert's cover the rows of no expert (e = -1),
// which the block zeroes. All of them fit in ceil(M / bm) + min(num_batches, M)
// grid rows (grouped_grid_rows in problem.h). Every warp scans the offsets
// itself, 32 experts per step (a shuffle scan of the tile counts), so no
// barrier and no prep kernel. The offsets of kBatch steps (128 experts) are
// loaded before any is scanned: one L2 round trip instead of one per step,
// which every block of a decode-sized grouped GEMM waits for before its first
// weight load.
// Offsets are clamped into [0, M] and made non-decreasing on the fly.
__device__ __forceinline__ void resolve_group_tile(const GemmProblem& p, int bm, int tile, int& e, int& m0,
                                                   int& m_end) {
  constexpr int kBatch = 4;
  const int lane = threadIdx.x & 31;
  const int num = p.num_batches;
  int base = 0;  // tiles of the experts before this chunk
  int prev = 0;  // end row of the chunk before
  for (int c0 = 0; c0 < num; c0 += 32 * kBatch) {
    int lo_raw[kBatch], hi_raw[kBatch];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int i = c0 + 32 * j + lane;
      lo_raw[j] = i < num ? __ldg(p.row_offsets + i) : 0;
      hi_raw[j] = i < num ? __ldg(p.row_offsets + i + 1) : 0;
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int c = c0 + 32 * j;
      if (c >= num) break;
      int lo = 0, hi = 0;
      if (c + lane < num) {
        lo = min(max(lo_raw[j], 0), p.M);
        hi = min(max(hi_raw[j], lo), p.M);
      }
      const int cnt = ceil_div(hi - lo, bm);
      int incl = cnt;
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, incl, d);
        if (lane >= d) incl += v;
      }
      const int total = __shfl_sync(0xffffffffu, incl, 31);
      if (tile < base + total) {
        const int src = __ffs(__ballot_sync(0xffffffffu, base + incl > tile)) - 1;
        const int before = __shfl_sync(0xffffffffu, incl - cnt, src);
        e = c + src;
        m0 = __shfl_sync(0xffffffffu, lo, src) + (tile - base - before) * bm;
        m_end = __shfl_sync(0xffffffffu, hi, src);
        return;
      }
      base += total;
      prev = __shfl_sync(0xffffffffu, hi, 31);
      if (c + 32 >= num) prev = __shfl_sync(0xffffffffu, hi, (num - 1) & 31);
    }
  }
  e = -1;
  m0 = max(prev, min(max(__ldg(p.row_offsets + num), 0), p.M)) + (tile - base) * bm;
  m_end = p.M;
}

// Zeroes out rows [m0, min(m0 + bm, m_end)) x this block's columns (grouped
// problems' rows of no expert). Only the first K split writes: the split-K
// reduction skips these rows.
template <typename T>
__device__ __forceinline__ void zero_rows(const GemmProblem& p, int m0, int m_end, int bm, int n0, int ncols) {
  if (blockIdx.z != 0 || m0 >= m_end) return;
  const int rows = min(bm, m_end - m0);
  const int cols = min(ncols, p.N - n0);
  for (int idx = threadIdx.x; idx < rows * cols; idx += blockDim.x) {
    const int m = m0 + idx / cols;
    reinterpret_cast<T*>(p.out)[static_cast<size_t>(m) * p.out_row_stride + n0 + idx % cols] = from_float<T>(0.f);
  }
}

// The x row that output row `row` reads (grouped problems may gather).
__device__ __forceinline__ int x_row_of(const GemmProblem& p, int row) {
  return p.row_index == nullptr ? row : min(max(__ldg(p.row_index + row), 0), p.x_rows - 1);
}

// Epilogue store of one output: with a single K split, add the bias and round
// into out; otherwise park the fp32 partial in this split's workspace slice.
template <typename T>
__device__ __forceinline__ void store_result(const GemmProblem& p, int splits, int m, int n, float v) {
  if (splits == 1) {
    if (p.bias != nullptr) v += to_float(reinterpret_cast<const T*>(p.bias)[n]);
    reinterpret_cast<T*>(p.out)[static_cast<size_t>(m) * p.out_row_stride + n] = from_float<T>(v);
  } else {
    p.workspace[(static_cast<size_t>(blockIdx.z) * p.M + m) * p.N + n] = v;
  }
}

template <int MT, int NT>
struct StageRegs {
  uint4 w[NT];
  uint4 x[MT][2];
  uint2 sz[NT];
};

// Dynamic shared memory of one gemm_tc_kernel instantiation: the cp.async
// rings (sm80+) or, at the end, the cross-warp reduction, whichever is larger.
template <int MT, int NT, int KWARPS, int STAGES, bool kAsync>
struct SmemLayout {
  static constexpr int kThreads = KWARPS * 32;
  static constexpr int kRing = kAsync ? STAGES * kThreads * (NT * 16 + MT * 32 + NT * 8) : 0;
  static constexpr int kReduce = KWARPS > 1 ? KWARPS * MT * NT * 4 * 32 * 4 : 0;
  static constexpr int kBytes = (kRing > kReduce ? kRing : kReduce) + 16;
};

// A family (Fam) describes how its MMA sees the lanes:
//   kAcc                 fp32 accumulators per lane per (8 m x 16 n) tile
//   w_row(lane)          row r (0..7) of its weights: rows r and r + 8 of a tile
//   x_row(lane)          token row (0..7) of the activations it loads
//   x_koff(lane)         first of its 16 contiguous k inside a 64-k tile
//   supported<T>()       false where the arch lacks the instruction
//   dequant<T>(w, z, s, a)  one packed word -> 4 A-operand registers
//   dequant_offsets<T>(w, z, a), acc_row_half(i)   (kGroupScaled only) the same
//                        registers unscaled (q - z), and the row pair entry of accumulator i
//   mma<T>(c, a, b0, b1) a 16 n x 8 m x 16 k step
//   finish(c, own, lane) cross-lane reduction; leaves kOwn outputs per lane
//   coord(lane, t, m, n) where owned output t of a lane lands
//
// kGroupScaled (groups of >= 64 k, so one k-tile lies in one group): the MMAs of a
// k-tile take the exact q - z and accumulate into a zeroed tile; its scale is
// applied once per k-tile in fp32 (one fma per accumulator), not per weight in
// 16 bits (one multiply per register pair). In the decode kernels, which are
// issue-bound, that is 32 of ~170 instructions per k-tile of the 8 x 32 block for
// 8 fmas; the sums are also closer to exact (no 16-bit rounding of the weights).
// Smaller groups would split one MMA's k over two scales.
template <typename T, int MT, int NT, int KWARPS, int STAGES, class Fam, bool kAsyncWeights, bool kGroupScaled = false>
__global__ void __launch_bounds__(KWARPS * 32) gemm_tc_kernel(const GemmProblem p, const int splits, const int pdl_flags) {
  if constexpr (!Fam::template supported<T>()) {
    __trap();  // never launched: the dispatcher checks the family first
  } else {
    constexpr int kThreads = KWARPS * 32;
    constexpr int kAcc = Fam::kAcc;
    constexpr int kOwn = Fam::kOwn;
    constexpr int kAccPerWarp = MT * NT * kOwn;
    extern __shared__ uint4 smem[];  // SmemLayout<...>::kBytes, set by the launcher

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int koff = Fam::x_koff(lane);

    const int ktiles = padded_k(p.K) / kTileK;
    const int ntiles = padded_n(p.N) / kTileN;
    const int nt0 = blockIdx.x * NT;
    int m0 = blockIdx.y * (8 * MT);
    int m_end = p.M;  // rows this block may store: [m0, min(m0 + 8 MT, m_end))
    const void* qweight = p.qweight;
    const void* scale_zero = p.scale_zero;
    if (p.row_offsets != nullptr) {
      // PDL: the offsets and row indices come from the kernels just before.
      if (pdl_flags & kPdlLaunched) pdl_wait();
      int e;
      resolve_group_tile(p, 8 * MT, blockIdx.y, e, m0, m_end);
      if (e < 0) {
        zero_rows<T>(p, m0, m_end, 8 * MT, nt0 * kTileN, NT * kTileN);
        return;  // the whole block: no barrier has been reached
      }
      qweight = reinterpret_cast<const uint32_t*>(qweight) + e * p.qweight_batch_stride;
      scale_zero = reinterpret_cast<const T*>(scale_zero) + e * p.scale_zero_batch_stride;
    }

    const int per_split = ceil_div(ktiles, splits);
    const int kt_begin = blockIdx.z * per_split;
    const int kt_end = min(ktiles, kt_begin + per_split);
    const int first = kt_begin + warp;
    const int n_my = first < kt_end ? ceil_div(kt_end - first, KWARPS) : 0;

    // Column tiles past the end re-read the last real tile; their results are
    // never stored. Rows past M re-read row M - 1 for the same reason: column m
    // of the MMA output depends only on column m of B.
    const uint4* wptr[NT];
    int ntc[NT];
    weight_strips<NT>(qweight, nt0, ntiles, ktiles, lane, wptr, ntc);
    const T* xptr[MT];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int row = x_row_of(p, min(m0 + mt * 8 + Fam::x_row(lane), m_end - 1));
      xptr[mt] = reinterpret_cast<const T*>(p.x) + static_cast<size_t>(row) * p.x_row_stride + koff;
    }
    const uint2* szptr = reinterpret_cast<const uint2*>(scale_zero) + Fam::w_row(lane);

    float acc[MT][NT][kAcc];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < kAcc; ++i) acc[mt][nt][i] = 0.f;

    // cp.async rings, private to each thread (no barriers needed): weights
    // [STAGES][NT][kThreads], activations [STAGES][MT][2][kThreads], scale/zero
    // pairs [STAGES][NT][kThreads]. Keeping the whole pipeline in shared memory
    // instead of registers is what lets enough warps be resident.
    uint4* sw = smem;
    uint4* sx = sw + STAGES * NT * kThreads;
    uint2* ssz = reinterpret_cast<uint2*>(sx + STAGES * MT * 2 * kThreads);
    StageRegs<MT, NT> st[kAsyncWeights ? 1 : STAGES];

    // Copy sources, advanced by one step of KWARPS k-tiles per fetch: fetch(i) runs for i = 0, 1,
    // 2, ... in order, so each pointer adds a constant instead of being rebuilt from k. Rebuilding
    // them (64-bit address arithmetic and a division by the group size per tile) took ~70 of the
    // ~230 instructions per k-tile of the 8 x 32 decode block on sm_90a, and the decode kernels
    // are issue-bound (docs/perf-notes.md). Groups are powers of two no larger than one step
    // (32..128 vs KWARPS x 64 k), so a lane's group index also advances by a constant -- except
    // in one-warp blocks, whose 64-k step stays inside a group of 128 every other time.
    constexpr int kStepK = KWARPS * kTileK;
    const int gshift = 31 - __clz(p.group_size);
    int kx_next = first * kTileK + koff;
    const uint4* w_next[NT];
    const uint2* sz_next[NT];
    const size_t sz_step = static_cast<size_t>(kStepK >> gshift) * ntiles * 8;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      w_next[nt] = wptr[nt] + static_cast<size_t>(first) * 32;
      sz_next[nt] = szptr + (static_cast<size_t>(kx_next >> gshift) * ntiles + ntc[nt]) * 8;
    }
    const T* x_next[MT];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) x_next[mt] = xptr[mt] + first * kTileK;

    auto fetch = [&](StageRegs<MT, NT>& s, const int slot, const int i) {
      if (i < n_my) {
        // K tail: the padded weights are zero, and so must x be (0 * NaN).
        const bool x_real = kx_next < p.K;
        if constexpr (kAsyncWeights) {
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            cp_async_16(&sw[(slot * NT + nt) * kThreads + threadIdx.x], w_next[nt]);
            cp_async_8(&ssz[(slot * NT + nt) * kThreads + threadIdx.x], sz_next[nt]);
          }
          const int xbytes = x_real ? 16 : 0;
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            const T* src = x_real ? x_next[mt] : xptr[mt];  // no bytes are read past K
            cp_async_16_ca_zfill(&sx[((slot * MT + mt) * 2 + 0) * kThreads + threadIdx.x], src, xbytes);
            cp_async_16_ca_zfill(&sx[((slot * MT + mt) * 2 + 1) * kThreads + threadIdx.x], src + 8, xbytes);
          }
        } else {
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) s.w[nt] = ldg_stream_u4(w_next[nt]);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            if (x_real) {
              s.x[mt][0] = ldg_u4(x_next[mt]);
              s.x[mt][1] = ldg_u4(x_next[mt] + 8);
            } else {
              s.x[mt][0] = make_uint4(0, 0, 0, 0);
              s.x[mt][1] = make_uint4(0, 0, 0, 0);
            }
          }
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) s.sz[nt] = ldg_u2(sz_next[nt]);
        }
        size_t sz_advance = sz_step;
        if constexpr (kStepK < 128) {
          sz_advance = static_cast<size_t>(((kx_next + kStepK) >> gshift) - (kx_next >> gshift)) * ntiles * 8;
        }
        kx_next += kStepK;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          w_next[nt] += KWARPS * 32;
          sz_next[nt] += sz_advance;
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) x_next[mt] += kStepK;
      }
      if constexpr (kAsyncWeights) cp_async_commit();  // empty groups keep the count uniform
    };

    auto compute = [&](StageRegs<MT, NT>& staged, const int slot) {
      StageRegs<MT, NT> s;
      if constexpr (kAsyncWeights) {
        cp_async_wait<STAGES - 1>();
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          s.w[nt] = sw[(slot * NT + nt) * kThreads + threadIdx.x];
          s.sz[nt] = ssz[(slot * NT + nt) * kThreads + threadIdx.x];
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          s.x[mt][0] = sx[((slot * MT + mt) * 2 + 0) * kThreads + threadIdx.x];
          s.x[mt][1] = sx[((slot * MT + mt) * 2 + 1) * kThreads + threadIdx.x];
        }
      } else {
        s = staged;
      }
      const uint4* w = s.w;
      // kGroupScaled: the MMAs accumulate this k-tile's q - z products into `tile`, scaled into acc after.
      float tile[MT][NT][kGroupScaled ? kAcc : 1];
      uint32_t scale2[NT][2], zero2[NT][2];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        split_scale_zero(s.sz[nt].x, scale2[nt][0], zero2[nt][0]);  // kGroupScaled: scale2 unused
        split_scale_zero(s.sz[nt].y, scale2[nt][1], zero2[nt][1]);
        if constexpr (kGroupScaled) {
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int i = 0; i < kAcc; ++i) tile[mt][nt][i] = 0.f;
        }
      }
#pragma unroll
      for (int step = 0; step < 4; ++step) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const uint32_t word = step == 0 ? w[nt].x : step == 1 ? w[nt].y : step == 2 ? w[nt].z : w[nt].w;
          uint32_t a[4];
          if constexpr (kGroupScaled) {
            Fam::template dequant_offsets<T>(word, zero2[nt], a);
          } else {
            Fam::template dequant<T>(word, zero2[nt], scale2[nt], a);
          }
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            const uint4& xv = s.x[mt][step >> 1];
            float* c = kGroupScaled ? tile[mt][nt] : acc[mt][nt];
            Fam::template mma<T>(c, a, (step & 1) ? xv.z : xv.x, (step & 1) ? xv.w : xv.y);
          }
        }
      }
      if constexpr (kGroupScaled) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const float scale[2] = {scale_of_pair<T>(s.sz[nt].x), scale_of_pair<T>(s.sz[nt].y)};
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int i = 0; i < kAcc; ++i) acc[mt][nt][i] = fmaf(scale[Fam::acc_row_half(i)], tile[mt][nt][i], acc[mt][nt][i]);
        }
      }
    };

    // PDL: the previous kernel may still be draining; x is final after this.
    if (pdl_flags & kPdlLaunched) pdl_wait();

    constexpr int kRegStages = kAsyncWeights ? 1 : STAGES;
#pragma unroll
    for (int s = 0; s < STAGES; ++s) fetch(st[s % kRegStages], s, s);
    for (int i0 = 0; i0 < n_my; i0 += STAGES) {
#pragma unroll
      for (int s = 0; s < STAGES; ++s) {
        if (i0 + s < n_my) compute(st[s % kRegStages], s);
        fetch(st[s % kRegStages], s, i0 + s + STAGES);
      }
    }

    // The next kernel may start its own prologue now; its pdl_wait() still
    // waits for this grid to finish, stores included.
    if (pdl_flags & kPdlEarlyTrigger) pdl_launch_dependents();

    // Epilogue: each lane owns kOwn outputs per (mt, nt) tile after finish();
    // owned value idx = (mt * NT + nt) * kOwn + t of lane ln -> (m, n).
    float own[MT][NT][kOwn];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) Fam::finish(acc[mt][nt], own[mt][nt], lane);

    auto store = [&](const int idx, const int ln, const float v) {
      const int mt = idx / (NT * kOwn);
      const int nt = (idx / kOwn) % NT;
      int mo, no;
      Fam::coord(ln, idx % kOwn, mo, no);
      const int m = m0 + mt * 8 + mo;
      const int n = (nt0 + nt) * kTileN + no;
      if (m < m_end && n < p.N) store_result<T>(p, splits, m, n, v);
    };

    if constexpr (KWARPS > 1) {
      if constexpr (kAsyncWeights) cp_async_wait<0>();
      __syncthreads();
      float* red = reinterpret_cast<float*>(smem);  // [KWARPS][kAccPerWarp][32]
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int t = 0; t < kOwn; ++t) red[(warp * kAccPerWarp + (mt * NT + nt) * kOwn + t) * 32 + lane] = own[mt][nt][t];
      __syncthreads();
      for (int e = threadIdx.x; e < kAccPerWarp * 32; e += kThreads) {
        float v = 0.f;
#pragma unroll
        for (int w = 0; w < KWARPS; ++w) v += red[w * kAccPerWarp * 32 + e];
        store(e >> 5, e & 31, v);
      }
    } else {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int t = 0; t < kOwn; ++t) store((mt * NT + nt) * kOwn + t, lane, own[mt][nt][t]);
    }
  }
}

}  // namespace awqgemm
