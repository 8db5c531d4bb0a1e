#!/usr/bin/env bash
# Tuning sweep of one dispatcher knob (an environment variable read by
# kernels/csrc/dispatch.cu): one benchmark per value, a table of geomean times
# relative to the first value by M, everything bundled into $OUT/<knob>.tar.gz.
#   bash benchmarks/sweep_knob.sh AWQGEMM_INFLIGHT_KIB "24 8 16 32" "--quick --m 1,4,8,16,32,64"
# CONTENDER (default auto) picks the gemm.py contender timed, e.g. CONTENDER=a80 for the sm80 family
# forced on a newer card.
# (after awqgemm is installed on the GPU machine; docs/perf-notes.md has the results).
set -uo pipefail
knob=$1
values=$2
bench_args=${3:---quick --m 1,16,64}
contender=${CONTENDER:-auto}
OUT=${OUT:-$PWD/devrun}
dir="$OUT/$knob"
mkdir -p "$dir"
for v in $values; do
  env "$knob=$v" python3 benchmarks/gemm.py $bench_args --contenders "$contender" \
    --results-dir "$dir" --tag "v$v" >"$dir/v$v.log" 2>&1 || echo "$knob=$v: benchmark failed (see $dir/v$v.log)"
  echo "$knob=$v: done"
done
python3 - "$dir" "$knob" "$contender" $values <<'PY'
import glob, json, math, sys
d, knob, contender, values = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
rows = {}
for v in values:
    for f in glob.glob(f"{d}/*-v{v}.json"):
        for r in json.load(open(f))["rows"]:
            if r["us"].get(contender):
                rows.setdefault((r["shape"], r["dtype"], r["M"]), {})[v] = r["us"][contender]
base = values[0]
print(f"{knob}: geomean time relative to {base}, by M (lower is better)")
for m in sorted({k[2] for k in rows}):
    line = []
    for v in values:
        rel = [t[v] / t[base] for k, t in rows.items() if k[2] == m and v in t and base in t]
        if rel:
            line.append(f"{v}: {math.exp(sum(map(math.log, rel)) / len(rel)):.3f}")
    print(f"  M={m}: " + "  ".join(line))
print("per shape (us):")
for k in sorted(rows, key=lambda k: (k[2], k[0], k[1])):
    print(f"  {k[0]:26s} {k[1]} M={k[2]:<5d} " + " ".join(f"{v}:{rows[k].get(v, float('nan')):8.2f}" for v in values))
PY
(cd "$OUT" && tar czf "$knob.tar.gz" --remove-files "$knob")
