"""What the plugin needs to know about vLLM's current platform."""

from __future__ import annotations

from ._policy import Platform


def current() -> Platform:
    """The platform vLLM runs on, as a :class:`~awqgemm_vllm._policy.Platform`."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return Platform("cpu", None)
    if current_platform.is_cuda():
        cap = current_platform.get_device_capability()
        return Platform("cuda", cap.to_int() if cap is not None else None)
    kind = str(getattr(current_platform, "device_name", "") or "").lower()
    if not kind:
        kind = type(current_platform).__name__.lower().replace("platform", "")
    return Platform(kind or "unknown", None)
