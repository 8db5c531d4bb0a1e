"""SASS check of v11.1's ring loops (gemm_wgws_sm90a.cuh): no R2UR in the consumers' k-loops of any
instantiation, nor in the producer's copy loop of the K-split (non-stream-K) ones.

Twice the ring's slot and phase left the uniform registers (a tail loop compiled beside the whole-unit
loop), an R2UR appeared before every wgmma descriptor or bulk copy, and v11.1 ran 5-60 % slower at
identical plans until a GPU A/B found it (docs/perf-notes.md). This check finds it without a GPU:

    python3 ci/sass_ring_check.py [CSRC]     # compiles CSRC/gemm_sm90a_m64nNk16.cu for sm_90a (~1 min;
                                             # CSRC: kernels/csrc, or another revision's)

nvdisasm from $NVDISASM, PATH, or beside nvcc (the CUDA toolkit; pip: nvidia-cuda-nvdisasm). Exit 0 when
clean, 1 on an R2UR in a checked loop, 2 when the tools are missing.
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
    return str(beside) if beside and beside.exists() else None


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


def main() -> int:
    csrc = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else CSRC
    nvcc, nvdisasm = tool("nvcc"), tool("nvdisasm")
    if not nvcc or not nvdisasm:
        print(f"sass check not run: nvcc={nvcc} nvdisasm={nvdisasm} (set NVDISASM or install the CUDA toolkit's)")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        source = str(csrc / "gemm_sm90a_m64nNk16.cu")
        flags = ["-std=c++17", "-O3", "-cubin", "-arch=sm_90a", "-DAWQGEMM_HAS_SM90A=1", "--expt-relaxed-constexpr"]
        cmd = [nvcc, *flags, f"-I{csrc}", source, "-o", str(cubin)]
        subprocess.run(cmd, check=True)
        sass = subprocess.run([nvdisasm, "-c", str(cubin)], check=True, capture_output=True, text=True).stdout
    funcs: dict[str, list[str]] = {}
    name = None
    for line in sass.splitlines():
        if line.startswith(".text."):
            name = line[len(".text.") :].rstrip(":")
            funcs[name] = []
        elif name is not None:
            funcs[name].append(line)
    bad = 0
    checked = 0
    for name, body in funcs.items():
        if "gemm_ws_kernel" not in name:
            continue
        stream_k = "Lb1E" in name
        found = loops(body)
        consumer = [lp for lp in found if sum("HGMMA" in i for i in lp) >= 8 and len(lp) < 600]
        producer = [lp for lp in found if any("UBLKCP" in i for i in lp) and len(lp) < 150]
        r2ur_c = [sum("R2UR" in i for i in lp) for lp in consumer]
        r2ur_p = [sum("R2UR" in i for i in lp) for lp in producer]
        ok = consumer and producer and not any(r2ur_c) and (stream_k or not any(r2ur_p))
        bad += not ok
        checked += 1
        short = re.sub(r"^_ZN7awqgemm14gemm_ws_kernelI|EEEvNS_.*$", "", name)
        print(f"{'ok ' if ok else 'BAD'} {short:<28} k-loops R2UR {r2ur_c}  producer copy loops R2UR {r2ur_p}"
              f"{'  (stream-K: producer not checked)' if stream_k else ''}")  # fmt: skip
    if checked == 0:
        print("no gemm_ws_kernel instantiation found in the SASS")
        return 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
