"""SASS checks of the kernels' hot loops, without a GPU (nvdisasm):

1. v11.1's ring loops (gemm_wgws_sm90a.cuh): no R2UR in the consumers' k-loops of any instantiation, nor
   in the producer's copy loop of the K-split (non-stream-K) ones. Twice the ring's slot and phase left
   the uniform registers (a tail loop compiled beside the whole-unit loop), an R2UR appeared before every
   wgmma descriptor or bulk copy, and v11.1 ran 5-60 % slower at identical plans until a GPU A/B found it.
2. The K-split decode kernels (gemm_tile.cuh, tiles of 8 and 16 tokens): instructions per KB of weights
   in the k-loop within a budget. They are issue-bound: 234 instructions per KB of the 8 x 32 block was
   about all a scheduler issues per KB at HBM speed, and cutting it to 151 made M = 1 0.87x the time
   (docs/perf-notes.md, the H200 run of 2026-11-28 19:10).
3. The x-shared kernel (gemm_xshared.cuh): instructions per MMA in its k-loop within a budget, ~6 % above
   what it took when its copy setup was hoisted out of the loop (2026-11-29: 5.1-5.4 at 64 tokens, 7.2-8.1
   at 32; the per-k-tile setup took 8.1-8.6 and 13-14, and the hoisted loop measured 0.90x the time at
   M = 33-64 on the H200).

    python3 ci/sass_ring_check.py [CSRC]     # compiles CSRC's sm90a and sm80 units for sm_90a (~1 min;
                                             # CSRC: kernels/csrc, or another revision's)

nvdisasm from $NVDISASM, PATH, or beside nvcc (the CUDA toolkit; pip: nvidia-cuda-nvdisasm). Exit 0 when
clean, 1 on an R2UR in a checked loop or a k-loop over its budget, 2 when the tools are missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "kernels" / "csrc"
INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s*(.*?)\s*;")  # offsets grow past 4 hex digits in big kernels
LABEL = re.compile(r"^\s*(\.L_x_\d+):")
BACK = re.compile(r"BRA `\((\.L_x_\d+)\)")


def tool(name: str) -> str | None:
    if os.environ.get(name.upper()):
        return os.environ[name.upper()]
    found = shutil.which(name)
    if found:
        return found
    nvcc = shutil.which("nvcc")
    beside = Path(nvcc).parent / name if nvcc else None
    if beside and beside.exists():
        return str(beside)
    # The pip wheel (nvidia-cuda-nvdisasm, in ci/requirements-dev.txt): nvidia/cu*/bin/ in site-packages.
    for entry in sys.path:
        for cand in sorted(Path(entry).glob(f"nvidia/cu*/bin/{name}")) if entry else []:
            return str(cand)
    return None


def loops(body: list[str]) -> list[list[str]]:
    """Instruction lists of the backward-branch loops of one function."""
    insns, labels = [], {}
    for line in body:
        m = LABEL.match(line)
        if m:
            labels[m.group(1)] = len(insns)
            continue
        m = INSN.search(line)
        if m:
            insns.append(m.group(2))
    out = []
    for j, ins in enumerate(insns):
        m = BACK.search(ins)
        if m and labels.get(m.group(1), j + 1) < j:
            out.append(insns[labels[m.group(1)] : j + 1])
    return out


def functions(nvcc: str, nvdisasm: str, csrc: Path, unit: str) -> tuple[dict[str, list[str]], int]:
    """SASS lines of each function of one translation unit compiled for sm_90a, and 1 if ptxas reported
    wgmmas serialized (C7512) in it, else 0."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        flags = ["-std=c++17", "-O3", "-cubin", "-arch=sm_90a", "-DAWQGEMM_HAS_SM90A=1", "--expt-relaxed-constexpr"]
        built = subprocess.run([nvcc, *flags, f"-I{csrc}", str(csrc / unit), "-o", str(cubin)],
                               check=True, capture_output=True, text=True)  # fmt: skip
        sass = subprocess.run([nvdisasm, "-c", str(cubin)], check=True, capture_output=True, text=True).stdout
    # ptxas's C7512 (wgmmas serialized for want of registers) is a slow k-loop as surely as an R2UR:
    # the in-kernel split reduction, inlined, caused it at BM = 64 and 256.
    serialized = [line for line in built.stderr.splitlines() if "C7512" in line]
    for line in serialized:
        print(f"BAD {line.strip()}")
    funcs: dict[str, list[str]] = {}
    name = None
    for line in sass.splitlines():
        if line.startswith(".text."):
            name = line[len(".text.") :].rstrip(":")
            funcs[name] = []
        elif name is not None:
            funcs[name].append(line)
    return funcs, 1 if serialized else 0


def check_ring(funcs: dict[str, list[str]]) -> int:
    bad = 0
    checked = 0
    for name, body in funcs.items():
        if "gemm_ws_kernel" not in name:
            continue
        # gemm_ws_kernel<T, BM, STAGES, kStreamK, kGrouped, kTmaX>: the first bool is kStreamK.
        flags = re.search(r"ELi\d+ELb(\d)E", name)
        stream_k = flags is not None and flags.group(1) == "1"
        found = loops(body)
        consumer = [lp for lp in found if sum("HGMMA" in i for i in lp) >= 8 and len(lp) < 600]
        producer = [lp for lp in found if any("UBLKCP" in i for i in lp) and len(lp) < 150]
        r2ur_c = [sum("R2UR" in i for i in lp) for lp in consumer]
        r2ur_p = [sum("R2UR" in i for i in lp) for lp in producer]
        ok = consumer and producer and not any(r2ur_c) and (stream_k or not any(r2ur_p))
        bad += not ok
        checked += 1
        short = re.sub(r"^_ZN7awqgemm14gemm_ws_kernelI|EEEvNS_.*$", "", name)
        note = "  (stream-K: producer not checked)" if stream_k else ""
        print(f"{'ok ' if ok else 'BAD'} {short:<28} k-loops R2UR {r2ur_c}  producer copy loops R2UR {r2ur_p}{note}")
    if checked == 0:
        print("no gemm_ws_kernel instantiation found in the SASS")
        return 1
    return 1 if bad else 0


# gemm_tc_kernel<T, MT, NT, KWARPS, STAGES, Fam, kAsyncWeights = true, kGroupScaled>
# (older revisions had no kGroupScaled: read as unscaled)
TC = re.compile(
    r"gemm_tc_kernelI(6__half|13__nv_bfloat16)Li(\d)ELi(\d)ELi(\d+)ELi(\d)ENS_12Sm80M16n8k16ELb1E(?:Lb(\d))?"
)


def kloop_budget(bf16: bool, mt: int, group_scaled: bool) -> int:
    """Instructions per KB of weights the k-loop may take: about 6 % above what each variant took on
    2026-11-28 (fp16, 8-token tiles: 161 with groups >= 64, 181 with groups of 32), more for 16-token
    tiles (their MMAs and x loads double), unscaled groups and bf16 (its odd nibbles need shifts)."""
    return 170 + 13 * (mt - 1) + (0 if group_scaled else 20) + (14 if bf16 else 0)


def check_ksplit(funcs: dict[str, list[str]]) -> int:
    bad = 0
    checked = 0
    for name, body in funcs.items():
        m = TC.search(name)
        if m is None or int(m.group(2)) > 2:
            continue
        bf16, mt, nt, kwarps, stages, scaled = m.group(1) != "6__half", *(int(g or 0) for g in m.groups()[1:])
        found = loops(body)
        main = max(found, key=lambda lp: sum("HMMA" in i for i in lp), default=[])
        # The k-loop holds STAGES k-tiles; a warp's k-tile is NT x 512 bytes of weights.
        per_kb = len(main) / (stages * nt / 2) if main else float("inf")
        budget = kloop_budget(bf16, mt, bool(scaled))
        ok = per_kb <= budget
        bad += not ok
        checked += 1
        tile = f"{'bf16' if bf16 else 'fp16'} {8 * mt}x{16 * nt} {kwarps} warps{' scaled' if scaled else ''}"
        print(f"{'ok ' if ok else 'BAD'} K-split {tile:<28} k-loop {per_kb:6.1f} instructions per KB (budget {budget})")
    if checked == 0:
        print("no K-split decode instantiation found in the SASS")
        return 1
    return 1 if bad else 0


# gemm_xs_kernel<T, MT, NT, WN, STAGES, Fam, kGrouped>
XS = re.compile(r"gemm_xs_kernelI(6__half|13__nv_bfloat16)Li(\d)ELi\d+ELi\d+ELi\d+ENS_12Sm80M16n8k16ELb(\d)E")
XS_BUDGET = {8: 5.7, 4: 8.6}  # instructions per MMA in the k-loop, by MT


def check_xshared(funcs: dict[str, list[str]]) -> int:
    bad = checked = 0
    for name, body in funcs.items():
        m = XS.search(name)
        if m is None:
            continue
        bf16, mt, grouped = m.group(1) != "6__half", int(m.group(2)), m.group(3) == "1"
        main = max(loops(body), key=lambda lp: sum("HMMA" in i for i in lp), default=[])
        mmas = sum("HMMA" in i for i in main)
        per_mma = len(main) / mmas if mmas else float("inf")
        ok = per_mma <= XS_BUDGET[mt]
        bad += not ok
        checked += 1
        tile = f"{'bf16' if bf16 else 'fp16'} {8 * mt} tokens{' grouped' if grouped else ''}"
        print(f"{'ok ' if ok else 'BAD'} x-shared {tile:<22} k-loop {per_mma:5.2f} instructions per MMA "
              f"(budget {XS_BUDGET[mt]})")  # fmt: skip
    if checked == 0:
        print("no x-shared instantiation found in the SASS")
        return 1
    return 1 if bad else 0


def main() -> int:
    csrc = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else CSRC
    nvcc, nvdisasm = tool("nvcc"), tool("nvdisasm")
    if not nvcc or not nvdisasm:
        print(f"sass check not run: nvcc={nvcc} nvdisasm={nvdisasm} (set NVDISASM or install the CUDA toolkit's)")
        return 2
    ring_funcs, ring_serialized = functions(nvcc, nvdisasm, csrc, "gemm_sm90a_m64nNk16.cu")
    ksplit_funcs, ksplit_serialized = functions(nvcc, nvdisasm, csrc, "gemm_sm80_m16n8k16.cu")
    return (
        check_ring(ring_funcs)
        | ring_serialized
        | check_ksplit(ksplit_funcs)
        | check_xshared(ksplit_funcs)
        | ksplit_serialized
    )


if __name__ == "__main__":
    sys.exit(main())
