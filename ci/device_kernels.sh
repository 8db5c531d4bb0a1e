#!/usr/bin/env bash
# Builds awqgemm on the GPU machine (ci/device_build.sh: once per source state), runs the GPU tests (every kernel family,
# older ones forced onto this GPU), a compute-sanitizer memcheck subset, and
# optionally the benchmark. Results and logs go to $OUT (or ./devrun).
#
#   bash ci/device_kernels.sh [tests|sass|sanitizer|racecheck|ncu|ncu_source|timeline|micro|moe|bench|all]...
#   (default: tests sanitizer)
#   bash ci/device_kernels.sh STEPS... -- STEPS...
#     on a machine of two or more GPUs: builds once, then runs the first list on GPU 0 ($OUT/gpu0) and the
#     second on GPU 1 ($OUT/gpu1) side by side (e.g. `tests timeline -- sanitizer racecheck`: the sanitizers
#     take as long as the tests); the exit status is either list's failure.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/devrun}
mkdir -p "$OUT"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tests sanitizer)
has() { local s; for s in "${steps[@]}"; do [ "$s" = "$1" ] || [ "$s" = all ] && return 0; done; return 1; }

# shellcheck source=ci/device_build.sh
source ci/device_build.sh
if printf '%s\n' "${steps[@]}" | grep -qx -- '--'; then
  first=() second=() seen=0
  for s in "${steps[@]}"; do
    if [ "$s" = -- ]; then seen=1; elif [ $seen = 0 ]; then first+=("$s"); else second+=("$s"); fi
  done
  gpus=$(nvidia-smi -L | wc -l)
  [ "$gpus" -ge 2 ] || { echo "device_kernels.sh: '--' needs two GPUs, this machine has $gpus"; exit 2; }
  [ ${#first[@]} -gt 0 ] && [ ${#second[@]} -gt 0 ] || { echo "device_kernels.sh: a step list on each side of '--'"; exit 2; }
  echo "== build awqgemm (once, before the two GPUs' runs) =="
  build_awqgemm || exit 1
  mkdir -p "$OUT/gpu0" "$OUT/gpu1"
  # Each run's own output beside (not in) its folder: a run bundles its folder's logs when it ends.
  CUDA_VISIBLE_DEVICES=0 OUT=$OUT/gpu0 bash "$0" "${first[@]}" >"$OUT/gpu0.log" 2>&1 &
  pid0=$!
  CUDA_VISIBLE_DEVICES=1 OUT=$OUT/gpu1 bash "$0" "${second[@]}" >"$OUT/gpu1.log" 2>&1
  r1=$?
  wait "$pid0"
  r0=$?
  for g in gpu0 gpu1; do echo "---- $g"; cat "$OUT/$g/summary.txt"; tail -60 "$OUT/$g.log"; done
  # At most 8 files come back from the GPU machine (two folders down): one bundle of both.
  (cd "$OUT" && tar czf logs-2gpu.tar.gz --remove-files gpu0 gpu1 gpu0.log gpu1.log 2>/dev/null)
  exit $((r0 | r1))
fi

cap=$(python3 -c "import torch; c=torch.cuda.get_device_capability(); print(f'{c[0]}{c[1]}')")
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt" "$OUT/summary.txt"
echo "== build awqgemm =="
build_awqgemm || exit 1

# Work in progress behind test-only switches, by test file (the names are kernels/tests/conftest.py's
# WIP_FEATURES; test_wip_selection.py checks the two agree). Each suite runs without them first, then
# once per feature, each in a pytest process of its own: a kernel that traps (a hung mbarrier, a bad TMA
# box) kills its process's CUDA context and would fail every later test there. Simplest first.
WIP_GPU=""
WIP_MOE=""
# Features tested in test_gpu.py (their MoE cases included) that moe.py's --wip variants also switch on.
WIP_MOE_FROM_GPU=""
# The benchmarks leave out what a feature whose tests failed would run (a trap would end the whole
# sweep): gemm.py's contender of each feature, moe.py's --wip variants that use it.
declare -A WIP_CONTENDER=()
WIP_FAILED=""

# in_parts LABEL "FEATURES" CMD...: runs CMD (a pytest command line, in kernels/) with --wip none, then
# with --wip F for each feature F; logs $OUT/LABEL.log and $OUT/LABEL-F.log (junit XML beside them).
# WIP_ONLY=1 leaves out the --wip none part (device time, when the default code is what an earlier run
# already tested: say so in the run's notes).
# tests/test_wip_selection.py checks that every feature has tests in the file it is listed for.
in_parts() {
  local label=$1 features=$2 part log r all=0
  shift 2
  local parts="none $features"
  [ "${WIP_ONLY:-0}" = 1 ] && parts=$features
  for part in $parts; do
    # A feature that already failed (traps included) is not run again under a sanitizer.
    case " $WIP_FAILED " in *" $part "*)
      echo "$label [wip: $part] not run: it failed earlier in this run" | tee -a "$OUT/summary.txt"; continue;;
    esac
    log="$OUT/$label"; [ "$part" = none ] || log="$OUT/$label-$part"
    (cd kernels && "$@" --wip "$part" --junitxml="$log.xml") >"$log.log" 2>&1
    r=$?
    # 5: pytest selected nothing (a feature with no test of this kind, e.g. no racecheck of a dense path).
    if [ "$r" -eq 5 ]; then echo "$label [wip: $part] nothing selected" | tee -a "$OUT/summary.txt"; continue; fi
    echo "$label [wip: $part] rc=$r" | tee -a "$OUT/summary.txt"
    all=$((all | r))
    if [ "$r" -ne 0 ] && [ "$part" != none ]; then WIP_FAILED="$WIP_FAILED $part"; fi
  done
  return $all
}

rc=0
if has tests; then
  echo "== GPU tests =="
  in_parts gpu-tests "$WIP_GPU" python3 -m pytest -m gpu -q -rA -p no:cacheprovider tests/test_gpu.py -s
  r=$?; rc=$((rc | r))
  grep -h -E "worst rel err|passed|failed|Error|error" "$OUT"/gpu-tests*.log | tail -40
fi
if has sass && [ "$cap" = 90 ]; then
  # v11.1's ring loops in uniform registers and the K-split decode k-loops within their instruction
  # budget (ci/sass_ring_check.py says why); 2: no nvdisasm here. CI runs the same check with the
  # recipe's nvcc (tests/test_sass_checks.py); here it compiles the sm90a unit again (~240 s on the
  # H200 machine), so it is a step of its own: for a device toolkit other than CI's.
  python3 ci/sass_ring_check.py >"$OUT/sass.log" 2>&1
  r=$?; echo "sass check rc=$r ($(grep -c '^ok' "$OUT/sass.log") ok)" | tee -a "$OUT/summary.txt"
  grep -v '^ok' "$OUT/sass.log" | tail -12
  [ "$r" -eq 1 ] && rc=1
fi
if has sanitizer; then
  echo "== compute-sanitizer memcheck (subset) =="
  in_parts sanitizer "$WIP_GPU" compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 \
     python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k sanitizer_subset
  r=$?; rc=$((rc | r))
  for f in "$OUT"/sanitizer*.log; do tail -3 "$f"; done
fi
if has racecheck; then
  echo "== compute-sanitizer racecheck (subset) =="
  # A subset that runs no cuBLAS kernel (their nvjet kernels report WAR hazards of their own; filtering
  # them out with --kernel-name made the sanitizer fail on a hardware exception it could not handle).
  in_parts racecheck "$WIP_GPU" compute-sanitizer --tool racecheck --racecheck-report hazard --error-exitcode 9 \
     python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k racecheck_subset
  r=$?; rc=$((rc | r))
  for f in "$OUT"/racecheck*.log; do tail -3 "$f"; done
fi
if has ncu; then
  echo "== ncu: fused kernels at a few shapes =="
  # NCU_CASES: "K N M" triples (default: decode and mid-M points of Llama-3-8B);
  # NCU_PROFILE_ARGS: extra profile_one.py arguments, e.g. "--family sm80 --path wtile".
  cases=${NCU_CASES:-"4096 28672 1;4096 4096 1;4096 28672 16;4096 28672 64"}
  IFS=';' read -ra case_list <<<"$cases"
  for shape in "${case_list[@]}"; do
    set -- $shape
    ncu --kernel-name regex:'gemm_(tc|xs|wg|ws|wt)_kernel|dequantize_t' --launch-skip 2 --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis \
        --section LaunchStats --section ComputeWorkloadAnalysis \
        python3 benchmarks/profile_one.py --k $1 --n $2 --m $3 ${NCU_PROFILE_ARGS:-} >"$OUT/ncu-$1x$2-m$3.log" 2>&1
    echo "--- K=$1 N=$2 M=$3"
    grep -E "plan:|Duration|DRAM Throughput|Memory Throughput|Cache Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Stall|Warp Cycles Per Issued|Grid Size|Block Size|Waves Per SM|L1/TEX Hit|L2 Hit|Issued Warp|Compute \(SM\)|Executed Ipc|Pipe" "$OUT/ncu-$1x$2-m$3.log" | head -45
  done
fi
if has ncu_source; then
  echo "== ncu --set full + per-instruction warp-stall samples (SASS source page) =="
  # NCU_SRC_CASES: "NAME:KERNEL-REGEX:SKIP:COUNT:profile_one.py arguments" entries.
  cases=${NCU_SRC_CASES:-"ws-m64:gemm_ws_kernel:2:1:--k 4096 --n 14336 --m 64 --family sm90 --path fused;\
ws-m256:gemm_ws_kernel:2:1:--k 4096 --n 28672 --m 256 --family sm90 --path fused;\
moe-qwen3-t128:gemm_tc_kernel:2:2:--moe 128,8,2048,768 --m 128"}
  IFS=';' read -ra case_list <<<"$cases"
  for c in "${case_list[@]}"; do
    IFS=':' read -r name regex skip count args <<<"$c"
    ncu --set full --import-source no --kernel-name regex:"$regex" --launch-skip "$skip" --launch-count "$count" \
        -f -o "/tmp/ncu-src-$name" python3 benchmarks/profile_one.py $args >"$OUT/ncu-src-$name-run.log" 2>&1
    ncu -i "/tmp/ncu-src-$name.ncu-rep" --page details --print-details all >"$OUT/ncu-src-$name-details.log" 2>&1
    ncu -i "/tmp/ncu-src-$name.ncu-rep" --page source --csv --print-source sass >"$OUT/ncu-src-$name-sass.log" 2>&1
    echo "--- $name ($args)"
    grep -E "^plan|^fused_moe|Duration|Warp Cycles Per Issued|Stall|stall" "$OUT/ncu-src-$name-details.log" | head -30
    python3 ci/ncu_top_sass.py "$OUT/ncu-src-$name-sass.log" --top 30 2>&1 | tee "$OUT/ncu-src-$name-top.log"
  done
fi
if has timeline; then
  echo "== timeline: each kernel of one call, from a CUDA graph replay under torch.profiler =="
  # TIMELINE_CASES: profile_one.py argument lists (default: Llama-3-8B's four layers at batch 64, its
  # down at 48 tokens, its gate_up at 24 and 256 tokens, its qkv at 192, the Qwen3-30B-A3B MoE layer at 16, 64, 256, 512, 1024
  # and 4096 tokens; a case with --wip F is left out when F's tests failed earlier in this run: the moe
  # step runs after this one, so each case runs in a process of its own).
  cases=${TIMELINE_CASES:-"--k 4096 --n 6144 --m 64;--k 4096 --n 4096 --m 64;--k 4096 --n 28672 --m 64;\
--k 14336 --n 4096 --m 64;--k 14336 --n 4096 --m 48;--k 4096 --n 28672 --m 24;--k 4096 --n 28672 --m 256;\
--k 4096 --n 6144 --m 192;--moe 128,8,2048,768 --m 16;--moe 128,8,2048,768 --m 64;--moe 128,8,2048,768 --m 256;\
--moe 128,8,2048,768 --m 512;--moe 128,8,2048,768 --m 1024;--moe 128,8,2048,768 --m 4096"}
  IFS=';' read -ra case_list <<<"$cases"
  for args in "${case_list[@]}"; do
    skip=0
    for f in $WIP_FAILED; do case " $args " in *" --wip $f "*) skip=1;; esac; done
    [ "$skip" = 1 ] && { echo "timeline: $args left out (its tests failed)"; continue; }
    # shellcheck disable=SC2086
    python3 benchmarks/profile_one.py --iters 20 --timeline $args 2>&1 | grep -v Warning | tee -a "$OUT/timeline.log"
  done
fi
if has micro; then
  echo "== microbenchmarks: mma.sync peak, streaming-read practical floor =="
  for b in mma_peak stream_read; do
    nvcc -O3 -std=c++17 -arch="sm_${cap}" "benchmarks/$b.cu" -o "/tmp/$b" >"$OUT/$b-build.log" 2>&1 \
      && "/tmp/$b" | tee "$OUT/$b.json"
  done
fi
if has moe; then
  echo "== MoE: grouped GEMM tests, memcheck subset, benchmark =="
  # MOE_TESTS=0: the benchmark only (~220 s less), when an earlier call on this machine ran the tests
  # of the same sources (say so in the run's notes).
  if [ "${MOE_TESTS:-1}" != 0 ]; then
    in_parts gpu-moe-tests "$WIP_MOE" python3 -m pytest -m gpu -q -rA -p no:cacheprovider tests/test_gpu_moe.py -s
    r=$?; rc=$((rc | r))
    grep -h -E "worst rel err|passed|failed|Error|error" "$OUT"/gpu-moe-tests*.log | tail -30
    in_parts moe-sanitizer "$WIP_MOE" compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 \
       python3 -m pytest -q -p no:cacheprovider tests/test_gpu_moe.py -k sanitizer_subset
    r=$?; rc=$((rc | r))
    for f in "$OUT"/moe-sanitizer*.log; do tail -3 "$f"; done
  fi
  # MOE_BENCH_ARGS: e.g. "--tokens 1,64,1024 --deadline 120"
  mkdir -p "$OUT/results"
  # vLLM's fused_marlin_moe is the peer when ci/device_vllm.sh installed vLLM on this machine (its env file).
  skip=""
  for f in $WIP_FAILED; do case " $WIP_MOE $WIP_MOE_FROM_GPU " in *" $f "*) skip="$skip${skip:+,}$f";; esac; done
  (if [ -f "$HOME/vsite/env" ]; then source "$HOME/vsite/env"; fi
   python3 benchmarks/moe.py --out "$OUT/results" ${MOE_BENCH_ARGS:-} ${skip:+--skip-wip "$skip"}) \
    >"$OUT/moe-bench.log" 2>&1
  r=$?; echo "moe bench rc=$r" | tee -a "$OUT/summary.txt"
  tail -30 "$OUT/moe-bench.log"
fi
if has bench; then
  echo "== benchmark =="
  # TurboMind 0.0.2 (baseline) from carried wheels: benchmarks/wheels holds the
  # cp312 turbomind wheel and nvidia-cuda-runtime-cu12 (its libcudart.so.12).
  if ls benchmarks/wheels/turbomind-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-deps --target /tmp/tmwheels benchmarks/wheels/*.whl >/dev/null 2>&1 || true
    export PYTHONPATH=/tmp/tmwheels${PYTHONPATH:+:$PYTHONPATH}
    export LD_LIBRARY_PATH=/tmp/tmwheels/nvidia/cuda_runtime/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  fi
  skip=""
  for f in $WIP_FAILED; do [ -n "${WIP_CONTENDER[$f]:-}" ] && skip="$skip${skip:+,}${WIP_CONTENDER[$f]}"; done
  # vLLM's Machete and Marlin are contenders when ci/device_vllm.sh installed vLLM on this machine (its env file).
  (if [ -f "$HOME/vsite/env" ]; then source "$HOME/vsite/env"; fi
   python3 benchmarks/gemm.py --out "$OUT" ${BENCH_ARGS:-} ${skip:+--skip-contenders "$skip"}) >"$OUT/bench.log" 2>&1
  r=$?; echo "bench rc=$r" | tee -a "$OUT/summary.txt"
  grep -v "^\[" "$OUT/bench.log" | tail -70
fi
# At most 8 files come back from the GPU machine: bundle the logs.
(cd "$OUT" && tar czf logs.tar.gz --remove-files ./*.log ./*.xml gpu.txt 2>/dev/null)
exit $rc
