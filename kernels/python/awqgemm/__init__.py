"""awqgemm: fast 4-bit AWQ (W4A16) GEMM for NVIDIA GPUs from Volta to Blackwell.

Public API::

    packed = awqgemm.pack_awq(qweight, qzeros, scales, group_size)  # once, at load
    y = awqgemm.gemm(x, packed, bias)                                # every forward

Mixture-of-experts layers::

    w13 = awqgemm.pack_awq_experts(qweight, qzeros, scales, group_size)  # [E, ...] stacked
    y = awqgemm.fused_moe(x, w13, w2, topk_weights, topk_ids)

CUDA tensors run awqgemm's own kernels; CPU tensors run the pure-torch
reference path. ``gemm`` is the custom op ``torch.ops.awqgemm.gemm`` with a fake
implementation, so it works under ``torch.compile(fullgraph=True)`` and inside
captured CUDA graphs.
"""

from __future__ import annotations

import torch

from . import _knobs, _layout, _ops, moe, testing
from ._ext import _C, have_cuda_kernels
from ._validate import ACTIVATION_DTYPES, check_awq_inputs, check_kernels_for, check_packed_tensors, check_tensor
from .moe import dequantize_experts, fused_moe, moe_gemm, pack_awq_experts, unpack_awq_experts
from .packed import PackedWeight
from .reference import dequantize_awq, dequantize_packed, reference_gemm

__all__ = [
    "PackedWeight",
    "build_info",
    "dequantize_awq",
    "dequantize_experts",
    "dequantize_packed",
    "fused_moe",
    "gemm",
    "have_cuda_kernels",
    "moe",
    "moe_gemm",
    "pack_awq",
    "pack_awq_experts",
    "plan_info",
    "reference_gemm",
    "testing",
    "unpack_awq",
    "unpack_awq_experts",
]

_knobs.check_environment()

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("awqgemm")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+local"


def pack_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> PackedWeight:
    """Repacks an AWQ checkpoint triple into the layout the kernels want.

    Args:
        qweight: int32 ``[K, N/8]``, AWQ nibble order (column ``j`` of each 8 in
            nibble ``[0,4,1,5,2,6,3,7][j]``).
        qzeros: int32 ``[K/G, N/8]``, same nibble order.
        scales: float16 or bfloat16 ``[K/G, N]`` -- the activation dtype the
            weight will be used with (float32 is accepted for CPU tensors only).
        group_size: 32, 64 or 128; K must be a multiple of it.

    Runs once, on the device the inputs live on, with memory only from torch
    (temporaries are bounded to ~64 MiB chunks plus the unpacked ``[K, N]``
    uint8 weight). N needs no alignment beyond AWQ's 8: the tail is padded to
    the 16-column tile with zero weights, and K to the 64-wide tile likewise.
    """
    k_dim, n_dim = check_awq_inputs(qweight, qzeros, scales, group_size)
    check_kernels_for("scales", scales)
    if scales.dtype == torch.float32 and scales.device.type == "cuda":
        raise TypeError("awqgemm: float32 scales are only supported on CPU (reference path); use float16 or bfloat16")
    layout = _ops.layout_for_device(scales.device, scales.dtype)
    q = _layout.unpack_awq_int4(qweight)
    packed_q = _layout.pack_qweight(q, layout)
    del q
    z = _layout.unpack_awq_int4(qzeros)
    scale_zero = _layout.pack_scale_zero(scales, z, k_dim, group_size)
    return PackedWeight(packed_q, scale_zero, k_dim, n_dim, group_size, layout)


def unpack_awq(packed: PackedWeight) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverse of :func:`pack_awq`: ``(qweight, qzeros, scales)`` in the AWQ checkpoint layout.

    Lossless (the packed form keeps every nibble and scale), so a serving stack
    can hand weights back in checkpoint form, e.g. to re-shard or reload them.
    """
    if not isinstance(packed, PackedWeight):
        raise TypeError(f"awqgemm: packed must be an awqgemm.PackedWeight, got {type(packed).__name__}")
    if packed.num_experts is not None:
        raise ValueError("awqgemm: packed holds stacked experts; use awqgemm.unpack_awq_experts")
    q = _layout.unpack_qweight(packed.qweight, packed.K, packed.N, packed.layout)
    s, z = _layout.unpack_scale_zero(packed.scales, packed.K, packed.N, packed.group_size)
    return _layout.pack_awq_int4(q), _layout.pack_awq_int4(z.to(torch.uint8)), s.contiguous()


def gemm(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W + bias`` for ``x [..., K]`` -> ``[..., N]`` in ``x.dtype`` (fp32 accumulation)."""
    check_tensor("x", x)
    if not isinstance(packed, PackedWeight):
        raise TypeError(f"awqgemm: packed must be an awqgemm.PackedWeight (from pack_awq), got {type(packed).__name__}")
    if packed.num_experts is not None:
        raise ValueError(
            f"awqgemm: packed holds {packed.num_experts} stacked experts (pack_awq_experts); "
            "use awqgemm.fused_moe or awqgemm.moe_gemm for them"
        )
    check_kernels_for("x", x)
    allowed = ACTIVATION_DTYPES if x.device.type == "cuda" else (*ACTIVATION_DTYPES, torch.float32)
    if x.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"awqgemm: x must be {names} on {x.device.type}, got {x.dtype}")
    if x.dtype != packed.dtype:
        raise TypeError(
            f"awqgemm: x is {x.dtype} but the weight was packed with {packed.dtype} scales; "
            "pack with scales in the activation dtype"
        )
    if x.dim() < 1 or x.shape[-1] != packed.K:
        raise ValueError(f"awqgemm: x must have shape [..., K={packed.K}], got {list(x.shape)}")
    if x.device != packed.qweight.device or x.device != packed.scales.device:
        raise ValueError(
            f"awqgemm: x is on {x.device} but the packed weight is on {packed.qweight.device}; move one of them"
        )
    if packed.layout not in _layout.LAYOUTS:
        raise ValueError(f"awqgemm: unknown packed layout {packed.layout}")
    check_packed_tensors("packed", packed.qweight, packed.scales, packed.K, packed.N, packed.group_size)
    if bias is not None:
        check_tensor("bias", bias)
        if bias.shape != (packed.N,):
            raise ValueError(f"awqgemm: bias must have shape [N={packed.N}], got {list(bias.shape)}")
        if bias.dtype != x.dtype:
            raise TypeError(f"awqgemm: bias must be {x.dtype} like x, got {bias.dtype}")
        if bias.device != x.device:
            raise ValueError(f"awqgemm: bias is on {bias.device} but x is on {x.device}")
        bias = bias.contiguous()
    return torch.ops.awqgemm.gemm(
        x, packed.qweight, packed.scales, bias, packed.K, packed.N, packed.group_size, packed.layout
    )


def plan_info(M: int, N: int, K: int, dtype: torch.dtype = torch.float16, device: torch.device | str = "cuda") -> dict:
    """The dispatcher's choice for an ``[M, K] @ [K, N]`` GEMM on ``device``: kernel family, kernel
    (``k_split``, ``x_shared``, ``w_tile``, ``wgmma_ws``, ``wgmma`` (sm90 with K > 65536),
    ``dequantize+dense``, or ``reference`` off the GPU), tokens per tile, K splits and workspace bytes.
    For benchmarks and for understanding a layer's speed; ``gemm`` makes the same plan itself."""
    for name, v in (("M", M), ("N", N), ("K", K)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"awqgemm: {name} must be a positive int, got {v!r}")
    if dtype not in ACTIVATION_DTYPES:
        raise TypeError(f"awqgemm: dtype must be float16 or bfloat16, got {dtype}")
    return _ops.plan_info(M, N, K, dtype, torch.device(device))


def build_info() -> dict:
    """What this build contains: version, CUDA version, SASS and PTX archs, kernel families."""
    info: dict = {
        "version": __version__,
        "cuda_version": None,
        "cuda_architectures": "",
        "sass_archs": [],
        "ptx_archs": [],
        "kernel_families": [],
    }
    if _C is not None:
        info.update(_C.build_info())
        info["version"] = __version__
    info["kernel_families"] = [*info["kernel_families"], "reference"]
    info["torch_version"] = torch.__version__
    return info
