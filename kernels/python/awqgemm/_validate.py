"""Input checks with errors that say what is wrong and what to do."""

from __future__ import annotations

import torch

from . import _ext, _layout

SUPPORTED_GROUP_SIZES = (32, 64, 128)
ACTIVATION_DTYPES = (torch.float16, torch.bfloat16)


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"awqgemm: {name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_kernels_for(name: str, t: torch.Tensor) -> None:
    """A CUDA tensor needs a build with CUDA kernels: say so, and how to get one."""
    if t.device.type == "cuda" and not _ext.have_cuda_kernels():
        raise ValueError(
            f"awqgemm: {name} is a CUDA tensor ({t.device}), but this awqgemm was built without CUDA kernels "
            "(a CPU-only build: AWQGEMM_CUDA=0, or no nvcc when it was installed), so it runs CPU tensors only. "
            "For the GPU kernels install a CUDA build: `pip install ./kernels` with the CUDA toolkit's nvcc "
            "(>= 12.6) on PATH, or the conda package `awqgemm * cuda*` (README: Set-up, Building other variants)"
        )


def check_group_size(group_size: object) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"awqgemm: group_size must be an int, got {type(group_size).__name__}")
    if group_size not in SUPPORTED_GROUP_SIZES:
        raise ValueError(
            f"awqgemm: group_size {group_size} is not supported; supported: {list(SUPPORTED_GROUP_SIZES)} "
            "(per-channel or other groupings need a different kernel)"
        )
    return group_size


def check_awq_inputs(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int
) -> tuple[int, int]:
    """Validates an AWQ checkpoint triple; returns (K, N)."""
    check_tensor("qweight", qweight)
    check_tensor("qzeros", qzeros)
    check_tensor("scales", scales)
    group_size = check_group_size(group_size)
    for name, t in (("qweight", qweight), ("qzeros", qzeros)):
        if t.dtype != torch.int32:
            raise TypeError(f"awqgemm: {name} must be int32 (AWQ packs 8 int4 values per int32), got {t.dtype}")
        if t.dim() != 2:
            raise ValueError(f"awqgemm: {name} must be 2-D, got shape {_shape(t)}")
    if scales.dtype not in (*ACTIVATION_DTYPES, torch.float32):
        raise TypeError(f"awqgemm: scales must be float16 or bfloat16, got {scales.dtype}")
    if scales.dim() != 2:
        raise ValueError(f"awqgemm: scales must be 2-D [K / group_size, N], got shape {_shape(scales)}")
    devices = {qweight.device, qzeros.device, scales.device}
    if len(devices) != 1:
        raise ValueError(
            "awqgemm: qweight, qzeros and scales must be on the same device, got "
            f"{qweight.device}, {qzeros.device}, {scales.device}"
        )
    k_dim, n_dim = qweight.shape[0], qweight.shape[1] * 8
    if k_dim == 0 or n_dim == 0:
        raise ValueError(f"awqgemm: qweight must be non-empty, got shape {_shape(qweight)}")
    if k_dim % group_size != 0:
        raise ValueError(
            f"awqgemm: K = {k_dim} (qweight rows) is not a multiple of group_size {group_size}; "
            "a tensor-parallel shard must split K on group boundaries"
        )
    groups = k_dim // group_size
    if tuple(scales.shape) != (groups, n_dim):
        raise ValueError(
            f"awqgemm: scales must have shape [K / group_size, N] = [{groups}, {n_dim}] for qweight "
            f"{_shape(qweight)} and group_size {group_size}, got {_shape(scales)}"
        )
    if tuple(qzeros.shape) != (groups, n_dim // 8):
        raise ValueError(
            f"awqgemm: qzeros must have shape [K / group_size, N / 8] = [{groups}, {n_dim // 8}], got {_shape(qzeros)}"
        )
    return k_dim, n_dim


def check_packed_tensors(
    name: str,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    k_dim: int,
    n_dim: int,
    group_size: int,
    experts: int | None = None,
) -> None:
    """The tensors of a packed weight match its K, N and group size (``_layout``'s padded shapes, one
    leading expert dimension for stacked experts) and are contiguous (16-byte alignment on the GPU:
    check_aligned_packed, in the ops). A hand-built or sliced PackedWeight would otherwise be read out
    of bounds."""
    check_group_size(group_size)
    want_q, want_s = _layout.packed_shapes(k_dim, n_dim, group_size)
    if experts is not None:
        want_q, want_s = (experts, *want_q), (experts, *want_s)
    if qweight.dtype != torch.int32 or qweight.shape != want_q:
        raise ValueError(
            f"awqgemm: {name}.qweight must be int32 of shape {list(want_q)} for K={k_dim}, N={n_dim}, "
            f"got {qweight.dtype} {_shape(qweight)}; build packed weights with awqgemm.pack_awq(_experts)"
        )
    if scales.shape != want_s:
        raise ValueError(
            f"awqgemm: {name}.scales must have shape {list(want_s)} for K={k_dim}, N={n_dim}, "
            f"group_size={group_size}, got {_shape(scales)}; build packed weights with awqgemm.pack_awq(_experts)"
        )
    for part, t in (("qweight", qweight), ("scales", scales)):
        if not t.is_contiguous():
            raise ValueError(f"awqgemm: {name}.{part} must be contiguous (call .contiguous() on it)")


def check_aligned_packed(name: str, part: str, t: torch.Tensor) -> None:
    """The kernels read packed weights with 16-byte and bulk copies. Checked by the ops' CUDA
    implementations, not by check_packed_tensors: dynamo cannot trace data_ptr(), and the ops run
    untraced, eager or inside compiled graphs."""
    if t.data_ptr() % 16 != 0:
        raise ValueError(
            f"awqgemm: {name}.{part} must start on a 16-byte boundary on the GPU (it is a view at an odd "
            "offset); pass a copy (.clone())"
        )
