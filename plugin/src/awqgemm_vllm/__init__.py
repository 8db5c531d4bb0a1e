"""awqgemm-vllm: serve AWQ checkpoints in vLLM with awqgemm's W4A16 GEMM kernels.

vLLM loads this package through the ``vllm.general_plugins`` entry point and
calls :func:`register`, which adds the quantization methods ``awqgemm`` and
``awq_turbomind`` (an alias).
"""

from __future__ import annotations

from ._policy import (
    ALIAS_NAME,
    CANONICAL_NAME,
    TAKE_OVER_ENV,
    AwqGemmConfigError,
)
from ._register import register

__version__ = "0.1.0"

#: vLLM versions this release was tested with.
TESTED_VLLM_VERSIONS = ("0.32.0",)

__all__ = [
    "ALIAS_NAME",
    "CANONICAL_NAME",
    "TAKE_OVER_ENV",
    "TESTED_VLLM_VERSIONS",
    "AwqGemmConfigError",
    "__version__",
    "register",
]
