# Sourced by ci/device_kernels.sh and ci/device_vllm.sh (run from the repo root, $OUT set): builds awqgemm
# for this GPU and installs it and the plugin into the machine's own site-packages, once per source
# state. A warm machine's next call skips the build (a minute or two of device time) when nothing it
# depends on changed.
#
# Archs: 90a-real on a 9.0 GPU (the sm90 wgmma family is arch-specific: a plain 90-real build lacks it
# and the sm90 GPU tests fail saying so), <cap>-real elsewhere; AWQGEMM_ARCHS overrides.

AWQGEMM_BUILD_DIR=${AWQGEMM_BUILD_DIR:-$HOME/awqgemm-build}

device_archs() {
  local cap
  # PYTHONPATH unset: a sourced vLLM site (ci/device_vllm.sh) must not shadow the machine's torch.
  cap=$(env -u PYTHONPATH python3 -c "import torch; c=torch.cuda.get_device_capability(); print(f'{c[0]}{c[1]}')")
  if [ "$cap" = 90 ]; then echo "${AWQGEMM_ARCHS:-90a-real}"; else echo "${AWQGEMM_ARCHS:-${cap}-real}"; fi
}

src_hash() {  # what a build depends on (not what building writes: pip leaves plugin/src/*.egg-info behind,
  # which made every later call's hash differ and rebuild, two side-by-side calls at once)
  find kernels/CMakeLists.txt kernels/pyproject.toml kernels/cuda_archs.txt kernels/csrc kernels/python \
    plugin/src plugin/pyproject.toml -type f ! -name '*.pyc' ! -path '*.egg-info/*' -print0 2>/dev/null \
    | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
}

# build_awqgemm: prints one line per step to stdout and $OUT/summary.txt; returns non-zero on failure
# (the last 40 lines of the build log printed).
build_awqgemm() {
  local archs h s stamp="$HOME/.awqgemm-build.stamp"
  archs=$(device_archs)
  h="$(src_hash)-$archs"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$h" ] \
      && env -u PYTHONPATH python3 -c "import awqgemm" 2>/dev/null \
      && env -u PYTHONPATH python3 -m pip show -q awqgemm-vllm >/dev/null 2>&1; then
    echo "build: awqgemm + plugin already installed for these sources ($h), skipped" | tee -a "$OUT/summary.txt"
    return 0
  fi
  echo "build: awqgemm for $archs (build dir $AWQGEMM_BUILD_DIR)" | tee -a "$OUT/summary.txt"
  s=$(date +%s)
  rm -f "$stamp"
  if ! CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=${archs}" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      env -u PYTHONPATH python3 -m pip install --no-build-isolation --no-deps -q -C build-dir="$AWQGEMM_BUILD_DIR" \
      ./kernels >"$OUT/build-awqgemm.log" 2>&1; then
    tail -40 "$OUT/build-awqgemm.log"; echo "build: awqgemm FAILED" | tee -a "$OUT/summary.txt"; return 1
  fi
  if ! env -u PYTHONPATH python3 -m pip install --no-build-isolation --no-deps -q ./plugin \
      >"$OUT/build-plugin.log" 2>&1; then
    tail -20 "$OUT/build-plugin.log"; echo "build: plugin FAILED" | tee -a "$OUT/summary.txt"; return 1
  fi
  echo "$h" >"$stamp"
  echo "build: done in $(( $(date +%s) - s )) s" | tee -a "$OUT/summary.txt"
  env -u PYTHONPATH python3 -c "import awqgemm, json; print(json.dumps(awqgemm.build_info()))" | tee -a "$OUT/summary.txt"
}
