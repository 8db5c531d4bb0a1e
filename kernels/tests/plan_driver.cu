// Host-only driver for test_dispatch_host.py: links the real dispatcher
// (csrc/dispatch.cu) with stub launchers and prints every plan of a grid of
// devices, families, paths and problem sizes, one line each:
//   P cap family path K N M code workspace roundtrip
//   G cap family E K N R code workspace roundtrip (W: the same with the grouped wgmma switch on)
// `roundtrip` is 1 when decode_plan(encode_plan(plan)) re-encodes to the same code.
// With the argument `schedules` it instead walks v11.1's stream-K schedules
// (WsSchedule / WsCursor, as producer and consumers do) over a grid of units,
// k-tiles per unit and SM counts, checks each, and prints "checked N"; the
// first broken one is printed to stderr with exit status 1. With the argument
// `decode` it reads plan codes from stdin and prints 1 for each that
// decode_plan accepts, else 0.
#include <cstdio>
#include <cstring>
#include <set>
#include <vector>

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

// Every k-tile of every unit covered exactly once, pieces non-empty, a CTA's
// parked piece first in its tail range and its owner piece last, and each
// split unit's owner (the CTA with its first k-tile) expecting exactly the
// CTAs that hold the rest.
static bool check_schedule(int units, int tiles, int sms, bool stream_k) {
  const int grid = ws_grid(units, tiles, sms, stream_k);
  const WsSchedule s(units, tiles, grid, stream_k);
  auto fail = [&](const char* what, int cta, int unit) {
    std::fprintf(stderr, "schedule units=%d tiles=%d sms=%d stream_k=%d grid=%d: %s (cta %d, unit %d)\n", units,
                 tiles, sms, stream_k ? 1 : 0, grid, what, cta, unit);
    return false;
  };
  if (grid < 1 || grid > sms || s.tail_ctas > grid) return fail("grid or tail CTAs out of range", -1, -1);
  std::vector<int> covered(static_cast<size_t>(units) * tiles, 0);
  std::vector<int> owner(units, -1);
  std::vector<std::set<int>> parts(units);
  for (int cta = 0; cta < grid; ++cta) {
    WsCursor cur(s, cta);
    WsPiece pc;
    int index = 0, tail_index = 0, count = 0;
    std::vector<WsPiece> mine;
    while (cur.next(pc)) mine.push_back(pc);
    count = static_cast<int>(mine.size());
    for (const WsPiece& q : mine) {
      if (q.unit < 0 || q.unit >= units || q.n_k < 1 || q.kt0 < 0 || q.kt0 + q.n_k > tiles) {
        return fail("piece out of range", cta, q.unit);
      }
      for (int k = q.kt0; k < q.kt0 + q.n_k; ++k) ++covered[static_cast<size_t>(q.unit) * tiles + k];
      const bool tail = q.unit >= s.full;
      if (q.role == kWsPart && (!tail || tail_index != 0 || q.kt0 == 0)) return fail("misplaced parked piece", cta, q.unit);
      if (q.role == kWsOwner && (!tail || index != count - 1 || q.kt0 != 0 || q.n_k == tiles)) {
        return fail("misplaced owner piece", cta, q.unit);
      }
      if (q.role == kWsWhole && (q.kt0 != 0 || q.n_k != tiles)) return fail("partial piece marked whole", cta, q.unit);
      if (q.role == kWsOwner) owner[q.unit] = cta;
      if (q.role == kWsPart) parts[q.unit].insert(cta);
      ++index;
      if (tail) ++tail_index;
    }
  }
  for (size_t i = 0; i < covered.size(); ++i) {
    if (covered[i] != 1) return fail("k-tile not covered exactly once", -1, static_cast<int>(i / tiles));
  }
  for (int u = 0; u < units; ++u) {
    if (parts[u].empty() != (owner[u] < 0)) return fail("split unit without owner, or owner without parts", -1, u);
    if (owner[u] < 0) continue;
    const int last = s.tail_cta_of((u - s.full + 1) * tiles - 1);
    std::set<int> expect;
    for (int c = owner[u] + 1; c <= last; ++c) expect.insert(c);
    if (expect != parts[u]) return fail("owner expects other CTAs than hold the unit", owner[u], u);
  }
  return true;
}

static int check_schedules() {
  long long n = 0;
  for (int sms : {132, 108, 80, 7, 1}) {
    for (int tiles : {1, 2, 3, 4, 7, 8, 9, 16, 33, 56, 64, 224, 296}) {
      for (int units = 1; units <= 700; units += units < 300 ? 1 : 37) {
        for (bool sk : {false, true}) {
          if (!check_schedule(units, tiles, sms, sk)) return 1;
          ++n;
        }
      }
    }
  }
  std::printf("checked %lld\n", n);
  return 0;
}

static int check_decode() {
  long long code = 0;
  Plan p;
  while (std::scanf("%lld", &code) == 1) std::printf("%d\n", decode_plan(code, &p) ? 1 : 0);
  return 0;
}

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "schedules") == 0) return check_schedules();
  if (argc > 1 && std::strcmp(argv[1], "decode") == 0) return check_decode();
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
                        static_cast<long long>(encode_plan(p)), static_cast<long long>(p.workspace_bytes), roundtrip(p));
            // The same problem planned with every work-in-progress switch on ('W').
            const Plan w = make_plan(static_cast<Family>(f), static_cast<PathRequest>(path), d, m, s[1], s[0], 2, ~0);
            std::printf("W %d %d %d %d %d %d %lld %lld %d\n", d.capability, f, path, s[0], s[1], m,
                        static_cast<long long>(encode_plan(w)), static_cast<long long>(w.workspace_bytes), roundtrip(w));
          }
        }
      }
      for (int E : {8, 64, 128}) {
        for (const auto& s : shapes) {
          for (int R : {1, 2, 8, 16, 64, 128, 512, 1024, 2048, 8192, 32768}) {
            const Plan p = make_grouped_plan(static_cast<Family>(f), d, R, E, s[1], s[0]);
            std::printf("G %d %d %d %d %d %d %lld %lld %d\n", d.capability, f, E, s[0], s[1], R,
                        static_cast<long long>(encode_plan(p)), static_cast<long long>(p.workspace_bytes),
                        roundtrip(p));
            const Plan w = make_grouped_plan(static_cast<Family>(f), d, R, E, s[1], s[0], ~0);
            std::printf("H %d %d %d %d %d %d %lld %lld %d\n", d.capability, f, E, s[0], s[1], R,
                        static_cast<long long>(encode_plan(w)), static_cast<long long>(w.workspace_bytes),
                        roundtrip(w));
          }
        }
      }
    }
  }
  return 0;
}
