// Launch shape of the tensor-core kernels, chosen by the dispatcher.
#pragma once

namespace awqgemm {

enum class KernelKind : int {
  kKSplit = 0,   // gemm_tc_kernel: warps split K (decode, and every family)
  kXShared = 1,  // gemm_xs_kernel: warps split N and share activations (sm80, M > 8)
};

struct TileConfig {
  KernelKind kind = KernelKind::kKSplit;
  int mt;      // 8-token MMA tiles per block
  int nt;      // 16-column tiles per block
  int kwarps;  // warps per block, splitting the block's K slice (4, 8 or 16)
  int splits;  // blocks splitting K
};

}  // namespace awqgemm
