"""Unit tests against vLLM's real classes (no engine): registration, the entry
point, the quantization config, and the linear method on vLLM's parallel linear
layers, including simulated tensor-parallel ranks."""

from __future__ import annotations

import gc
import importlib
import importlib.metadata
import json
import pickle
import shutil
import sys
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch

import awq_tiny
import awqgemm_vllm
from awqgemm_vllm import _platform
from awqgemm_vllm._policy import AwqGemmConfigError, Platform

pytestmark = pytest.mark.vllm

import vllm.model_executor.layers.linear as vllm_linear  # noqa: E402
import vllm.model_executor.parameter as vllm_parameter  # noqa: E402
from vllm.config import LoadConfig, ModelConfig, VllmConfig, set_current_vllm_config  # noqa: E402
from vllm.model_executor.layers.quantization import (  # noqa: E402
    QUANTIZATION_METHODS,
    get_quantization_config,
)

from awqgemm_vllm.config import AwqGemmConfig  # noqa: E402
from awqgemm_vllm.linear import AwqGemmLinearMethod  # noqa: E402

CFG = {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm"}


@pytest.fixture(autouse=True)
def _registered() -> None:
    awqgemm_vllm.register()


@pytest.fixture
def tp(monkeypatch):
    """Pretend to be rank ``r`` of ``size`` tensor-parallel ranks (default 0 of 1)."""

    def set_rank(r: int, size: int) -> None:
        for mod in (vllm_linear, vllm_parameter):
            monkeypatch.setattr(mod, "get_tensor_model_parallel_rank", lambda: r)
            monkeypatch.setattr(mod, "get_tensor_model_parallel_world_size", lambda: size)

    set_rank(0, 1)
    return set_rank


@pytest.fixture
def vllm_ctx(tp):
    with set_current_vllm_config(VllmConfig()):
        yield


def on_platform(monkeypatch, platform: Platform) -> None:
    monkeypatch.setattr(_platform, "current", lambda: platform)


# ---------------------------------------------------------------------------
# registration and entry point
# ---------------------------------------------------------------------------


def test_register_is_idempotent():
    for _ in range(3):
        awqgemm_vllm.register()
    # even when our own guard is reset (e.g. a re-imported module)
    from awqgemm_vllm import _register

    _register._registered = False
    awqgemm_vllm.register()
    assert QUANTIZATION_METHODS.count("awqgemm") == 1
    assert QUANTIZATION_METHODS.count("awq_turbomind") == 1
    assert get_quantization_config("awqgemm") is AwqGemmConfig
    assert get_quantization_config("awq_turbomind") is AwqGemmConfig


def test_entry_point_is_discovered_by_importlib_metadata():
    eps = importlib.metadata.entry_points(group="vllm.general_plugins")
    ours = [ep for ep in eps if ep.name == "awqgemm"]
    assert len(ours) == 1, list(eps)
    assert ours[0].value == "awqgemm_vllm:register"
    assert ours[0].load() is awqgemm_vllm.register


def test_vllm_plugin_loader_finds_the_plugin():
    from vllm.plugins import load_plugins_by_group

    plugins = load_plugins_by_group("vllm.general_plugins")
    assert plugins.get("awqgemm") is awqgemm_vllm.register


def test_weight_loader_v2_is_enabled_by_get_quant_method(vllm_ctx):
    cfg = AwqGemmConfig.from_config(CFG)
    layer = vllm_linear.ReplicatedLinear(128, 64, bias=False, quant_config=cfg, prefix="x")
    assert isinstance(layer.quant_method, AwqGemmLinearMethod)
    assert "AwqGemmLinearMethod" in vllm_linear.WEIGHT_LOADER_V2_SUPPORTED
    assert vllm_linear.WEIGHT_LOADER_V2_SUPPORTED.count("AwqGemmLinearMethod") == 1


def test_missing_awqgemm_library_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "awqgemm", None)
    monkeypatch.delitem(sys.modules, "awqgemm_vllm._awqgemm", raising=False)
    with pytest.raises(ImportError, match="awqgemm-vllm needs the awqgemm library"):
        importlib.import_module("awqgemm_vllm._awqgemm")
    monkeypatch.delitem(sys.modules, "awqgemm_vllm._awqgemm", raising=False)


# ---------------------------------------------------------------------------
# the quantization config
# ---------------------------------------------------------------------------


def test_config_interface():
    cfg = AwqGemmConfig.from_config(CFG)
    assert cfg.get_name() == "awqgemm"
    assert AwqGemmConfig.get_min_capability() == 70
    assert set(AwqGemmConfig.get_config_filenames()) == {
        "quant_config.json",
        "quantize_config.json",
    }
    assert (cfg.weight_bits, cfg.group_size, cfg.zero_point) == (4, 64, True)
    # the config object travels to the engine process by pickle
    again = pickle.loads(pickle.dumps(cfg))
    assert isinstance(again, AwqGemmConfig) and again.group_size == 64


def test_supported_act_dtypes_by_platform(monkeypatch):
    on_platform(monkeypatch, Platform("cpu"))
    assert AwqGemmConfig.get_supported_act_dtypes() == [
        torch.float16,
        torch.bfloat16,
        torch.float32,
    ]
    on_platform(monkeypatch, Platform("cuda", 70))
    assert torch.float32 not in AwqGemmConfig.get_supported_act_dtypes()


def test_from_config_errors_are_clear():
    with pytest.raises(ValueError, match="supports 4-bit AWQ weights only"):
        AwqGemmConfig.from_config({**CFG, "bits": 8})
    with pytest.raises(ValueError, match="group_size=256"):
        AwqGemmConfig.from_config({**CFG, "group_size": 256})


@pytest.mark.parametrize(
    ("platform", "user", "env", "want"),
    [
        (Platform("cuda", 70), None, None, "awqgemm"),  # V100: auto-detected
        (Platform("cuda", 70), "awq", None, "awqgemm"),  # vLLM's AWQ cannot run there
        (Platform("cuda", 80), None, None, None),  # A100: vLLM's AWQ
        (Platform("cuda", 80), None, "1", "awqgemm"),  # switch takes all
        (Platform("cuda", 80), "awq_turbomind", None, "awqgemm"),
        (Platform("cpu"), None, None, None),
        (Platform("cpu"), None, "1", "awqgemm"),
        (Platform("cpu"), "awqgemm", None, "awqgemm"),
    ],
)
def test_override_quantization_method(monkeypatch, platform, user, env, want):
    on_platform(monkeypatch, platform)
    if env is None:
        monkeypatch.delenv("AWQGEMM_TAKE_OVER_AWQ", raising=False)
    else:
        monkeypatch.setenv("AWQGEMM_TAKE_OVER_AWQ", env)
    assert AwqGemmConfig.override_quantization_method(CFG, user) == want
    # newer vLLM passes hf_config too
    assert AwqGemmConfig.override_quantization_method(CFG, user, hf_config=None) == want


def test_get_quant_method_per_layer_kind(vllm_ctx):
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    cfg = AwqGemmConfig.from_config({**CFG, "modules_to_not_convert": ["visual"]})
    lin = vllm_linear.ReplicatedLinear(128, 64, bias=False, quant_config=cfg, prefix="model.layers.0.mlp.down_proj")
    assert isinstance(lin.quant_method, AwqGemmLinearMethod)
    skipped = vllm_linear.ReplicatedLinear(128, 64, bias=False, quant_config=cfg, prefix="visual.blocks.0.proj")
    assert isinstance(skipped.quant_method, UnquantizedLinearMethod)
    assert cfg.get_quant_method(torch.nn.LayerNorm(4), "model.norm") is None


# ---------------------------------------------------------------------------
# ModelConfig: what a user sees at start-up
# ---------------------------------------------------------------------------


def _with_quant_config(src: str, dst: Path, qcfg: dict[str, Any]) -> str:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = qcfg
    (dst / "config.json").write_text(json.dumps(cfg))
    return str(dst)


def test_start_up_errors_reach_the_user(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = tiny_models.paths["llama"]
    gptq = _with_quant_config(
        src,
        tmp_path / "gptq",
        {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True},
    )
    with pytest.raises(ValueError, match="this checkpoint's quant_method is 'gptq'"):
        ModelConfig(model=gptq, quantization="awqgemm")
    awq8 = _with_quant_config(src, tmp_path / "awq8", {**CFG, "bits": 8})
    with pytest.raises(ValueError, match="this checkpoint has bits=8"):
        ModelConfig(model=awq8, quantization="awq_turbomind")
    gemv = _with_quant_config(src, tmp_path / "gemv", {**CFG, "version": "gemv"})
    with pytest.raises(ValueError, match="version 'gemv' stores its weights"):
        ModelConfig(model=gemv, quantization="awqgemm")


def test_alias_and_quant_config_json_resolve_to_awqgemm(tiny_models, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mc = ModelConfig(model=tiny_models.paths["llama"], quantization="awq_turbomind", dtype="float32")
    assert mc.quantization == "awqgemm"
    qc = VllmConfig.get_quantization_config(mc, LoadConfig())
    assert isinstance(qc, AwqGemmConfig) and qc.group_size == 128
    mc = ModelConfig(model=tiny_models.paths["llama_qcfg"], quantization="awqgemm", dtype="float32")
    qc = VllmConfig.get_quantization_config(mc, LoadConfig())
    assert isinstance(qc, AwqGemmConfig) and qc.group_size == 64


# ---------------------------------------------------------------------------
# the linear method on vLLM's layers
# ---------------------------------------------------------------------------


def _load(layer: torch.nn.Module, q: awq_tiny.AwqTensors, shard: Any = None) -> None:
    for name in ("qweight", "qzeros", "scales"):
        param = getattr(layer, name)
        t = getattr(q, name)
        if name == "scales":
            t = t.to(param.dtype)
        if shard is None:
            param.weight_loader(param, t)
        else:
            param.weight_loader(param, t, shard)


def _quant(n: int, k: int, group: int, seed: int) -> tuple[awq_tiny.AwqTensors, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = awq_tiny.quantize_awq(torch.randn(n, k, generator=g), group)
    return q, awq_tiny.dequantize(q, group)  # [K, N] fp32


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_replicated_layer_matches_dequantized_reference(vllm_ctx, group, dtype):
    k, n = 256, 96
    cfg = AwqGemmConfig.from_config({**CFG, "group_size": group})
    layer = vllm_linear.ReplicatedLinear(
        k, n, bias=True, quant_config=cfg, params_dtype=dtype, prefix="model.layers.0.mlp.down_proj"
    )
    q, w = _quant(n, k, group, seed=group)
    _load(layer, q)
    bias = torch.randn(n).to(dtype)
    layer.bias.weight_loader(layer.bias, bias)
    ref_ptrs = weakref.ref(layer.qweight)
    layer.quant_method.process_weights_after_loading(layer)
    gc.collect()
    assert ref_ptrs() is None, "checkpoint-layout qweight still referenced after repacking"
    names = {n for n, _ in layer.named_parameters()}
    assert {"awqgemm_qweight", "awqgemm_scales", "bias"} <= names
    assert not names & {"qweight", "qzeros", "scales"}
    # scales are rounded to the activation dtype, as the layer stores them
    w = awq_tiny.dequantize(awq_tiny.AwqTensors(q.qweight, q.qzeros, q.scales.to(dtype).to(torch.float32)), group)
    for m in (1, 7, 300):
        x = torch.randn(m, k).to(dtype)
        out, _ = layer(x)
        assert out.dtype == dtype and out.shape == (m, n)
        ref = x.double() @ w.double() + bias.double()
        err = (out.double() - ref).norm() / ref.norm()
        tol = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
        assert err < tol, (m, float(err))


def test_apply_is_one_awqgemm_call_whatever_the_token_count(vllm_ctx, monkeypatch):
    from awqgemm_vllm import linear as our_linear

    cfg = AwqGemmConfig.from_config(CFG)
    layer = vllm_linear.ReplicatedLinear(128, 64, bias=False, quant_config=cfg, prefix="p", params_dtype=torch.float32)
    q, _ = _quant(64, 128, 64, seed=1)
    _load(layer, q)
    layer.quant_method.process_weights_after_loading(layer)
    calls = []
    real = our_linear.awqgemm

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name)

        def gemm(self, *args, **kwargs):
            calls.append(args[0].shape[0])
            return real.gemm(*args, **kwargs)

    monkeypatch.setattr(our_linear, "awqgemm", Spy())
    for m in (1, 16, 256, 1000):
        layer(torch.randn(m, 128))
    assert calls == [1, 16, 256, 1000]


def test_compiled_apply_is_one_graph_for_all_token_counts(vllm_ctx):
    import torch._dynamo

    cfg = AwqGemmConfig.from_config(CFG)
    layer = vllm_linear.ReplicatedLinear(128, 64, bias=True, quant_config=cfg, prefix="p", params_dtype=torch.float32)
    q, _ = _quant(64, 128, 64, seed=2)
    _load(layer, q)
    layer.bias.data.copy_(torch.randn(64))
    layer.quant_method.process_weights_after_loading(layer)
    torch._dynamo.reset()
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(lambda x: layer(x)[0], backend=counter, fullgraph=True, dynamic=True)
    for m in (3, 17, 300):
        x = torch.randn(m, 128)
        torch.testing.assert_close(fn(x), layer(x)[0], rtol=1e-6, atol=1e-6)
    assert counter.frame_count == 1, f"recompiled: {counter.frame_count} graphs"
    graph_ops = [str(n.target) for g in counter.graphs for n in g.graph.nodes]
    assert any("awqgemm" in t for t in graph_ops), graph_ops


def test_bf16_on_v100_fails_at_weight_creation(vllm_ctx, monkeypatch):
    on_platform(monkeypatch, Platform("cuda", 70))
    cfg = AwqGemmConfig.from_config(CFG)
    with pytest.raises(AwqGemmConfigError, match="--dtype float16"):
        vllm_linear.ReplicatedLinear(128, 64, bias=False, quant_config=cfg, prefix="p", params_dtype=torch.bfloat16)


# ---------------------------------------------------------------------------
# tensor parallelism (ranks simulated one at a time, vLLM's real loaders)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("tp_size", [2, 4])
def test_merged_column_parallel_gate_up_shards(vllm_ctx, tp, tp_size):
    k, n = 256, 256
    cfg = AwqGemmConfig.from_config({**CFG, "group_size": 32})
    qg, wg = _quant(n, k, 32, seed=10)
    qu, wu = _quant(n, k, 32, seed=11)
    x = torch.randn(5, k)
    part = n // tp_size
    for r in range(tp_size):
        tp(r, tp_size)
        layer = vllm_linear.MergedColumnParallelLinear(
            k,
            [n, n],
            bias=False,
            quant_config=cfg,
            params_dtype=torch.float32,
            prefix="model.layers.0.mlp.gate_up_proj",
        )
        assert layer.qweight.weight_loader.__name__ == "weight_loader_v2"
        _load(layer, qg, 0)
        _load(layer, qu, 1)
        layer.quant_method.process_weights_after_loading(layer)
        out = layer(x)[0]
        ref = torch.cat([x @ wg[:, r * part : (r + 1) * part], x @ wu[:, r * part : (r + 1) * part]], 1)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


def test_qkv_parallel_shards_with_bias(vllm_ctx, tp):
    hidden, head, heads, kv_heads = 128, 32, 4, 2
    cfg = AwqGemmConfig.from_config({**CFG, "group_size": 64})
    qq, wq = _quant(heads * head, hidden, 64, seed=20)
    qk, wk = _quant(kv_heads * head, hidden, 64, seed=21)
    qv, wv = _quant(kv_heads * head, hidden, 64, seed=22)
    bq, bk, bv = (
        torch.randn(heads * head),
        torch.randn(kv_heads * head),
        torch.randn(kv_heads * head),
    )
    x = torch.randn(3, hidden)
    for r in range(2):
        tp(r, 2)
        layer = vllm_linear.QKVParallelLinear(
            hidden,
            head,
            heads,
            kv_heads,
            bias=True,
            quant_config=cfg,
            params_dtype=torch.float32,
            prefix="model.layers.0.self_attn.qkv_proj",
        )
        for shard, qt, b in (("q", qq, bq), ("k", qk, bk), ("v", qv, bv)):
            _load(layer, qt, shard)
            layer.bias.weight_loader(layer.bias, b, shard)
        layer.quant_method.process_weights_after_loading(layer)
        out = layer(x)[0]
        qs, ks = slice(r * 2 * head, (r + 1) * 2 * head), slice(r * head, (r + 1) * head)
        ref = torch.cat([x @ wq[:, qs] + bq[qs], x @ wk[:, ks] + bk[ks], x @ wv[:, ks] + bv[ks]], 1)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


def test_row_parallel_shards_sum_to_the_full_product(vllm_ctx, tp, monkeypatch):
    # one rank at a time: the all-reduce is the sum the test does itself
    monkeypatch.setattr(vllm_linear, "tensor_model_parallel_all_reduce", lambda t: t)
    k, n = 384, 64
    cfg = AwqGemmConfig.from_config({**CFG, "group_size": 64})
    q, w = _quant(n, k, 64, seed=30)
    bias = torch.randn(n)
    x = torch.randn(4, k)
    total = torch.zeros(4, n)
    for r in range(3):  # 384 / 3 = 128 rows = 2 groups per rank
        tp(r, 3)
        layer = vllm_linear.RowParallelLinear(
            k,
            n,
            bias=True,
            quant_config=cfg,
            params_dtype=torch.float32,
            prefix="model.layers.0.mlp.down_proj",
        )
        _load(layer, q)
        layer.bias.weight_loader(layer.bias, bias)
        layer.quant_method.process_weights_after_loading(layer)
        total += layer(x[:, r * 128 : (r + 1) * 128])[0]
    torch.testing.assert_close(total, x @ w + bias, rtol=1e-5, atol=1e-4)


def test_row_parallel_shard_straddling_groups_fails_clearly(vllm_ctx, tp):
    tp(0, 2)
    cfg = AwqGemmConfig.from_config({**CFG, "group_size": 128})
    with pytest.raises(AwqGemmConfigError) as info:
        vllm_linear.RowParallelLinear(
            384,
            64,
            bias=False,
            quant_config=cfg,
            params_dtype=torch.float16,
            prefix="model.layers.3.mlp.down_proj",
        )
    msg = str(info.value)
    assert "model.layers.3.mlp.down_proj" in msg
    assert "192 rows (K=384 split 2 ways), not a multiple of the AWQ group size 128" in msg
    assert "(for this layer: [1, 3])" in msg


def test_column_parallel_shard_cutting_packed_words_fails_clearly(vllm_ctx, tp):
    tp(0, 4)
    cfg = AwqGemmConfig.from_config({**CFG, "group_size": 32})
    with pytest.raises(AwqGemmConfigError, match="not a multiple of 8"):
        vllm_linear.ColumnParallelLinear(
            128, 48, bias=False, quant_config=cfg, params_dtype=torch.float16, prefix="proj"
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_replicated_layer_on_the_gpu(vllm_ctx):
    k, n, group = 4096, 1376, 128  # a Llama-2 TP shard width
    cfg = AwqGemmConfig.from_config({**CFG, "group_size": group})
    with torch.device("cuda"):
        layer = vllm_linear.ReplicatedLinear(k, n, bias=True, quant_config=cfg, params_dtype=torch.float16, prefix="p")
    q, _ = _quant(n, k, group, seed=5)
    _load(layer, awq_tiny.AwqTensors(q.qweight.cuda(), q.qzeros.cuda(), q.scales.cuda()))
    layer.bias.data.copy_(torch.randn(n, dtype=torch.float16))
    layer.quant_method.process_weights_after_loading(layer)
    w = awq_tiny.dequantize(q, group).cuda().double()
    for m in (1, 16, 300):
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        out = layer(x)[0]
        ref = x.double() @ w + layer.bias.double()
        assert (out.double() - ref).norm() / ref.norm() < 2e-3
