#!/usr/bin/env bash
# Real CUDA vLLM (0.26.0) on the GPU machine, brought there in parts, plus awqgemm
# built for the GPU and the plugin. Runs ON the GPU machine (or any CUDA box with
# torch 2.11 / CUDA 13 and no internet).
#
#   here:   bash ci/vllm_gpu/prepare.sh        # once: ci/vllm_gpu/parts/p1..pN (git-ignored)
#   there:  one device run per part, back to back (the machine keeps ~/stash while warm):
#     carry=[ci/vllm_gpu/parts/p1]  bash ci/device_vllm.sh stash build
#     carry=[ci/vllm_gpu/parts/p2]  bash ci/device_vllm.sh stash
#     carry=[ci/vllm_gpu/parts/pN]  bash ci/device_vllm.sh stash install tests e2e --shape llama3-8b
#
# Steps (any order on one command line; everything after `e2e` goes to benchmarks/e2e.py):
#   stash     copy this run's carried part(s) to $STASH (default ~/stash)
#   build     build awqgemm for this GPU and install it and the plugin (--no-deps): ci/device_build.sh,
#             skipped when the sources are unchanged
#   install   assemble the parts into $VSITE (default ~/vsite; skipped when already there), check
#             that vllm imports, then `build`; writes $VSITE/env (source it to use vllm)
#   tests     GPU integration tests (plugin/tests/test_gpu_vllm.py, markers gpu and vllm)
#   e2e ...   benchmarks/e2e.py with the remaining arguments
# Logs and results go to $OUT (default ./devrun), bundled into logs.tar.gz (at most 8 files
# come back from a device run).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/devrun}
STASH=${STASH:-$HOME/stash}
VSITE=${VSITE:-$HOME/vsite}
mkdir -p "$OUT" "$STASH"
export PYTHONUNBUFFERED=1

steps=()
e2e_args=()
while [ $# -gt 0 ]; do
  if [ "$1" = e2e ]; then
    steps+=(e2e); shift; e2e_args=("$@"); break
  fi
  steps+=("$1"); shift
done
[ ${#steps[@]} -eq 0 ] && { sed -n '2,22p' "$0"; exit 2; }

log() { echo "[device_vllm $(date +%T)] $*" | tee -a "$OUT/summary.txt"; }
t0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t0 )) s"; }

manifest_get() {  # key -> value from any stashed MANIFEST
  local m; m=$(ls "$STASH"/MANIFEST 2>/dev/null | head -1)
  [ -n "$m" ] && sed -n "s/^$1=//p" "$m"
}

step_stash() {
  local n=0 d
  for d in ci/vllm_gpu/parts/p*/; do
    [ -d "$d" ] || continue
    cp -r "$d". "$STASH/" && n=$((n + 1))
  done
  log "stash: copied $n carried part folder(s) to $STASH"
  ls -l "$STASH" | tee -a "$OUT/summary.txt"
  local want have
  want=$(manifest_get parts); have=$(ls "$STASH"/vsite.tar.zst.part-* 2>/dev/null | wc -l)
  log "stash: $have of ${want:-?} parts present"
}

# shellcheck source=ci/device_build.sh
source ci/device_build.sh

step_build() { build_awqgemm; }

write_env() {
  cat >"$VSITE/env" <<EOF
# source $VSITE/env   -- real CUDA vLLM $(manifest_get payload) from ci/device_vllm.sh
export PYTHONPATH=$VSITE\${PYTHONPATH:+:\$PYTHONPATH}
export VLLM_USE_FLASHINFER_SAMPLER=0      # flashinfer is not carried; the sampler would import it
export VLLM_ENABLE_V1_MULTIPROCESSING=0   # engine core in-process: faster start, one engine per process
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
EOF
  cp "$VSITE/env" "$OUT/env"
}

step_install() {
  local payload want have
  payload=$(manifest_get payload)
  if [ -f "$VSITE/.awqgemm-payload" ] && { [ -z "$payload" ] || [ "$(cat "$VSITE/.awqgemm-payload")" = "$payload" ]; }; then
    log "install: $VSITE already holds payload $(cat "$VSITE/.awqgemm-payload"), skipped assembling"
  else
    want=$(manifest_get parts); have=$(ls "$STASH"/vsite.tar.zst.part-* 2>/dev/null | wc -l)
    if [ -z "$want" ] || [ "$have" -ne "$want" ]; then
      log "install: only $have of ${want:-?} parts in $STASH; send the others first (step stash)"; return 1
    fi
    local zstd=zstd s; s=$(date +%s)
    if ! command -v zstd >/dev/null; then
      zstd="$STASH/tools/zstd"; chmod +x "$zstd"; export LD_LIBRARY_PATH="$STASH/tools${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    local got; got=$(cat "$STASH"/vsite.tar.zst.part-* | sha256sum | cut -d' ' -f1)
    [ "$got" = "$(manifest_get sha256)" ] || { log "install: checksum mismatch ($got)"; return 1; }
    rm -rf "$VSITE"; mkdir -p "$(dirname "$VSITE")"
    if ! cat "$STASH"/vsite.tar.zst.part-* | "$zstd" -d -q --long=27 | tar -x -C "$(dirname "$VSITE")"; then
      log "install: extraction FAILED"; return 1
    fi
    [ "$VSITE" = "$(dirname "$VSITE")/vsite" ] || mv "$(dirname "$VSITE")/vsite" "$VSITE"
    log "install: assembled $VSITE ($(du -sh "$VSITE" | cut -f1)) in $(( $(date +%s) - s )) s"
  fi
  write_env
  # shellcheck disable=SC1091
  ( source "$VSITE/env"
    python3 - <<'EOF' 2>&1 | tee "$OUT/vllm-check.log" | tail -6
import importlib, torch, vllm
import vllm._custom_ops as ops
from vllm.platforms import current_platform
print("vllm", vllm.__version__, "| torch", torch.__version__, "| platform", type(current_platform).__name__,
      "| GPU", torch.cuda.get_device_name())
print("machete_mm" , hasattr(torch.ops._C, "machete_mm"), "| marlin_gemm", hasattr(torch.ops._C, "marlin_gemm") or hasattr(torch.ops._C, "gptq_marlin_gemm"))
importlib.import_module("vllm.entrypoints.llm")
print("vllm.entrypoints.llm imports")
EOF
  ) || { log "install: vllm does not import"; return 1; }
  step_build || return 1
  cat <<EOF | tee -a "$OUT/summary.txt"
== vLLM is ready ==
  source $VSITE/env          # PYTHONPATH=$VSITE, VLLM_USE_FLASHINFER_SAMPLER=0, VLLM_ENABLE_V1_MULTIPROCESSING=0
  python3 -c 'import vllm._custom_ops as ops; print(ops.machete_mm, ops.marlin_gemm)'
  python3 benchmarks/e2e.py --shape llama3-8b
(awqgemm and the plugin are in the machine's own site-packages; vllm and its extra deps in $VSITE.)
EOF
}

step_tests() {
  [ -f "$VSITE/env" ] || { log "tests: no $VSITE/env; run install first"; return 1; }
  log "tests: plugin/tests/test_gpu_vllm.py"
  local r
  ( source "$VSITE/env"
    cd plugin && AWQGEMM_GPU_VLLM_OUT="$OUT" timeout "${TESTS_TIMEOUT:-480}" python3 -m pytest -m "gpu and vllm" -q -rA -s \
      -p no:cacheprovider tests/test_gpu_vllm.py --junitxml="$OUT/gpu-vllm-tests.xml" ) >"$OUT/gpu-vllm-tests.log" 2>&1
  r=$?
  grep -E "^\|| passed| failed| skipped|Error|^FAILED|^PASSED" "$OUT/gpu-vllm-tests.log" | tail -60
  log "tests: rc=$r"
  return $r
}

step_e2e() {
  [ -f "$VSITE/env" ] || { log "e2e: no $VSITE/env; run install first"; return 1; }
  log "e2e: benchmarks/e2e.py ${e2e_args[*]}"
  local r
  ( source "$VSITE/env"; python3 benchmarks/e2e.py --out-dir "$OUT" "${e2e_args[@]}" ) 2>&1 | tee "$OUT/e2e.log" \
    | grep -v -E "^(INFO|DEBUG|WARNING) [0-9]|^\(EngineCore|it/s\]" 
  r=${PIPESTATUS[0]}
  log "e2e: rc=$r"
  return $r
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/gpu.txt" 2>&1
rc=0
for s in "${steps[@]}"; do
  case $s in
    stash) step_stash || rc=1 ;;
    build) step_build || rc=1 ;;
    install) step_install || { rc=1; break; } ;;
    tests) step_tests || rc=1 ;;
    e2e) step_e2e || rc=1 ;;
    *) echo "unknown step $s"; rc=2 ;;
  esac
  log "after $s: $(elapsed)"
done
# At most 8 files come back from the GPU machine: bundle the logs.
shopt -s nullglob
(cd "$OUT" && files=(./*.log ./*.xml ./gpu.txt) && [ ${#files[@]} -gt 0 ] && tar czf logs.tar.gz --remove-files "${files[@]}")
exit $rc
