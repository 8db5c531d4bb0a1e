#!/usr/bin/env bash
# Install the carried awqgemm conda artifacts into fresh prefixes on a GPU machine and run their stored
# tests there, with the GPU. No conda and no network needed on that machine: it needs python3 (3.12 for
# the cuda130_py312 artifact) with a CUDA build of torch, pip, numpy and pytest installed, and the bundle
# that `ci/conda_matrix.py gpu-bundle` writes (artifacts + repodata + the py-rattler-build wheel).
#
#   on the build machine:  python3 ci/conda_matrix.py build --variant cuda130_py312 --no-plugin
#                          python3 ci/conda_matrix.py gpu-bundle --variant cuda130_py312
#   on the GPU machine:    bash ci/gpu_artifact_test.sh [build/gpu-bundle]      (carry: build/gpu-bundle)
#
# What it does:
#   1. installs py-rattler-build from the carried wheel into a temp dir (the installer + test runner);
#   2. makes STAND-IN packages for this host's python, torch, numpy, pytest, pip and CUDA version
#      (ci/standins.py: they point at what is installed here, named and labelled as stand-ins);
#   3. `ci/conda_matrix.py test --bundle ... --require-gpu`: for every artifact, rattler-build solves a fresh
#      prefix from the bundle + stand-in channels, installs the artifact, runs its stored tests; the run
#      fails if the GPU GEMM tests did not run (skipped for lack of a GPU counts as a failure).
# Set AWQGEMM_GPU_OPTIONAL=1 to rehearse it on a machine without a GPU (then GPU skips are allowed).
set -euo pipefail
cd "$(dirname "$0")/.."
bundle="$(realpath "${1:-build/gpu-bundle}")"
py="${PYTHON:-python3}"
[[ -d "$bundle/channel" ]] || { echo "ERROR: no bundle at $bundle (run ci/conda_matrix.py gpu-bundle first)" >&2; exit 2; }
work="$(mktemp -d /tmp/awqgemm-gpu-test.XXXXXX)"
echo "== host: $($py -c 'import sys; print(sys.version.split()[0])'), $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
echo "== bundle: $(cd "$bundle" && find . -type f -name '*.conda' -o -type f -name '*.whl' | sort | tr '\n' ' ')"

echo "== 1. installer: py-rattler-build from the carried wheel"
"$py" -m pip install -q --disable-pip-version-check --no-index --no-deps --target "$work/installer" "$bundle"/wheels/*.whl
export PYTHONPATH="$work/installer${PYTHONPATH:+:$PYTHONPATH}"

echo "== 2. stand-in channel for this host"
cuda_rt="$("$py" -c 'import torch; print(torch.version.cuda or "")')"
if [[ -n "$cuda_rt" ]]; then
    # the CUDA runtime torch was built with (13.0 on the H100 host); rattler-build drops LD_LIBRARY_PATH and
    # CUDA_VISIBLE_DEVICES in the test environment, so the stand-in's activation re-exports them
    cuda_arg=(--cuda-version "$cuda_rt" --pass-env LD_LIBRARY_PATH --pass-env CUDA_VISIBLE_DEVICES)
elif [[ "${AWQGEMM_GPU_OPTIONAL:-0}" == 1 ]] && command -v nvcc >/dev/null; then
    cuda_arg=(--nvcc nvcc)                          # rehearsal with a CPU torch: the host toolkit's version
else
    echo "ERROR: $py has a CPU-only torch: the GPU tests need a CUDA build of torch" >&2; exit 2
fi
"$py" ci/standins.py --channel "$work/standins" --farms "$work/farms" --python "$(command -v "$py")" \
    --pypkg pip --pypkg numpy --pypkg pytest --pypkg pytorch "${cuda_arg[@]}"

echo "== 3. install each artifact into a fresh prefix and run its stored tests"
req=(--require-gpu)
[[ "${AWQGEMM_GPU_OPTIONAL:-0}" == 1 ]] && req=()
AWQGEMM_CONDA_WORK="$work/conda" "$py" ci/conda_matrix.py test --mode offline --bundle "$bundle" \
    --extra-channel "$work/standins" "${req[@]}"
