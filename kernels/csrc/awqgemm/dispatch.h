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

// What a caller may ask of the path: the dispatcher's choice, or (tests) the
// family's fused kernel at every M (sm90: the wgmma kernels), or dequantize +
// dense GEMM, or (tests, benchmarks) the sm80 weight-tile kernel at every M.
enum class PathRequest : int { kAuto = 0, kFused = 1, kDense = 2, kWTile = 3 };

struct Plan {
  Family family = Family::kAuto;  // the family whose kernel runs (sm90 may hand small M to sm80's)
  bool dense = false;             // dequantize into workspace_bytes (N x K), then the caller's dense GEMM
  bool reduce_pdl = false;        // the split-K reduction waits on griddepcontrol (compiled for sm90+)
  TileConfig tile{};
  int64_t workspace_bytes = 0;    // split-K partials, or the dense weight
};

// Workspace of a fused plan: the staged x (kWgmmaWs) and then the
// split-K partials, which start partials_offset_bytes in.
int64_t partials_offset_bytes(const Plan& plan, int M, int K);
// `sms`: the device's SM count (a stream-K plan keeps a slot per CTA, at most one per SM).
int64_t fused_workspace_bytes(const Plan& plan, int M, int N, int K, int sms);
// Workspace of a grouped plan (R rows over E experts): split-K partials, or (grouped v11.1) the tile
// table and a chunk's staged x.
int64_t grouped_workspace_bytes(const Plan& plan, int R, int E, int N, int K);

// A plan travels from plan() to gemm() through Python as one integer, so the
// plan is made once per call; decode_plan rejects what encode_plan cannot make.
int64_t encode_plan(const Plan& plan);
bool decode_plan(int64_t code, Plan* plan);

struct DeviceInfo {
  int capability = 0;  // 10 * major + minor
  int sm_count = 0;
  int ptx_arch = 0;    // compiled_ptx_arch() on this device
};

// Cached per device; the first call per device queries the runtime (no sync).
DeviceInfo device_info(int device);

// Family that runs a problem on a device: the requested one, or by capability.
// Returns kAuto (none) and fills `why` if the combination cannot run.
Family choose_family(Family requested, int capability, DType dtype, std::string* why);

// The packed layout a family reads.
int layout_for(Family family);

// Whether this build carries the sm90 (wgmma) family.
bool have_sm90a();

// The dense path dequantizes the weight in chunks of this many columns (a
// multiple of 128, or all N), each into the same workspace of columns x K
// elements, and runs the dense GEMM per chunk: never an N x K temporary (a 70B
// gate_up is 0.9 GB), at most kMaxDenseChunkBytes. A dense plan's
// workspace_bytes is exactly dense_chunk_columns(...) x K x dtype_bytes.
constexpr int64_t kMaxDenseChunkBytes = int64_t{64} << 20;
int dense_chunk_columns(int N, int K, int dtype_bytes);

// Work in progress behind test-only switches (awqgemm.testing.force): bits of the planners' `wip`
// argument. Production passes 0; a feature either becomes the default or goes, with its bit. None is
// in progress now (after the H200 run of 2026-11-29 22:03, docs/perf-notes.md: ws_four_wg became the
// default where it measured faster, at 48- and 64-token tiles without stream-K; ws_regroup was removed).
enum WipFeature : int {};

// The one decider: kernel, tile, K split, dense-or-fused, PDL. `family` comes
// from choose_family; `dtype_bytes` sizes the dense weight.
Plan make_plan(Family family, PathRequest path, const DeviceInfo& dev, int M, int N, int K, int dtype_bytes,
               int wip = 0);

// The grouped sibling (MoE experts: GemmProblem::row_offsets): R rows over
// E experts, N x K each. The K-split kernel; for experts of more than 16 rows
// v11.1 (the warp-specialized wgmma kernel) on the sm90 family, and of more
// than 32 the x-shared kernel on sm80 (see dispatch.cu).
Plan make_grouped_plan(Family family, const DeviceInfo& dev, int R, int E, int N, int K, int wip = 0);

// Launches the fused kernel (and the split-K reduction when the plan splits).
cudaError_t run_gemm(const Plan& plan, const GemmProblem& p, cudaStream_t stream);

}  // namespace awqgemm
