"""Loads the compiled CUDA module if this build has one."""

from __future__ import annotations

from types import ModuleType

_C: ModuleType | None
try:  # a CPU-only build (AWQGEMM_CUDA=0, or no nvcc) has no _C
    from . import _C  # type: ignore[attr-defined, no-redef]
except ImportError:
    _C = None


def have_cuda_kernels() -> bool:
    return _C is not None
