// fused_moe's small kernels around the two grouped GEMMs (awqgemm/moe_routing.h):
// routing, silu(gate) * up, and the combine over the top-k slots. Each must give
// bit for bit what moe.py's torch path gives, so a test can compare the two
// paths exactly; the comments say which torch expression each one mirrors.
//
// Arch-neutral, compiled for every arch of the build (sm_70 in CUDA 12.x
// builds; CI checks that with NVRTC 12.9, so the host half is hidden from it).
#include "awqgemm/device_utils.cuh"

namespace awqgemm {

constexpr int kRouteThreads = 1024;
constexpr int kRouteWarps = kRouteThreads / 32;
// Blocks that share one sort at most: each reads every block's counts, so that
// traffic grows with blocks^2 * experts (128 blocks of 129 keys: 66 KB per block).
constexpr int kMaxRouteBlocks = 128;

// The device-side copy of RouteArgs: the header with RouteArgs pulls in host
// headers NVRTC does not have.
struct RouteParams {
  const void* topk_ids;
  const void* topk_weights;
  const void* expert_map;
  int64_t map_len;
  int pairs;
  int top_k;
  int num_experts;
  int ids64;
  int map64;
  int weights_type;  // WeightsType: 0 fp16, 1 bf16, 2 fp32
  int weights_on_input;
  int64_t* order;
  int32_t* offsets;
  int32_t* token_of_row;
  int32_t* pos;
  float* weights;
  int chunk;                // pairs per block: block b sorts pairs [b * chunk, min(pairs, (b + 1) * chunk))
  int32_t* block_counts;    // [gridDim.x][num_experts + 1], or null: one block counts its own pairs
};

// _sort_key in moe.py: ids outside the map, map entries outside [0, E) (-1
// included) and ids outside [0, E) without a map all become the sentinel E.
// The comparisons run in 64 bits, as torch's do on int64 maps.
__device__ __forceinline__ int route_key(const RouteParams& p, int i) {
  int64_t v = p.ids64 ? static_cast<const int64_t*>(p.topk_ids)[i] : static_cast<const int32_t*>(p.topk_ids)[i];
  if (p.expert_map != nullptr) {
    if (v >= 0 && v < p.map_len) {
      v = p.map64 ? static_cast<const int64_t*>(p.expert_map)[v] : static_cast<const int32_t*>(p.expert_map)[v];
    } else {
      v = -1;
    }
  }
  return (v >= 0 && v < p.num_experts) ? static_cast<int>(v) : p.num_experts;
}

// topk_weights.float(): exact for every input type.
__device__ __forceinline__ float route_weight(const RouteParams& p, int i) {
  if (p.weights_type == 2) return static_cast<const float*>(p.topk_weights)[i];
  if (p.weights_type == 1) return to_float(static_cast<const __nv_bfloat16*>(p.topk_weights)[i]);
  return to_float(static_cast<const __half*>(p.topk_weights)[i]);
}

// Counts the keys of pairs [c0, c1) into count[] (shared, zeroed) and writes each
// pair's router weight. Every thread of the block calls it: the loop bound is the
// same for the whole block, so every lane reaches match_any; lanes past the end
// carry the key bins, which no pair has.
__device__ __forceinline__ void route_count_pairs(const RouteParams& p, int c0, int c1, int* count) {
  const int lane = threadIdx.x & 31;
  const unsigned lower_lanes = (1u << lane) - 1u;
  const int bins = p.num_experts + 1;
  for (int t0 = c0; t0 < c1; t0 += kRouteThreads) {
    const int i = t0 + static_cast<int>(threadIdx.x);
    const bool valid = i < c1;
    const int key = valid ? route_key(p, i) : bins;
    const unsigned peers = __match_any_sync(0xffffffffu, key);
    // One atomic per key and warp: a warp of equal keys would serialize 32.
    if (valid && (peers & lower_lanes) == 0) atomicAdd(&count[key], __popc(peers));
    // torch.where(local, topk_weights.float(), 0.0): the select keeps a NaN
    // weight of a pair of no local expert out.
    if (valid) p.weights[i] = key < p.num_experts ? (p.weights_on_input ? 1.f : route_weight(p, i)) : 0.f;
  }
}

// First launch of a sort that several blocks share: the key counts of each
// block's chunk go to block_counts[block][key] (and the router weights out).
__global__ void __launch_bounds__(kRouteThreads) moe_route_count_kernel(const RouteParams p) {
  extern __shared__ int route_smem[];
  const int bins = p.num_experts + 1;
  const int c0 = static_cast<int>(blockIdx.x) * p.chunk;
  const int c1 = min(p.pairs, c0 + p.chunk);
  for (int b = threadIdx.x; b < bins; b += kRouteThreads) route_smem[b] = 0;
  __syncthreads();
  route_count_pairs(p, c0, c1, route_smem);
  __syncthreads();
  for (int b = threadIdx.x; b < bins; b += kRouteThreads) {
    p.block_counts[static_cast<int64_t>(blockIdx.x) * bins + b] = route_smem[b];
  }
}

// A stable counting sort of the pairs by key with no global atomics and no host
// sync, so a captured graph replays it with any routing. Up to one tile of pairs
// (1024) one block does it all in one launch; above, each block takes a chunk of
// whole tiles, after moe_route_count_kernel counted every chunk. The counts of
// all chunks, scanned, give the offsets (= searchsorted of 0..E over the sorted
// keys); a block's chunk then starts each key after the pairs of that key in
// earlier chunks. Within the chunk, pass 2 walks its tiles in pair order and
// places each pair after every earlier pair of its key: earlier tiles (base[key],
// bumped after each tile), earlier warps of this tile (table[key][warp], a byte:
// at most 32), lower lanes of its warp (match_any). That is
// torch.sort(stable=True)'s order.
__global__ void __launch_bounds__(kRouteThreads) moe_route_kernel(const RouteParams p) {
  extern __shared__ int route_smem[];
  const int bins = p.num_experts + 1;
  int* base = route_smem;                 // [bins]: counts, then the next free row of each key
  int* before = base + bins;              // [bins]: pairs of each key in earlier blocks' chunks
  int* warp_total = before + bins;        // [kRouteWarps]: the scan's per-warp sums
  unsigned char* table = reinterpret_cast<unsigned char*>(warp_total + kRouteWarps);  // [bins][kRouteWarps]
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const unsigned lower_lanes = (1u << lane) - 1u;
  const int block = static_cast<int>(blockIdx.x);
  const int c0 = block * p.chunk;
  const int c1 = min(p.pairs, c0 + p.chunk);
  for (int b = tid; b < bins * (kRouteWarps / 4); b += kRouteThreads) reinterpret_cast<int*>(table)[b] = 0;
  if (p.block_counts == nullptr) {
    for (int b = tid; b < bins; b += kRouteThreads) base[b] = before[b] = 0;
    __syncthreads();
    route_count_pairs(p, c0, c1, base);
  } else {
    // Every block's counts, summed over all blocks and over the earlier ones:
    // consecutive threads read consecutive keys of one block's row.
    for (int b = tid; b < bins; b += kRouteThreads) {
      int earlier = 0, total = 0;
#pragma unroll 4
      for (int j = 0; j < static_cast<int>(gridDim.x); ++j) {
        const int c = p.block_counts[static_cast<int64_t>(j) * bins + b];
        total += c;
        earlier += j < block ? c : 0;
      }
      base[b] = total;
      before[b] = earlier;
    }
  }
  __syncthreads();

  int carry = 0;
  for (int s0 = 0; s0 < bins; s0 += kRouteThreads) {
    const int b = s0 + tid;
    const int v = b < bins ? base[b] : 0;
    int x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, x, o);
      if (lane >= o) x += y;
    }
    if (lane == 31) warp_total[warp] = x;
    __syncthreads();
    if (warp == 0) {
      int s = warp_total[lane];
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, s, o);
        if (lane >= o) s += y;
      }
      warp_total[lane] = s;
    }
    __syncthreads();
    const int excl = carry + x - v + (warp > 0 ? warp_total[warp - 1] : 0);
    if (b < bins) {
      base[b] = excl + before[b];
      if (block == 0) p.offsets[b] = excl;
    }
    carry += warp_total[kRouteWarps - 1];
    __syncthreads();  // warp_total is rewritten by the next chunk
  }

  // Pass 2.
  for (int t0 = c0; t0 < c1; t0 += kRouteThreads) {
    const int i = t0 + tid;
    const bool valid = i < c1;
    const int key = valid ? route_key(p, i) : bins;
    const unsigned peers = __match_any_sync(0xffffffffu, key);
    const int rank = __popc(peers & lower_lanes);
    const bool leader = valid && rank == 0;
    unsigned char* row = table + key * kRouteWarps;
    if (leader) row[warp] = static_cast<unsigned char>(__popc(peers));
    __syncthreads();
    if (valid) {
      int r = base[key] + rank;
      for (int w = 0; w < warp; ++w) r += row[w];
      p.pos[i] = r;
      p.order[r] = i;
      p.token_of_row[r] = i / p.top_k;
    }
    __syncthreads();  // every read of base and table for this tile is done
    if (leader) {
      atomicAdd(&base[key], __popc(peers));
      row[warp] = 0;
    }
    __syncthreads();
  }
}

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// torch: mul(silu(gate.float()), up, out=act). silu is x / (1 + exp(-x)) in
// fp32 (IEEE division, expf: this file is built without fast math, as torch
// is); the product is rounded once, to T. __fmul_rn keeps it out of any fma.
template <typename T, int VEC>
__global__ void moe_silu_mul_kernel(const T* h, int rows, int inter, T* act) {
  const int chunks = inter / VEC;
  const int64_t total = static_cast<int64_t>(rows) * chunks;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int r = static_cast<int>(idx / chunks);
    const int c = static_cast<int>(idx % chunks) * VEC;
    const T* src = h + static_cast<int64_t>(r) * 2 * inter + c;
    const Pack<T, VEC> gate = *reinterpret_cast<const Pack<T, VEC>*>(src);
    const Pack<T, VEC> up = *reinterpret_cast<const Pack<T, VEC>*>(src + inter);
    Pack<T, VEC> o;
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const float g = to_float(gate.v[v]);
      const float s = g / (1.f + expf(-g));
      o.v[v] = from_float<T>(__fmul_rn(s, to_float(up.v[v])));
    }
    *reinterpret_cast<Pack<T, VEC>*>(act + static_cast<int64_t>(r) * inter + c) = o;
  }
}

// torch: (unsorted.view(T, k, H) * weights[:, :, None]).sum(dim=1) in fp32.
// Its reduction kernel (ATen Reduce.cuh, thread_reduce_impl, vt0 = 4) gives one
// thread all k values of an output when k < 16, spread over four accumulators
// that start at +0: slot j goes to accumulator j % 4, in slot order, and the
// result is ((a0 + a1) + a2) + a3. The same here, so the sum is bitwise equal;
// the products are rounded before the adds (__fmul_rn: no fma), as torch's
// separate mul kernel rounds them. Rows come through pos (the inverse of the
// sort), clamped so a bad index cannot read out of bounds.
template <typename T, bool kFp32Out, int VEC>
__global__ void moe_combine_kernel(const T* y, int rows, const int32_t* pos, const float* weights, int tokens,
                                   int top_k, int hidden, void* out) {
  const int chunks = hidden / VEC;
  const int64_t total = static_cast<int64_t>(tokens) * chunks;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int t = static_cast<int>(idx / chunks);
    const int c = static_cast<int>(idx % chunks) * VEC;
    const int32_t* tpos = pos + static_cast<int64_t>(t) * top_k;
    const float* tw = weights + static_cast<int64_t>(t) * top_k;
    float acc[4][VEC];
#pragma unroll
    for (int s = 0; s < 4; ++s) {
#pragma unroll
      for (int v = 0; v < VEC; ++v) acc[s][v] = 0.f;
    }
    for (int j0 = 0; j0 < top_k; j0 += 4) {
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        const int j = j0 + s;
        if (j < top_k) {
          const int r = min(max(tpos[j], 0), rows - 1);
          const float w = tw[j];
          const Pack<T, VEC> in = *reinterpret_cast<const Pack<T, VEC>*>(y + static_cast<int64_t>(r) * hidden + c);
#pragma unroll
          for (int v = 0; v < VEC; ++v) acc[s][v] = __fadd_rn(acc[s][v], __fmul_rn(to_float(in.v[v]), w));
        }
      }
    }
    const int64_t dst = static_cast<int64_t>(t) * hidden + c;
    if constexpr (kFp32Out) {
      Pack<float, VEC> o;
#pragma unroll
      for (int v = 0; v < VEC; ++v) o.v[v] = __fadd_rn(__fadd_rn(__fadd_rn(acc[0][v], acc[1][v]), acc[2][v]), acc[3][v]);
      *reinterpret_cast<Pack<float, VEC>*>(static_cast<float*>(out) + dst) = o;
    } else {
      // fused_moe's .to(x.dtype) of the fp32 sum: one round to nearest even.
      Pack<T, VEC> o;
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        o.v[v] = from_float<T>(__fadd_rn(__fadd_rn(__fadd_rn(acc[0][v], acc[1][v]), acc[2][v]), acc[3][v]));
      }
      *reinterpret_cast<Pack<T, VEC>*>(static_cast<T*>(out) + dst) = o;
    }
  }
}

}  // namespace awqgemm

#if !defined(__CUDACC_RTC__)
#include "awqgemm/moe_routing.h"

namespace awqgemm {
namespace {

constexpr int kElementwiseThreads = 256;

int grid_for(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<int>(blocks < 65535 * 8 ? blocks : 65535 * 8);
}

bool aligned(const void* p, int64_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename T>
cudaError_t silu_mul_typed(const void* h, int rows, int inter, void* act, cudaStream_t stream) {
  const auto* src = static_cast<const T*>(h);
  auto* dst = static_cast<T*>(act);
  // 16-byte accesses when every row's gate, up and act start on 16 bytes.
  if (inter % 8 == 0 && aligned(h, 16) && aligned(act, 16)) {
    const int64_t work = static_cast<int64_t>(rows) * (inter / 8);
    moe_silu_mul_kernel<T, 8><<<grid_for(work, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(
        src, rows, inter, dst);
  } else {
    const int64_t work = static_cast<int64_t>(rows) * inter;
    moe_silu_mul_kernel<T, 1><<<grid_for(work, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(
        src, rows, inter, dst);
  }
  return cudaGetLastError();
}

template <typename T, bool kFp32Out>
cudaError_t combine_typed(const void* y, int rows, const int32_t* pos, const float* weights, int tokens, int top_k,
                          int hidden, void* out, cudaStream_t stream) {
  const auto* src = static_cast<const T*>(y);
  const int64_t out_vec_bytes = 8 * (kFp32Out ? 4 : static_cast<int64_t>(sizeof(T)));
  if (hidden % 8 == 0 && aligned(y, 16) && aligned(out, out_vec_bytes)) {
    const int64_t work = static_cast<int64_t>(tokens) * (hidden / 8);
    moe_combine_kernel<T, kFp32Out, 8><<<grid_for(work, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(
        src, rows, pos, weights, tokens, top_k, hidden, out);
  } else {
    const int64_t work = static_cast<int64_t>(tokens) * hidden;
    moe_combine_kernel<T, kFp32Out, 1><<<grid_for(work, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(
        src, rows, pos, weights, tokens, top_k, hidden, out);
  }
  return cudaGetLastError();
}

}  // namespace

int64_t route_shared_bytes(int num_experts) {
  const int64_t bins = static_cast<int64_t>(num_experts) + 1;
  return (2 * bins + kRouteWarps) * static_cast<int64_t>(sizeof(int)) + bins * kRouteWarps;
}

namespace {

// Pairs per routing block: one tile (1024) per block up to kMaxRouteBlocks
// tiles, then as many whole tiles per block as spread the pairs over that many.
// One tile's pass took ~5 us on one H200 SM (moe-h200 runs: 45 us at 8 tiles),
// so tiles in parallel blocks, not in a loop, keep large batches cheap.
int64_t route_chunk(int64_t pairs) {
  const int64_t tiles = (pairs + kRouteThreads - 1) / kRouteThreads;
  const int64_t per_block = (tiles + kMaxRouteBlocks - 1) / kMaxRouteBlocks;
  return (per_block > 1 ? per_block : 1) * kRouteThreads;
}

int route_blocks(int64_t pairs) {
  if (pairs <= kRouteThreads) return 1;
  const int64_t chunk = route_chunk(pairs);
  return static_cast<int>((pairs + chunk - 1) / chunk);
}

}  // namespace

int64_t route_scratch_ints(int64_t pairs, int num_experts) {
  const int blocks = route_blocks(pairs);
  return blocks > 1 ? static_cast<int64_t>(blocks) * (static_cast<int64_t>(num_experts) + 1) : 0;
}

cudaError_t launch_moe_route(const RouteArgs& a, cudaStream_t stream) {
  if (a.num_experts < 1 || a.num_experts > kMaxRouteExperts || a.pairs < 0 || a.pairs > kMaxRoutePairs ||
      a.top_k < 1 || (a.pairs > 0 && (a.topk_ids == nullptr || a.order == nullptr || a.token_of_row == nullptr ||
                                      a.pos == nullptr || a.weights == nullptr)) ||
      (a.pairs > 0 && !a.weights_on_input && a.topk_weights == nullptr) || a.offsets == nullptr ||
      (a.expert_map != nullptr && a.map_len < 0)) {
    return cudaErrorInvalidValue;
  }
  RouteParams p;
  p.topk_ids = a.topk_ids;
  p.topk_weights = a.topk_weights;
  p.expert_map = a.expert_map;
  p.map_len = a.expert_map != nullptr ? a.map_len : 0;
  p.pairs = a.pairs;
  p.top_k = a.top_k;
  p.num_experts = a.num_experts;
  p.ids64 = a.ids_type == IdsType::kInt64;
  p.map64 = a.map_type == IdsType::kInt64;
  p.weights_type = static_cast<int>(a.weights_type);
  p.weights_on_input = a.weights_on_input;
  p.order = a.order;
  p.offsets = a.offsets;
  p.token_of_row = a.token_of_row;
  p.pos = a.pos;
  p.weights = a.weights;
  const int blocks = route_blocks(a.pairs);
  if (blocks > 1 && a.block_counts == nullptr) return cudaErrorInvalidValue;
  p.chunk = blocks > 1 ? static_cast<int>(route_chunk(a.pairs)) : a.pairs;
  p.block_counts = blocks > 1 ? a.block_counts : nullptr;
  if (blocks > 1) {
    const size_t count_smem = static_cast<size_t>(a.num_experts + 1) * sizeof(int);
    moe_route_count_kernel<<<blocks, kRouteThreads, count_smem, stream>>>(p);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  const size_t smem = static_cast<size_t>(route_shared_bytes(a.num_experts));
  moe_route_kernel<<<blocks, kRouteThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_moe_silu_mul(DType dtype, const void* h, int rows, int inter, void* act, cudaStream_t stream) {
  if (rows < 0 || inter < 1 || (rows > 0 && (h == nullptr || act == nullptr))) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  return dtype == DType::kBFloat16 ? silu_mul_typed<__nv_bfloat16>(h, rows, inter, act, stream)
                                   : silu_mul_typed<__half>(h, rows, inter, act, stream);
}

cudaError_t launch_moe_combine(DType dtype, bool fp32_out, const void* y, int rows, const int32_t* pos,
                               const float* weights, int tokens, int top_k, int hidden, void* out,
                               cudaStream_t stream) {
  if (tokens < 0 || top_k < 1 || hidden < 1 || rows < 1 ||
      (tokens > 0 && (y == nullptr || pos == nullptr || weights == nullptr || out == nullptr))) {
    return cudaErrorInvalidValue;
  }
  if (tokens == 0) return cudaSuccess;
  if (dtype == DType::kBFloat16) {
    return fp32_out ? combine_typed<__nv_bfloat16, true>(y, rows, pos, weights, tokens, top_k, hidden, out, stream)
                    : combine_typed<__nv_bfloat16, false>(y, rows, pos, weights, tokens, top_k, hidden, out, stream);
  }
  return fp32_out ? combine_typed<__half, true>(y, rows, pos, weights, tokens, top_k, hidden, out, stream)
                  : combine_typed<__half, false>(y, rows, pos, weights, tokens, top_k, hidden, out, stream);
}

}  // namespace awqgemm
#endif
