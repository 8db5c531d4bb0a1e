#!/usr/bin/env bash
# Runs HERE (a machine with internet), not on the GPU machine.
#
# Builds the payload that ci/device_vllm.sh assembles on the GPU machine:
#   1. downloads vllm==0.26.0 and the pinned dependency wheels
#      (ci/vllm_gpu/requirements-gpu-deps.txt, cp312 manylinux);
#   2. slims vllm (drops FA2 -- FA3 serves Hopper --, vllm-rs, deep_gemm, fmha_sm100);
#   3. installs vllm and the deps with `pip install --no-deps --target` into one tree (vsite/);
#   4. tars that tree, compresses it with zstd -19 and splits it into parts of PART_BYTES
#      (default: what one device run has left of its 64 MiB once the tracked work tree, p1's
#      tools and a 2 MiB margin are counted; the committed results grow the tree every session:
#      31 MiB on 2026-11-28, 37.5 on 11-29, 45 on 11-30, when fixed 20,000,000-byte parts
#      stopped fitting);
#   5. adds a zstd binary (+ liblz4) for machines without zstd, and a manifest.
#
# Output: ci/vllm_gpu/parts/ (git-ignored), one sub-folder per device run:
#   parts/p1/ vsite.tar.zst.part-aa + zstd tools + MANIFEST, parts/p2/ ..-ab, ...
# Carry one of them per run:   carry=["ci/vllm_gpu/parts/p1"]   then   bash ci/device_vllm.sh stash
#
#   bash ci/vllm_gpu/prepare.sh            (CACHE=~/.cache/awqgemm-vllm-gpu, PART_BYTES: see 4.)
# Steps 1-3 are skipped when the cache already holds the tarball for these pins (re-splitting only).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${CACHE:-$HOME/.cache/awqgemm-vllm-gpu}
if [ -z "${PART_BYTES:-}" ]; then
  top=$(git -C "$here" rev-parse --show-toplevel)
  tree=$(git -C "$top" ls-files -z | (cd "$top" && du -cb --files0-from=-) | tail -1 | cut -f1)
  tools=$(( $(stat -c %s "$(command -v zstd)") + 1048576 ))
  PART_BYTES=$(( 64 * 1048576 - tree - tools - 2 * 1048576 ))
  [ "$PART_BYTES" -gt 4000000 ] || { echo "the tracked tree ($tree bytes) leaves no room for parts" >&2; exit 1; }
fi
echo "parts of $PART_BYTES bytes"
LEVEL=${ZSTD_LEVEL:-19}
req="$here/requirements-gpu-deps.txt"
out="$here/parts"
mkdir -p "$CACHE/whl"

plat=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none)
for p in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_26 \
         manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  plat+=(--platform "${p}_x86_64")
done
plat+=(--platform any)

sha=$(sha256sum "$req" | cut -c1-16)
tarball="$CACHE/vsite-$sha.tar.zst"
# Steps 1-3: the payload tarball for these pins.
build_tarball() {
  echo "== download (cache: $CACHE/whl) =="
  python3 -m pip download -q --no-deps "${plat[@]}" -d "$CACHE/whl" -r "$req"

  # Exactly the pinned wheels (the cache may hold other versions).
  mapfile -t pins < <(grep -E '^[A-Za-z0-9_.-]+==' "$req" | sed 's/[[:space:]]*#.*//')
  wheels=()
  for pin in "${pins[@]}"; do
    name=${pin%%==*}; ver=${pin#*==}
    norm=$(echo "$name" | tr 'A-Z-.' 'a-z__')
    f=$(ls "$CACHE/whl" | awk -v n="$norm" -v v="$ver" 'BEGIN{IGNORECASE=1} {split($0,a,"-"); m=a[1]; gsub(/[-.]/,"_",m); if (tolower(m)==n && a[2]==v) print $0}' | head -1)
    [ -n "$f" ] || { echo "missing wheel for $pin" >&2; exit 1; }
    wheels+=("$CACHE/whl/$f")
  done
  echo "${#wheels[@]} wheels"

  stage="$CACHE/stage"
  rm -rf "$stage"; mkdir -p "$stage/vsite"
  echo "== install into the staging tree (--no-deps --target) =="
  python3 -m pip install -q --no-deps --no-compile --no-index "${plat[@]}" --target "$stage/vsite" "${wheels[@]}"
  echo "== slim vllm =="
  rm -rf "$stage/vsite/vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so" "$stage/vsite/vllm/vllm-rs" \
         "$stage/vsite/vllm/third_party/deep_gemm" "$stage/vsite/vllm/third_party/fmha_sm100" \
         "$stage/vsite/bin"
  find "$stage/vsite" -name __pycache__ -type d -prune -exec rm -rf {} +
  du -sh "$stage/vsite"
  echo "$sha" >"$stage/vsite/.awqgemm-payload"

  echo "== tar | zstd -$LEVEL (minutes) =="
  tar -C "$stage" -cf - vsite | zstd -q -"$LEVEL" --long=27 -T0 -o "$tarball.tmp"
  mv "$tarball.tmp" "$tarball"
}
[ -s "$tarball" ] || build_tarball
ls -l "$tarball"

echo "== split into $PART_BYTES-byte parts =="
rm -rf "$out"; mkdir -p "$out/split"
split -b "$PART_BYTES" "$tarball" "$out/split/vsite.tar.zst.part-"
total=$(stat -c %s "$tarball")
full_sha=$(sha256sum "$tarball" | cut -d' ' -f1)
i=0
for f in "$out"/split/vsite.tar.zst.part-*; do
  i=$((i + 1)); mkdir -p "$out/p$i"; mv "$f" "$out/p$i/"
done
rmdir "$out/split"
nparts=$i
for d in "$out"/p*; do
  {
    echo "payload=$sha"
    echo "parts=$nparts"
    echo "bytes=$total"
    echo "sha256=$full_sha"
  } >"$d/MANIFEST"
done
# zstd for machines without it (x86-64 glibc; same as the GPU image's arch).
mkdir -p "$out/p1/tools"
cp "$(command -v zstd)" "$out/p1/tools/zstd"
lz4=$(ldd "$(command -v zstd)" | awk '/liblz4/{print $3}')
[ -n "$lz4" ] && cp "$lz4" "$out/p1/tools/"
du -sh "$out"/p*
echo "parts ready: $nparts. Send them back to back (one per run):"
for d in "$out"/p*; do echo "  carry=[\"ci/vllm_gpu/$(basename "$out")/$(basename "$d")\"]  bash ci/device_vllm.sh stash ..."; done
