#!/usr/bin/env bash
# Tuning sweep for the dispatcher's bytes-in-flight target (AWQGEMM_INFLIGHT_KIB)
# on the decode sizes: one benchmark per value, tables bundled into $OUT.
#   bash benchmarks/sweep_inflight.sh "8 16 24 32"   (after awqgemm is installed)
set -uo pipefail
OUT=${OUT:-$PWD/devrun}
mkdir -p "$OUT/inflight"
for kib in ${1:-8 16 24 32}; do
  AWQGEMM_INFLIGHT_KIB=$kib python3 benchmarks/gemm.py --quick --m 1,4,8,16,32,64 --contenders auto \
    --results-dir "$OUT/inflight" --tag "kib$kib" >"$OUT/inflight/kib$kib.log" 2>&1
  echo "kib=$kib: $(grep -E 'M <= 16: auto' "$OUT/inflight/kib$kib.log" | head -1)"
done
python3 - "$OUT/inflight" <<'PY'
import glob, json, math, sys
rows = {}
for f in sorted(glob.glob(sys.argv[1] + "/*kib*.json")):
    kib = f.split("kib")[-1].split(".")[0].split("-")[0]
    for r in json.load(open(f))["rows"]:
        if r["us"].get("auto"):
            rows.setdefault((r["shape"], r["dtype"], r["M"]), {})[kib] = r["us"]["auto"]
kibs = sorted({k for v in rows.values() for k in v}, key=int)
print("geomean time relative to kib=24, by M:")
for m in sorted({k[2] for k in rows}):
    line = []
    for kib in kibs:
        rel = [v[kib] / v["24"] for k, v in rows.items() if k[2] == m and kib in v and "24" in v]
        line.append(f"{kib}: {math.exp(sum(map(math.log, rel)) / len(rel)):.3f}")
    print(f"  M={m}: " + "  ".join(line))
PY
(cd "$OUT" && tar czf inflight.tar.gz --remove-files inflight)
