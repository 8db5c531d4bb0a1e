"""Import of the awqgemm library with an error that says what to do."""

from __future__ import annotations

try:
    import awqgemm
except ImportError as exc:  # pragma: no cover - exercised only without the library
    raise ImportError(
        "awqgemm-vllm needs the awqgemm library (import awqgemm failed: "
        f"{exc}). Install it: 'conda install awqgemm' or 'pip install ./kernels' "
        "from the awqgemm repository."
    ) from exc

__all__ = ["awqgemm", "library_has_moe"]


def library_has_moe() -> bool:
    """Whether the installed awqgemm library has the MoE op and its packer."""
    return hasattr(awqgemm, "fused_moe") and hasattr(awqgemm, "pack_awq_experts")
