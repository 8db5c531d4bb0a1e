"""The kernel benchmark's pipeline on the CPU (``benchmarks/gemm.py --dry-run``):
contenders built, correctness checks run, rows and the JSON written. The GPU
numbers come from device runs; this keeps the script itself from rotting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

GEMM_PY = Path(__file__).resolve().parents[2] / "benchmarks" / "gemm.py"


def test_gemm_benchmark_dry_run(tmp_path):
    if not GEMM_PY.exists():
        # The conda package's stored tests copy kernels/tests only; the source tree's run covers this.
        pytest.skip(f"benchmarks/gemm.py is not next to these tests ({GEMM_PY}): it runs from the source tree")
    cmd = [sys.executable, str(GEMM_PY), "--dry-run", "--quick", "--shapes", "llama3-8b/o/tp1", "--m", "1,64"]
    # --skip-contenders: how the device script leaves out a work-in-progress contender whose tests failed.
    cmd += ["--skip-contenders", "wt"]
    r = subprocess.run([*cmd, "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "skipping contenders wt" in r.stdout
    assert "BLOCK FAILED" not in r.stdout, r.stdout[-3000:]
    results = list(tmp_path.glob("*.json"))
    assert len(results) == 1, sorted(p.name for p in tmp_path.iterdir())
    data = json.loads(results[0].read_text())
    rows = [row for row in data["rows"] if not row.get("skipped")]
    assert {row["M"] for row in rows} == {1, 64}
    assert all(row["us"].get("auto") for row in rows), rows
    assert all("dpath" in row["us"] and "a80" in row["us"] and "wt" not in row["us"] for row in rows), rows
    checks = data.get("checks", [])
    assert checks and all(c["ok"] for c in checks if c["contender"] in ("auto", "a80", "fused", "dpath")), checks
    # The figures are 256-colour palette PNGs (awqbench.plots.save_png): every committed result travels
    # with each device run, within its 64 MiB.
    from PIL import Image

    pngs = {p.name.rsplit("-", 1)[-1]: p for p in tmp_path.glob("*.png")}
    assert {"floor.png", "speedup.png"} <= set(pngs), sorted(pngs)
    for p in pngs.values():
        with Image.open(p) as im:
            assert im.mode == "P", (p.name, im.mode)


MOE_PY = GEMM_PY.parent / "moe.py"


def test_moe_benchmark_dry_run(tmp_path):
    """benchmarks/moe.py --dry-run: every contender built and called on CPU (vLLM's Marlin MoE through
    a stand-in with vLLM 0.26.0's call signatures), outputs checked against the dense computation,
    fake timings, one JSON."""
    if not MOE_PY.exists():
        pytest.skip(f"benchmarks/moe.py is not next to these tests ({MOE_PY}): it runs from the source tree")
    cmd = [sys.executable, str(MOE_PY), "--dry-run", "--wip", "--tokens", "1,3,16", "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "FAKE timings" in r.stdout
    results = list(tmp_path.glob("*-dry.json"))
    assert len(results) == 1, sorted(p.name for p in tmp_path.iterdir())
    data = json.loads(results[0].read_text())
    assert data["dry_run"] is True and "FAKE" in data["timings"]
    rows = data["rows"]
    assert {(row["shape"], row["tokens"]) for row in rows} == {
        (s, t) for s in ("qwen3-30b-a3b", "mixtral-8x7b") for t in (1, 3, 16)
    }
    for row in rows:
        for key in (
            "awqgemm_graph_us",
            "awqgemm_eager_us",
            "dense_fp16_eager_us",
            "marlin_graph_us",
            "awqgemm_gemms_graph_us",
            "route_kernel_graph_us",
            "route_torch_graph_us",
        ):
            assert row[key] > 0, (key, row)
        assert "marlin_note" not in row, row
        # fp16 rounding of the activations and outputs only: ~1e-3
        for key in (
            "rel_err_vs_dense",
            "marlin_rel_err_vs_dense",
            "marlin_rel_err_vs_awqgemm",
        ):
            assert row[key] < 5e-3, (key, row)


def test_moe_benchmark_skip_wip(tmp_path):
    """--skip-wip (the device script's way to leave out a feature whose GPU tests failed): the variants
    using that switch are gone, the plain run stays."""
    if not MOE_PY.exists():
        pytest.skip(f"benchmarks/moe.py is not next to these tests ({MOE_PY}): it runs from the source tree")
    import importlib.util

    spec = importlib.util.spec_from_file_location("awqgemm_bench_moe", MOE_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not mod.WIP_VARIANTS:
        pytest.skip("moe.py has no work-in-progress variant today: nothing to leave out")
    variant, switches = next(iter(mod.WIP_VARIANTS.items()))
    cmd = [sys.executable, str(MOE_PY), "--dry-run", "--wip", "--skip-wip", switches[0], "--tokens", "3"]
    r = subprocess.run([*cmd, "--shapes", "mixtral-8x7b", "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (row,) = json.loads(next(tmp_path.glob("*-dry.json")).read_text())["rows"]
    assert row["awqgemm_graph_us"] > 0 and not any(k.startswith(f"awqgemm_{variant}_") for k in row), row


def test_moe_benchmark_rejects_bad_arguments():
    if not MOE_PY.exists():
        pytest.skip(f"benchmarks/moe.py is not next to these tests ({MOE_PY}): it runs from the source tree")
    for bad in (["--shapes", "llama"], ["--tokens", "0"], ["--tokens", "a,b"], ["--wip", "--skip-wip", "wgmma"]):
        r = subprocess.run(
            [sys.executable, str(MOE_PY), "--dry-run", *bad], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 2 and "error:" in r.stderr, (bad, r.stderr[-2000:])


E2E_PY = GEMM_PY.parent / "e2e.py"


def _e2e_module():
    if not E2E_PY.exists():
        pytest.skip(f"benchmarks/e2e.py is not next to these tests ({E2E_PY}): it runs from the source tree")
    import importlib.util

    spec = importlib.util.spec_from_file_location("awqgemm_bench_e2e", E2E_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _json_objects(text: str) -> list:
    dec, objs, i = json.JSONDecoder(), [], 0
    while True:
        i = text.find("{", i)
        if i < 0:
            return objs
        obj, i = dec.raw_decode(text, i)
        objs.append(obj)


@pytest.mark.parametrize(
    "shape,arch,router,experts",
    [
        ("qwen3-30b-a3b", "Qwen3MoeForCausalLM", "mlp.gate", 128),
        ("mixtral-8x7b", "MixtralForCausalLM", "block_sparse_moe.gate", 8),
    ],
)
def test_e2e_moe_dry_run(shape, arch, router, experts):
    """benchmarks/e2e.py --dry-run for the MoE shapes (no vLLM, no GPU): the plan of every contender and
    the AWQ config.json vLLM and the plugin will load (router left unquantized)."""
    _e2e_module()
    cmd = [sys.executable, str(E2E_PY), "--dry-run", "--shape", shape, "--quant", "awq_marlin,awqgemm,fp16"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    objs = _json_objects(r.stdout)
    plans, cfg = objs[:-1], objs[-1]
    assert [p["name"] for p in plans] == ["awq_marlin", "awqgemm", "fp16"]
    assert [p["engine"]["quantization"] for p in plans] == ["awq_marlin", "awqgemm", None]
    assert all(p["engine"]["load_format"] == "dummy" for p in plans)
    assert cfg["architectures"] == [arch]
    assert cfg.get("num_experts", cfg.get("num_local_experts")) == experts
    q = cfg["quantization_config"]
    assert (q["quant_method"], q["bits"], q["group_size"], q["zero_point"]) == ("awq", 4, 128, True)
    assert q["modules_to_not_convert"] == [router]
    block = router.rsplit(".", 1)[0]
    # the router entry matches the router (substring, as vLLM and the plugin match) and no other module
    for name in ("self_attn.qkv_proj", "self_attn.o_proj", f"{block}.experts"):
        assert not any(m in f"model.layers.0.{name}" for m in q["modules_to_not_convert"]), name
    assert any(m in f"model.layers.0.{block}.gate" for m in q["modules_to_not_convert"])


def test_e2e_qwen3_moe_shape_matches_public_config():
    e2e = _e2e_module()
    cfg = e2e.SHAPES["qwen3-30b-a3b"]
    want = dict(
        hidden_size=2048,
        num_hidden_layers=48,
        num_experts=128,
        num_experts_per_tok=8,
        moe_intermediate_size=768,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        vocab_size=151936,
        norm_topk_prob=True,
    )
    assert {k: cfg[k] for k in want} == want


def test_e2e_merge():
    e2e = _e2e_module()

    def doc(names, command):
        return dict(
            model="m",
            gpu="g",
            vllm="0.26.0",
            quantization_config={"bits": 4},
            engine={"dtype": "float16"},
            workloads=["decode1", "throughput"],
            command=command,
            date="d",
            contenders=[{"name": n, "workloads": {}} for n in names],
        )

    merged = e2e.merge_docs([doc(["awq_marlin", "awqgemm"], "a"), doc(["fp16"], "b")], ["a.json", "b.json"])
    assert [c["name"] for c in merged["contenders"]] == ["awq_marlin", "awqgemm", "fp16"]
    assert [m["command"] for m in merged["merged_from"]] == ["a", "b"]
    with pytest.raises(SystemExit, match="more than one run"):
        e2e.merge_docs([doc(["fp16"], "a"), doc(["fp16"], "b")], ["a", "b"])
    other = dict(doc(["fp16"], "b"), gpu="other")
    with pytest.raises(SystemExit, match="differ in 'gpu'"):
        e2e.merge_docs([doc(["awqgemm"], "a"), other], ["a", "b"])


def test_e2e_forced_sm80_contender_plan():
    """`awqgemm:sm80` (issue 11's e2e comparison with awq_marlin:marlin) serves through the plugin with the
    sm80 family forced in its worker, `awqgemm:wip` with the work-in-progress switches on; plain awqgemm
    forces nothing."""
    _e2e_module()
    quant = "awqgemm:sm80,awqgemm:wip,awqgemm"
    cmd = [sys.executable, str(E2E_PY), "--dry-run", "--shape", "llama3-8b", "--quant", quant]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    plans = _json_objects(r.stdout)[:-1]
    assert [(p["name"], p["engine"]["quantization"], p["force"]) for p in plans] == [
        ("awqgemm:sm80", "awqgemm", {"family": "sm80"}),
        ("awqgemm:wip", "awqgemm", {}),
        ("awqgemm", "awqgemm", None),
    ]
    import awqgemm.testing

    for plan in plans[:2]:
        with awqgemm.testing.force(**plan["force"]):  # the worker's call: every key is a real switch
            pass


def test_e2e_kernel_profile_summary_and_table():
    """--kernel-profile's classes (first match wins, lower-case substrings), shares, top list and table rows."""
    e2e = _e2e_module()
    times = {
        "void awqgemm::gemm_ws_kernel<__half, 64, 12, false, false>(...)": 600.0,
        "void awqgemm::stage_x_tiles_kernel<__half>(...)": 50.0,
        "awqgemm::moe_route_kernel": 10.0,
        "void vllm::machete::MacheteKernel<...>": 300.0,
        "Marlin<...>": 40.0,
        "nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NNT": 200.0,
        "void flash::flash_fwd_splitkv_kernel<...>": 150.0,
        "void vllm::rms_norm_kernel<c10::Half>(...)": 50.0,
        # FlashAttention-3 and torch.compile's pointwise kernels, which vLLM 0.26 names like these (the
        # 2026-11-29 10:53 profile filed them under dense GEMM / Machete)
        "void cutlass::device_kernel<flash::enable_sm90_or_later<flash::FlashAttnFwdSm90<...>>>": 5.0,
        "triton_poi_fused_machete_mm_mul_silu_slice_1": 3.0,
        "triton_red_fused_fused_add_rms_norm_gemm_2": 2.0,
    }
    kp = e2e.summarize_kernels(times, top=3)
    assert kp["total_us"] == 1410.0
    assert {c: v["us"] for c, v in kp["classes"].items()} == {
        "awqgemm GEMM": 650.0,
        "Machete": 300.0,
        "dense GEMM": 200.0,
        "attention": 155.0,
        "other": 50.0,
        "Marlin": 40.0,
        "awqgemm MoE glue": 10.0,
        "Triton elementwise": 5.0,
    }
    assert next(iter(kp["classes"])) == "awqgemm GEMM" and abs(kp["classes"]["Machete"]["share"] - 300 / 1410) < 1e-12
    assert [t["us"] for t in kp["top"]] == [600.0, 300.0, 200.0] and kp["top"][2]["cls"] == "dense GEMM"
    assert e2e.summarize_kernels({})["classes"] == {}
    kp = dict(kp, prefill=e2e.summarize_kernels({"nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NNT": 200.0}))
    doc = dict(
        model="m",
        gpu="g",
        vllm="0.26.0",
        date="d",
        num_prompts=200,
        workloads=["throughput"],
        contenders=[
            dict(name="awqgemm", quantization="awqgemm", kernels={}, engine_start_s=1.0, env={},
                 workloads={"throughput": dict(req_per_s=30.0, kernel_profile=kp)}),
        ],
    )  # fmt: skip
    table = e2e.render_table(doc)
    assert "| awqgemm | throughput | 1.4 |" in table and "0.7 (46%)" in table, table
    assert "| awqgemm | throughput, prefill only | 0.2 |" in table and "0.2 (100%)" in table, table


COMPARE_PY = GEMM_PY.parent / "compare.py"


def test_compare_ratios_per_m(tmp_path):
    """benchmarks/compare.py: per (dtype, M) geomean, range and points faster of a/b over the rows with
    both times; filters; a clear error for an unknown contender or a file that is not a result."""
    if not COMPARE_PY.exists():
        pytest.skip(f"benchmarks/compare.py is not next to these tests ({COMPARE_PY}): it runs from the source tree")

    def row(shape, m, **us):
        return {"shape": shape, "group": 128, "dtype": "fp16", "M": m, "us": us}

    rows = [row("a/qkv/tp1", 64, x=1.0, y=2.0), row("a/o/tp1", 64, x=4.0, y=1.0), row("a/o/tp1", 128, x=3.0)]
    result = tmp_path / "r.json"
    result.write_text(json.dumps({"rows": rows}))

    def run(*args):
        return subprocess.run([sys.executable, str(COMPARE_PY), *map(str, args)], capture_output=True, text=True)

    r = run(result, "x/y", "--points")
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("fp16"))
    assert line.split()[1:] == ["64", "1.414", "0.50", "4.00", "1/2"], r.stdout  # sqrt(0.5 * 4); M = 128 lacks y
    assert "a/qkv/tp1 g128" in r.stdout and "0.500" in r.stdout
    assert run(result, "x/y", "--shapes", "qkv").stdout.count("0.500") == 1
    bad = run(result, "x/z")
    assert bad.returncode == 2 and "no times for z" in bad.stderr, bad.stderr
    assert run(result, "xy").returncode == 2
    # The fastest of several (a dispatch rule's choice against the better of two paths) and --dtypes.
    r = run(result, "x/x|y", "--m", "64")
    line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("fp16"))
    assert r.returncode == 0 and line.split()[1:] == ["64", "2.000", "1.00", "4.00", "0/2"], r.stdout
    none = run(result, "x/y", "--dtypes", "bf16")
    assert none.returncode == 2 and "no times for x, y" in none.stderr, none.stderr
    assert run(result, "x/y|").returncode == 2
    (tmp_path / "n.json").write_text("[1, 2]")
    nope = run(tmp_path / "n.json", "x/y")
    assert nope.returncode == 2 and "not a gemm.py result JSON" in nope.stderr, nope.stderr
