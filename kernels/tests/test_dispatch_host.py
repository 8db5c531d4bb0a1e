"""The dispatcher's invariants, checked on the host without a GPU: csrc/dispatch.cu is compiled with nvcc
into a small driver (plan_driver.cu, stub launchers) that prints the plan of every (device, family, path,
layer shape, M) and every grouped (MoE) problem of a grid; this test holds every plan to the rules the
kernels and the issues rely on."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CSRC = HERE.parent / "csrc"
MAX_WORKSPACE = 64 << 20  # bytes a call may ask of torch's allocator (issues 10-12)
DRIVER_SMS = {90: 132, 80: 108, 86: 84, 75: 40, 70: 80}  # plan_driver.cu's devices: capability -> SMs


def _plan_fields(code: int) -> dict[str, int]:
    """The plan code's bytes (encode_plan in dispatch.cu): family, kernel, mt, nt, kwarps, splits, pdl, flags."""
    names = ("family", "kind", "mt", "nt", "kwarps", "splits", "pdl", "flags")
    return {n: (code >> (8 * i)) & 0xFF for i, n in enumerate(names)}


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    nvcc = shutil.which("nvcc") or (
        os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if os.environ.get("CUDA_HOME") else None
    )
    if not CSRC.is_dir():
        pytest.skip("the kernel sources (kernels/csrc) are not here, as in an installed package's tests")
    if not nvcc or not os.path.exists(nvcc):
        pytest.skip("no nvcc on this machine: the dispatcher cannot be compiled for its host-side check")
    exe = tmp_path_factory.mktemp("plans") / "plan_driver"
    cmd = [nvcc, "-std=c++17", "-O1", "-DAWQGEMM_HAS_SM90A=1", f"-I{CSRC}", "-x", "cu",
           str(HERE / "plan_driver.cu"), str(CSRC / "dispatch.cu"), "-o", str(exe)]  # fmt: skip
    built = subprocess.run(cmd, capture_output=True, text=True)
    assert built.returncode == 0, f"compiling the dispatcher failed:\n{built.stderr[-3000:]}"
    return exe


@pytest.fixture(scope="module")
def all_plans(driver: Path) -> list[dict]:
    run = subprocess.run([str(driver)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    rows = []
    for line in run.stdout.splitlines():
        kind, cap, fam, a, k, n, m, code, ws, rt = line.split()
        rows.append(
            dict(problem=kind, cap=int(cap), fam=int(fam), a=int(a), K=int(k), N=int(n), M=int(m), code=int(code),
                 ws=int(ws), roundtrip=int(rt), **_plan_fields(int(code)))
        )  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def plans(all_plans: list[dict]) -> list[dict]:
    """The production plans: dense ('P') and grouped ('G'), no work-in-progress switch."""
    rows = [p for p in all_plans if p["problem"] in ("P", "G")]
    assert len(rows) > 10000, f"the driver printed only {len(rows)} plans"
    return rows


def _short_tile(rows: int) -> int:
    return 32 if rows <= 32 else 48 if rows <= 48 else 64


def test_wip_switches_change_only_their_plans(all_plans):
    """Planned with every work-in-progress bit on ('W' dense, 'H' grouped), a problem gets the production
    plan plus only its features' plan flags; the codes round-trip. No feature is in progress today
    (dispatch.h's WipFeature is empty: after the H200 run of 2026-11-29 22:03 four consumer warpgroups
    became the default where they measured faster and the weights' regrouping was removed), so every
    plan must be the production one: a feature that lands adds its expectation here."""
    prod = {(p["problem"], p["cap"], p["fam"], p["a"], p["K"], p["N"], p["M"]): p for p in all_plans}
    wip = [p for p in all_plans if p["problem"] in ("W", "H")]
    assert len(wip) > 10000
    for w in wip:
        p = prod[("P" if w["problem"] == "W" else "G", w["cap"], w["fam"], w["a"], w["K"], w["N"], w["M"])]
        assert w["code"] == p["code"], (p, w)
        assert w["ws"] == p["ws"] and w["roundtrip"] == 1, (p, w)


def test_four_consumer_warpgroups_where_they_measured_faster(plans):
    """Flag 16 (four consumer warpgroups, 20 block warps) marks exactly the plans that read x through the
    tensor map (8) in 48- or 64-token tiles without stream-K (4); every other v11.1 plan has 12 block
    warps. The 32-token tiles and the stream-K plans measured slower with four (H200, 2026-11-29 22:03)."""
    four = 0
    for p in plans:
        want = p["flags"] & 12 == 8 and p["mt"] in (6, 8)
        assert bool(p["flags"] & 16) == want, p
        if p["kind"] == 4 and p["family"] == 90:
            assert p["kwarps"] == (20 if want else 12), p
        four += want
    assert four > 40, four


def test_tma_x_on_every_dense_v11_plan_of_one_launch(plans):
    """Flag 8 (x through a tensor map) marks exactly the dense (not grouped) fused v11.1 plans whose rows
    go in one launch: M rows of staged x (K padded to 64) fit one 32 MiB chunk of a multiple of 256 rows
    (ws_chunk_rows). Bigger
    problems stage x chunk by chunk; grouped plans always stage (their rows are gathered by expert)."""
    tma_x = 0
    for p in plans:
        v11_dense = p["problem"] == "P" and p["family"] == 90 and p["kind"] == 4 and not p["flags"] & 1
        one_launch = (32 << 20) // (-(-p["K"] // 64) * 128) // 256 * 256 >= p["M"]  # ws_chunk_rows
        assert bool(p["flags"] & 8) == (v11_dense and one_launch), p
        tma_x += bool(p["flags"] & 8)
    assert tma_x > 500, tma_x


def test_plan_flags(plans, driver):
    """A plan's flags are dense (1), reduce PDL (2), stream-K (4), x through a tensor map (8) and four
    consumer warpgroups (16): no plan has a higher bit; decode_plan accepts 8 on a fused v11.1 code only,
    16 only beside 8, without 4, at 48 or 64 tokens and with 20 block warps, refuses 32 and 64 on any,
    and refuses nothing the planners make."""
    assert not [p for p in plans if p["flags"] > 31]
    codes = sorted({p["code"] for p in plans})

    def four(c: int) -> int:  # flag 16 with the kwarps byte at 20 (the four-warpgroup block)
        return (c | (16 << 56)) & ~(0xFF << 32) | (20 << 32)

    def two(c: int) -> int:  # flag 16 cleared, the kwarps byte at 12
        return c & ~(16 << 56) & ~(0xFF << 32) | (12 << 32)

    probe = codes + [c | (bit << 56) for c in codes for bit in (8, 16, 32, 64)] + [four(c) for c in codes]
    probe += [two(c) for c in codes]
    run = subprocess.run([str(driver), "decode"], input="\n".join(map(str, probe)), capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    accepted = dict(zip(probe, map(int, run.stdout.split()), strict=True))
    assert all(accepted[c] for c in codes), [c for c in codes if not accepted[c]][:5]
    fields = {p["code"]: p for p in plans}
    for c in codes:
        f = fields[c]
        v11_fused = f["kind"] == 4 and not f["flags"] & 1
        assert accepted[c | (8 << 56)] == v11_fused, f
        if not f["flags"] & 16:
            assert not accepted[c | (16 << 56)], f  # 12 block warps
        assert accepted[four(c)] == (f["flags"] & 12 == 8 and f["mt"] in (6, 8)), f
        if f["kind"] == 4:
            assert accepted[two(c)], f  # every v11.1 plan also runs on two warpgroups
        assert not accepted[c | (32 << 56)] and not accepted[c | (64 << 56)], f


def test_mid_tiles(plans):
    """v11.1's 160-, 192- and 224-token tiles: dense plans take them only above 128 tokens (where the cost
    model puts them below the 128- and 256-token tiles; 64 < M <= 128 keeps 128), grouped plans exactly
    where mean + 2 sd of the rows per expert is 129-224 and more than 64 rows per expert are routed, the
    smallest tile that holds that spread."""
    dense = grouped = 0
    for p in plans:
        if p["cap"] != 90 or p["family"] != 90 or p["kind"] != 4:
            assert p["mt"] not in (20, 24, 28) or p["kind"] != 4, p
            continue
        if p["problem"] == "P":
            if p["mt"] in (20, 24, 28):
                assert p["M"] > 128, p
                dense += 1
            continue
        active = max(1, min(p["a"], p["M"]))
        rows = p["M"] / active
        spread = math.ceil(rows + 2 * math.sqrt(rows))
        if -(-p["M"] // active) > 64 and 128 < spread <= 224:
            assert 8 * p["mt"] == (160 if spread <= 160 else 192 if spread <= 192 else 224), p
            grouped += 1
        else:
            assert p["mt"] not in (20, 24, 28), p
    assert dense > 20 and grouped > 5, (dense, grouped)


def test_grouped_short_tiles(plans):
    """On 9.0 with the sm90 family, grouped experts of 17-64 rows per expert run v11.1 in the smallest of
    the 32-, 48- and 64-token tiles that holds mean + 2 sd of their rows; 16 and fewer stay on the K-split
    kernel (the sm80 family's, kind 1)."""
    grouped = [p for p in plans if p["problem"] == "G" and p["cap"] == 90 and p["fam"] == 90]
    short = 0
    for p in grouped:
        active = max(1, min(p["a"], p["M"]))  # grouped lines: "a" is E, "M" is R (the routed rows)
        per_expert = -(-p["M"] // active)
        if per_expert <= 16:
            assert p["kind"] != 4, p
        elif per_expert <= 64 and p["kind"] == 4:
            rows = p["M"] / active
            assert 8 * p["mt"] == _short_tile(min(64, math.ceil(rows + 2 * math.sqrt(rows)))), p
            short += p["mt"] < 8
    assert short > 10, short


def test_v11_tiles_below_64_tokens_hold_m(plans):
    """Dense v11.1 plans up to 64 tokens run the smallest of the 32-, 48- and 64-token tiles that holds M."""
    ws = [p for p in plans if p["problem"] == "P" and p["kind"] == 4 and p["M"] <= 64]
    assert len(ws) > 100
    for p in ws:
        assert 8 * p["mt"] == _short_tile(p["M"]), p


def test_every_plan_code_round_trips(plans):
    bad = [p for p in plans if not p["roundtrip"]]
    assert not bad, f"{len(bad)} plans do not survive encode -> decode, e.g. {bad[:3]}"


def test_workspace_within_64_mib(plans):
    """No plan asks for more than 64 MiB: split-K partials, staged x and the dense path's chunks."""
    worst = max(plans, key=lambda p: p["ws"])
    assert worst["ws"] <= MAX_WORKSPACE, f"a plan asks for {worst['ws']} bytes: {worst}"


def test_no_split_without_k_tiles(plans):
    """Kernels give each K split ceil(k-tiles / splits) tiles: no plan has a trailing split with none."""
    for p in plans:
        ktiles = -(-p["K"] // 64)
        assert (p["splits"] - 1) * -(-ktiles // p["splits"]) < ktiles, p


def test_families_run_only_where_they_can(plans):
    for p in plans:
        assert p["family"] <= p["cap"], p
        if p["family"] == 90:
            assert p["cap"] == 90 and p["fam"] == 90, p  # sm_90a code only on 9.0
        if p["problem"] == "G":
            per_expert = -(-p["M"] // min(p["a"], p["M"]))
            assert p["flags"] & 1 == 0, p  # grouped problems never take the dense path (E x N x K)
            # Grid rows (grouped_grid_rows in problem.h) within CUDA's 65535 for every R of the grid.
            assert -(-p["M"] // (8 * p["mt"])) + min(p["a"], p["M"]) <= 65535, p
            # Experts of > 16 rows: v11.1 on the sm90 family; of > 32 the x-shared kernel on sm80; the
            # K-split kernel otherwise (sm90 hands those to sm80's kernel: same packed layout).
            wg = p["fam"] == 90 and per_expert > 16
            assert (p["family"] == 90) == wg, p
            assert p["kind"] == (4 if wg else 1 if p["family"] == 80 and per_expert > 32 else 0), p
            if wg:  # grouped v11.1: 32-64-token tiles (256 columns) up to 64 rows per expert, 128-224 above; one split
                tile = (p["mt"], p["nt"])
                assert tile in ((4, 16), (6, 16), (8, 16)) if per_expert <= 64 else p["mt"] in (16, 20, 24, 28), p
                assert per_expert <= 64 or p["nt"] == 8, p
                assert p["splits"] == 1, p
                assert p["pdl"] & 1, p  # its tile-table kernel waits (griddepcontrol) before reading offsets
                # Workspace: the tile table (16 bytes per tile, grouped_grid_rows of them) and one chunk of
                # staged x (whole tiles of BM rows, <= 32 MiB), each rounded to 256 bytes.
                bm, kpad = 8 * p["mt"], -(-p["K"] // 64) * 64
                tiles = -(-p["M"] // bm) + min(p["a"], p["M"])
                staged = min(tiles, (32 << 20) // (bm * kpad * 2)) * bm * kpad * 2
                assert p["ws"] == -(-tiles * 16 // 256) * 256 + -(-staged // 256) * 256, p
    wg = {p["mt"] for p in plans if p["problem"] == "G" and p["kind"] == 4}
    # 48-, 64-, 128- and mid tiles (the driver's grid has no 17-22 rows per expert, where 32 would do).
    assert {6, 8, 16} <= wg <= {4, 6, 8, 16, 20, 24, 28}, wg


def test_dispatch_rules_of_the_design_doc(plans):
    """A few rules docs/design.md states, held to the plans the dispatcher really makes (auto path)."""
    auto = [p for p in plans if p["problem"] == "P" and p["a"] == 0]
    for p in auto:
        dense = p["flags"] & 1 == 1
        # Below 64 tokens (wgmma_auto): above 32 on every layer deeper than K = 2048; at 17-32 on those of
        # >= 25 Mi weights too; the sm80 rules elsewhere. v11.1 in the smallest tile holding M.
        if p["cap"] == 90 and p["fam"] == 90 and 16 < p["M"] < 64:
            K, N, M = p["K"], p["N"], p["M"]
            wg = K > 2048 and (M > 32 or K * N >= 25 << 20)
            assert (p["family"] == 90) == wg and not dense, p
            assert not wg or (p["kind"] == 4 and 8 * p["mt"] == _short_tile(M)), p
        # 64-255 tokens: v11.1 on every layer; up to 1024 on every layer with K >= 1.75 N (the down
        # projections).
        if p["cap"] == 90 and p["fam"] == 90 and 64 <= p["M"] < 256:
            assert p["family"] == 90 and not dense, p
        # 256-384 tokens: v11.1 where K > 2048 (or K >= 1.75 N, or its grid fills half the SMs), dequantize +
        # cuBLAS on the rest; 385-1024: v11.1 on every layer.
        if p["cap"] == 90 and p["fam"] == 90 and 256 <= p["M"] <= 1024:
            K, N, M = p["K"], p["N"], p["M"]
            grid = 2 * -(-N // 128) * -(-M // 128) >= 132
            wg = M > 384 or K > 2048 or 4 * K >= 7 * N or grid
            assert (p["family"] == 90 and p["kind"] == 4 and not dense) if wg else dense, p
        if p["cap"] == 90 and p["fam"] == 90 and 128 < p["M"] <= 1024 and 4 * p["K"] >= 7 * p["N"]:
            assert p["family"] == 90 and p["kind"] == 4 and not dense, p
        # Decode: the K-split kernel, never the dense path.
        if p["M"] <= 16:
            assert not dense and p["kind"] == 0, p
        # Long prompts: dequantize + dense GEMM on every family.
        if p["M"] >= 4096:
            assert dense, p


def test_stream_k_schedules_cover_every_tile_once(driver):
    """v11.1's stream-K tail (WsSchedule / WsCursor in tile_config.h), walked on the host over units 1-700,
    1-296 k-tiles per unit and 1-132 SMs: every k-tile once, parked pieces first and owner pieces last in
    a CTA's range, and each owner waiting on exactly the CTAs that hold the rest of its unit."""
    run = subprocess.run([str(driver), "schedules"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    checked = int(run.stdout.split()[-1])
    assert checked > 30000, run.stdout


def test_stream_k_only_on_v11_1_with_one_split(plans):
    """Stream-K plans only for v11.1 with one K split, never with a unit dealt out in more than 3 pieces
    when there is no whole round (dispatch.cu: those lost to the K split on the H200), and where the A/B
    measured it winning: Llama-3-8B gate_up at M = 64 and 256 (1.7 rounds of 128-column units on 132
    SMs at 256; 112 256-column units at 64)."""
    sk = [p for p in plans if p["flags"] & 4]
    assert sk, "no plan takes the stream-K tail"
    for p in sk:
        assert p["problem"] == "P" and p["family"] == 90 and p["kind"] == 4 and p["splits"] == 1, p
    fused_h200 = {
        (p["K"], p["N"], p["M"]): p for p in plans if p["problem"] == "P" and p["cap"] == p["fam"] == 90 and p["a"] == 1
    }
    for shape in ((4096, 28672, 64), (4096, 28672, 256)):
        assert fused_h200[shape]["flags"] & 4, fused_h200[shape]
    # Llama-3-8B o at M = 64: its units would go in 4+ pieces each; the K split measured 0.86x stream-K's time.
    o = fused_h200[(4096, 4096, 64)]
    assert not o["flags"] & 4 and o["splits"] > 1, o


def test_one_warp_blocks_for_short_grouped_decode(plans):
    """Grouped K-split plans take one-warp blocks (no cross-warp reduction; the instantiations launch.h
    has: 8/16-token tiles of 32/64 columns, 32-token tiles of 64, sm80 family) only with K <= 2048, one K
    split, and a grid that keeps twice the bytes in flight the GPU needs with one warp per block: on the
    H200 Qwen3-30B-A3B's experts at T = 64 (both projections), not at T = 1 (8 experts), and never
    Mixtral's K = 4096 / 14336. Dense plans never take them."""
    one = [p for p in plans if p["kind"] == 0 and p["kwarps"] == 1 and not p["flags"] & 1]
    assert one, "no plan takes one-warp blocks"
    for p in one:
        assert p["problem"] == "G" and p["family"] == 80 and p["nt"] in (2, 4), p
        assert p["mt"] in (1, 2) or (p["mt"], p["nt"]) == (4, 4), p  # launch.h's one-warp instantiations
        assert p["K"] <= 2048 and p["splits"] == 1, p
    g = {(p["a"], p["K"], p["N"], p["M"]): p["kwarps"] for p in plans if p["problem"] == "G" and p["cap"] == 90}
    assert g[(128, 2048, 1536, 512)] == 1 and g[(128, 768, 2048, 512)] == 1  # Qwen3 T = 64: 512 rows
    assert g[(128, 2048, 1536, 8)] > 1  # Qwen3 T = 1


def test_one_warp_blocks_for_32_row_grouped_tiles(plans):
    """Grouped K-split plans of 32 x 64 tiles (mt 4: experts of 9-32 rows) take one-warp blocks exactly
    where the shorter tiles would: K <= 2048 (32 k-tiles) and one warp per block keeping twice the target
    in flight (plan_ksplit's inflight(1) >= 2 * want, recomputed here: 2 stages of 4 column tiles per lane).
    The default since the H200 run of 2026-11-29 00:00 (Qwen3-30B-A3B T = 256 288.5 -> 211.1 us); its
    experts at T = 256 (2,048 rows) take them there."""
    kib = int(os.environ.get("AWQGEMM_INFLIGHT_KIB", "24"))  # dispatch.cu's target per SM (its default)
    want = {cap: kib * 1024 * sms for cap, sms in DRIVER_SMS.items()}
    tall = [p for p in plans if p["problem"] == "G" and p["family"] == 80 and p["kind"] == 0 and p["mt"] == 4]
    one = 0
    for p in tall:
        ktiles = -(-p["K"] // 64)
        row_blocks = max(max(1, min(p["a"], p["M"])), -(-p["M"] // 32))
        inflight = -(-p["N"] // 64) * row_blocks * 32 * 2 * 4 * 16  # blocks x lanes x stages x nt x 16 bytes
        rule = ktiles <= 32 and inflight >= 2 * want[p["cap"]]
        assert p["nt"] == 4 and (p["kwarps"] == 1) == rule, (rule, p)
        if rule:
            assert p["splits"] == 1, p
        one += rule
    assert one > 10, one
    h200 = {(p["a"], p["K"], p["N"], p["M"]): p for p in tall if p["cap"] == 90}
    for shape in ((128, 2048, 1536, 2048), (128, 768, 2048, 2048)):  # Qwen3 gate_up, down at T = 256
        assert h200[shape]["kwarps"] == 1, h200[shape]


def test_grouped_k_split_tile_covers_the_busier_experts(plans):
    """The grouped K-split kernel's token tile is sized for mean + 2 sd rows per expert: at Qwen3-30B-A3B's
    T = 128 (1,024 rows over 128 experts, mean 8) a 16-row tile, so the ~40 % of experts over 8 rows
    do not run a second tile (and dequantize their weight again)."""
    qwen3 = [p for p in plans if p["problem"] == "G" and p["cap"] == 90 and p["fam"] == 90
             and (p["a"], p["K"], p["N"], p["M"]) == (128, 2048, 1536, 1024)]  # fmt: skip
    assert [(p["kind"], p["mt"]) for p in qwen3] == [(0, 2)], qwen3


def test_v11_1_blocks_are_256_columns_up_to_64_tokens(plans):
    """v11.1 (kernel 4) runs 256-column blocks (nt 16) exactly where its tile is 32, 48 or 64 tokens
    (M <= 64; the launcher has no 128-column instantiation of them) and 128-column blocks (nt 8) at BM 128
    and 256; its stream-K slots are sized for the block's width (ws_stream_k_bytes)."""
    v11 = [p for p in plans if p["problem"] == "P" and p["kind"] == 4]
    assert any(p["nt"] == 16 for p in v11) and any(p["nt"] == 8 for p in v11), "both widths must occur"
    for p in v11:
        assert (p["mt"] <= 8) == (p["M"] <= 64), p
        assert p["nt"] == (16 if p["mt"] <= 8 else 8), p


def test_wide_decode_blocks_where_the_grid_stays_large(plans):
    """The sm80 family's K-split plans of 8- and 16-token tiles take 64-column blocks (nt 4, in 4-warp
    blocks: the instantiations launch.h has) where the 64-column grid still has 7/8 of the SMs' count of
    blocks (dense) or 4 blocks per SM (grouped), else 32-column ones (plan_ksplit, from the H200 run of
    2026-11-28 21:32). On the H200: Llama-3-8B gate_up and Llama-2-70B down wide at M = 1 and 16, Llama-3-8B
    qkv not; Qwen3-30B-A3B's gate_up experts at T = 16 (128 rows) wide, at T = 1 (8 rows) not."""
    sms = {90: 132, 80: 108, 86: 84, 75: 40, 70: 80}  # plan_driver.cu's devices

    def cdiv(a, b):
        return -(-a // b)

    wide = narrow = 0
    for p in plans:
        if p["problem"] not in ("P", "G") or p["family"] != 80 or p["kind"] != 0 or p["flags"] & 1 or p["mt"] > 2:
            continue
        if p["problem"] == "P":
            blocks, need = cdiv(p["N"], 64) * cdiv(p["M"], 8 * p["mt"]), cdiv(7 * sms[p["cap"]], 8)
        else:
            active = max(1, min(p["a"], p["M"]))
            blocks, need = cdiv(cdiv(p["N"], 16), 4) * max(active, cdiv(p["M"], 8 * p["mt"])), 4 * sms[p["cap"]]
        if blocks >= need:
            assert p["nt"] == 4 and p["kwarps"] in ((1, 4) if p["problem"] == "G" else (4,)), p
            wide += 1
        else:
            assert p["nt"] == 2, p
            narrow += 1
    assert wide > 500 and narrow > 500, (wide, narrow)
    h200 = {(p["problem"], p["a"], p["K"], p["N"], p["M"]): p["nt"] for p in plans
            if p["problem"] in ("P", "G") and p["cap"] == p["fam"] == 90}  # fmt: skip
    for m in (1, 16):
        assert h200[("P", 0, 4096, 28672, m)] == 4 and h200[("P", 0, 28672, 8192, m)] == 4
        assert h200[("P", 0, 4096, 6144, m)] == 2
    assert h200[("G", 128, 2048, 1536, 128)] == 4 and h200[("G", 128, 2048, 1536, 8)] == 2
