// Launch shape of the tensor-core kernels, chosen by the dispatcher.
#pragma once

namespace awqgemm {

// Warps per block; each takes every 4th k-tile of the block's K slice.
constexpr int kWarpsPerBlockDefault = 4;

struct TileConfig {
  int mt;      // 8-token MMA tiles per block
  int nt;      // 16-column tiles per block
  int kwarps;  // warps splitting K inside a block
  int splits;  // blocks splitting K
};

}  // namespace awqgemm
