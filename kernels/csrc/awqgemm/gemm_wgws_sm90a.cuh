// Hopper (sm_90a) wgmma kernel v11: warp-specialized and persistent.
//
// Why (docs/perf-notes.md, v9.3/v9.4): in the v9 kernel every warp copies its
// share of each stage, dequantizes and issues wgmma, and a __syncthreads per
// 64-k tile publishes the stage; ncu found it issue-bound with the barrier
// exposed, at 1.3-1.7x cuBLAS time where Machete (also register-A wgmma) runs
// at 1.0-1.17x. Here:
//   * one producer thread moves whole stages with the TMA engine: the 8
//     weight tiles (each 16 n x 64 k = 512 contiguous bytes of packed layout
//     1, ktiles * 512 bytes apart) as ONE 2-D tensor copy (v11.1, below), the
//     (scale, zero) row(s) of the k-tile's group(s) and the x tile as 1-D bulk
//     copies. x was written once per call by stage_x_tiles_kernel already in
//     the A fragments' k order AND already swizzled, tile-major ([k-tile][M]
//     [128 bytes]), so a tile of BM tokens is one contiguous copy and lands in
//     shared memory exactly as the 128-byte-swizzle descriptor reads it;
//   * two consumer warpgroups (64 columns each) only read their weight word
//     and (scale, zero) pair from shared memory, dequantize into the A
//     registers and issue wgmma; they hand a stage back through an mbarrier
//     once the wgmmas that read it have retired. No block barrier in the loop;
//   * persistent: about one block per SM walks the (m-block, n-block, K
//     split) work units with a static stride, so the producer fills the ring
//     for the next unit while the consumers store the last one.
//
// Ring protocol, per slot s (both sides count k-tiles over all their units in
// the same order, so slot and phase agree without any exchange):
//   full[s]:  1 arrival (the producer's arrive.expect_tx of the stage's bytes)
//             + the bulk copies' complete_tx; consumers wait on it.
//   empty[s]: 32 kWsConsumerWarps arrivals (every consumer thread, after its
//             wgmma.wait_group retired the wgmmas that read the slot);
//             the producer waits on it before refilling.
// Use number r of a slot (r = 0, 1, ...) is phase r of full[s]: consumers
// wait for parity r & 1. The producer's r-th fill needs empty's phase r - 1
// done: parity (r & 1) ^ 1, which a fresh barrier reports as complete for
// r = 0 (try_wait.parity returns true for the phase before the current one).
//
// Proxies: the bulk copies write through the async proxy and complete_tx on
// the mbarrier makes the bytes visible to whoever observes the phase flip,
// for wgmma (async proxy) and for the consumers' ld.shared alike; the only
// generic-proxy write the async proxy must see is mbarrier.init
// (fence.mbarrier_init before the one __syncthreads).
//
// v11.1: v11 issued 11 bulk copies per stage (8 weight tiles from lanes 0-7,
// scale/zero rows from 8-9, x from 10). cp.async.bulk takes its operands in
// uniform registers, so ptxas turned the per-lane copies into a loop over
// the lanes (ELECT, R2UR x 4, UBLKCP, BRA.U.ANY: one copy per trip) and the
// TMA engine got eleven 64-512-byte requests per k-tile. On the H200 v11 ran
// ~3.7x its tensor and dequantization budget at 64-token tiles (perf-notes),
// i.e. ~1,100 cycles per k-tile against ~256 of wgmma. Now one thread issues
// 3 (4 with groups of 32) requests per stage, the weights as one 8 x 512-byte
// box of a tensor map over the packed weight seen as [column tiles][ktiles *
// 512 bytes]. Rows of the box past the last column tile are zero-filled and
// still count toward the transaction bytes.
#pragma once

#include <type_traits>

#include "gemm_tile.cuh"
#include "wgmma_sm90a.cuh"

namespace awqgemm {

// The driver's CUtensorMap: 128 opaque bytes, 64-byte aligned. Declared here
// so that the build needs no cuda.h (the conda packages build against
// cuda-cudart-dev only); filled on the host by cuTensorMapEncodeTiled, passed
// to the kernel as a __grid_constant__ parameter.
struct alignas(64) TensorMap128 {
  unsigned long long opaque[16];
};

// Register reallocation between warpgroups (all 4 warps of a warpgroup execute it).
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
// Spins inside the asm (labels are local to the braces): the loop is not a
// branch the compiler sees, so it cannot move accumulator copies around it
// (a visible branch near wgmmas once made ptxas serialize them, C7513).
// A wait that has neither completed after kWsHangNs nor within kWsHangTries
// failed tries traps: a wrong phase or byte count would otherwise hang the GPU
// run (and the device session with it); a trap fails that test process with a
// launch failure instead. Both limits must pass: under compute-sanitizer every
// instruction is slowed (v11's racecheck runs trapped on the time limit alone),
// and the tries, themselves slowed, then take far longer than 30 s to add up.
// Legitimate waits are one unit's main loop; the clock is read only once the
// first try failed.
constexpr unsigned long long kWsHangNs = 30ull * 1000 * 1000 * 1000;
constexpr unsigned kWsHangTries = 1u << 24;
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred p;\n.reg .u64 t0, t1;\n.reg .u32 n;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@p bra AWQ_WS_DONE;\n"
      "mov.u64 t0, %%globaltimer;\n"
      "mov.u32 n, 0;\n"
      "AWQ_WS_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@p bra AWQ_WS_DONE;\n"
      "add.u32 n, n, 1;\n"
      "mov.u64 t1, %%globaltimer;\n"
      "sub.u64 t1, t1, t0;\n"
      "setp.gt.u64 p, t1, %2;\n"
      "setp.gt.and.u32 p, n, %3, p;\n"
      "@p trap;\n"
      "bra AWQ_WS_WAIT;\n"
      "AWQ_WS_DONE:\n}\n" ::"r"(bar),
      "r"(parity), "l"(kWsHangNs), "r"(kWsHangTries)
      : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// A predicated arrive (no branch in the consumer loop).
__device__ __forceinline__ void mbar_arrive_if(uint32_t bar, uint32_t pred) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.u32 p, %1, 0;\n@p mbarrier.arrive.shared::cta.b64 _, [%0];\n}\n" ::"r"(bar),
      "r"(pred)
      : "memory");
}
// 1D bulk copy global -> this CTA's shared memory (16-byte aligned, size a
// multiple of 16), completing `bytes` of the mbarrier's transaction count.
__device__ __forceinline__ void bulk_g2s(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}

// The stream-K flags (see WsSchedule): raised with release semantics after the
// slot's stores, awaited with acquire (and the hang trap of mbar_wait).
__device__ __forceinline__ void flag_raise(int* flag) {
  asm volatile("st.release.gpu.global.u32 [%0], 1;\n" ::"l"(flag) : "memory");
}
__device__ __forceinline__ void flag_wait(const int* flag) {
  unsigned v = 0, n = 0;
  unsigned long long t0 = 0;
  for (;;) {
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(flag) : "memory");
    if (v != 0) return;
    if (n == 0) asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t0));
    unsigned long long t1;
    asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t1));
    if (++n > kWsHangTries && t1 - t0 > kWsHangNs) __trap();
    __nanosleep(64);
  }
}
// The consumer warps only (named barrier 1; the producer warpgroup has left): 256 threads, 512 with
// four consumer warpgroups.
template <int kThreads = 256>
__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, %0;\n" ::"n"(kThreads) : "memory"); }

// A 2-D tensor copy global -> this CTA's shared memory: box at element
// coordinates (c0 innermost, c1), completing its bytes on the mbarrier.
__device__ __forceinline__ void tma_g2s_2d(uint32_t dst, const TensorMap128* map, int c0, int c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
// The same from a 3-D map (grouped problems: the third coordinate is the expert).
__device__ __forceinline__ void tma_g2s_3d(uint32_t dst, const TensorMap128* map, int c0, int c1, int c2,
                                           uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}

// The first actual k (within its 64-k tile) of staged 16-byte chunk c: the pair 16 q' later is the
// chunk's q'-th (both staging kernels).
__device__ __forceinline__ int staged_chunk_k(int c) { return 4 * (c >> 1) + 2 * (c & 1); }

// x rows [m0, m0 + rows) -> xs[k-tile][rows][64], each 128-byte row in the A
// fragments' k order (16-byte chunk c = 2 s + h holds, for q' = 0..3, the pair
// at actual k 16 q' + 4 s + 2 h + {0, 1}, which the A fragment of step s reads as
// logical k 8 h + 2 q' + {0, 1}: packed layout 1's k permutation) and with the
// 128-byte swizzle applied (chunk c of row r stored at chunk c ^ (r & 7)).
// Work-unit tiles start at multiples of BM (>= 8) rows, so r & 7 is also the
// row's index within its 1024-byte swizzle atom in shared memory. Zeros past K.
// One thread per 16-byte output chunk, consecutive threads writing
// consecutive chunks.
// It also clears the stream-K flags (nflags of them; the GEMM after it raises
// them): the workspace comes from torch's allocator uncleared.
template <typename T>
__global__ void stage_x_tiles_kernel(const GemmProblem p, const int m0, const int rows, T* xs, int* flags,
                                     const int nflags) {
  pdl_wait();  // x may still be being written, and xs and the flags still read, by the previous kernel
  if (blockIdx.x == 0) {
    for (int i = threadIdx.x; i < nflags; i += blockDim.x) flags[i] = 0;
  }
  const int ktiles = padded_k(p.K) / kTileK;
  const int64_t chunks = static_cast<int64_t>(ktiles) * rows * 8;
  const T* x = reinterpret_cast<const T*>(p.x);
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < chunks;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(idx & 7);
    const int64_t row_of_all = idx >> 3;  // kt * rows + r
    const int r = static_cast<int>(row_of_all % rows);
    const int kt = static_cast<int>(row_of_all / rows);
    const int k0 = kTileK * kt + staged_chunk_k(c);
    const T* src = x + static_cast<int64_t>(m0 + r) * p.x_row_stride;
    uint32_t v[4];
#pragma unroll
    for (int qq = 0; qq < 4; ++qq) {
      const int k = k0 + 16 * qq;
      v[qq] = k < p.K ? *reinterpret_cast<const uint32_t*>(src + k) : 0u;
    }
    *reinterpret_cast<uint4*>(xs + row_of_all * 64 + 8 * (c ^ (r & 7))) = make_uint4(v[0], v[1], v[2], v[3]);
  }
  pdl_launch_dependents();  // the GEMM's pdl_wait still covers all of this grid
}

// Grouped problems: the token tiles, one warp per tile through resolve_group_tile -- the same tiles,
// rows of no expert and clamping as the K-split kernel's -- written once per call for every launch of
// the call to read.
__global__ void grouped_ws_tiles_kernel(const GemmProblem p, const int bm, WsGroupTile* tiles, const int count) {
  pdl_wait();  // the offsets come from the routing kernel just before
  const int tile = static_cast<int>(blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5));
  if (tile < count) {  // warp-uniform: resolve_group_tile shuffles across the warp
    WsGroupTile t{};
    resolve_group_tile(p, bm, tile, t.e, t.m0, t.m_end);
    if ((threadIdx.x & 31) == 0) tiles[tile] = t;
  }
  pdl_launch_dependents();
}

// Grouped x staging: the rows of tiles [t0, t0 + count) -- x rows gathered through row_index --
// to staged rows (tile - t0) * BM + r of xs[k-tile][count * BM][64], in stage_x_tiles_kernel's k
// order and swizzle; r & 7 is the row's place in its swizzle atom because every tile starts at a
// multiple of BM staged rows. Rows past a tile's end are not written (the GEMM copies only a
// tile's rows). One thread per (staged row, 16-byte chunk) walks the k-tiles, so the tile entry and
// the gathered row are looked up once per row, not once per k-tile, and consecutive threads still
// write consecutive chunks of one k-tile.
template <typename T, int BM>
__global__ void stage_x_grouped_kernel(const GemmProblem p, const WsGroupTile* tiles, const int t0, const int count,
                                       T* xs) {
  pdl_wait();  // the tile table, and (chunks after the first) the previous GEMM still reading xs
  const int ktiles = padded_k(p.K) / kTileK;
  const int rows_all = count * BM;  // <= kWgMaxStagedXBytes / 128: an int
  const T* x = reinterpret_cast<const T*>(p.x);
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < rows_all * 8; idx += gridDim.x * blockDim.x) {
    const int c = idx & 7;
    const int rr = idx >> 3;  // j * BM + r
    const int r = rr % BM;
    const WsGroupTile t = tiles[t0 + rr / BM];
    if (t.e < 0 || t.m0 + r >= t.m_end) continue;
    const int k_in_tile = staged_chunk_k(c);
    const T* src = x + static_cast<int64_t>(x_row_of(p, t.m0 + r)) * p.x_row_stride + k_in_tile;
    T* dst = xs + static_cast<int64_t>(rr) * 64 + 8 * (c ^ (r & 7));
    // Four k-tiles' loads before their stores: the compiler may not move a load of x above a store
    // to xs (it cannot tell they do not alias), so a plain loop would wait out one round trip per k-tile.
    constexpr int kBatch = 4;
    for (int kt0 = 0; kt0 < ktiles; kt0 += kBatch) {
      uint32_t v[kBatch][4];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
#pragma unroll
        for (int qq = 0; qq < 4; ++qq) {
          const int k = kTileK * (kt0 + b) + 16 * qq;  // + k_in_tile: src starts there
          v[b][qq] = k + k_in_tile < p.K ? *reinterpret_cast<const uint32_t*>(src + k) : 0u;
        }
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        if (kt0 + b < ktiles) {
          *reinterpret_cast<uint4*>(dst + static_cast<int64_t>(kt0 + b) * rows_all * 64) =
              make_uint4(v[b][0], v[b][1], v[b][2], v[b][3]);
        }
      }
    }
  }
  pdl_launch_dependents();
}

// This launch's token tiles of a grouped problem (kGrouped): unit m-block mb is tile t0 + mb.
struct WsGroup {
  const WsGroupTile* tiles;
  int t0;
};

// Work unit u -> (m-block, n-block, K split), m fastest: the blocks running at
// the same time share n-blocks, so a weight tile comes from DRAM once and the
// other m-blocks find it in L2 (x is the smaller, re-read operand).
struct WsUnit {
  int mb, nb, split;
};
__device__ __forceinline__ WsUnit ws_unit(int u, int mblocks, int nblocks) {
  const int rest = u / mblocks;
  return {u - rest * mblocks, rest % nblocks, rest / nblocks};
}

// The producer side's walk over a CTA's work: whole units, then (stream-K) the tail's pieces, in the
// consumers' order.
template <bool kStreamK, class F>
__device__ __forceinline__ void for_each_produced_piece(const WsSchedule& sched, F&& produce) {
#pragma unroll 1
  for (int u = blockIdx.x; u < sched.full; u += gridDim.x) produce(WsPiece{u, 0, sched.unit_tiles, kWsWhole});
  if constexpr (kStreamK) {
    WsCursor cur(sched, blockIdx.x, /*tail_only=*/true);
    WsPiece pc;
#pragma unroll 1
    while (cur.next(pc)) produce(pc);
  }
}
// The next ring slot, and the phase flipped on wrapping.
template <int STAGES>
__device__ __forceinline__ void ring_next(int& slot, uint32_t& phase) {
  const uint32_t wrap = slot + 1 == STAGES;
  slot = wrap ? 0 : slot + 1;
  phase ^= wrap;
}

// A thread's 16-byte word of one weight tile in shared memory and its (scale, zero) pair, dequantized
// into the A fragments of the tile's 4 k16 steps (v11.1's consumers and the v9 kernel).
template <typename T>
__device__ __forceinline__ void dequant_smem_tile(const unsigned char* w, const unsigned char* szp,
                                                uint32_t (&a)[4][4]) {
  const uint4 wv = *reinterpret_cast<const uint4*>(w);
  const uint2 sz = *reinterpret_cast<const uint2*>(szp);
  uint32_t scale2[2], zero2[2];
  split_scale_zero(sz.x, scale2[0], zero2[0]);
  split_scale_zero(sz.y, scale2[1], zero2[1]);
  dequant_word<T, true>(wv.x, zero2, scale2, a[0]);
  dequant_word<T, true>(wv.y, zero2, scale2, a[1]);
  dequant_word<T, true>(wv.z, zero2, scale2, a[2]);
  dequant_word<T, true>(wv.w, zero2, scale2, a[3]);
}

// A value ptxas must keep in a register: without it, it recomputed the kTmaX consumers' per-thread
// offsets from the thread index in every k-tile (~25 instructions per k-tile at BM 128).
__device__ __forceinline__ uint32_t opaque_u32(uint32_t v) {
  asm volatile("mov.b32 %0, %0;\n" : "+r"(v));
  return v;
}

// kTmaX (TileConfig::tma_x, dense plans): the same A fragments with lane (g, q)'s
// registers at actual k = 16 s + 2 q + {0, 1, 8, 9} in step s -- the wgmma's own k order, so B is x
// as the TMA copies it from the caller's tensor, no staging kernel. Layout 1 keeps those k's in lane
// (g, s)'s words q >> 1 (k 16 s + 4 (q >> 1) + 0..3) and 2 + (q >> 1): each step reads those two
// words of the quad's lane s, and one prmt keeps the two bytes of each (those of k offsets
// 2 (q & 1) + {0, 1}, rows g and g + 8) in the byte places dequant_word reads registers 0-3 from.
// The stage's weight tiles come through the 128-byte swizzle (weight map 3-D, 128-byte lines), so
// the 8 distinct 16-byte chunks a warp's step reads sit in 8 different bank groups: one wavefront
// per load. w[s]: the offset in the stage of this thread's swizzled chunk of step s, q >> 1 words in.
// Groups of 64 and 128 only: with 32 the group would change with the step (s >> 1), not with the lane,
// and the second (scale, zero) set cost ~8 instructions per k-tile in every kernel; launch_ws stages x
// for those.
// The weight words are loaded through the stage's shared address plus the thread's offset, so each
// is one LDS [R + UR (+ 8)]: through the generic pointer ptxas copied the slot's offset into a vector
// register and added it per step (4 IADD3 per tile and k-tile, 3 % of the 64-token kernels' k-loop).
// The (scale, zero) load stays generic: asked the same way, ptxas rebuilt the ring's aligned base in
// uniform registers every k-tile instead, which cost more than it saved.
template <typename T>
__device__ __forceinline__ void dequant_smem_tile_natural(const unsigned char* stage, const uint32_t (&w)[4],
                                                        const unsigned char* szp, uint32_t prmt_sel,
                                                        uint32_t (&a)[4][4]) {
  const uint2 sz = *reinterpret_cast<const uint2*>(szp);
  uint32_t scale2[2], zero2[2];
  split_scale_zero(sz.x, scale2[0], zero2[0]);
  split_scale_zero(sz.y, scale2[1], zero2[1]);
  const uint32_t st = static_cast<uint32_t>(__cvta_generic_to_shared(stage));
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    uint32_t lo, hi;  // volatile: kept after the stage's full-barrier wait (itself a volatile asm)
    asm volatile("ld.shared.b32 %0, [%2];\n\tld.shared.b32 %1, [%2+8];\n" : "=r"(lo), "=r"(hi) : "r"(st + w[s]));
    uint32_t word;
    asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(word) : "r"(lo), "r"(hi), "r"(prmt_sel));
    dequant_word<T, true>(word, zero2, scale2, a[s]);
  }
}

// p.x is the staged x (stage_x_tiles_kernel) of p.M rows (kTmaX: the caller's x, read through xmap);
// out, bias and the split-K workspace ([splits][M][N] fp32) as in the other kernels.
// kStreamK (splits == 1): the workspace holds the tail's flags and slots
// (ws_stream_k_bytes(gridDim.x, BM, kNB)). Its own instantiation: with the
// tail's loops compiled in, ptxas moved the producer's ring position and copy
// operands of the whole-unit loop to per-thread registers (an R2UR before each
// copy), and v11.1 ran 5-8 % slower at identical K-split plans than before the
// stream-K tail (H200 A/B against 9286671 in one session: ci/device_ab.sh).
// NTW = ws_ntw(BM): weight tiles per consumer warp. 1: a block covers 8 column
// tiles (128 columns); 2 (BM = 64): 16 tiles, 256 columns, warp w owning tiles w
// and w + 8 -- twice the MMA work per stage wait and half the x bytes per weight
// byte, for decode batches whose k-tiles ncu found waiting on the stage (the
// 128-column block at M = 64: 646 cycles per k-tile against 212 of tensor time).
// kGrouped (one K split, no stream-K): p.x is the staged x of this launch's grp tiles
// (stage_x_grouped_kernel), p.M their count x BM; a unit's
// rows are its tile's ([m0, m_end) of out), its weights and scales its tile's expert's (wmap is 3-D:
// [expert][column tile][ktiles x 128 words]); the units of tiles of no expert skip the k-loop and
// store zeros. Its own instantiation, like kStreamK.
// The tensor-map parameter: the weight's map, and with kTmaX x's map after it. The kernels without kTmaX
// keep the parameter (and code) they had: a second parameter, or __grid_constant__ on the WsGroup one,
// changed the grouped kernels' code (nvcc loaded WsGroup bytewise, or through LDC).
template <bool kTmaX>
struct WsMaps {
  using type = TensorMap128;
};
template <>
struct WsMaps<true> {
  struct type {
    TensorMap128 w, x;
  };
};
// The weight's map in it (as an expression on the parameter: a pointer variable captured by the
// producer's lambdas put it on the stack).
template <bool kTmaX>
__device__ __forceinline__ const TensorMap128* ws_weight_map(const typename WsMaps<kTmaX>::type& maps) {
  if constexpr (kTmaX) {
    return &maps.w;
  } else {
    return &maps;
  }
}

template <typename T, int BM, int STAGES, bool kStreamK, bool kGrouped = false, bool kTmaX = false, int kCWG = 2>
__global__ void __launch_bounds__(ws_threads(kCWG), 1) gemm_ws_kernel(const GemmProblem p, const int splits,
                                                                       const int pdl_flags,
                                                                       const __grid_constant__
                                                                       typename WsMaps<kTmaX>::type maps,
                                                                       const WsGroup grp) {
#if defined(AWQGEMM_NO_WGMMA)
  __trap();
#else
  constexpr int NTW = ws_ntw(BM);
  constexpr int kNB = kWgNT * NTW;           // column tiles per block
  // Consumer warps and the weight tiles each owns (kCWG = 4, TileConfig::four_wg: 16 warps of one tile
  // at BM 48 / 64; otherwise NTWC = NTW). Warp w's tile j is w + kCWarps j.
  constexpr int kCWarps = 4 * kCWG;
  constexpr int kCThreads = 32 * kCWarps;
  constexpr int NTWC = kNB / kCWarps;
  static_assert(kCWG == 2 || (kCWG == 4 && NTWC == 1 && kTmaX), "four consumer warpgroups: BM <= 64 (16 tiles, one "
                                                                "per consumer warp), x through the map");
  constexpr int kStage = ws_stage_bytes(BM);
  constexpr int kWOff = BM * 128;            // kNB weight tiles of 512 bytes after the x tile
  constexpr int kSzOff = kWOff + kNB * 512;  // (scale, zero) rows: [0] for k 0..31 of the tile, [1] for 32..63
  constexpr int kSzRow = kNB * 64;           // bytes of one (scale, zero) row of the block
  static_assert(kStage % 1024 == 0, "every stage's x tile starts on a swizzle atom");
  static_assert(!kTmaX || (!kGrouped && kWOff % 1024 == 0), "kTmaX: dense, weight tiles on a swizzle atom");
  // kTmaX: groups of 64 / 128 (launch_ws_tma_x), one (scale, zero) row per stage.
  // full[0..STAGES), empty[0..STAGES)
  __shared__ uint64_t bars[2 * STAGES];
  extern __shared__ uint4 smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t base = (raw + 1023u) & ~1023u;
  const unsigned char* const sbase = reinterpret_cast<const unsigned char*>(smem_raw) + (base - raw);
  const uint32_t full0 = static_cast<uint32_t>(__cvta_generic_to_shared(bars));
  const uint32_t empty0 = full0 + 8 * STAGES;

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  if (tid == 0) {
#pragma unroll 1
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full0 + 8 * s, 1);
      mbar_init(empty0 + 8 * s, kCThreads);
    }
    mbar_init_fence();
  }
  __syncthreads();  // the only block barrier: the ring's barriers exist for everyone
  // Everyone waits: the producer reads x, the consumers write out / workspace.
  if (pdl_flags & kPdlLaunched) pdl_wait();

  const int ktiles = padded_k(p.K) / kTileK;
  const int ntiles = padded_n(p.N) / kTileN;
  const int nblocks = ceil_div(ntiles, kNB);
  const int mblocks = ceil_div(p.M, BM);
  const int per_split = ceil_div(ktiles, splits);
  const int units = nblocks * mblocks * splits;
  const WsSchedule sched(units, per_split, gridDim.x, kStreamK);
  // Group sizes are 32, 64, 128: a shift. With 32 a k-tile spans two groups
  // (lanes q = 0, 1 and q = 2, 3), so its stage carries two (scale, zero) rows.
  const int gshift = 31 - __clz(p.group_size);
  const int sz_rows = gshift == 5 ? 2 : 1;

  if (warp >= kCWarps) {
    setmaxnreg_dec<ws_producer_regs(kCWG)>();
    // One thread issues every copy: the operands of a bulk copy live in
    // uniform registers, so per-lane copies would be issued one lane at a time.
    if (warp != kCWarps || lane != 0) return;
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(ws_weight_map<kTmaX>(maps)))
                 : "memory");
    if constexpr (kTmaX) {
      asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&maps.x)) : "memory");
    }
    const unsigned char* const szsrc = reinterpret_cast<const unsigned char*>(p.scale_zero);
    const unsigned char* const xsrc = reinterpret_cast<const unsigned char*>(p.x);
    int slot = 0;
    uint32_t phase = 0;
    // A stage's weight box (128 words = one tile's 512 bytes of k-tile kt, kNB column tiles from kNB nb)
    // and its (scale, zero) row(s).
    // kGrouped: expert e's box (third coordinate) and scale rows (sz: its scale_zero).
    auto copy_weights = [&](uint32_t st, uint32_t full, int kt, int nb, int nvalid, int e,
                            const unsigned char* sz) {
      if constexpr (kGrouped) {
        tma_g2s_3d(st + kWOff, ws_weight_map<kTmaX>(maps), kt * kWordsPerTile, kNB * nb, e, full);
      } else if constexpr (kTmaX) {
        // [tiles][4 lines of k-tile kt][32 words]
        tma_g2s_3d(st + kWOff, ws_weight_map<kTmaX>(maps), 0, 4 * kt, kNB * nb, full);
      } else {
        tma_g2s_2d(st + kWOff, ws_weight_map<kTmaX>(maps), kt * kWordsPerTile, kNB * nb, full);
      }
#pragma unroll 1
      for (int r = 0; r < sz_rows; ++r) {
        const int g = (kt * kTileK + 32 * r) >> gshift;
        bulk_g2s(st + kSzOff + kSzRow * r, sz + (static_cast<int64_t>(g) * ntiles + kNB * nb) * 64, nvalid * 64, full);
      }
    };
    auto produce = [&](const WsPiece& pc) {
      const WsUnit w = ws_unit(pc.unit, mblocks, nblocks);
      const int kt0 = w.split * per_split + pc.kt0;
      int n_k = max(0, min(ktiles, kt0 + pc.n_k) - kt0);
      // Scale rows past N (a TP shard's last n-block) and x rows past M are
      // not copied: they feed only outputs that are never stored. The weight
      // box is always whole (kNB x 512 bytes; rows past the last tile are zeros).
      const int nvalid = min(kNB, ntiles - kNB * w.nb);
      int rows = min(BM, p.M - w.mb * BM);
      int e = 0;
      const unsigned char* sz = szsrc;
      if constexpr (kGrouped) {
        const WsGroupTile t = grp.tiles[grp.t0 + w.mb];
        e = t.e;
        rows = min(BM, t.m_end - t.m0);
        if (e < 0) n_k = 0;  // rows of no expert: the consumers store zeros
        sz = szsrc + static_cast<int64_t>(max(e, 0)) * p.scale_zero_batch_stride * static_cast<int64_t>(sizeof(T));
      }
      // kTmaX: the x box is always BM rows (those past M zero-filled, and counted).
      const uint32_t bytes = static_cast<uint32_t>((kTmaX ? BM : rows) * 128 + kNB * 512 + sz_rows * nvalid * 64);
      const unsigned char* const xunit = xsrc + (static_cast<int64_t>(kt0) * p.M + w.mb * BM) * 128;
      const int64_t x_step = static_cast<int64_t>(p.M) * 128;  // bytes per k-tile
#pragma unroll 1
      for (int i = 0; i < n_k; ++i) {
        mbar_wait(empty0 + 8 * slot, phase ^ 1);
        const uint32_t full = full0 + 8 * slot;
        const uint32_t st = base + slot * kStage;
        mbar_arrive_expect_tx(full, bytes);
        copy_weights(st, full, kt0 + i, w.nb, nvalid, e, sz);
        if constexpr (kTmaX) {
          tma_g2s_2d(st, &maps.x, (kt0 + i) * kTileK, w.mb * BM, full);
        } else {
          bulk_g2s(st, xunit + i * x_step, rows * 128, full);
        }
        ring_next<STAGES>(slot, phase);
      }
    };
    for_each_produced_piece<kStreamK>(sched, produce);
    return;  // in-flight copies complete into the CTA, which the consumers keep alive
  }

  setmaxnreg_inc<ws_consumer_regs(kCWG)>();
  // ---- consumers: warp w (0..7) owns weight tile w (and w + 8 when NTW = 2; kCWG = 4: warp 0..15, tile w) of
  // each unit, i.e. rows 16 (w & 3) .. + 15 of its warpgroup's 64-row A (of each A).
  const int g = lane >> 2;
  const int q = lane & 3;
  const uint32_t w_off = kWOff + warp * 512 + lane * 16;  // tile j: + kCWarps j * 512
  const uint32_t sz_off = kSzOff + (sz_rows == 2 ? (q >> 1) * kSzRow : 0) + warp * 64 + g * 8;  // + kCWarps j * 64
  // kTmaX: step s reads lane 4 g + s's 16 bytes of tile t = warp (+ 8 j), q >> 1 words in; their line
  // in the stage is 4 t + g / 2, i.e. 4 (warp & 1) + g / 2 mod 8 for tiles w and w + 8 alike, which the
  // swizzle XORs into the chunk index. prmt keeps bytes (q & 1) and 2 + (q & 1) of each word.
  [[maybe_unused]] uint32_t w_nat[4] = {0, 0, 0, 0};
  [[maybe_unused]] uint32_t prmt_sel = 0;
  if constexpr (kTmaX) {
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      const uint32_t plain = g * 64 + 16 * s;
      w_nat[s] = opaque_u32(kWOff + warp * 512 + (plain ^ (((4 * (warp & 1) + (g >> 1)) & 7) << 4)) + 4 * (q >> 1));
    }
    prmt_sel = opaque_u32(0x6240u + 0x1111u * static_cast<uint32_t>(q & 1));
  }
  uint32_t a[2][NTWC][4][4];
  zero_a_sets(a);
  int slot = 0;
  uint32_t phase = 0;
  // B descriptors: the start-address field is (address >> 4) in bits 0-13 and
  // every shared address here is < 256 KiB, so the descriptor of slot s, step
  // k is the ring base's plus (s * kStage + 32 k) >> 4 in the low word, with no
  // carry out of the field. One add per wgmma instead of the mask-and-shift
  // of sw128_kmajor_desc (ptxas had ~4 uniform instructions per descriptor).
  const uint64_t desc_base = sw128_kmajor_desc(base);
  const uint32_t desc_lo = static_cast<uint32_t>(desc_base);
  const uint32_t desc_hi = static_cast<uint32_t>(desc_base >> 32);

  // Stream-K tail: flags, then per CTA a slot of NTWC x BM / 2 partials per consumer thread, [j][i][thread].
  int* const flags = reinterpret_cast<int*>(p.workspace);
  float* const slots = p.workspace + ws_flag_bytes(gridDim.x) / 4;
  // One piece: its k-loop, then (stream-K tail) parking or collecting partials, then the epilogue.
  // The role is a compile-time tag: see the loops below.
  auto run_piece = [&](const WsPiece& pc, auto role_tag) {
    constexpr int kRole = decltype(role_tag)::value;
    const WsUnit w = ws_unit(pc.unit, mblocks, nblocks);
    const int kt0 = w.split * per_split + pc.kt0;
    int n_k = max(0, min(ktiles, kt0 + pc.n_k) - kt0);
    WsGroupTile tile{0, 0, 0, 0};  // kGrouped: this unit's rows of out
    if constexpr (kGrouped) {
      tile = grp.tiles[grp.t0 + w.mb];
      if (tile.e < 0) n_k = 0;  // the producer skips it too; the epilogue stores the zeroed accumulators
    }
    float acc[NTWC][BM / 2];
#pragma unroll
    for (int j = 0; j < NTWC; ++j)
#pragma unroll
      for (int i = 0; i < BM / 2; ++i) acc[j][i] = 0.f;
    uint32_t prev_empty = empty0;
    uint32_t have_prev = 0;
    // Tile i is dequantized into one register set while tile i - 1's wgmmas
    // run from the other; wait_group 1 after tile i's commit retires tile
    // i - 1, whose slot is then handed back and whose registers tile i + 1 reuses.
    auto step = [&](uint32_t (&at)[NTWC][4][4], uint32_t (&prev)[NTWC][4][4]) {
      mbar_wait(full0 + 8 * slot, phase);
      const unsigned char* const gst = sbase + slot * kStage;
#pragma unroll
      for (int j = 0; j < NTWC; ++j) {
        if constexpr (kTmaX) {
          dequant_smem_tile_natural<T>(gst + kCWarps * 512 * j, w_nat, gst + sz_off + kCWarps * 64 * j, prmt_sel,
                                       at[j]);
        } else {
          dequant_smem_tile<T>(gst + w_off + kCWarps * 512 * j, gst + sz_off + kCWarps * 64 * j, at[j]);
        }
      }
      const uint32_t lo = desc_lo + static_cast<uint32_t>(slot * (kStage >> 4));
      wgmma_fence();
#pragma unroll
      for (int j = 0; j < NTWC; ++j)
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          WgmmaRA<BM, T>::run(acc[j], at[j][s], (static_cast<uint64_t>(desc_hi) << 32) | (lo + 2 * s));
        }
      wgmma_commit();
      wgmma_wait<1>();
      // Every consumer thread releases the slot it read. One arrival per
      // warp (lane 0, even after a __syncwarp) is enough on the hardware, since
      // the other lanes' loads fed this warp's wgmma, but compute-sanitizer's
      // racecheck orders only the arriving thread's reads before the
      // producer's next bulk copy and reported every other lane's (H200 run).
      mbar_arrive_if(prev_empty, have_prev);
#pragma unroll
      for (int j = 0; j < NTWC; ++j)
#pragma unroll
        for (int s = 0; s < 4; ++s) keep_live(prev[j][s]);
      prev_empty = empty0 + 8 * slot;
      have_prev = 1;
      ring_next<STAGES>(slot, phase);
    };
    int i = 0;
    for (; i + 1 < n_k; i += 2) {
      step(a[0], a[1]);
      step(a[1], a[0]);
    }
    if (i < n_k) step(a[0], a[1]);
    wgmma_wait<0>();
#pragma unroll
    for (int j = 0; j < NTWC; ++j) keep_live(acc[j]);
    mbar_arrive_if(prev_empty, have_prev);

    if constexpr (kRole == kWsPart) {
      // This CTA's first tail piece, the middle or end of a unit another CTA owns.
      float* const slot = slots + static_cast<int64_t>(blockIdx.x) * NTWC * (BM / 2) * kCThreads + tid;
#pragma unroll
      for (int j = 0; j < NTWC; ++j)
#pragma unroll
        for (int i = 0; i < BM / 2; ++i) __stcg(slot + (j * (BM / 2) + i) * kCThreads, acc[j][i]);
      __threadfence();
      consumers_sync<kCThreads>();
      if (tid == 0) flag_raise(flags + blockIdx.x);
    }
    if constexpr (kRole == kWsOwner) {
      // The unit's other pieces: the first piece of each tail CTA after this one up to the one
      // holding the unit's last k-tile.
      const int unit_end = (pc.unit - sched.full + 1) * sched.unit_tiles;
      const int last = sched.tail_cta_of(unit_end - 1);
#pragma unroll 1
      for (int c = blockIdx.x + 1; c <= last; ++c) {
        if (tid == 0) flag_wait(flags + c);
        consumers_sync<kCThreads>();
        const float* const slot = slots + static_cast<int64_t>(c) * NTWC * (BM / 2) * kCThreads + tid;
#pragma unroll
        for (int j = 0; j < NTWC; ++j)
#pragma unroll
          for (int i = 0; i < BM / 2; ++i) acc[j][i] += __ldcg(slot + (j * (BM / 2) + i) * kCThreads);
      }
    }

    if constexpr (kRole != kWsPart) {  // a parked piece has no epilogue: its owner stores
#pragma unroll
      for (int j = 0; j < NTWC; ++j) {
        // D fragment: acc[j][4 c + 2 h + t] = (n row g + 8 h of this warp's tile j, token 8 c + 2 q + t).
        const int n0 = (kNB * w.nb + warp + kCWarps * j) * kTileN + g;
        // The thread's two bias values, loaded once: out may alias bias as far as
        // the compiler knows, so it would reload them after every store.
        float bias[2] = {0.f, 0.f};
        if (splits == 1 && p.bias != nullptr) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            if (n0 + 8 * h < p.N) bias[h] = to_float(reinterpret_cast<const T*>(p.bias)[n0 + 8 * h]);
          }
        }
#pragma unroll
        for (int c = 0; c < BM / 8; ++c)
#pragma unroll
          for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int t = 0; t < 2; ++t) {
              const int m = (kGrouped ? tile.m0 : w.mb * BM) + 8 * c + 2 * q + t;
              const int n = n0 + 8 * h;
              if (m < (kGrouped ? tile.m_end : p.M) && n < p.N) {
                const float v = acc[j][4 * c + 2 * h + t];
                if (splits == 1) {
                  reinterpret_cast<T*>(p.out)[static_cast<size_t>(m) * p.out_row_stride + n] =
                      from_float<T>(v + bias[h]);
                } else {
                  p.workspace[(static_cast<size_t>(w.split) * p.M + m) * p.N + n] = v;
                }
              }
            }
      }
    }
  };
  // Whole units round-robin, then this CTA's tail: a parked piece first, whole units, an owner piece
  // last (WsCursor's order). No loop holds the park/collect code: with it inside the loop around the
  // k-loop, ptxas kept the ring's stage and phase in per-thread registers with an R2UR before each
  // wgmma descriptor (the SASS of 22355ab), and v11.1 ran 1.05-1.6x slower at every M, stream-K or
  // not (H200, same plans: the 11:05 and 15:05 runs of 2026-11-28).
  using Whole = std::integral_constant<int, kWsWhole>;
#pragma unroll 1
  for (int u = blockIdx.x; u < sched.full; u += gridDim.x) run_piece(WsPiece{u, 0, sched.unit_tiles, kWsWhole}, Whole{});
  if constexpr (kStreamK) {
    WsCursor cur(sched, blockIdx.x, /*tail_only=*/true);
    WsPiece pc;
    bool more = cur.next(pc);
    if (more && pc.role == kWsPart) {
      run_piece(pc, std::integral_constant<int, kWsPart>{});
      more = cur.next(pc);
    }
#pragma unroll 1
    while (more && pc.role == kWsWhole) {
      run_piece(pc, Whole{});
      more = cur.next(pc);
    }
    if (more) run_piece(pc, std::integral_constant<int, kWsOwner>{});  // the range's last piece
  }
#endif
}

}  // namespace awqgemm
