#!/usr/bin/env bash
# Run the awqgemm-vllm tests from a fresh virtual environment (what CI does).
#
#   bash plugin/run-tests.sh [VENV_DIR] [pytest args...]
#
# VENV_DIR defaults to /tmp/awqgemm-vllm-test-venv (outside the work tree); it is created if
# missing and reused otherwise. About 2 minutes of installs into a new one, then ~2.5 minutes
# of tests on 2 cores.
# Installs plugin/requirements-test.txt (exact pins, --no-deps), awqgemm CPU-only from
# ./kernels, and the plugin from ./plugin, then runs pytest on plugin/tests.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-/tmp/awqgemm-vllm-test-venv}"
shift || true
cd "$repo"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install --quiet --no-deps -r plugin/requirements-test.txt
# CPU-only awqgemm, built in a throw-away directory (not kernels/build, a developer's)
build_dir="$(mktemp -d)"
trap 'rm -rf "$build_dir"' EXIT
AWQGEMM_CUDA=0 "$py" -m pip install --quiet --no-deps -C build-dir="$build_dir" ./kernels
"$py" -m pip install --quiet --no-deps ./plugin
"$py" -c "import awqgemm, awqgemm_vllm, vllm; print('awqgemm', awqgemm.__version__, '| vllm', vllm.__version__)"
cd plugin
"$py" -m pytest tests "$@"
