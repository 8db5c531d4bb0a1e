// Host-only driver for test_dispatch_host.py: links the real dispatcher
// (csrc/dispatch.cu) with stub launchers and prints every plan of a grid of
// devices, families, paths and problem sizes, one line each:
//   P cap family path K N M code workspace roundtrip
//   G cap family E K N R code workspace roundtrip
// `roundtrip` is 1 when decode_plan(encode_plan(plan)) re-encodes to the same code.
#include <cstdio>

#include "awqgemm/dispatch.h"
#include "awqgemm/families.h"

namespace awqgemm {
cudaError_t launch_sm80_m16n8k16(const GemmProblem&, const TileConfig&, cudaStream_t) { return cudaSuccess; }
cudaError_t launch_sm75_m16n8k8(const GemmProblem&, const TileConfig&, cudaStream_t) { return cudaSuccess; }
cudaError_t launch_sm70_m8n8k4(const GemmProblem&, const TileConfig&, cudaStream_t) { return cudaSuccess; }
cudaError_t launch_sm90a_m64nNk16(const GemmProblem&, const TileConfig&, cudaStream_t) { return cudaSuccess; }
int compiled_ptx_arch() { return 90; }
cudaError_t launch_splitk_reduce(const GemmProblem&, int, bool, cudaStream_t) { return cudaSuccess; }
cudaError_t launch_dequantize_t(const void*, const void*, int, DType, int, int, int, int, int, void*, cudaStream_t) {
  return cudaSuccess;
}
}  // namespace awqgemm

using namespace awqgemm;

static int roundtrip(const Plan& p) {
  Plan q;
  return decode_plan(encode_plan(p), &q) && encode_plan(q) == encode_plan(p) ? 1 : 0;
}

int main() {
  const DeviceInfo devs[] = {{90, 132, 90}, {80, 108, 80}, {86, 84, 86}, {75, 40, 75}, {70, 80, 70}};
  // (K, N): the perf-anchor layers at TP1/TP2, MoE experts, odd TP shards.
  const int shapes[][2] = {{4096, 6144},  {4096, 4096},  {4096, 28672}, {14336, 4096}, {3584, 37888}, {18944, 3584},
                           {8192, 57344}, {28672, 8192}, {5120, 55296}, {27648, 5120}, {1120, 104},   {4096, 1376},
                           {2752, 4096},  {512, 272},    {2048, 1536},  {768, 2048},   {4096, 28672 / 2}};
  const int ms[] = {1,   2,   3,   5,   8,   9,   12,  16,  17,  24,   31,   32,   33,   48,   64,   65,  96,
                    127, 128, 129, 200, 255, 256, 300, 512, 513, 700, 1000, 1024, 2048, 4096, 8192, 16384};
  const int fams[] = {70, 75, 80, 90};
  for (const DeviceInfo& d : devs) {
    for (int f : fams) {
      if (f > d.capability || (f == 90 && d.capability != 90)) continue;
      for (int path = 0; path <= 3; ++path) {
        for (const auto& s : shapes) {
          for (int m : ms) {
            const Plan p = make_plan(static_cast<Family>(f), static_cast<PathRequest>(path), d, m, s[1], s[0], 2);
            std::printf("P %d %d %d %d %d %d %lld %lld %d\n", d.capability, f, path, s[0], s[1], m,
                        static_cast<long long>(encode_plan(p)), static_cast<long long>(p.workspace_bytes),
                        roundtrip(p));
          }
        }
      }
      for (int E : {8, 64, 128}) {
        for (const auto& s : shapes) {
          for (int R : {1, 2, 8, 16, 64, 128, 512, 1024, 8192, 32768}) {
            // G: default; W: the wgmma switch (work in progress).
            for (const char mode : {'G', 'W'}) {
              const Plan p = make_grouped_plan(static_cast<Family>(f), d, R, E, s[1], s[0], mode == 'W');
              std::printf("%c %d %d %d %d %d %d %lld %lld %d\n", mode, d.capability, f, E, s[0], s[1], R,
                          static_cast<long long>(encode_plan(p)), static_cast<long long>(p.workspace_bytes),
                          roundtrip(p));
            }
          }
        }
      }
    }
  }
  return 0;
}
