#!/usr/bin/env bash
# Kernel times of another revision against this tree's, measured in one GPU session: same clocks, same
# driver, same benchmark arguments. For a slowdown that two sessions' tables cannot pin down (a
# regression at identical plans, say).
#
#   here:        bash ci/device_ab.sh prepare REV...     # .ab/REV: each revision's kernels and gemm.py (ignored;
#                                                        # earlier ones removed)
#   GPU machine: AB_ARGS="--contenders wg --shapes tp1 --m 64,128" bash ci/device_ab.sh run   (carry .ab)
#                (MOE_AB_ARGS="--tokens 16,64,128" also times each tree's benchmarks/moe.py, Marlin left out)
#
# `run` builds this tree (ci/device_build.sh, skipped when already installed) and each prepared revision
# (into a site of its own), runs each tree's own benchmarks/gemm.py with AB_ARGS, and prints, per
# contender, the time ratio this tree / the revision at every (shape, group, M) and the geomean per M.
# Results: $OUT/ab-head.json and $OUT/ab-REV.json (moe: $OUT/ab-moe-head.json, $OUT/ab-moe-REV.json).
set -uo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-}
case "$cmd" in
prepare)
  [ $# -ge 2 ] || { echo "usage: ci/device_ab.sh prepare REV..."; exit 2; }
  # Only the revisions named now: `run` A/Bs every one under .ab, and a stale one from an earlier
  # session once cost ~100 s of device time.
  rm -rf .ab
  for r in "${@:2}"; do
    rev=$(git rev-parse --short "$r") || exit 1
    mkdir -p ".ab/$rev"
    git archive "$rev" kernels/CMakeLists.txt kernels/pyproject.toml kernels/README.md kernels/cuda_archs.txt \
      kernels/csrc kernels/python benchmarks/gemm.py benchmarks/moe.py benchmarks/awqbench | tar -x -C ".ab/$rev" || exit 1
    du -sh ".ab/$rev"
  done
  ;;
run)
  OUT=${OUT:-$PWD/devrun}
  mkdir -p "$OUT"
  # shellcheck source=ci/device_build.sh
  source ci/device_build.sh
  build_awqgemm || exit 1
  archs=$(device_archs)
  # shellcheck disable=SC2086  # AB_ARGS is a list of arguments
  python3 benchmarks/gemm.py --results-dir /tmp/ab-head --tag ab ${AB_ARGS:-} >"$OUT/ab-head.log" 2>&1 \
    || { tail -20 "$OUT/ab-head.log"; exit 1; }
  cp /tmp/ab-head/*-ab.json "$OUT/ab-head.json"
  if [ -n "${MOE_AB_ARGS:-}" ]; then
    # shellcheck disable=SC2086
    python3 benchmarks/moe.py --no-marlin --out /tmp/ab-moe-head $MOE_AB_ARGS >"$OUT/ab-moe-head.log" 2>&1 \
      || { tail -20 "$OUT/ab-moe-head.log"; exit 1; }
    cp /tmp/ab-moe-head/moe-*.json "$OUT/ab-moe-head.json"
  fi
  for dir in .ab/*/; do
    rev=$(basename "$dir")
    site=/tmp/ab-site-$rev
    echo "build: $rev for $archs"
    CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=$archs" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      python3 -m pip install --no-build-isolation --no-deps -q -C build-dir="/tmp/ab-build-$rev" \
      --target "$site" --upgrade "$dir/kernels" >"$OUT/ab-build-$rev.log" 2>&1 \
      || { tail -40 "$OUT/ab-build-$rev.log"; exit 1; }
    # shellcheck disable=SC2086
    PYTHONPATH="$site" python3 "$dir/benchmarks/gemm.py" --results-dir "/tmp/ab-$rev" --tag ab ${AB_ARGS:-} \
      >"$OUT/ab-$rev.log" 2>&1 || { tail -20 "$OUT/ab-$rev.log"; exit 1; }
    cp "/tmp/ab-$rev"/*-ab.json "$OUT/ab-$rev.json"
    if [ -n "${MOE_AB_ARGS:-}" ]; then
      [ -f "$dir/benchmarks/moe.py" ] || { echo "$rev: no benchmarks/moe.py (prepare it again)"; exit 1; }
      # shellcheck disable=SC2086
      PYTHONPATH="$site" python3 "$dir/benchmarks/moe.py" --no-marlin --out "/tmp/ab-moe-$rev" $MOE_AB_ARGS \
        >"$OUT/ab-moe-$rev.log" 2>&1 || { tail -20 "$OUT/ab-moe-$rev.log"; exit 1; }
      cp "/tmp/ab-moe-$rev"/moe-*.json "$OUT/ab-moe-$rev.json"
      python3 - "$OUT/ab-moe-head.json" "$OUT/ab-moe-$rev.json" "$rev" <<'EOF'
import json, sys

head, old = (json.load(open(p))["rows"] for p in sys.argv[1:3])
index = {(r["shape"], r["tokens"]): r for r in old}
print(f"MoE layer time, this tree / {sys.argv[3]} (same session, CUDA graphs):")
for r in head:
    o = index.get((r["shape"], r["tokens"]))
    if o is None:
        continue
    for key in ("awqgemm_graph_us", "awqgemm_gemms_graph_us"):
        if r.get(key) and o.get(key):
            print(f"  {r['shape']:<16} T={r['tokens']:<5} {key:<24} {r[key]:8.1f} / {o[key]:8.1f} us = {r[key] / o[key]:.3f}")
EOF
    fi
    python3 - "$OUT/ab-head.json" "$OUT/ab-$rev.json" "$rev" <<'EOF'
import json, math, sys
from collections import defaultdict

head, old = (json.load(open(p))["rows"] for p in sys.argv[1:3])
index = {(r["shape"], r["group"], r["M"]): r for r in old}
per_m = defaultdict(list)
print(f"time ratio, this tree / {sys.argv[3]} (same session):")
for r in head:
    o = index.get((r["shape"], r["group"], r["M"]))
    if o is None:
        continue
    for c, t in r["us"].items():
        if c in o["us"] and o["us"][c] > 0:
            ratio = t / o["us"][c]
            per_m[(c, r["M"])].append(ratio)
            print(f"  {r['shape']:<24} g{r['group']:<3} M={r['M']:<5} {c:<7} {t:8.1f} / {o['us'][c]:8.1f} us = {ratio:.3f}")
for (c, m), v in sorted(per_m.items()):
    g = math.exp(sum(map(math.log, v)) / len(v))
    print(f"  geomean {c:<7} M={m:<5} {g:.3f} ({min(v):.2f}..{max(v):.2f}, {len(v)} points)")
EOF
  done
  ;;
*)
  echo "usage: bash ci/device_ab.sh prepare REV | run" >&2
  exit 2
  ;;
esac
