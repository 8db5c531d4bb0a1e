#!/usr/bin/env bash
# Build script of the `awqgemm` output (one CUDA x Python variant). Run by rattler-build / conda-build
# with $PREFIX (host env), $BUILD_PREFIX, $PYTHON, $RECIPE_DIR, $SRC_DIR set, and from recipe.yaml:
#   AWQGEMM_CUDA_VERSION  the variant's cuda_compiler_version (e.g. 13.0)
set -euo pipefail

cuda_version="${AWQGEMM_CUDA_VERSION:?recipe.yaml must set AWQGEMM_CUDA_VERSION}"

# 1. The arch list: recipe/cuda_archs.txt is the only place it is chosen. Unknown version -> loud failure.
archs="$(awk -v v="$cuda_version" '$1 == v { $1 = ""; sub(/^ +/, ""); print }' "$RECIPE_DIR/cuda_archs.txt")"
if [[ -z "$archs" ]]; then
    echo "ERROR: CUDA ${cuda_version} has no arch list in recipe/cuda_archs.txt." >&2
    echo "       Known: $(awk '!/^#/ && NF {printf "%s ", $1}' "$RECIPE_DIR/cuda_archs.txt")" >&2
    echo "       Add a line for it (see the policy at the top of that file) before building this variant." >&2
    exit 1
fi
cmake_archs="${archs// /;}"

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

echo "awqgemm conda build: CUDA ${cuda_version} (${nvcc_bin}), archs ${cmake_archs}, python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"

# 3. Configure + build through scikit-build-core (CMAKE_ARGS is read by scikit-build-core).
#    CUDAARCHS is what conda-forge's nvcc activation sets; set it to the same list so nothing else wins.
export CUDAARCHS="$cmake_archs"
export CMAKE_ARGS="${CMAKE_ARGS:-} -DCMAKE_CUDA_ARCHITECTURES=${cmake_archs} -DCMAKE_BUILD_TYPE=Release -DAWQGEMM_REQUIRE_CUDA=ON"
# Compressed fatbins (size lever), on top of whatever flags the project sets.
export CUDAFLAGS="${CUDAFLAGS:-} -Xfatbin=-compress-all"
export CMAKE_BUILD_PARALLEL_LEVEL="${CPU_COUNT:-2}"
export CMAKE_GENERATOR=Ninja
export AWQGEMM_CUDA=1

"$PYTHON" -m pip install . -v --no-deps --no-build-isolation --disable-pip-version-check \
    --config-settings=build-dir="$SRC_DIR/_skbuild"
