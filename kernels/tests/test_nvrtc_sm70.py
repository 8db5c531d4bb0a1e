"""CI compile check: every kernel translation unit's device code builds for sm_70.

A CUDA 12.x build (the conda variants that carry Volta) compiles every
translation unit for every arch in its list, sm_70 included, but nvcc 13 on
this machine cannot target sm_70. NVRTC 12.9 (PyPI ``nvidia-cuda-nvrtc-cu12``,
installed by CI) still can. For each TU we compile the real source (its host
half is hidden from NVRTC by ``__CUDACC_RTC__``), force every kernel
instantiation its launcher makes, and check the result is Volta code:

* ``gemm_sm70_m8n8k4.cu`` -- the Volta family itself: m8n8k4 tensor-core MMAs;
* ``gemm_sm75_m16n8k8.cu``, ``gemm_sm80_m16n8k16.cu`` -- newer families, whose
  kernels must reduce to a trap on sm_70 (never launched there) without
  emitting instructions Volta lacks (m16n8k8/k16 MMA, cp.async, bf16 math);
* ``dequantize.cu`` -- the split-K reduction and dequantize-to-dense, which run
  on Volta too (fp16; the bf16 instantiations must still compile).

``gemm_sm90a_m64nNk16.cu`` is not here: CMake compiles it for sm_90a only.
"""

from __future__ import annotations

import ctypes
import pathlib
from dataclasses import dataclass

import pytest

CSRC = pathlib.Path(__file__).resolve().parents[1] / "csrc"
TYPES = ("__half", "__nv_bfloat16")


def tc_kernel(t: str, mt: int, nt: int, kw: int, fam: str, async_ring: bool) -> str:
    # pipeline_stages() in tile_config.h
    stages = 2 if mt >= 4 else (3 if async_ring else 4)
    return f"awqgemm::gemm_tc_kernel<{t}, {mt}, {nt}, {kw}, {stages}, awqgemm::{fam}, {str(async_ring).lower()}>"


# (MT, NT, KWARPS) that launch.h's launch_family instantiates.
REG_STAGED = [(1, 2, 4), (1, 2, 8), (2, 2, 4), (2, 2, 8)]
ASYNC_EXTRA = [(1, 2, 16), (2, 2, 16)]


@dataclass
class Unit:
    source: str
    kernels: list[str]
    must_have: tuple[str, ...] = ()
    must_not_have: tuple[str, ...] = ("cp.async", "mma.sync.aligned.m16n8")


UNITS = [
    Unit(
        "gemm_sm70_m8n8k4.cu",
        [tc_kernel("__half", *c, "Sm70M8n8k4", False) for c in REG_STAGED],
        must_have=("mma.sync.aligned.m8n8k4.row.col.f32.f16.f16.f32",),
    ),
    Unit(
        "gemm_sm75_m16n8k8.cu",
        [tc_kernel("__half", *c, "Sm75M16n8k8", False) for c in [*REG_STAGED, (4, 4, 4)]],
        must_have=("trap;",),
    ),
    Unit(
        "gemm_sm80_m16n8k16.cu",
        [tc_kernel(t, *c, "Sm80M16n8k16", True) for t in TYPES for c in [*REG_STAGED, *ASYNC_EXTRA, (4, 4, 4)]]
        + [
            f"awqgemm::gemm_xs_kernel<{t}, {mt}, 2, 4, {stages}, awqgemm::Sm80M16n8k16, {grouped}>"
            for t in TYPES
            for mt, stages in ((4, 4), (8, 3))  # xs_stages() in tile_config.h
            for grouped in ("false", "true")
        ]
        + [
            f"awqgemm::gemm_wt_kernel<{t}, {mt}, {wm}, {wn}, {wk}, 2, 4, awqgemm::Sm80M16n8k16>"
            for t in TYPES
            # launch_wt in gemm_sm80_m16n8k16.cu
            for mt, wm, wn, wk in ((4, 1, 4, 2), (8, 1, 4, 2), (8, 2, 4, 1))
        ],
        must_have=("trap;",),
    ),
    Unit(
        "dequantize.cu",
        [f"awqgemm::splitk_reduce_kernel<{t}, {v}>" for t in TYPES for v in ("true", "false")]
        + [
            f"awqgemm::{kernel}<{t}, awqgemm::{lanes}>"
            for kernel in ("dequantize_t_kernel",)
            for t in TYPES
            for lanes in ("M16n8Lanes", "Volta884Lanes")
        ],
    ),
    # fused_moe's routing (count and sort; match.any: sm_70+), silu-mul and combine kernels.
    Unit(
        "moe_routing.cu",
        ["awqgemm::moe_route_count_kernel", "awqgemm::moe_route_kernel"]
        + [f"awqgemm::moe_silu_mul_kernel<{t}, {v}>" for t in TYPES for v in (1, 8)]
        + [
            f"awqgemm::moe_combine_kernel<{t}, {str(f32).lower()}, {v}>"
            for t in TYPES
            for f32 in (False, True)
            for v in (1, 8)
        ],
        must_have=("match.any.sync.b32",),
    ),
]


def load_nvrtc() -> tuple[ctypes.CDLL, pathlib.Path]:
    try:
        import nvidia.cuda_nvrtc as nvrtc_pkg  # type: ignore[import-not-found]
        import nvidia.cuda_runtime as rt_pkg  # type: ignore[import-not-found]
    except ImportError:
        pytest.skip(
            "nvidia-cuda-nvrtc-cu12 / nvidia-cuda-runtime-cu12 (for cuda_fp16.h) are not installed; CI installs them"
        )
    libdir = pathlib.Path(next(iter(nvrtc_pkg.__path__))) / "lib"
    nvrtc = ctypes.CDLL(str(libdir / "libnvrtc.so.12"))
    major, minor = ctypes.c_int(), ctypes.c_int()
    nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    assert major.value == 12, f"expected NVRTC 12.x (CUDA 13 cannot target sm_70), got {major.value}.{minor.value}"
    return nvrtc, pathlib.Path(next(iter(rt_pkg.__path__))) / "include"


def compile_unit(nvrtc: ctypes.CDLL, include: pathlib.Path, unit: Unit, arch: str) -> bytes:
    src = (CSRC / unit.source).read_bytes()
    prog = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, unit.source.encode(), 0, None, None) == 0
    for name in unit.kernels:
        assert nvrtc.nvrtcAddNameExpression(prog, name.encode()) == 0
    opts = [f"--gpu-architecture={arch}", "-std=c++17", f"-I{CSRC}", f"-I{include}"]
    copts = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    rc = nvrtc.nvrtcCompileProgram(prog, len(opts), copts)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    assert rc == 0, f"NVRTC failed for {unit.source} ({arch}):\n{log.value.decode()}"
    if arch.startswith("sm_"):
        nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(size))
        out = ctypes.create_string_buffer(size.value)
        assert nvrtc.nvrtcGetCUBIN(prog, out) == 0
    else:
        nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
        out = ctypes.create_string_buffer(size.value)
        assert nvrtc.nvrtcGetPTX(prog, out) == 0
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return out.raw


@pytest.mark.parametrize("unit", UNITS, ids=[u.source for u in UNITS])
def test_kernel_unit_compiles_for_sm70_with_cuda12(unit):
    nvrtc, include = load_nvrtc()
    text = compile_unit(nvrtc, include, unit, "compute_70").decode(errors="replace")
    assert ".target sm_70" in text
    assert text.count(".entry") == len(unit.kernels), f"{unit.source}: not every launched kernel was built"
    for needle in unit.must_have:
        assert needle in text, f"{unit.source}: {needle!r} missing from the sm_70 PTX"
    for needle in unit.must_not_have:
        assert needle not in text, f"{unit.source}: {needle!r} in sm_70 PTX (Volta lacks it)"
    cubin = compile_unit(nvrtc, include, unit, "sm_70")
    assert cubin[:4] == b"\x7fELF" and len(cubin) > 4_000
