// Arch-neutral helpers: the split-K reduction and dequantization to a dense
// weight (the large-M path hands that to cuBLAS through torch).
//
// Compiled for every arch of the build, sm_70 included in CUDA 12.x builds; CI
// checks that with NVRTC 12.9, so the host half is hidden from NVRTC.
#include "awqgemm/gemm_tile.cuh"

namespace awqgemm {

template <typename T>
__global__ void splitk_reduce_kernel(const GemmProblem p, const int splits) {
  pdl_wait();  // the partials come from the GEMM kernel just before (PDL: see gemm_tile.cuh)
  const int64_t total = static_cast<int64_t>(p.M) * p.N;
  // Grouped problems: rows past the last expert's have no partials; the GEMM
  // kernel zeroed them in out already.
  const int rows = p.row_offsets == nullptr ? p.M : min(max(p.row_offsets[p.num_batches], 0), p.M);
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int m = static_cast<int>(idx / p.N);
    const int n = static_cast<int>(idx % p.N);
    if (m >= rows) break;  // idx only grows
    float v = 0.f;
    for (int s = 0; s < splits; ++s) v += p.workspace[s * total + idx];
    if (p.bias != nullptr) v += to_float(reinterpret_cast<const T*>(p.bias)[n]);
    reinterpret_cast<T*>(p.out)[static_cast<int64_t>(m) * p.out_row_stride + n] = from_float<T>(v);
  }
}

// One thread per packed word: 8 weights = 4 register pairs, each pair two
// consecutive k of one row n, stored as one 32-bit write into wt[n - n_begin][k].
// The packed layout stores column tiles one after another (all of a tile's K,
// then the next), so a chunk of columns is a contiguous run of words.
template <typename T, class Lanes>
__global__ void dequantize_t_kernel(const uint32_t* qweight, const uint2* scale_zero, int N, int K, int group_size,
                                    int n_begin, int n_count, T* wt) {
  const int ktiles = padded_k(K) / kTileK;
  const int ntiles = padded_n(N) / kTileN;
  const int nt_begin = n_begin / kTileN;
  const int n_end = min(N, n_begin + n_count);
  const int64_t words = static_cast<int64_t>(ceil_div(n_end - n_begin, kTileN)) * ktiles * kWordsPerTile;
  const int64_t word0 = static_cast<int64_t>(nt_begin) * ktiles * kWordsPerTile;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < words;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int step = static_cast<int>(idx & 3);
    const int lane = static_cast<int>((idx >> 2) & 31);
    const int64_t tile = idx >> 7;
    const int kt = static_cast<int>(tile % ktiles);
    const int nt = nt_begin + static_cast<int>(tile / ktiles);
    const int kbase = kt * kTileK + Lanes::x_koff(lane) + 4 * step;
    if (kbase >= K) continue;  // K is a multiple of 32, so a lane's 16 k are all in or all out
    const int grp = kbase / group_size;
    const uint2 sz = scale_zero[(static_cast<int64_t>(grp) * ntiles + nt) * 8 + Lanes::w_row(lane)];
    uint32_t scale2[2], zero2[2], a[4];
    split_scale_zero(sz.x, scale2[0], zero2[0]);
    split_scale_zero(sz.y, scale2[1], zero2[1]);
    Lanes::template dequant<T>(qweight[word0 + idx], zero2, scale2, a);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int n = nt * kTileN + Lanes::w_row(lane) + 8 * Lanes::reg_row_half(i);
      if (n < n_end) {
        const int k = kbase + Lanes::reg_k(i);
        *reinterpret_cast<uint32_t*>(wt + static_cast<int64_t>(n - n_begin) * K + k) = a[i];
      }
    }
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

template <typename T>
cudaError_t dequantize_typed(const void* qweight, const void* scale_zero, int layout, int N, int K, int group_size,
                             int n_begin, int n_count, void* wt, cudaStream_t stream) {
  if (n_begin < 0 || n_begin % kTileN != 0 || n_count < 1 || n_begin + n_count > N) return cudaErrorInvalidValue;
  const int64_t words = static_cast<int64_t>(ceil_div(n_count, kTileN)) * (padded_k(K) / kTileK) * kWordsPerTile;
  const int threads = 256;
  const auto* qw = static_cast<const uint32_t*>(qweight);
  const auto* sz = static_cast<const uint2*>(scale_zero);
  if (layout == kLayoutTc16x64) {
    dequantize_t_kernel<T, M16n8Lanes><<<grid_for(words, threads), threads, 0, stream>>>(
        qw, sz, N, K, group_size, n_begin, n_count, static_cast<T*>(wt));
  } else if (layout == kLayoutVolta884) {
    dequantize_t_kernel<T, Volta884Lanes><<<grid_for(words, threads), threads, 0, stream>>>(
        qw, sz, N, K, group_size, n_begin, n_count, static_cast<T*>(wt));
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_splitk_reduce(const GemmProblem& p, int splits, bool pdl, cudaStream_t stream) {
  const int threads = 256;
  const dim3 blocks(grid_for(static_cast<int64_t>(p.M) * p.N, threads));
  return p.dtype == DType::kBFloat16
             ? launch_maybe_pdl(splitk_reduce_kernel<__nv_bfloat16>, blocks, dim3(threads), 0, pdl, stream, p, splits)
             : launch_maybe_pdl(splitk_reduce_kernel<__half>, blocks, dim3(threads), 0, pdl, stream, p, splits);
}

int compiled_ptx_arch() {
  // Every arch-generic translation unit is compiled for the same arch list, so
  // the reduction kernel speaks for all of them.
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, splitk_reduce_kernel<__half>) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return attr.ptxVersion;
}

cudaError_t launch_dequantize_t(const void* qweight, const void* scale_zero, int layout, DType dtype, int N, int K,
                                int group_size, int n_begin, int n_count, void* wt, cudaStream_t stream) {
  return dtype == DType::kBFloat16
             ? dequantize_typed<__nv_bfloat16>(qweight, scale_zero, layout, N, K, group_size, n_begin, n_count, wt, stream)
             : dequantize_typed<__half>(qweight, scale_zero, layout, N, K, group_size, n_begin, n_count, wt, stream);
}

}  // namespace awqgemm
#endif
