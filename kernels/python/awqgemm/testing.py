"""Test-only overrides of the kernel choice.

:func:`force` sets a kernel family (``sm70``, ``sm75``, ``sm80``, ``sm90``) and/or
a path (``fused``, ``dense``, ``reference``) for a ``with`` block. Forcing an
older family on a newer GPU is how the Volta and Turing kernels are tested on
an H100: their code is valid there (the instructions are a subset), only
slower. Pack the weight inside the same block, since the sm70 family reads its
own layout. Nothing here is read from the environment: production code never
changes the dispatcher's choice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ._ops import state

FAMILIES = {"auto": 0, "sm70": 70, "sm75": 75, "sm80": 80, "sm90": 90}
PATHS = ("auto", "fused", "dense", "reference")


def _parse_family(name: str) -> int:
    if name not in FAMILIES:
        raise ValueError(f"awqgemm: unknown kernel family {name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def _parse_path(name: str) -> str:
    if name not in PATHS:
        raise ValueError(f"awqgemm: unknown path {name!r}; choose one of {list(PATHS)}")
    return name


@contextlib.contextmanager
def force(family: str = "auto", path: str = "auto") -> Iterator[None]:
    """Force a kernel family and/or path (``fused`` kernel, ``dense`` dequantize + matmul, ``reference``)."""
    old = (state.family, state.path)
    state.family, state.path = _parse_family(family), _parse_path(path)
    try:
        yield
    finally:
        state.family, state.path = old
