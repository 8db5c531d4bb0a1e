"""The ``awqgemm::gemm`` custom op: validation happens in :func:`awqgemm.gemm`,
kernel choice inside the op, so compiled graphs see one opaque call whatever M
turns out to be (vLLM compiles one graph for all token counts)."""

from __future__ import annotations

import torch

from . import _layout
from ._ext import _C
from ._validate import check_aligned_packed
from .packed import PackedWeight
from .reference import reference_gemm

_DTYPE_CODE = {torch.float16: 0, torch.bfloat16: 1}
# PathRequest in csrc/awqgemm/dispatch.h. The dispatcher (make_plan) decides
# the path, dense-or-fused included; "reference" never reaches it.
_PATH_CODE = {"auto": 0, "fused": 1, "dense": 2, "wtile": 3}


class _Override:
    """The kernel-choice override. Production leaves it at auto; only
    :func:`awqgemm.testing.force` (tests, benchmarks) changes it."""

    family: int = 0  # 0 = auto, else the family code (70, 75, 80, 90)
    path: str = "auto"  # auto | fused | dense | reference
    # fused_moe's routing / silu-mul / combine as CUDA kernels; tests turn it off to run the torch ops
    # the kernels are checked against (bit for bit).
    moe_routing_kernels: bool = True
    # Work in progress behind a switch of its own (tests and benchmarks select it; production never) goes
    # here, named by a key of _C.wip_features (its bit in the planners' `wip` argument): none today.
    # wip_bits() of the switches above, kept by testing.force so the GEMM path reads one int per call.
    wip: int = 0


state = _Override()


def wip_bits() -> int:
    """The planners' ``wip`` argument for the work-in-progress switches that are on now."""
    if _C is None:
        return 0
    return sum(bit for name, bit in _C.wip_features.items() if getattr(state, name))


def device_index(device: torch.device) -> int:
    """The CUDA ordinal of ``device`` (``cuda`` without one means the current device)."""
    return device.index if device.index is not None else torch.cuda.current_device()


_lib = torch.library.Library("awqgemm", "DEF")
_lib.define(
    "gemm(Tensor x, Tensor qweight, Tensor scales, Tensor? bias, int K, int N, int group_size, int layout) -> Tensor"
)


def _gemm_cpu(x, qweight, scales, bias, K, N, group_size, layout):
    packed = PackedWeight(qweight, scales, K, N, group_size, layout)
    return reference_gemm(x, packed, bias)


def _gemm_cuda(x, qweight, scales, bias, K, N, group_size, layout):
    if _C is None:
        raise RuntimeError(
            "awqgemm: this build has no CUDA kernels (built with AWQGEMM_CUDA=0 or without nvcc); "
            "install a CUDA build, or run on CPU tensors"
        )
    check_aligned_packed("packed", "qweight", qweight)
    check_aligned_packed("packed", "scales", scales)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)
    if not x2.is_contiguous() or x2.data_ptr() % 16 != 0:
        x2 = x2.contiguous() if not x2.is_contiguous() else x2.clone()
    M = x2.shape[0]
    if M == 0:
        return x.new_empty((*lead, N))
    if state.path == "reference":
        return reference_gemm(x2, PackedWeight(qweight, scales, K, N, group_size, layout), bias).view(*lead, N)
    device = device_index(x.device)
    stream = torch.cuda.current_stream(x.device).cuda_stream
    dtype_code = _DTYPE_CODE[x.dtype]
    # One call makes the plan (and raises for an unsupported GPU/dtype); its
    # code goes to _C.gemm unchanged, so the plan is made once per call.
    code, family, family_layout, dense, ws_bytes = _C.plan(
        state.family, _PATH_CODE[state.path], dtype_code, M, N, K, device, state.wip
    )
    if family_layout != layout:
        raise ValueError(
            f"awqgemm: the weight was packed in layout {layout} but kernel family sm{family} reads layout "
            f"{family_layout}; pack the weight (awqgemm.pack_awq) on the device and settings that run it"
        )
    if dense:
        return _dense_in_chunks(
            x2, qweight, scales, bias, K, N, group_size, layout, dtype_code, ws_bytes, device, stream
        ).view(*lead, N)
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    ws = torch.empty((ws_bytes + 3) // 4, dtype=torch.float32, device=x.device) if ws_bytes else None
    _C.gemm(
        code,
        dtype_code,
        M,
        N,
        K,
        group_size,
        x2.data_ptr(),
        K,
        qweight.data_ptr(),
        scales.data_ptr(),
        0 if bias is None else bias.data_ptr(),
        out.data_ptr(),
        N,
        0 if ws is None else ws.data_ptr(),
        ws_bytes,
        device,
        stream,
    )
    return out.view(*lead, N)


def _dense_in_chunks(x2, qweight, scales, bias, K, N, group_size, layout, dtype_code, ws_bytes, device, stream):
    """Dequantize + dense GEMM, a chunk of columns at a time through one bounded workspace (the plan's
    ws_bytes is exactly chunk columns x K elements, dispatch.h): never an N x K temporary. Each chunk's
    GEMM writes its column slice of ``out`` in place (cuBLAS takes the row stride N as its leading dim)."""
    cols = ws_bytes // (K * x2.element_size())
    wt = torch.empty((cols, K), dtype=x2.dtype, device=x2.device)
    out = torch.empty((x2.shape[0], N), dtype=x2.dtype, device=x2.device)
    for n0 in range(0, N, cols):
        n = min(cols, N - n0)
        _C.dequantize_t(
            layout,
            dtype_code,
            N,
            K,
            group_size,
            n0,
            n,
            qweight.data_ptr(),
            scales.data_ptr(),
            wt.data_ptr(),
            device,
            stream,
        )
        w = wt[:n].t()
        if bias is None:
            torch.mm(x2, w, out=out[:, n0 : n0 + n])
        else:
            torch.addmm(bias[n0 : n0 + n], x2, w, out=out[:, n0 : n0 + n])
    return out


def _gemm_fake(x, qweight, scales, bias, K, N, group_size, layout):
    return x.new_empty((*x.shape[:-1], N))


_lib.impl("gemm", _gemm_cpu, "CPU")
_lib.impl("gemm", _gemm_cuda, "CUDA")
torch.library.register_fake("awqgemm::gemm", _gemm_fake, lib=_lib)


def layout_for_device(device: torch.device, dtype: torch.dtype) -> int:
    """The packed layout the kernels on ``device`` read (honouring test overrides)."""
    if device.type != "cuda" or _C is None:
        return _layout.LAYOUT_TC16X64
    index = device_index(device)
    family = _C.family_for(state.family, _DTYPE_CODE[dtype], index)
    return _C.layout_for(family)


def plan_info(M: int, N: int, K: int, dtype: torch.dtype, device: torch.device) -> dict:
    """What the dispatcher runs for an ``[M, K] @ [K, N]`` problem on ``device`` (honouring test overrides)."""
    if device.type != "cuda" or _C is None or state.path == "reference":
        return {"family": None, "kernel": "reference", "dense": False, "workspace_bytes": 0}
    index = device_index(device)
    code, family, _, dense, ws = _C.plan(
        state.family, _PATH_CODE[state.path], _DTYPE_CODE[dtype], M, N, K, index, state.wip
    )
    return {"family": f"sm{family}", "dense": bool(dense), "workspace_bytes": ws, **_C.describe_plan(code)}
