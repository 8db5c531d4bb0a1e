"""Tuning knobs: environment variables the C++ dispatcher (csrc/dispatch.cu)
reads once per process. They are checked here, at import, so a malformed value
fails loudly instead of quietly becoming the default inside the planner. What
each one measured is in docs/perf-notes.md; the defaults are the measured best.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# name -> (lowest, highest, meaning)
KNOBS: dict[str, tuple[int, int, str]] = {
    "AWQGEMM_INFLIGHT_KIB": (1, 4096, "weight bytes kept in flight per SM, in KiB (default 24)"),
    "AWQGEMM_XS_MAX_SPLITS": (1, 16, "most K splits of the x-shared kernel (default 8)"),
    "AWQGEMM_BALANCE": (0, 1, "split K in two just over one block per SM: 0 off, 1 on (default)"),
    "AWQGEMM_PDL": (0, 1, "programmatic dependent launch on sm90+: 0 off, 1 on (default)"),
}


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Raise ValueError if a set knob is not an integer in its range (empty counts as unset)."""
    env = os.environ if environ is None else environ
    for name, (lo, hi, meaning) in KNOBS.items():
        raw = env.get(name, "").strip()
        if not raw:
            continue
        try:
            value = int(raw, 10)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise ValueError(
                f"awqgemm: {name}={raw!r} must be an integer in [{lo}, {hi}] ({meaning}); unset it for the default"
            )
