"""Stored test of the awqgemm conda package: the binary carries exactly the variant's GPU code.

usage: python check_build_info.py <cuda_compiler_version> <path to cuda_archs.txt>

Compares with the arch list that kernels/cuda_archs.txt chooses for this CUDA version:
  1. awqgemm.build_info() (what the module reports: the list CMake was given), and
  2. what the shared library's fatbins really contain, read from the binary itself (every fatbin entry's
     kind and arch; the same answer as `cuobjdump --list-elf/--list-ptx`, without needing cuobjdump);
and checks the CUDA version the module was built with equals the variant's (an artifact must not claim a
toolchain it was not built with).
"""

import collections
import pathlib
import struct
import sys

import awqgemm

FATBIN_MAGIC = 0xBA55ED50


def fatbin_contents(path: pathlib.Path) -> dict[str, set[int]]:
    """{'sass': {75, ...}, 'ptx': {120}} from every fatbin embedded in an ELF shared library."""
    data = path.read_bytes()
    magic = struct.pack("<I", FATBIN_MAGIC)
    found = collections.defaultdict(set)
    i = 0
    while (i := data.find(magic, i)) >= 0:
        version, header_size, fat_size = struct.unpack_from("<HHQ", data, i + 4)
        if version != 1 or header_size != 16:
            i += 4
            continue
        p, end = i + 16, i + 16 + fat_size
        while p + 64 <= end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, p)
            if kind not in (1, 2) or entry_header < 64:
                break
            arch = struct.unpack_from("<I", data, p + 28)[0]
            found["ptx" if kind == 1 else "sass"].add(arch)
            p += entry_header + payload
        i = end
    return found


def expected(cuda_version: str, table: str) -> tuple[set[int], set[int]]:
    for line in pathlib.Path(table).read_text().splitlines():
        f = line.split()
        if f and not f[0].startswith("#") and f[0] == cuda_version:
            # "90a-real" is sm_90 SASS (the fatbin records 90 for sm_90a too) plus the wgmma family.
            sass = {int(a.split("-")[0].rstrip("a")) for a in f[1:] if a.endswith("-real")}
            ptx = {int(a.split("-")[0].rstrip("a")) for a in f[1:] if a.endswith("-virtual")}
            return sass, ptx
    raise SystemExit(f"FAIL: CUDA {cuda_version} is not in {table}")


def main() -> int:
    cuda_version, table = sys.argv[1], sys.argv[2]
    sass, ptx = expected(cuda_version, table)
    info = awqgemm.build_info()
    print("awqgemm.build_info():", info)
    errors = []
    built = str(info.get("cuda_version"))
    if ".".join(built.split(".")[:2]) != cuda_version:
        errors.append(f"cuda_version: built with {built!r}, variant is {cuda_version}")
    if set(info.get("sass_archs") or []) != sass:
        errors.append(f"sass_archs: binary has {sorted(info.get('sass_archs') or [])}, expected {sorted(sass)}")
    wants_sm90a = any(a.startswith("90a") for a in info.get("cuda_architectures", "").split(","))
    if wants_sm90a != ("sm90a_m64nNk16" in info.get("kernel_families", [])):
        errors.append(f"kernel_families {info.get('kernel_families')} disagree with the arch list on sm90a")
    if set(info.get("ptx_archs") or []) != ptx:
        errors.append(f"ptx_archs: binary has {sorted(info.get('ptx_archs') or [])}, expected {sorted(ptx)}")
    libs = sorted(pathlib.Path(awqgemm.__file__).parent.glob("_C*.so"))
    if not libs:
        errors.append(f"no compiled module next to {awqgemm.__file__}")
    for lib in libs:
        fb = fatbin_contents(lib)
        print(f"{lib.name}: fatbin SASS {sorted(fb['sass'])}, PTX {sorted(fb['ptx'])}")
        if fb["sass"] != sass or fb["ptx"] != ptx:
            errors.append(
                f"{lib.name} really contains SASS {sorted(fb['sass'])} PTX {sorted(fb['ptx'])}, "
                f"expected SASS {sorted(sass)} PTX {sorted(ptx)}"
            )
    if errors:
        print("FAIL:\n  " + "\n  ".join(errors))
        return 1
    print(f"OK: CUDA {cuda_version}, SASS {sorted(sass)}, PTX {sorted(ptx)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
