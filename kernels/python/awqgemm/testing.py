"""Test helpers: overrides of the kernel choice and random AWQ checkpoints.

:func:`force` sets a kernel family (``sm70``, ``sm75``, ``sm80``, ``sm90``) and/or
a path (``fused``, ``dense``, ``reference``) for a ``with`` block. Forcing an
older family on a newer GPU is how the Volta and Turing kernels are tested on
an H100: their code is valid there (the instructions are a subset), only
slower. Pack the weight inside the same block, since the sm70 family reads its
own layout. Nothing here is read from the environment: production code never
changes the dispatcher's choice.

:func:`random_awq` makes a random AWQ checkpoint triple for tests, benchmarks
and package tests, with the magnitudes of a real layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from . import _layout
from ._ops import state, wip_bits

FAMILIES = {"auto": 0, "sm70": 70, "sm75": 75, "sm80": 80, "sm90": 90}
PATHS = ("auto", "fused", "dense", "reference", "wtile")


def _parse_family(name: str) -> int:
    if name not in FAMILIES:
        raise ValueError(f"awqgemm: unknown kernel family {name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def _parse_path(name: str) -> str:
    if name not in PATHS:
        raise ValueError(f"awqgemm: unknown path {name!r}; choose one of {list(PATHS)}")
    return name


@contextlib.contextmanager
def force(
    family: str = "auto",
    path: str = "auto",
    *,
    moe_routing_kernels: bool = True,
) -> Iterator[None]:
    """Force a kernel family and/or path (``fused`` kernel at every M (sm90: the wgmma kernels), ``dense``
    dequantize + matmul, ``reference``, ``wtile``: the sm80 family's weight-tile kernel at every M; other
    families run their fused kernels).

    ``moe_routing_kernels=False`` runs fused_moe's routing, silu-mul and combine as torch ops instead of
    its CUDA kernels (the reference the kernels are tested against).

    Work in progress lands behind a keyword switch of its own here (tests/conftest.py's WIP_FEATURES names
    it, _C.wip_features gives its bit); none today."""
    switches = {
        "moe_routing_kernels": moe_routing_kernels,
    }
    for name, v in switches.items():
        if not isinstance(v, bool):
            raise TypeError(f"awqgemm.testing.force: {name} must be a bool, got {type(v).__name__}")
    old = (state.family, state.path, state.wip, *(getattr(state, n) for n in switches))
    state.family, state.path = _parse_family(family), _parse_path(path)
    for n, v in switches.items():
        setattr(state, n, v)
    state.wip = wip_bits()
    try:
        yield
    finally:
        state.family, state.path, state.wip = old[:3]
        for n, v in zip(switches, old[3:], strict=True):
            setattr(state, n, v)


def random_awq(
    k: int,
    n: int,
    group: int,
    dtype: torch.dtype = torch.float16,
    device: torch.device | str = "cpu",
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random AWQ checkpoint triple ``(qweight, qzeros, scales)`` for a [K, N] layer.

    * ``qweight``: int32 [K, N/8], eight 4-bit weights per word in AWQ nibble order;
    * ``qzeros``: int32 [K/group, N/8], the zero points, packed the same way;
    * ``scales``: ``dtype`` [K/group, N].

    Weights and zero points are uniform over 0..15. Scales are U(0.5, 1.5) / (8 sqrt(K)),
    which keeps ``x @ W`` at unit-ish scale for unit-variance ``x``, as in a real layer.
    ``group=-1`` means one group over all of K (per-channel scales), as in AWQ/GPTQ configs.

    The tensors are drawn on ``device`` itself (no host round trip for large layers). With a
    ``seed`` the result is deterministic for a given kind of device (CPU and CUDA generators
    give different numbers for the same seed); ``seed=None`` draws a fresh one.
    """
    for name, v in (("k", k), ("n", n), ("group", group)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"awqgemm.testing.random_awq: {name} must be an int, got {type(v).__name__}")
    if k <= 0 or n <= 0:
        raise ValueError(f"awqgemm.testing.random_awq: k and n must be positive, got k={k}, n={n}")
    if n % 8:
        raise ValueError(f"awqgemm.testing.random_awq: n={n} is not a multiple of 8 (8 nibbles per int32 word)")
    if group != -1 and (group <= 0 or k % group):
        raise ValueError(
            f"awqgemm.testing.random_awq: group={group} must be -1 (one group over K) or a positive divisor of k={k}"
        )
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"awqgemm.testing.random_awq: dtype must be a floating-point torch.dtype, got {dtype!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"awqgemm.testing.random_awq: seed must be None or an int >= 0, got {seed!r}")
    device = torch.device(device)
    groups = 1 if group == -1 else k // group
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    q = torch.randint(0, 16, (k, n), generator=gen, dtype=torch.uint8, device=device)
    qweight = _layout.pack_awq_int4(q)
    del q  # [K, N] bytes: free it before drawing the rest (large layers on a GPU)
    qzeros = _layout.pack_awq_int4(torch.randint(0, 16, (groups, n), generator=gen, dtype=torch.uint8, device=device))
    scales = (torch.rand(groups, n, generator=gen, device=device) + 0.5) / (8 * k**0.5)
    return qweight, qzeros, scales.to(dtype)
