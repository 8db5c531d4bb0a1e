"""CI compile check: the Volta family's device code builds for sm_70.

nvcc 13 dropped Volta, so this machine's toolchain cannot build sm_70; NVRTC
12.9 (PyPI ``nvidia-cuda-nvrtc-cu12``, installed by CI) still can. We compile
the real ``gemm_sm70_m8n8k4.cu`` (its host half is hidden from NVRTC), force
every instantiation the dispatcher launches, and check that the result is
Volta machine code that uses the m8n8k4 tensor-core MMA.
"""

from __future__ import annotations

import ctypes
import pathlib

import pytest

CSRC = pathlib.Path(__file__).resolve().parents[1] / "csrc"
# (MT, NT, KWARPS) that launch.h's launch_family instantiates for the register-staged families
CONFIGS = [(1, 2, 4), (1, 2, 8), (2, 2, 4), (2, 2, 8)]


def load_nvrtc() -> tuple[ctypes.CDLL, pathlib.Path]:
    try:
        import nvidia.cuda_nvrtc as nvrtc_pkg  # type: ignore[import-not-found]
        import nvidia.cuda_runtime as rt_pkg  # type: ignore[import-not-found]
    except ImportError:
        pytest.skip(
            "nvidia-cuda-nvrtc-cu12 / nvidia-cuda-runtime-cu12 (for cuda_fp16.h) are not installed; CI installs them"
        )
    libdir = pathlib.Path(next(iter(nvrtc_pkg.__path__))) / "lib"
    return ctypes.CDLL(str(libdir / "libnvrtc.so.12")), pathlib.Path(next(iter(rt_pkg.__path__))) / "include"


def compile_volta(nvrtc: ctypes.CDLL, include: pathlib.Path, arch: str) -> tuple[bytes, str]:
    src = (CSRC / "gemm_sm70_m8n8k4.cu").read_bytes()
    prog = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, b"gemm_sm70_m8n8k4.cu", 0, None, None) == 0
    names = [
        f"awqgemm::gemm_tc_kernel<__half, {mt}, {nt}, {kw}, {2 if mt >= 4 else 4}, awqgemm::Sm70M8n8k4, false>"
        for mt, nt, kw in CONFIGS
    ]
    for name in names:
        assert nvrtc.nvrtcAddNameExpression(prog, name.encode()) == 0
    opts = [f"--gpu-architecture={arch}", "-std=c++17", "-DAWQGEMM_NO_BF16", f"-I{CSRC}", f"-I{include}"]
    copts = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    rc = nvrtc.nvrtcCompileProgram(prog, len(opts), copts)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    assert rc == 0, f"NVRTC failed for {arch}:\n{log.value.decode()}"
    if arch.startswith("sm_"):
        nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(size))
        out = ctypes.create_string_buffer(size.value)
        assert nvrtc.nvrtcGetCUBIN(prog, out) == 0
    else:
        nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
        out = ctypes.create_string_buffer(size.value)
        assert nvrtc.nvrtcGetPTX(prog, out) == 0
    return out.raw, log.value.decode()


def test_volta_family_compiles_for_sm70_with_cuda12():
    nvrtc, include = load_nvrtc()
    major, minor = ctypes.c_int(), ctypes.c_int()
    nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    assert major.value == 12, f"expected NVRTC 12.x (CUDA 13 cannot target sm_70), got {major.value}.{minor.value}"
    ptx, _ = compile_volta(nvrtc, include, "compute_70")
    text = ptx.decode(errors="replace")
    assert ".target sm_70" in text
    assert text.count(".entry") == len(CONFIGS)
    assert "mma.sync.aligned.m8n8k4.row.col.f32.f16.f16.f32" in text
    assert "cp.async" not in text  # Volta has no cp.async: the family must not use it
    cubin, _ = compile_volta(nvrtc, include, "sm_70")
    assert cubin[:4] == b"\x7fELF" and len(cubin) > 10_000
