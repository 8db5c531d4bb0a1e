// The one place that decides which kernel runs: family by compute capability
// (or a test's override), tile shape by M, split-K by how well the grid fills
// the GPU. Deterministic: the same (device, problem) always gets the same plan,
// so a CUDA graph captured once replays what eager mode would run.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "tile_config.h"
#include "problem.h"

namespace awqgemm {

struct Plan {
  Family family = Family::kAuto;
  TileConfig tile{};
  int64_t workspace_bytes = 0;
};

struct DeviceInfo {
  int capability = 0;  // 10 * major + minor
  int sm_count = 0;
};

// Cached per device; the first call per device queries the runtime (no sync).
DeviceInfo device_info(int device);

// Family that runs a problem on a device: the requested one, or by capability.
// Returns kAuto (none) and fills `why` if the combination cannot run.
Family choose_family(Family requested, int capability, DType dtype, std::string* why);

// The packed layout a family reads.
int layout_for(Family family);

Plan make_plan(Family family, const DeviceInfo& dev, int M, int N, int K);

// Launches the fused kernel (and the split-K reduction when the plan splits).
cudaError_t run_gemm(const Plan& plan, const GemmProblem& p, cudaStream_t stream);

}  // namespace awqgemm
