// The problem descriptor every kernel family consumes.
//
// Kept as a plain struct (no torch types) so the core never links libtorch and
// so later work -- grouped GEMM over MoE experts, a Hopper wgmma path -- adds
// fields instead of new entry points.
#pragma once

#include "portable_types.h"

namespace awqgemm {

enum class DType : int { kFloat16 = 0, kBFloat16 = 1 };

// Kernel families, one per MMA generation. kAuto lets the dispatcher pick by
// compute capability; the others are forced only by tests. kSm90 (wgmma)
// exists only in builds that compiled it for sm_90a.
enum class Family : int { kAuto = 0, kSm70 = 70, kSm75 = 75, kSm80 = 80, kSm90 = 90 };

struct GemmProblem {
  // Logical sizes: out[M, N] = x[M, K] @ W[K, N] (+ bias[N]).
  int M = 0;
  int N = 0;
  int K = 0;
  int group_size = 0;
  DType dtype = DType::kFloat16;

  // Activations and output, row-major with explicit row strides (elements).
  const void* x = nullptr;
  int64_t x_row_stride = 0;
  void* out = nullptr;
  int64_t out_row_stride = 0;
  const void* bias = nullptr;  // [N] or nullptr

  // Packed weight (see packed_layout.h): tiles of 16 n x 64 k.
  const void* qweight = nullptr;
  const void* scale_zero = nullptr;

  // Grouped problems (MoE experts), when row_offsets is set (device memory,
  // num_batches + 1 entries): output rows row_offsets[e] .. row_offsets[e + 1]
  // are x rows times expert e's weight, which starts e * the batch strides
  // after qweight / scale_zero. Rows from row_offsets[num_batches] to M belong
  // to no expert here and are written as zeros. The offsets are read on the
  // device only (no host sync), and clamped to [0, M] there, so bad ones
  // cannot send a block out of bounds. Only the K-split kernel reads these.
  int num_batches = 1;
  int64_t qweight_batch_stride = 0;     // in 32-bit words
  int64_t scale_zero_batch_stride = 0;  // in elements
  const int32_t* row_offsets = nullptr;
  // Gather (grouped problems): output row r reads x row row_index[r], clamped
  // to [0, x_rows); nullptr reads x row r. MoE's gate/up projection reads each
  // token's row once per chosen expert this way, with no [M, K] copy of x.
  const int32_t* row_index = nullptr;
  int x_rows = 0;

  // fp32 scratch for split-K partial sums, owned by the caller (torch).
  float* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

#if !defined(__CUDACC_RTC__)
// Grid rows of the K-split kernel: M / bm token tiles, plus (grouped problems,
// `groups` experts) one partial tile per expert that has rows -- at most
// min(groups, M) of them -- including the tiles of rows of no expert
// (resolve_group_tile). Decode (M = 8 rows over 128 experts) launches 9 block
// rows, not 129: the extra blocks only scanned the offsets and exited.
constexpr int grouped_grid_rows(int m, int bm, int groups) { return (m + bm - 1) / bm + (groups < m ? groups : m); }
#endif

}  // namespace awqgemm
