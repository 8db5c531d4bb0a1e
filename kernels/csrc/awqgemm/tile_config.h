// Launch shape of the tensor-core kernels, chosen by the dispatcher.
#pragma once

namespace awqgemm {

struct TileConfig {
  int mt;      // 8-token MMA tiles per block
  int nt;      // 16-column tiles per block
  int kwarps;  // warps per block, splitting the block's K slice (4 or 8)
  int splits;  // blocks splitting K
};

}  // namespace awqgemm
