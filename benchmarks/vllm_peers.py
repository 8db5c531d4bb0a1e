#!/usr/bin/env python3
"""vLLM's own W4A16 kernels (Machete and Marlin) as benchmark contenders for ``benchmarks/gemm.py``.

Each ``build_*`` takes an AWQ checkpoint triple on the GPU, exactly as vLLM's AWQ linear method
receives it from a checkpoint, and does what vLLM 0.26.0 does to that layer before serving:

* qweight int32 [K, N/8], qzeros int32 [K/G, N/8]: AWQ packing, column j of every 8 in nibble
  ``AWQ_NIBBLE_OF_COLUMN[j]``; scales [K/G, N] in the activation dtype.
* W[k, n] = (q[k, n] - z[k // G, n]) * s[k // G, n];  the callable returns ``x @ W``.

How vLLM 0.26.0 serves an AWQ checkpoint (``quant_method: awq``): ``AutoAWQConfig``
(``layers/quantization/auto_awq.py``; ``awq``, ``awq_marlin`` and ``auto_awq`` all map to it) ->
``AutoAWQMarlinLinearMethod``, which first rewrites the AWQ tensors into the GPTQ-like layout
(``_convert_awq_to_standard_format``: qweight -> int32 [K/8, N] packed along K in plain nibble
order, qzeros -> plain-order nibbles), then hands the layer to the kernel that
``choose_mp_linear_kernel`` picks. On CUDA the order is CutlassW4A8 (fp8 activations only),
Machete (compute capability 9.0 exactly, K % 64 == 0, N % 128 == 0, G in {-1, 64, 128}),
AllSpark (no zero points, so never for AWQ), Marlin (G in {-1, 32, 64, 128}; shapes off the
thread tiles are zero-padded). So on an H100, fp16/bf16 AWQ runs Machete where its shape rules
hold and Marlin elsewhere (e.g. N = 1376); ``vllm_pick`` says which.

* Machete (``MacheteLinearKernel``): ``machete_prepack_B`` on the [K/8, N] weight in column-major
  strides, scales as is, zero points unpacked and pre-scaled and negated in the activation dtype
  (``zp' = -(s * z)``, so the kernel computes ``q * s + zp'``), ``machete_mm`` with
  ``b_type=uint4``, group scales, group zeros and the group size.
* Marlin (``MarlinLinearKernel``): ``gptq_marlin_repack`` of the [K/8, N] weight (no act-order
  permutation), ``marlin_permute_scales``, ``marlin_zero_points`` on the unpacked zeros, all
  after ``marlin_padded_nk`` padding; a ``marlin_make_workspace_new`` workspace; ``marlin_gemm``
  with ``b_q_type=uint4``, empty g_idx / perm, ``is_k_full=True``, fp32 reduce.

All persistent tensors (prepacked weight, scales, zeros, workspace, empty index tensors) are made at
build time; the callables only allocate their output (and, where vLLM itself does, the padded
activation / unpadded output), so they can be captured in a CUDA graph.

Importable without vLLM: ``probe()`` then says why the peers are unavailable. The self-check's
random AWQ data comes from ``awqgemm.testing.random_awq``.

Usage (GPU machine with vLLM 0.26.0)::

    python3 benchmarks/vllm_peers.py      # self-check table: both peers vs a float32 reference
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

VLLM_WRITTEN_FOR = "0.26.0"
AWQ_NIBBLE_OF_COLUMN = (0, 4, 1, 5, 2, 6, 3, 7)  # AWQ: column j of every 8 sits in nibble [j]
MACHETE_GROUPS = (-1, 64, 128)  # vLLM 0.26 query_machete_supported_group_sizes(fp16/bf16)
MARLIN_GROUPS = (-1, 32, 64, 128)  # vLLM 0.26 MARLIN_SUPPORTED_GROUP_SIZES
_NEEDED_OPS = ("machete_prepack_B", "machete_mm", "gptq_marlin_repack", "marlin_gemm")

GemmFn = Callable[[torch.Tensor], torch.Tensor]


class PeerUnsupported(ValueError):
    """vLLM would not run this kernel for this layer (shape, group, dtype or GPU)."""


# ----------------------------------------------------------------------------- availability


def probe() -> tuple[bool, str, str]:
    """(available, reason if not, vLLM version). Needs ``vllm._custom_ops``, its CUDA ops and a GPU."""
    try:
        import vllm
    except Exception as exc:
        return False, f"import vllm failed: {type(exc).__name__}: {exc}", ""
    version = str(getattr(vllm, "__version__", "?"))
    try:
        from vllm import _custom_ops as ops
        from vllm.scalar_type import scalar_types  # noqa: F401
    except Exception as exc:
        return False, f"import vllm._custom_ops failed: {type(exc).__name__}: {exc}", version
    missing = [n for n in _NEEDED_OPS if not hasattr(ops, n) or not hasattr(torch.ops._C, n)]
    if missing:
        return (
            False,
            f"vLLM {version} has no CUDA op(s) {', '.join(missing)} (CPU build or _C failed to load?)",
            version,
        )
    if not torch.cuda.is_available():
        return False, "no CUDA device", version
    return True, "", version


def _capability(device: torch.device | None = None) -> int:
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def supports(kind: str, K: int, N: int, G: int, dtype: torch.dtype, capability: int | None = None) -> tuple[bool, str]:
    """Whether vLLM 0.26's ``can_implement`` for ``kind`` ('machete' / 'marlin') accepts this AWQ layer.

    ``G`` is the checkpoint group size (-1: one group over K). ``capability`` is 10 * major + minor
    (default: the current GPU).
    """
    if dtype not in (torch.float16, torch.bfloat16):
        return False, f"n/a: activations {dtype} (fp16 / bf16 only here)"
    if G != -1 and (G <= 0 or K % G):
        return False, f"n/a: group size {G} does not divide K = {K}"
    cc = _capability() if capability is None else capability
    if kind == "machete":
        if cc != 90:
            return False, f"n/a: Machete needs compute capability 9.0 (this GPU: {cc / 10:.1f})"
        if G not in MACHETE_GROUPS:
            return False, f"n/a: Machete group sizes are {MACHETE_GROUPS}, not {G}"
        if K % 64:
            return False, f"n/a: Machete needs K % 64 == 0 (K = {K}); vLLM would use Marlin"
        if N % 128:
            return False, f"n/a: Machete needs N % 128 == 0 (N = {N}); vLLM would use Marlin"
        return True, ""
    if kind == "marlin":
        if cc < 75:
            return False, f"n/a: Marlin needs compute capability >= 7.5 (this GPU: {cc / 10:.1f})"
        if G not in MARLIN_GROUPS:
            return False, f"n/a: Marlin group sizes are {MARLIN_GROUPS}, not {G}"
        if N % 8:
            return False, f"n/a: N = {N} is not a multiple of 8"
        return True, ""
    raise ValueError(f"unknown kind {kind!r}; known: machete, marlin")


def vllm_pick(K: int, N: int, G: int, dtype: torch.dtype, capability: int | None = None) -> str | None:
    """The kernel vLLM 0.26's choose_mp_linear_kernel would give this AWQ layer (default settings)."""
    for kind in ("machete", "marlin"):
        if supports(kind, K, N, G, dtype, capability)[0]:
            return kind
    return None


# ----------------------------------------------------------------------------- AWQ -> plain layout


def _awq_shifts(device: torch.device) -> torch.Tensor:
    return torch.tensor([4 * nib for nib in AWQ_NIBBLE_OF_COLUMN], dtype=torch.int32, device=device)


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C/8] in AWQ nibble order -> int32 [R, C] values 0..15."""
    r, c8 = packed.shape
    vals = (packed.to(torch.int32).unsqueeze(-1) >> _awq_shifts(packed.device)) & 0xF
    return vals.reshape(r, 8 * c8)


def pack_k_plain(values: torch.Tensor) -> torch.Tensor:
    """int [K, N] values 0..15 -> int32 [K/8, N]: row 8 p + i in nibble i of row p (the GPTQ layout)."""
    k, n = values.shape
    v = values.to(torch.int32).reshape(k // 8, 8, n)
    out = torch.zeros(k // 8, n, dtype=torch.int32, device=values.device)
    for i in range(8):
        out |= v[:, i, :] << (4 * i)
    return out


def _checked_shapes(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int, dtype: torch.dtype
) -> tuple[int, int, int]:
    """(K, N, number of groups); raises ValueError on an inconsistent triple."""
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise ValueError(f"qweight / qzeros must be int32, got {qweight.dtype} / {qzeros.dtype}")
    if qweight.dim() != 2 or qzeros.dim() != 2 or scales.dim() != 2:
        raise ValueError("qweight, qzeros and scales must be 2-D")
    K, N = qweight.shape[0], 8 * qweight.shape[1]
    if group_size != -1 and (group_size <= 0 or K % group_size):
        raise ValueError(f"group size {group_size} does not divide K = {K}")
    groups = 1 if group_size == -1 else K // group_size
    if tuple(qzeros.shape) != (groups, N // 8) or tuple(scales.shape) != (groups, N):
        raise ValueError(
            f"for K={K}, N={N}, G={group_size}: want qzeros [{groups}, {N // 8}] and scales [{groups}, {N}], "
            f"got {tuple(qzeros.shape)} and {tuple(scales.shape)}"
        )
    if scales.dtype != dtype:
        raise ValueError(f"scales are {scales.dtype}, activations {dtype}: vLLM keeps scales in params_dtype")
    if not qweight.is_cuda:
        raise ValueError("the AWQ triple must be on the GPU")
    return K, N, groups


def _require(kind: str, K: int, N: int, G: int, dtype: torch.dtype, device: torch.device) -> None:
    ok, why = supports(kind, K, N, G, dtype, _capability(device))
    if not ok:
        raise PeerUnsupported(why)


# ----------------------------------------------------------------------------- Machete


def build_machete(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int, dtype: torch.dtype
) -> GemmFn:
    """vLLM 0.26 MacheteLinearKernel on an AWQ layer: returns f(x [M, K]) -> x @ W [M, N] in dtype.

    Raises PeerUnsupported where vLLM would not pick Machete (not sm90, N % 128, K % 64, group 32).
    """
    from vllm import _custom_ops as ops
    from vllm.scalar_type import scalar_types

    K, N, _ = _checked_shapes(qweight, qzeros, scales, group_size, dtype)
    _require("machete", K, N, group_size, dtype, qweight.device)
    wtype = scalar_types.uint4  # AWQ with zero points: unsigned 4-bit, runtime zero point

    # Weight: AWQ [K, N/8] -> plain [K/8, N] (what auto_awq hands the kernel), then Machete's
    # prepack of that tensor in column-major strides (transform_w_q: x.t().contiguous().t()).
    q_plain = pack_k_plain(unpack_awq(qweight))
    b_q = ops.machete_prepack_B(q_plain.t().contiguous().t(), a_type=dtype, b_type=wtype, group_scales_type=dtype)
    del q_plain
    # Scales: [groups, N] contiguous, as is (transform_w_s).
    w_s = scales.contiguous()
    # Zeros: unpacked to [groups, N] and pre-scaled, negated, in the scales' dtype (transform_w_zp:
    # -1.0 * w_s * z.to(w_s.dtype)), so the kernel's dequant is q * s + zp = (q - z) * s.
    z = unpack_awq(qzeros)
    w_zp = (-1.0 * w_s * z.to(w_s.dtype)).contiguous()
    del z

    def machete(x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        out = ops.machete_mm(
            a=x2,
            b_q=b_q,
            b_type=wtype,
            b_group_zeros=w_zp,
            b_group_scales=w_s,
            b_group_size=group_size,
        )
        return out.reshape(*x.shape[:-1], N)

    return machete


# ----------------------------------------------------------------------------- Marlin


def build_marlin(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int, dtype: torch.dtype
) -> GemmFn:
    """vLLM 0.26 MarlinLinearKernel on an AWQ layer: returns f(x [M, K]) -> x @ W [M, N] in dtype.

    Shapes off Marlin's thread tiles are zero-padded exactly as vLLM does (marlin_padded_nk), so the
    padded activation / sliced output copies are part of the contender, as they are in vLLM.
    """
    from vllm import _custom_ops as ops
    from vllm.model_executor.layers.quantization.utils import marlin_utils as mu
    from vllm.scalar_type import scalar_types

    K, N, _ = _checked_shapes(qweight, qzeros, scales, group_size, dtype)
    device = qweight.device
    _require("marlin", K, N, group_size, dtype, device)
    wtype = scalar_types.uint4
    bits = wtype.size_bits

    padded_n, padded_k = mu.marlin_padded_nk(N, K, group_size)
    padded_groups = 1 if group_size == -1 else padded_k // group_size

    workspace = mu.marlin_make_workspace_new(device)  # zeros, one int per SM (max_blocks_per_sm=1)
    # No act-order: empty int32 g_idx and perm (what marlin_make_empty_g_idx gives in vLLM 0.26).
    g_idx = torch.empty(0, dtype=torch.int, device=device)
    g_idx_sort = torch.empty(0, dtype=torch.int, device=device)

    # Zero points: auto_awq repacks them plain-order along N and MarlinLinearKernel unpacks them
    # again (unpack_cols(qzeros.t())) -- a round trip that gives the [groups, N] values, which we
    # take directly; then pad and marlin_zero_points (scale-style permutation, interleave, pack).
    z = unpack_awq(qzeros)
    w_zp = mu.marlin_zero_points(
        mu.marlin_pad_scales(z, N, K, padded_n, padded_k, group_size),
        size_k=padded_groups,
        size_n=padded_n,
        num_bits=bits,
        is_a_8bit=False,
    )
    del z
    # Weight: plain [K/8, N], padded, gptq_marlin_repack with the empty perm.
    q_plain = pack_k_plain(unpack_awq(qweight))
    w_q = ops.gptq_marlin_repack(
        mu.marlin_pad_qweight(q_plain.contiguous(), N, K, padded_n, padded_k),
        perm=g_idx_sort,
        size_k=padded_k,
        size_n=padded_n,
        num_bits=bits,
        is_a_8bit=False,
    )
    del q_plain
    # Scales: padded, then marlin_permute_scales (grouped permutation when 0 < G < K).
    w_s = mu.marlin_permute_scales(
        mu.marlin_pad_scales(scales.contiguous(), N, K, padded_n, padded_k, group_size),
        size_k=padded_k,
        size_n=padded_n,
        group_size=group_size,
        is_a_8bit=False,
    )
    use_fp32_reduce = mu.USE_FP32_REDUCE_DEFAULT

    def marlin(x: torch.Tensor) -> torch.Tensor:
        x2 = mu.marlin_pad_dim(x.reshape(-1, x.shape[-1]), K, padded_k)
        m = x2.shape[0]
        out = ops.marlin_gemm(
            x2,
            None,  # c: let the op allocate the output, as vLLM does
            w_q,
            None,  # b_bias
            w_s,
            None,  # a_scales (16-bit activations)
            None,  # global_scale
            w_zp,
            g_idx,
            g_idx_sort,
            workspace,
            wtype,
            size_m=m,
            size_n=padded_n,
            size_k=padded_k,
            is_k_full=True,
            use_atomic_add=mu.should_use_atomic_add_reduce(
                m=m, n=padded_n, k=padded_k, device=x2.device, dtype=x2.dtype
            ),
            use_fp32_reduce=use_fp32_reduce,
            is_zp_float=False,
        )
        return mu.marlin_unpad_output(out, N, padded_n).reshape(*x.shape[:-1], N)

    return marlin


BUILDERS: dict[str, Callable[..., GemmFn]] = {"machete": build_machete, "marlin": build_marlin}


# ----------------------------------------------------------------------------- self-check


def dequant_awq_f32(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, G: int) -> torch.Tensor:
    """W [K, N] in float32: (q - z) * s with z, s broadcast over each group of G rows."""
    q = unpack_awq(qweight).float()
    K = q.shape[0]
    g = K if G == -1 else G
    z = unpack_awq(qzeros).float().repeat_interleave(g, dim=0)
    s = scales.float().repeat_interleave(g, dim=0)
    return (q - z) * s


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    r = ref.norm().item()
    return (out.float() - ref).norm().item() / r if r > 0 else float("inf")


def _graph_diff(fn: GemmFn, x: torch.Tensor, eager: torch.Tensor) -> float:
    """Capture fn(x) in a CUDA graph, replay it, return ||replay - eager|| / ||eager||."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(x)
    graph.replay()
    torch.cuda.synchronize()
    return _rel(out, eager.float())


def check(M: int, K: int, N: int, G: int, dtype: torch.dtype, seed: int = 0) -> dict[str, Any]:
    """Build both peers on random AWQ data; errors vs a float32 reference (needs the GPU).

    Returns {M, K, N, G, dtype, pick, dense, <kind>, <kind>_graph, <kind>_note}: ``dense`` is the
    error of ``x @ W.to(dtype)`` (cuBLAS on the dequantized weight, the yardstick); ``<kind>`` the
    peer's relative Frobenius error or None with ``<kind>_note`` saying why; ``<kind>_graph`` the
    relative difference of a CUDA-graph replay from the eager call (0.0 expected: same kernel, same data).
    """
    ok, reason, version = probe()
    res: dict[str, Any] = {"M": M, "K": K, "N": N, "G": G, "dtype": str(dtype).replace("torch.", ""), "vllm": version}
    if not ok:
        res["error"] = reason
        return res
    from awqgemm.testing import random_awq  # the test data only: the peers themselves need no awqgemm

    device = torch.device("cuda", torch.cuda.current_device())
    qw, qz, s = random_awq(K, N, G, dtype, device, seed)
    w = dequant_awq_f32(qw, qz, s, G)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    x = torch.randn(M, K, generator=gen, device=device).to(dtype)
    ref = x.float() @ w
    res["pick"] = vllm_pick(K, N, G, dtype, _capability(device))
    res["dense"] = _rel(x @ w.to(dtype), ref)
    for kind, build in BUILDERS.items():
        res[kind] = res[f"{kind}_graph"] = None
        try:
            fn = build(qw.clone(), qz.clone(), s.clone(), G, dtype)
        except PeerUnsupported as exc:
            res[f"{kind}_note"] = str(exc)
            continue
        except Exception as exc:
            res[f"{kind}_note"] = f"build failed: {type(exc).__name__}: {exc}"
            continue
        try:
            out = fn(x)
            torch.cuda.synchronize()
            if tuple(out.shape) != (M, N) or out.dtype != dtype:
                res[f"{kind}_note"] = f"bad output {tuple(out.shape)} {out.dtype}"
            res[kind] = _rel(out, ref)
            res[f"{kind}_graph"] = _graph_diff(fn, x, out)
        except Exception as exc:
            res[f"{kind}_note"] = f"run failed: {type(exc).__name__}: {exc}"
    return res


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2e}"


def main() -> int:
    ok, reason, version = probe()
    print(f"vLLM {version or '(none)'} (written for {VLLM_WRITTEN_FOR}); peers available: {ok} {reason}")
    if not ok:
        return 1
    print(f"GPU: {torch.cuda.get_device_name()} (sm{_capability()}), torch {torch.__version__}")
    tol = 2e-2
    head = f"{'dtype':<8} {'M':>5} {'K':>5} {'N':>5} {'G':>4} {'pick':<8} | {'dense':>8} {'machete':>8} {'graph':>7} "
    print(head + f"{'marlin':>8} {'graph':>7} | ok")
    bad = 0
    notes: list[str] = []
    for dtype in (torch.float16, torch.bfloat16):
        for K, N, G in ((4096, 4096, 128), (4096, 1376, 64)):
            for M in (1, 13, 128, 512):
                r = check(M, K, N, G, dtype)
                if "error" in r:
                    print(f"{r['dtype']:<8} {M:>5} {K:>5} {N:>5} {G:>4} error: {r['error']}")
                    bad += 1
                    continue
                good = True
                for kind in BUILDERS:
                    note = r.get(f"{kind}_note")
                    if note:
                        notes.append(f"{kind} {r['dtype']} K={K} N={N} G={G}: {note}")
                    expected = supports(kind, K, N, G, dtype)[0]
                    err, gd = r[kind], r[f"{kind}_graph"]
                    if expected and (err is None or err > max(tol, 4 * r["dense"]) or gd is None or gd > 1e-3):
                        good = False
                bad += not good
                print(
                    f"{r['dtype']:<8} {M:>5} {K:>5} {N:>5} {G:>4} {r['pick'] or '-':<8} | {_fmt(r['dense']):>8} "
                    f"{_fmt(r['machete']):>8} {_fmt(r['machete_graph']):>7} {_fmt(r['marlin']):>8} "
                    f"{_fmt(r['marlin_graph']):>7} | {'ok' if good else 'FAIL'}"
                )
    for n in dict.fromkeys(notes):
        print("note:", n)
    print("all ok" if not bad else f"{bad} row(s) FAILED")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
