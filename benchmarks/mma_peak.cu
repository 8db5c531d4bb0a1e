// Peak rate of mma.sync.m16n8k16 (16-bit inputs, fp32 accumulate) on this GPU,
// by resident warps per SM. It is the arithmetic ceiling of every kernel built
// on that instruction (awqgemm's sm80 family), which on Hopper is not the
// ceiling cuBLAS reaches with wgmma: docs/perf-notes.md compares the two.
//
//   nvcc -O3 -std=c++17 -arch=sm_90 benchmarks/mma_peak.cu -o /tmp/mma_peak && /tmp/mma_peak
//
// Prints one JSON object.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

namespace {

constexpr int kChains = 8;  // independent accumulators per warp: enough to cover MMA latency

template <bool kBf16>
__global__ void mma_loop(float* sink, int iters) {
  float acc[kChains][4] = {};
  // Operand bits do not change the rate; small normal values keep them finite.
  const uint32_t a0 = 0x3c003c00u ^ (threadIdx.x & 7), a1 = a0 + 1, a2 = a0 + 2, a3 = a0 + 3;
  const uint32_t b0 = 0x38003800u ^ (threadIdx.x & 3), b1 = b0 + 1;
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int c = 0; c < kChains; ++c) {
      if constexpr (kBf16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(acc[c][0]), "+f"(acc[c][1]), "+f"(acc[c][2]), "+f"(acc[c][3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
      } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(acc[c][0]), "+f"(acc[c][1]), "+f"(acc[c][2]), "+f"(acc[c][3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
      }
    }
  }
  float s = 0.f;
#pragma unroll
  for (int c = 0; c < kChains; ++c) s += acc[c][0] + acc[c][1] + acc[c][2] + acc[c][3];
  if (s == 1234.5f) sink[blockIdx.x * blockDim.x + threadIdx.x] = s;  // keeps the loop live
}

#define CHECK(call)                                                              \
  do {                                                                           \
    const cudaError_t err_ = (call);                                             \
    if (err_ != cudaSuccess) {                                                   \
      std::fprintf(stderr, "%s failed: %s\n", #call, cudaGetErrorString(err_)); \
      return -1.0;                                                               \
    }                                                                            \
  } while (0)

// TFLOP/s with `warps_per_sm` warps resident on every SM (blocks of 4 warps).
template <bool kBf16>
double measure(int sms, int warps_per_sm, float* sink) {
  const int threads = 128;
  const int blocks = sms * warps_per_sm / 4;
  const int iters = 4096;
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  mma_loop<kBf16><<<blocks, threads>>>(sink, iters);  // warm-up (clocks, module load)
  CHECK(cudaGetLastError());
  CHECK(cudaEventRecord(start));
  const int reps = 5;
  for (int r = 0; r < reps; ++r) mma_loop<kBf16><<<blocks, threads>>>(sink, iters);
  CHECK(cudaEventRecord(stop));
  CHECK(cudaEventSynchronize(stop));
  float ms = 0.f;
  CHECK(cudaEventElapsedTime(&ms, start, stop));
  CHECK(cudaEventDestroy(start));
  CHECK(cudaEventDestroy(stop));
  const double flops = 2.0 * 16 * 8 * 16 * kChains * static_cast<double>(iters) * reps * blocks * (threads / 32);
  return flops / (ms * 1e-3) / 1e12;
}

}  // namespace

int main() {
  int dev = 0, sms = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
    std::fprintf(stderr, "no CUDA device\n");
    return 1;
  }
  sms = prop.multiProcessorCount;
  float* sink = nullptr;
  if (cudaMalloc(&sink, static_cast<size_t>(sms) * 32 * 32 * sizeof(float)) != cudaSuccess) return 1;
  std::printf("{\"device\": \"%s\", \"sms\": %d, \"instruction\": \"mma.sync.aligned.m16n8k16 f32 accumulate\", ",
              prop.name, sms);
  const int warps[] = {4, 8, 16, 32};
  for (int t = 0; t < 2; ++t) {
    std::printf("\"%s_tflops_by_warps_per_sm\": {", t == 0 ? "fp16" : "bf16");
    for (int i = 0; i < 4; ++i) {
      const double r = t == 0 ? measure<false>(sms, warps[i], sink) : measure<true>(sms, warps[i], sink);
      std::printf("\"%d\": %.1f%s", warps[i], r, i < 3 ? ", " : "");
    }
    std::printf("}%s", t == 0 ? ", " : "");
  }
  std::printf("}\n");
  cudaFree(sink);
  return 0;
}
