"""Pure-torch reference path: AWQ dequantization and the GEMM it defines.

Runs on any device; it is what CPU tensors execute and what the CUDA kernels
are tested against.
"""

from __future__ import annotations

import torch

from . import _layout
from ._validate import check_awq_inputs
from .packed import PackedWeight


def dequantize_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """Dense ``[K, N]`` weight of an AWQ checkpoint tensor triple, in ``scales.dtype``.

    ``w[k, n] = (q[k, n] - z[k // G, n]) * s[k // G, n]``, with ``q - z`` exact and
    one rounding in the multiply -- the same arithmetic the kernels do.
    """
    k_dim, n_dim = check_awq_inputs(qweight, qzeros, scales, group_size)
    q = _layout.unpack_awq_int4(qweight)
    z = _layout.unpack_awq_int4(qzeros)
    return _dequantize(q, z, scales, group_size, k_dim, n_dim)


def _dequantize(q: torch.Tensor, z: torch.Tensor, s: torch.Tensor, group_size: int, k_dim: int, n_dim: int):
    dtype = s.dtype
    qz = q.to(dtype) - z.to(dtype).repeat_interleave(group_size, dim=0)[:k_dim]
    return qz * s.repeat_interleave(group_size, dim=0)[:k_dim]


def dequantize_packed(packed: PackedWeight) -> torch.Tensor:
    """Dense ``[K, N]`` weight of a :class:`PackedWeight` (the inverse of packing)."""
    q = _layout.unpack_qweight(packed.qweight, packed.K, packed.N, packed.layout)
    s, z = _layout.unpack_scale_zero(packed.scales, packed.K, packed.N, packed.group_size)
    return _dequantize(q, z, s, packed.group_size, packed.K, packed.N)


def reference_gemm(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W (+ bias)`` with fp32 accumulation, result in ``x.dtype``."""
    w = dequantize_packed(packed)
    out = x.float() @ w.float()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)
