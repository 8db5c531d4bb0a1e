// The practical floor of a memory-bound call: how long a kernel that only
// streams S bytes from HBM (16-byte loads, 8 in flight per thread, nothing
// else) takes per call, timed as benchmarks/gemm.py times GEMMs -- one CUDA
// graph of R calls over R distinct buffers (> 256 MiB per replay, so L2 holds
// nothing), a GPU spin before each timed replay, median of 21 replays / R.
// The gap between this and bytes / bandwidth is launch, ramp-up and tail:
// what no kernel of that size avoids.
//
//   nvcc -O3 -std=c++17 -arch=sm_90 benchmarks/stream_read.cu -o /tmp/stream_read && /tmp/stream_read
//
// Prints one JSON object: {"sizes_mb": [...], "us": [...], "floor_us": [...]}.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 8;

__global__ void stream_read(const uint4* __restrict__ src, int64_t n, uint32_t* sink) {
  uint32_t acc = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads * kUnroll;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads * kUnroll + threadIdx.x; base < n; base += stride) {
    uint4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + static_cast<int64_t>(u) * kThreads;
      v[u] = i < n ? __ldcs(src + i) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  if (acc == 0x9e3779b9u) sink[blockIdx.x] = acc;  // keeps the loads live
}

__global__ void spin(int64_t cycles) {
  const int64_t start = clock64();
  while (clock64() - start < cycles) {
  }
}

#define CHECK(call)                                                              \
  do {                                                                           \
    const cudaError_t err_ = (call);                                             \
    if (err_ != cudaSuccess) {                                                   \
      std::fprintf(stderr, "%s failed: %s\n", #call, cudaGetErrorString(err_)); \
      return 1;                                                                  \
    }                                                                            \
  } while (0)

}  // namespace

int main() {
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, 0));
  const int blocks = prop.multiProcessorCount * 8;
  // M = 1, g128 bytes of the benchmark's TP1 layers (docs/perf-notes.md) and a few TP2-sized ones.
  const std::vector<double> sizes_mb = {2.2,  4.4,  6.69, 8.60, 8.73,  13.09, 13.64,  19.09, 30.54, 34.90,
                                        35.32, 43.62, 61.08, 70.63, 73.61, 122.10, 147.21, 244.19};
  const double rotate = 256.0 * (1 << 20);
  // Bandwidth reference: one 2 GiB read, the same kernel.
  const int64_t big = int64_t{2} << 30;
  uint4* buf = nullptr;
  uint32_t* sink = nullptr;
  const int64_t max_total = big;
  CHECK(cudaMalloc(&buf, max_total));
  CHECK(cudaMalloc(&sink, blocks * sizeof(uint32_t)));
  CHECK(cudaMemset(buf, 1, max_total));
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));

  auto time_graph = [&](int64_t bytes, int copies, double* us_out) -> int {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    const int64_t n = bytes / 16;
    CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (int c = 0; c < copies; ++c) stream_read<<<blocks, kThreads, 0, stream>>>(buf + c * n, n, sink);
    CHECK(cudaStreamEndCapture(stream, &graph));
    CHECK(cudaGraphInstantiate(&exec, graph, 0));
    for (int w = 0; w < 2; ++w) CHECK(cudaGraphLaunch(exec, stream));
    std::vector<float> ms;
    for (int r = 0; r < 21; ++r) {
      spin<<<1, 1, 0, stream>>>(100000);  // ~50 us: the host has queued the replay before the start event fires
      CHECK(cudaEventRecord(e0, stream));
      CHECK(cudaGraphLaunch(exec, stream));
      CHECK(cudaEventRecord(e1, stream));
      CHECK(cudaEventSynchronize(e1));
      float t = 0.f;
      CHECK(cudaEventElapsedTime(&t, e0, e1));
      ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    *us_out = 1e3 * ms[ms.size() / 2] / copies;
    CHECK(cudaGraphExecDestroy(exec));
    CHECK(cudaGraphDestroy(graph));
    return 0;
  };

  double big_us = 0.0;
  if (time_graph(big, 1, &big_us) != 0) return 1;
  const double bw = static_cast<double>(big) / (big_us * 1e-6);
  std::printf("{\"device\": \"%s\", \"read_2gib_TBps\": %.3f, \"sizes_mb\": [", prop.name, bw / 1e12);
  for (size_t i = 0; i < sizes_mb.size(); ++i) std::printf("%.2f%s", sizes_mb[i], i + 1 < sizes_mb.size() ? ", " : "");
  std::printf("], \"us\": [");
  std::vector<double> us(sizes_mb.size());
  for (size_t i = 0; i < sizes_mb.size(); ++i) {
    const int64_t bytes = (static_cast<int64_t>(sizes_mb[i] * 1e6) + 15) / 16 * 16;
    const int copies = static_cast<int>(std::min<double>(64.0, std::max(1.0, rotate / bytes + 1)));
    const int fit = static_cast<int>(std::min<int64_t>(copies, max_total / bytes));
    if (time_graph(bytes, fit, &us[i]) != 0) return 1;
    std::printf("%.2f%s", us[i], i + 1 < sizes_mb.size() ? ", " : "");
  }
  std::printf("], \"floor_us\": [");
  for (size_t i = 0; i < sizes_mb.size(); ++i)
    std::printf("%.2f%s", sizes_mb[i] * 1e6 / bw * 1e6, i + 1 < sizes_mb.size() ? ", " : "");
  std::printf("]}\n");
  return 0;
}
