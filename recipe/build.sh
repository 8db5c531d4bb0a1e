#!/usr/bin/env bash
# Build script of the `awqgemm` output (one CUDA x Python variant). Run by rattler-build / conda-build
# with $PREFIX (host env), $BUILD_PREFIX, $PYTHON, $RECIPE_DIR, $SRC_DIR set, and from recipe.yaml:
#   AWQGEMM_CUDA_VERSION  the variant's cuda_compiler_version (e.g. 13.0)
set -euo pipefail

cuda_version="${AWQGEMM_CUDA_VERSION:?recipe.yaml must set AWQGEMM_CUDA_VERSION}"

# 1. The arch list: kernels/cuda_archs.txt (in the source tree, $SRC_DIR) is the only place it is chosen;
#    CMake reads it (kernels/CMakeLists.txt). AWQGEMM_CUDA_ARCHS_EXACT=ON: the variant's CUDA X.Y must have a
#    line of its own (a missing one fails the configure step, naming the file), no fallback to an older line.
if [[ ! -f "$SRC_DIR/cuda_archs.txt" ]]; then
    echo "ERROR: no cuda_archs.txt in the source tree ($SRC_DIR): the arch table travels with kernels/." >&2
    exit 1
fi

# 2. No artifact may claim a toolchain it was not built with: the build string says cuda<XY>, so the
#    nvcc that compiles it must be CUDA X.Y.
nvcc_bin="${CUDACXX:-$(command -v nvcc || true)}"
if [[ -z "$nvcc_bin" ]]; then
    echo "ERROR: no nvcc in the build environment (CUDACXX unset, none on PATH)." >&2
    exit 1
fi
nvcc_release="$("$nvcc_bin" --version | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')"
if [[ "$nvcc_release" != "$cuda_version" ]]; then
    echo "ERROR: variant cuda_compiler_version=${cuda_version} but ${nvcc_bin} is CUDA ${nvcc_release}." >&2
    echo "       Refusing to build an artifact named cuda${cuda_version//./} with another toolkit." >&2
    exit 1
fi

echo "awqgemm conda build: CUDA ${cuda_version} (${nvcc_bin}), archs: the CUDA ${cuda_version} line of cuda_archs.txt, python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"

# 3. Configure + build through scikit-build-core (CMAKE_ARGS is read by scikit-build-core).
#    CUDAARCHS is what conda-forge's nvcc activation sets: unset, so the table decides (CMake prints the list).
unset CUDAARCHS
export CMAKE_ARGS="${CMAKE_ARGS:-} -DAWQGEMM_CUDA_ARCHS_EXACT=ON -DCMAKE_BUILD_TYPE=Release -DAWQGEMM_REQUIRE_CUDA=ON"
# Compressed fatbins (size lever), on top of whatever flags the project sets.
export CUDAFLAGS="${CUDAFLAGS:-} -Xfatbin=-compress-all"
export CMAKE_BUILD_PARALLEL_LEVEL="${CPU_COUNT:-2}"
export CMAKE_GENERATOR=Ninja
export AWQGEMM_CUDA=1

"$PYTHON" -m pip install . -v --no-deps --no-build-isolation --disable-pip-version-check \
    --config-settings=build-dir="$SRC_DIR/_skbuild"
