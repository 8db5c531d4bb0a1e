"""The contenders: awqgemm (auto and forced paths), dense cuBLAS, TurboMind, vLLM's Machete and Marlin."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .shapes import DTYPES, Shape
from .timing import short_error

CONTENDERS = ("auto", "autox", "a80", "fused", "wt", "wg", "dpath", "cublas", "tm", "machete", "marlin")
CONTENDER_DOC = {
    "auto": "awqgemm.gemm, default dispatch (what users get)",
    "autox": "auto with every work-in-progress switch of awqgemm._C.wip_features on (what the plugin's "
    "awqgemm:wip engine runs)",
    "a80": "awqgemm's default dispatch with the sm80 family forced (what an A100 / L40S / RTX 4090 runs; "
    "issue 11's comparison with Marlin) (testing.force(family='sm80'))",
    "fused": "awqgemm forced onto its sm80 fused kernels (testing.force(family='sm80', path='fused'))",
    "wt": "awqgemm forced onto the sm80 weight-tile kernel at every M (testing.force(family='sm80', path='wtile'))",
    "wg": "awqgemm forced onto the sm90a wgmma kernels, v11.1 (v9 for K > 65536) (force(family='sm90', path='fused'))",
    "dpath": "awqgemm forced onto dequantize + cuBLAS (testing.force(path='dense'))",
    "cublas": "dense torch matmul x @ w, w [K, N] in the same dtype (cuBLAS)",
    "tm": "turbomind==0.0.2 Linear(K, N, quant_method='awq'), fp16 + g128 only",
    "machete": "vLLM's Machete (CUTLASS wgmma, sm90), as awq_marlin runs it on Hopper (benchmarks/vllm_peers.py)",
    "marlin": "vLLM's Marlin (marlin_gemm on gptq_marlin_repack'ed weights, vLLM 0.26's AWQ path; vllm_peers.py)",
}


@dataclasses.dataclass
class Contender:
    name: str
    fn: Callable[[torch.Tensor, int], torch.Tensor]  # (x, weight copy) -> out
    ctx: Callable[[], contextlib.AbstractContextManager]


@dataclasses.dataclass
class TurboMindStatus:
    available: bool
    reason: str = ""
    version: str | None = None
    module: Any = None


def probe_turbomind(dry: bool) -> TurboMindStatus:
    if dry:
        return TurboMindStatus(False, "dry run (no GPU)")
    try:
        import turbomind  # type: ignore[import-not-found]
        import turbomind.linear as tml  # type: ignore[import-not-found]
    except Exception as exc:
        return TurboMindStatus(False, f"import turbomind failed: {short_error(exc)}")
    version = getattr(turbomind, "__version__", None)
    if version is None:
        with contextlib.suppress(Exception):
            from importlib.metadata import version as _v

            version = _v("turbomind")
    ok = getattr(tml, "TURBOMIND_EXTENSION_INSTALLED", getattr(tml, "TURBOMIND_KERNELS_INSTALLED", True))
    if not ok:
        try:
            import _turbomind_ext  # type: ignore[import-not-found]  # noqa: F401

            reason = "turbomind reports its extension missing"
        except Exception as exc:
            reason = f"_turbomind_ext failed to load: {short_error(exc)} (is libcudart.so.12 on LD_LIBRARY_PATH?)"
        return TurboMindStatus(False, reason, version)
    if not hasattr(turbomind, "Linear"):
        return TurboMindStatus(False, "turbomind has no Linear", version)
    return TurboMindStatus(True, "", version, turbomind)


def build_contenders(
    shape: Shape,
    G: int,
    dname: str,
    R: int,
    device: torch.device,
    wanted: Sequence[str],
    tm: TurboMindStatus,
    seed: int,
) -> tuple[dict[str, Contender], dict[str, str], torch.Tensor, Callable[[], None]]:
    """The contenders for one (shape, group, dtype), each holding R weight copies.

    Returns (contenders, unavailable reasons, the dense reference weight [K, N], cleanup).
    """
    import awqgemm

    dtype = DTYPES[dname]
    K, N = shape.K, shape.N
    qw, qz, s = awqgemm.testing.random_awq(K, N, G, dtype, device, seed)
    base = awqgemm.pack_awq(qw, qz, s, G)
    w_dense = awqgemm.dequantize_awq(qw, qz, s, G)  # [K, N] in dtype: the same function the AWQ kernels compute
    contenders: dict[str, Contender] = {}
    unavailable: dict[str, str] = {}
    keep: list[Any] = []

    awq_names = [c for c in ("auto", "autox", "a80", "fused", "wt", "wg", "dpath") if c in wanted]
    cuda = device.type == "cuda"
    for c in ("wg",):
        if c in awq_names and "sm90a_m64nNk16" not in awqgemm.build_info()["kernel_families"]:
            awq_names.remove(c)
            unavailable[c] = "n/a: this awqgemm build has no sm90a family (CUDA_ARCHITECTURES without 90a-real)"
        elif c in awq_names and (not cuda or torch.cuda.get_device_capability(device) != (9, 0)):
            awq_names.remove(c)
            unavailable[c] = "n/a: the wgmma family runs on compute capability 9.0 only"
    if awq_names:
        packs = [base] + [
            dataclasses.replace(base, qweight=base.qweight.clone(), scales=base.scales.clone()) for _ in range(R - 1)
        ]
        keep.append(packs)
        sm80 = cuda and torch.cuda.get_device_capability(device) >= (8, 0)
        force = {
            "auto": {},
            "autox": dict.fromkeys(awqgemm._C.wip_features if awqgemm._C is not None else (), True),
            "a80": {"family": "sm80"} if sm80 else {},
            "fused": {"family": "sm80", "path": "fused"} if sm80 else {"path": "fused"},
            "wt": {"family": "sm80", "path": "wtile"} if sm80 else {"path": "wtile"},
            "wg": {"family": "sm90", "path": "fused"},
            "dpath": {"path": "dense"},
        }
        for c in awq_names:
            contenders[c] = Contender(
                c,
                lambda x, i, packs=packs: awqgemm.gemm(x, packs[i]),
                lambda f=force[c]: awqgemm.testing.force(**f),
            )
    if "cublas" in wanted:
        ws = [w_dense] + [w_dense.clone() for _ in range(R - 1)]
        keep.append(ws)
        contenders["cublas"] = Contender("cublas", lambda x, i, ws=ws: torch.matmul(x, ws[i]), contextlib.nullcontext)
    if "tm" in wanted:
        if not tm.available:
            unavailable["tm"] = tm.reason
        elif dname != "fp16" or G != 128:
            unavailable["tm"] = "n/a: turbomind 0.0.2 runs fp16 + group 128 only"
        else:
            try:
                lins = []
                for _ in range(R):
                    lin = tm.module.Linear(K, N, bias=False, quant_method="awq", w_bit=4, group_size=128)
                    lin.qweight = qw.clone()
                    lin.qzeros = qz.clone()
                    lin.scales = s.clone()
                    lin.post_init()
                    lins.append(lin)
                keep.append(lins)
                contenders["tm"] = Contender("tm", lambda x, i, lins=lins: lins[i](x), contextlib.nullcontext)
            except Exception as exc:
                unavailable["tm"] = f"setup failed: {short_error(exc)}"
    peers = [c for c in ("machete", "marlin") if c in wanted]
    if peers:
        try:
            import vllm_peers

            ok, reason, _ = vllm_peers.probe()
        except ImportError as exc:
            ok, reason = False, f"benchmarks/vllm_peers.py unavailable: {short_error(exc)}"
        for c in peers:
            if not ok:
                unavailable[c] = reason
                continue
            build = vllm_peers.build_machete if c == "machete" else vllm_peers.build_marlin
            try:
                fns = [build(qw.clone(), qz.clone(), s.clone(), G, dtype) for _ in range(R)]
            except Exception as exc:
                unavailable[c] = f"setup failed: {short_error(exc)}"
                continue
            keep.append(fns)
            contenders[c] = Contender(c, lambda x, i, fns=fns: fns[i](x), contextlib.nullcontext)
    del qw, qz, s

    def cleanup() -> None:
        keep.clear()
        contenders.clear()

    return contenders, unavailable, w_dense, cleanup


def auto_path(M: int, K: int, N: int, dname: str, device: torch.device) -> str | None:
    """Which contender awqgemm's dispatcher amounts to at M (for the repeat-noise estimate); None if unknown."""
    try:
        import awqgemm

        if device.type != "cuda" or not awqgemm.have_cuda_kernels():
            return None
        plan = awqgemm.plan_info(M, N, K, DTYPES[dname], device)
        return "dpath" if plan["dense"] else ("wg" if plan["family"] == "sm90" else "fused")
    except Exception:
        return None
