// Arch-neutral helpers: the split-K reduction and dequantization to a dense
// weight (the large-M path hands that to cuBLAS through torch).
//
// Compiled for every arch of the build, sm_70 included in CUDA 12.x builds; CI
// checks that with NVRTC 12.9, so the host half is hidden from NVRTC.
#include "awqgemm/gemm_tile.cuh"

namespace awqgemm {

// kSplits partials of four outputs (16 bytes each), every load issued before the first add: a loop over
// the runtime count, unrolled 4 ways, had ptxas issue 4 loads per L2 round trip (5-8 splits took two
// round trips, 13-16 four); predicated loads up to kMaxKSplits ran out of predicate registers and were
// interleaved with the adds again, so each count has its own straight-line code. The adds go in split
// order from 0: the sums are bit for bit those of the loop.
template <int kSplits>
__device__ __forceinline__ void sum_split_partials(const float4* src, int64_t step, float (&v)[4]) {
  float4 q[kSplits];
#pragma unroll
  for (int s = 0; s < kSplits; ++s) q[s] = __ldcs(src + s * step);  // read once: evict first
#pragma unroll
  for (int s = 0; s < kSplits; ++s) {
    v[0] += q[s].x;
    v[1] += q[s].y;
    v[2] += q[s].z;
    v[3] += q[s].w;
  }
}
template <int kSplits = 1>
__device__ __forceinline__ void sum_split_partials(int splits, const float4* src, int64_t step, float (&v)[4]) {
  if constexpr (kSplits < kMaxKSplits) {
    if (splits != kSplits) return sum_split_partials<kSplits + 1>(splits, src, step, v);
  }
  sum_split_partials<kSplits>(src, step, v);
}

// Four outputs per thread where N is a multiple of 4 (AWQ's N is one of 8): 16-byte loads of every
// split's partials, all issued before the sum (sum_split_partials). The batch-64 timeline of Llama-3-8B
// (H200, profile_one.py --timeline) had the one-output-per-thread version at 3.0-4.0 us for 8-9 MB of
// partials behind v11.1's K splits, ~20 % of those layers' time, and the loop unrolled 4 ways 3.2-3.4 us.
// __launch_bounds__(kReduceThreads, 1): without it ptxas kept at most ~4-5 loads of a thread in flight and put the
// adds of the first splits before the later loads (the same two round trips); with it every case issues
// all its loads first.
constexpr int kReduceThreads = 256;
template <typename T, bool kVec4>
__global__ void __launch_bounds__(kReduceThreads, 1) splitk_reduce_kernel(const GemmProblem p, const int splits) {
  pdl_wait();  // the partials come from the GEMM kernel just before (PDL: see gemm_tile.cuh)
  constexpr int kW = kVec4 ? 4 : 1;
  const int64_t total = static_cast<int64_t>(p.M) * p.N;
  // Grouped problems: rows past the last expert's have no partials; the GEMM
  // kernel zeroed them in out already.
  const int rows = p.row_offsets == nullptr ? p.M : min(max(p.row_offsets[p.num_batches], 0), p.M);
  for (int64_t idx = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * kW; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x * kW) {
    const int m = static_cast<int>(idx / p.N);
    const int n = static_cast<int>(idx % p.N);  // kVec4: n .. n + 3 lie in row m (N % 4 == 0)
    if (m >= rows) break;  // idx only grows
    float v[kW] = {};
    if constexpr (kVec4) {
      sum_split_partials(splits, reinterpret_cast<const float4*>(p.workspace + idx), total / 4, v);
    } else {
      for (int s = 0; s < splits; ++s) v[0] += p.workspace[s * total + idx];
    }
    T* const dst = reinterpret_cast<T*>(p.out) + static_cast<int64_t>(m) * p.out_row_stride + n;
#pragma unroll
    for (int j = 0; j < kW; ++j) {
      if (p.bias != nullptr) v[j] += to_float(reinterpret_cast<const T*>(p.bias)[n + j]);
      dst[j] = from_float<T>(v[j]);
    }
  }
}

// One warp per 16 x 64 tile (v12). Dequantize + cuBLAS with it took 0.87x the time with v3's
// word-per-thread kernel (geomean; faster at 135 of 144 points, 0.75-1.14x; H200 TP1 sweep,
// benchmarks/results/h200-2026-11-28-v11.1-v12). A word's four register
// pairs belong to four rows, so writing them straight to wt stores 4 bytes to ~32 separate sectors per
// warp instruction: every 128-byte line of wt was written in 32 partial pieces. Here the warp
// dequantizes the tile's 128 words into shared memory, then writes each of the tile's 16 rows as one
// 128-byte run (lane j: k 2j, 2j + 1), a full line per store. Warps of a block take consecutive k-tiles
// of one column tile, so they fill adjacent 128-byte pieces of the same rows of wt. The packed layout
// stores column tiles one after another (all of a tile's K, then the next), so a chunk of columns is a
// contiguous run of tiles.
constexpr int kDqWarps = 8;
// Row stride of the shared tile in 32-bit words: 33 (odd) makes the scattered
// writes conflict-free. A store instruction's 32 lanes hit rows w_row(lane)
// (8 values) at k offsets 16 * (lane's quarter) (4 values), i.e. bank
// 33 row + 8 quarter + c = row + 8 quarter + c (mod 32): 32 distinct banks in
// both lane layouts. The row reads (lane j: word j of a row) are conflict-free
// for any stride.
constexpr int kDqRowWords = kTileK / 2 + 1;

template <typename T, class Lanes>
__global__ void __launch_bounds__(32 * kDqWarps) dequantize_t_kernel(const uint32_t* qweight,
                                                                          const uint2* scale_zero, int N, int K,
                                                                          int group_size, int n_begin, int n_count,
                                                                          T* wt) {
  __shared__ uint32_t tile_smem[kDqWarps][kTileN * kDqRowWords];
  const int lane = threadIdx.x & 31;
  uint32_t* const sm = tile_smem[threadIdx.x >> 5];
  const int ktiles = padded_k(K) / kTileK;
  const int ntiles = padded_n(N) / kTileN;
  const int nt_begin = n_begin / kTileN;
  const int n_end = min(N, n_begin + n_count);
  const int64_t tiles = static_cast<int64_t>(ceil_div(n_end - n_begin, kTileN)) * ktiles;
  const int wrow = Lanes::w_row(lane);
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kDqWarps + (threadIdx.x >> 5); t < tiles;
       t += static_cast<int64_t>(gridDim.x) * kDqWarps) {
    const int kt = static_cast<int>(t % ktiles);
    const int nt = nt_begin + static_cast<int>(t / ktiles);
    // The lane's 16 k (its four words, steps 0..3) lie in one group: groups
    // are >= 32 wide and 16-aligned runs never straddle them.
    const int klane = kt * kTileK + Lanes::x_koff(lane);
    if (klane < K) {  // K is a multiple of 32: a lane's 16 k are all in or all out
      const uint4 w4 = *reinterpret_cast<const uint4*>(qweight + (static_cast<int64_t>(nt) * ktiles + kt) * kWordsPerTile +
                                                        4 * lane);
      const uint2 sz = scale_zero[(static_cast<int64_t>(klane / group_size) * ntiles + nt) * 8 + wrow];
      uint32_t scale2[2], zero2[2];
      split_scale_zero(sz.x, scale2[0], zero2[0]);
      split_scale_zero(sz.y, scale2[1], zero2[1]);
#pragma unroll
      for (int step = 0; step < 4; ++step) {
        const uint32_t word = step == 0 ? w4.x : step == 1 ? w4.y : step == 2 ? w4.z : w4.w;
        uint32_t a[4];
        Lanes::template dequant<T>(word, zero2, scale2, a);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int row = wrow + 8 * Lanes::reg_row_half(i);
          const int kk = Lanes::x_koff(lane) + 4 * step + Lanes::reg_k(i);  // even: a pair's first k
          sm[row * kDqRowWords + kk / 2] = a[i];
        }
      }
    }
    __syncwarp();
    const int k = kt * kTileK + 2 * lane;
#pragma unroll 4
    for (int row = 0; row < kTileN; ++row) {
      const int n = nt * kTileN + row;
      if (n < n_end && k < K) {
        *reinterpret_cast<uint32_t*>(wt + static_cast<int64_t>(n - n_begin) * K + k) = sm[row * kDqRowWords + lane];
      }
    }
    __syncwarp();  // the tile's reads are done before the next tile's writes
  }
}

}  // namespace awqgemm

#if !defined(__CUDACC_RTC__)
#include "awqgemm/families.h"
#include "awqgemm/launch.h"

namespace awqgemm {
namespace {

int grid_for(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<int>(blocks < 65535 * 8 ? blocks : 65535 * 8);
}

template <typename T, class Lanes>
void launch_dequantize_lanes(const uint32_t* qw, const uint2* sz, int N, int K, int group_size, int n_begin,
                             int n_count, T* wt, cudaStream_t stream) {
  const int64_t tiles = static_cast<int64_t>(ceil_div(n_count, kTileN)) * (padded_k(K) / kTileK);
  dequantize_t_kernel<T, Lanes><<<grid_for(tiles, kDqWarps), 32 * kDqWarps, 0, stream>>>(qw, sz, N, K, group_size,
                                                                                          n_begin, n_count, wt);
}

template <typename T>
cudaError_t dequantize_typed(const void* qweight, const void* scale_zero, int layout, int N, int K, int group_size,
                             int n_begin, int n_count, void* wt, cudaStream_t stream) {
  if (n_begin < 0 || n_begin % kTileN != 0 || n_count < 1 || n_begin + n_count > N) return cudaErrorInvalidValue;
  // A lane reads its tile's four words as one 16-byte load.
  if ((reinterpret_cast<uintptr_t>(qweight) & 15) != 0) return cudaErrorMisalignedAddress;
  const auto* qw = static_cast<const uint32_t*>(qweight);
  const auto* sz = static_cast<const uint2*>(scale_zero);
  if (layout == kLayoutTc16x64) {
    launch_dequantize_lanes<T, M16n8Lanes>(qw, sz, N, K, group_size, n_begin, n_count, static_cast<T*>(wt), stream);
  } else if (layout == kLayoutVolta884) {
    launch_dequantize_lanes<T, Volta884Lanes>(qw, sz, N, K, group_size, n_begin, n_count, static_cast<T*>(wt),
                                              stream);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t launch_splitk_reduce_typed(const GemmProblem& p, int splits, bool pdl, cudaStream_t stream) {
  if (splits < 1 || splits > kMaxKSplits) return cudaErrorInvalidValue;  // the kernel's loads stop at kMaxKSplits
  const int threads = kReduceThreads;
  const bool vec4 = p.N % 4 == 0 && (reinterpret_cast<uintptr_t>(p.workspace) & 15) == 0;
  const dim3 blocks(grid_for(static_cast<int64_t>(p.M) * p.N / (vec4 ? 4 : 1), threads));
  return vec4 ? launch_maybe_pdl(splitk_reduce_kernel<T, true>, blocks, dim3(threads), 0, pdl, stream, p, splits)
              : launch_maybe_pdl(splitk_reduce_kernel<T, false>, blocks, dim3(threads), 0, pdl, stream, p, splits);
}

cudaError_t launch_splitk_reduce(const GemmProblem& p, int splits, bool pdl, cudaStream_t stream) {
  return p.dtype == DType::kBFloat16 ? launch_splitk_reduce_typed<__nv_bfloat16>(p, splits, pdl, stream)
                                     : launch_splitk_reduce_typed<__half>(p, splits, pdl, stream);
}

int compiled_ptx_arch() {
  // Every arch-generic translation unit is compiled for the same arch list, so
  // the reduction kernel speaks for all of them.
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, splitk_reduce_kernel<__half, true>) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return attr.ptxVersion;
}

cudaError_t launch_dequantize_t(const void* qweight, const void* scale_zero, int layout, DType dtype, int N, int K,
                                int group_size, int n_begin, int n_count, void* wt, cudaStream_t stream) {
  return dtype == DType::kBFloat16 ? dequantize_typed<__nv_bfloat16>(qweight, scale_zero, layout, N, K, group_size,
                                                                     n_begin, n_count, wt, stream)
                                   : dequantize_typed<__half>(qweight, scale_zero, layout, N, K, group_size, n_begin,
                                                              n_count, wt, stream);
}

}  // namespace awqgemm
#endif
