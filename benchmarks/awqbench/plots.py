"""The PNGs: time / floor and speedup per shape, and the model-level tokens/s (matplotlib)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .report import MODEL_LEVEL_MODELS, TARGET_FLOOR_RATIO, TARGET_LARGE_M, TARGET_LARGE_RATIO, TARGET_SPEEDUP
from .shapes import MODELS


def save_png(fig: Any, path: Path, dpi: int = 100) -> None:
    """Writes ``fig`` as a 256-colour palette PNG: a third of the RGB file's size for these line plots, and
    every committed result travels with each device run (its 64 MiB cap also carries vLLM's parts)."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    buf.seek(0)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


PLOT_STYLE = {
    "auto": {"color": "C0", "lw": 2.0, "label": "awqgemm auto"},
    "a80": {"color": "C5", "lw": 1.5, "label": "awqgemm auto, sm80 family forced"},
    "fused": {"color": "C2", "lw": 1.0, "label": "awqgemm fused (sm80)"},
    "wt": {"color": "C9", "lw": 1.0, "label": "awqgemm weight-tile (sm80)"},
    "wg": {"color": "C6", "lw": 1.5, "label": "awqgemm wgmma (sm90a)"},
    "autox": {"color": "0.5", "lw": 1.0, "label": "auto, every wip switch"},
    "machete": {"color": "C7", "lw": 1.5, "label": "vLLM Machete"},
    "marlin": {"color": "C8", "lw": 1.0, "label": "vLLM Marlin"},
    "dpath": {"color": "C4", "lw": 1.0, "label": "awqgemm dequant+cuBLAS"},
    "cublas": {"color": "C1", "lw": 1.5, "label": "dense cuBLAS"},
    "tm": {"color": "C3", "lw": 1.5, "label": "TurboMind 0.0.2"},
}


def _panels(rows: Sequence[dict[str, Any]]) -> list[tuple[str, int]]:
    keys: list[tuple[str, int]] = []
    for r in rows:
        k = (r["shape"], r["group"])
        if k not in keys:
            keys.append(k)
    return keys


def _grid(n: int) -> tuple[int, int]:
    cols = min(6, max(1, n))
    return math.ceil(n / cols), cols


def make_plots(
    rows: Sequence[dict[str, Any]], ml: Sequence[dict[str, Any]], ceil: dict[str, Any], title: str, stem: Path
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    live = [r for r in rows if not r.get("skipped")]
    paths: list[Path] = []
    panels = _panels(live)
    if panels:
        # The speedup figure divides by dense cuBLAS: a run without that contender (a kernel A/B) has none.
        with_dense = any(r["us"].get("cublas") for r in live)
        for kind in ("floor", "speedup") if with_dense else ("floor",):
            nr, nc = _grid(len(panels))
            fig_h = 2.6 * nr + 1.2  # + title and legend bands
            fig, axes = plt.subplots(nr, nc, figsize=(3.3 * nc, fig_h), squeeze=False)
            for ax in axes.flat[len(panels) :]:
                ax.set_visible(False)
            for ax, (label, g) in zip(axes.flat, panels, strict=False):
                pr = [r for r in live if r["shape"] == label and r["group"] == g]
                K, N = pr[0]["K"], pr[0]["N"]
                for dname, ls in (("fp16", "-"), ("bf16", "--")):
                    dr = sorted((r for r in pr if r["dtype"] == dname), key=lambda r: r["M"])
                    if not dr:
                        continue
                    for c, st in PLOT_STYLE.items():
                        if kind == "speedup" and c == "cublas":
                            continue
                        if dname == "bf16" and c not in ("auto", "cublas"):
                            continue  # keep panels readable: bf16 shows awqgemm auto (and dense) only
                        xs, ys = [], []
                        for r in dr:
                            v = r["us"].get(c)
                            if v is None:
                                continue
                            if kind == "floor":
                                y = v / r["floor_us"]
                            else:
                                d = r["us"].get("cublas")
                                if not d:
                                    continue
                                y = d / v
                            xs.append(r["M"])
                            ys.append(y)
                        if xs:
                            ax.plot(
                                xs,
                                ys,
                                ls,
                                marker=".",
                                ms=3,
                                color=st["color"],
                                lw=st["lw"],
                                label=f"{st['label']} {dname}",
                            )
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                if kind == "floor":
                    ax.axhline(1.0, color="k", lw=0.8)
                    ax.axhline(TARGET_FLOOR_RATIO, color="k", lw=0.6, ls=":")
                else:
                    ax.axhline(1.0, color="k", lw=0.8)
                    present = sorted({r["M"] for r in pr})
                    tx = [m for m, _ in TARGET_SPEEDUP if m in present]
                    ty = [v for m, v in TARGET_SPEEDUP if m in present]
                    tx += [m for m in present if m >= TARGET_LARGE_M]
                    ty += [TARGET_LARGE_RATIO for m in present if m >= TARGET_LARGE_M]
                    ax.plot(tx, ty, "kx", ms=5)
                ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))
                ax.yaxis.set_minor_formatter(ticker.NullFormatter())
                ax.set_title(f"{label} g{g}\nK={K} N={N}", fontsize=8)
                ax.tick_params(labelsize=6)
                ax.grid(True, which="both", lw=0.3, alpha=0.5)
            handles, labels = [], []
            for ax in axes.flat:
                for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                    if lab not in labels:
                        handles.append(h)
                        labels.append(lab)
            if labels:  # none when no plotted contender has a style (e.g. bf16 rows without auto)
                fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
            if kind == "floor":
                sup = (
                    f"time / W4 floor vs M  (floor = max(bytes / {ceil['hbm_read_Bps'] / 1e12:.2f} TB/s, "
                    f"2MNK / MMA rate); dotted: {TARGET_FLOOR_RATIO:.2f} target)"
                )
            else:
                sup = "speedup over dense cuBLAS (same dtype) vs M  (x: targets 2.5 @64, 1.2 @256, 0.95 @>=1024)"
            fig.suptitle(f"{title}\n{sup}", fontsize=10)
            fig.tight_layout(rect=(0, 0.45 / fig_h, 1, 1 - 0.7 / fig_h))
            p = stem.with_name(f"{stem.name}-{kind}.png")
            save_png(fig, p)
            plt.close(fig)
            paths.append(p)
    # Model-level figure.
    ents = [e for e in ml if e["dtype"] == "fp16"] or list(ml)
    if ents:
        models = [m for m in MODEL_LEVEL_MODELS if any(e["model"] == m for e in ents)]
        fig, axes = plt.subplots(1, len(models), figsize=(6.0 * len(models), 4.2), squeeze=False)
        for ax, m in zip(axes.flat, models, strict=False):
            me = [e for e in ents if e["model"] == m]
            cs = [c for c in ("auto", "cublas", "tm", "floor") if any(c in e["tokens_per_s"] for e in me)]
            width = 0.8 / max(1, len(cs))
            for j, c in enumerate(cs):
                xs = [i + (j - (len(cs) - 1) / 2) * width for i, e in enumerate(me) if c in e["tokens_per_s"]]
                ys = [e["tokens_per_s"][c] for e in me if c in e["tokens_per_s"]]
                color = PLOT_STYLE[c]["color"] if c in PLOT_STYLE else "0.6"
                lab = PLOT_STYLE[c]["label"] if c in PLOT_STYLE else "W4 floor (ceiling)"
                ax.bar(xs, ys, width=width, color=color, label=lab, alpha=0.5 if c == "floor" else 1.0)
            for i, e in enumerate(me):
                if e.get("speedup_dense"):
                    top = max(e["tokens_per_s"].values())
                    ax.text(i, top * 1.08, f"{e['speedup_dense']:.2f}x dense", ha="center", fontsize=7)
            ax.set_xticks(range(len(me)), [f"batch {e['batch']}" for e in me])
            ax.set_yscale("log")
            ax.set_ylabel("GEMM-bound tokens/s (batch / GEMM time per step)")
            spec = MODELS[m]
            ax.set_title(f"{spec['title']} ({spec['layers']} layers, TP1, {me[0]['dtype']}, g128)", fontsize=9)
            ax.grid(True, axis="y", which="both", lw=0.3, alpha=0.5)
            ax.legend(fontsize=7)
        fig.suptitle(
            f"{title}\nGEMMs of one decode step (qkv, o, gate_up, down x layers; lm_head excluded)", fontsize=10
        )
        fig.tight_layout()
        p = stem.with_name(f"{stem.name}-model.png")
        save_png(fig, p)
        plt.close(fig)
        paths.append(p)
    return paths
