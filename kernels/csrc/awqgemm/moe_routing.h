// fused_moe's small kernels around the two grouped GEMMs: routing (a stable
// counting sort of the token x slot pairs by local expert), silu(gate) * up, and
// the weighted combine over the top-k slots. Launchers only: no allocation, no
// sync, on the caller's stream; outputs are the caller's buffers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "problem.h"

namespace awqgemm {

// Each routing block's shared memory holds a byte per (expert, warp) plus two
// counters per expert: this many local experts at most.
constexpr int kMaxRouteExperts = 1024;
// pairs = tokens * top_k; the kernel's int indices stay clear of overflow.
constexpr int64_t kMaxRoutePairs = int64_t{1} << 30;

// Element types of the routing inputs (codes shared with moe.py).
enum class IdsType : int { kInt32 = 0, kInt64 = 1 };
enum class WeightsType : int { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2 };

struct RouteArgs {
  const void* topk_ids = nullptr;      // [pairs], IdsType
  const void* topk_weights = nullptr;  // [pairs], WeightsType
  const void* expert_map = nullptr;    // [map_len] IdsType map_type, or null
  int64_t map_len = 0;
  int pairs = 0;
  int top_k = 0;
  int num_experts = 0;
  IdsType ids_type = IdsType::kInt32;
  IdsType map_type = IdsType::kInt32;
  WeightsType weights_type = WeightsType::kFloat32;
  bool weights_on_input = false;  // weigh by 1 (the router weight scaled x instead)
  int64_t* order = nullptr;       // [pairs]: pair index of each sorted row
  int32_t* offsets = nullptr;     // [num_experts + 1]
  int32_t* token_of_row = nullptr;  // [pairs]: order / top_k
  int32_t* pos = nullptr;           // [pairs]: sorted row of each pair (inverse of order)
  float* weights = nullptr;         // [pairs]: router weight of each pair, 0 for no local expert
  int32_t* block_counts = nullptr;  // [route_scratch_ints]: per-block key counts; null when that is 0
};

// Ints of scratch (torch-allocated, any contents) launch_moe_route needs for this
// many pairs: 0 where one block sorts them, else a count per (block, key).
int64_t route_scratch_ints(int64_t pairs, int num_experts);

// Shared memory the routing kernel asks for (dynamic, under the 48 KiB that
// needs no opt-in for num_experts <= kMaxRouteExperts).
int64_t route_shared_bytes(int num_experts);

cudaError_t launch_moe_route(const RouteArgs& a, cudaStream_t stream);

// act[r, i] = round(silu(h[r, i]) * h[r, inter + i]); h is [rows, 2 * inter].
cudaError_t launch_moe_silu_mul(DType dtype, const void* h, int rows, int inter, void* act, cudaStream_t stream);

// out[t, :] = sum over slots j of weights[t * top_k + j] * y[pos[t * top_k + j], :], in fp32
// (torch's reduction order), written as fp32 or as dtype. y is [rows, hidden].
cudaError_t launch_moe_combine(DType dtype, bool fp32_out, const void* y, int rows, const int32_t* pos,
                               const float* weights, int tokens, int top_k, int hidden, void* out,
                               cudaStream_t stream);

}  // namespace awqgemm
