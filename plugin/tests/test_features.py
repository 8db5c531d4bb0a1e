"""vLLM features a GPU user reaches, checked on vLLM's real classes (no engine):
LoRA's view of a quantized layer, in-place weight reload through vLLM's own
layerwise reload, the weight-cache IPC loader's pre-processed mode, symmetric
checkpoints, a quantized lm_head, CPU offloading, batch invariance, Hub
``modules_to_not_convert`` and the vLLM version check."""

from __future__ import annotations

import logging
import types

import pytest
import torch

import awq_tiny
import awqgemm
import awqgemm_vllm
from awqgemm_vllm import _policy, _register
from awqgemm_vllm._policy import AwqGemmConfigError

pytestmark = pytest.mark.vllm

import vllm.model_executor.layers.linear as vllm_linear  # noqa: E402
import vllm.model_executor.layers.vocab_parallel_embedding as vllm_vocab  # noqa: E402
import vllm.model_executor.parameter as vllm_parameter  # noqa: E402
from vllm.config import VllmConfig, set_current_vllm_config  # noqa: E402

from awqgemm_vllm.config import AwqGemmConfig  # noqa: E402
from awqgemm_vllm.linear import AwqGemmLinearMethod  # noqa: E402

CFG = {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm"}
K, N, G = 256, 96, 64


@pytest.fixture(autouse=True)
def _registered() -> None:
    awqgemm_vllm.register()


@pytest.fixture
def vllm_ctx(monkeypatch):
    for mod in (vllm_linear, vllm_parameter, vllm_vocab):
        if hasattr(mod, "get_tensor_model_parallel_rank"):
            monkeypatch.setattr(mod, "get_tensor_model_parallel_rank", lambda: 0)
        if hasattr(mod, "get_tensor_model_parallel_world_size"):
            monkeypatch.setattr(mod, "get_tensor_model_parallel_world_size", lambda: 1)
    with set_current_vllm_config(VllmConfig()):
        yield


def _quant(seed: int, n: int = N, k: int = K, zero_point: bool = True):
    g = torch.Generator().manual_seed(seed)
    q = awq_tiny.quantize_awq(torch.randn(n, k, generator=g), G, zero_point)
    return q, awq_tiny.dequantize(q, G)  # [K, N] fp32


def _load(layer: torch.nn.Module, q: awq_tiny.AwqTensors) -> None:
    for name in ("qweight", "qzeros", "scales"):
        param = getattr(layer, name)
        t = getattr(q, name)
        param.weight_loader(param, t.to(param.dtype) if name == "scales" else t)


def _layer(cfg: dict | None = None, prefix: str = "model.layers.0.mlp.down_proj"):
    qc = AwqGemmConfig.from_config(cfg or CFG)
    return vllm_linear.ReplicatedLinear(K, N, bias=False, quant_config=qc, params_dtype=torch.float32, prefix=prefix)


class Tiny(torch.nn.Module):
    """A model of one awqgemm layer, for vLLM's model-level loaders."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = _layer()


# ---------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------


def test_lora_finds_the_device_and_weight_of_a_repacked_layer(vllm_ctx):
    from vllm.lora.layers.utils import _get_lora_device

    layer = _layer()
    q, w = _quant(1)
    _load(layer, q)
    layer.quant_method.process_weights_after_loading(layer)
    # vLLM's LoRA wrapper asks the base layer for weight / weight_packed / qweight
    assert _get_lora_device(layer) == torch.device("cpu")
    assert layer.qweight.data_ptr() == layer.awqgemm_qweight.data_ptr()
    # the alias is no parameter and no state_dict entry (nothing counted twice)
    assert "qweight" not in dict(layer.named_parameters())
    assert "qweight" not in layer.state_dict()
    x = torch.randn(3, K)
    torch.testing.assert_close(layer(x)[0], x @ w, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------
# in-place weight reload (vLLM's layerwise reload, as reload_weights runs it)
# ---------------------------------------------------------------------------


def _reload(model: torch.nn.Module, q: awq_tiny.AwqTensors) -> None:
    from vllm.model_executor.model_loader.reload import (
        finalize_layerwise_reload,
        initialize_layerwise_reload,
    )

    initialize_layerwise_reload(model)
    # the checkpoint-layout parameters are back, on the meta device
    assert model.proj.qweight.is_meta and model.proj.qzeros.is_meta
    _load(model.proj, q)  # through the wrapped loaders: processes the layer
    finalize_layerwise_reload(model, None)


def test_reload_weights_gives_the_new_model(vllm_ctx):
    from vllm.model_executor.model_loader.reload import record_metadata_for_reloading

    model = Tiny()
    record_metadata_for_reloading(model)  # vLLM does this right after building
    qa, wa = _quant(1)
    qb, wb = _quant(2)
    _load(model.proj, qa)
    model.proj.quant_method.process_weights_after_loading(model.proj)
    x = torch.randn(4, K)
    torch.testing.assert_close(model.proj(x)[0], x @ wa, rtol=1e-5, atol=1e-4)
    ptrs = {n: p.data_ptr() for n, p in model.proj.named_parameters()}

    _reload(model, qb)
    torch.testing.assert_close(model.proj(x)[0], x @ wb, rtol=1e-5, atol=1e-4)
    # same storage as before (what captured CUDA graphs point at), no leftovers
    assert {n: p.data_ptr() for n, p in model.proj.named_parameters()} == ptrs
    assert set(ptrs) == {"awqgemm_qweight", "awqgemm_scales"}
    assert model.proj.qweight.data_ptr() == ptrs["awqgemm_qweight"]

    _reload(model, qa)  # and back again
    torch.testing.assert_close(model.proj(x)[0], x @ wa, rtol=1e-5, atol=1e-4)


def test_a_second_process_call_without_reload_keeps_the_weights(vllm_ctx):
    layer = _layer()
    q, w = _quant(3)
    _load(layer, q)
    layer.quant_method.process_weights_after_loading(layer)
    layer.quant_method.process_weights_after_loading(layer)
    x = torch.randn(2, K)
    torch.testing.assert_close(layer(x)[0], x @ w, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------
# weight-cache IPC loader: pre-processed weights
# ---------------------------------------------------------------------------


def _weight_cache() -> None:
    pytest.importorskip(
        "vllm.model_executor.model_loader.weight_cache.protocol",
        reason="this vLLM has no weight-cache IPC loader (added after 0.26)",
    )


def test_pre_processed_weights_from_the_weight_cache(vllm_ctx):
    _weight_cache()
    from vllm.model_executor.model_loader.weight_cache.protocol import check_ipc_quant_support
    from vllm.model_executor.utils import weights_already_processed

    assert AwqGemmLinearMethod.supports_pre_processed_weights is True
    source = Tiny()
    q, w = _quant(4)
    _load(source.proj, q)
    source.proj.quant_method.process_weights_after_loading(source.proj)
    exported = {n: p.detach() for n, p in source.proj.named_parameters()}

    # the engine side: built on meta, the exported tensors registered in place
    with torch.device("meta"):
        client = Tiny()
    check_ipc_quant_support(client)  # raises for methods without support
    for name, tensor in exported.items():
        client.proj.register_parameter(name, torch.nn.Parameter(tensor, requires_grad=False))
    with weights_already_processed():
        client.proj.quant_method.process_weights_after_loading(client.proj)
    assert not [n for n, p in client.proj.named_parameters() if p.is_meta]
    assert set(dict(client.proj.named_parameters())) == {"awqgemm_qweight", "awqgemm_scales"}
    x = torch.randn(2, K)
    torch.testing.assert_close(client.proj(x)[0], x @ w, rtol=1e-5, atol=1e-4)


def test_pre_processed_mode_without_packed_tensors_fails_clearly(vllm_ctx):
    _weight_cache()
    from vllm.model_executor.utils import weights_already_processed

    with torch.device("meta"):
        client = Tiny()
    with (
        weights_already_processed(),
        pytest.raises(AwqGemmConfigError, match="pre-processed weights have no 'awqgemm_qweight'"),
    ):
        client.proj.quant_method.process_weights_after_loading(client.proj)


# ---------------------------------------------------------------------------
# checkpoint variants: symmetric (zero_point false), quantized lm_head
# ---------------------------------------------------------------------------


def test_symmetric_checkpoint_uses_zero_8_whatever_qzeros_holds(vllm_ctx):
    layer = _layer({**CFG, "zero_point": False})
    q, w = _quant(5, zero_point=False)
    # vLLM's AWQ ignores qzeros for zero_point: false; so do we
    junk = awqgemm.testing.random_awq(K, N, G)[1]  # random packed zero points
    _load(layer, awq_tiny.AwqTensors(q.qweight, junk, q.scales))
    layer.quant_method.process_weights_after_loading(layer)
    x = torch.randn(5, K)
    torch.testing.assert_close(layer(x)[0], x @ w, rtol=1e-5, atol=1e-4)


def _lm_head(cfg: dict, vocab: int = 256, hidden: int = K, **kw) -> torch.nn.Module:
    qc = AwqGemmConfig.from_config(cfg)
    return vllm_vocab.ParallelLMHead(vocab, hidden, params_dtype=torch.float32, quant_config=qc, prefix="lm_head", **kw)


def test_quantized_lm_head_is_served(vllm_ctx):
    head = _lm_head({**CFG, "lm_head": True})
    assert isinstance(head.quant_method, AwqGemmLinearMethod)
    q, w = _quant(6, n=256)
    _load(head, q)  # through vLLM's vocabulary loader
    head.quant_method.process_weights_after_loading(head)
    x = torch.randn(3, K)
    logits = head.quant_method.apply(head, x)  # what LogitsProcessor calls
    torch.testing.assert_close(logits, x @ w, rtol=1e-5, atol=1e-4)
    # without lm_head: true the head stays unquantized
    assert not isinstance(_lm_head(CFG).quant_method, AwqGemmLinearMethod)


def test_quantized_lm_head_with_padded_vocabulary_fails_naming_the_layer(vllm_ctx):
    with pytest.raises(AwqGemmConfigError, match=r"lm_head: a quantized lm_head .* 200 .* 256"):
        _lm_head({**CFG, "lm_head": True}, vocab=200)


def test_quantized_lm_head_tied_to_embeddings_fails_clearly(vllm_ctx):
    head = _lm_head({**CFG, "lm_head": True})
    embed = vllm_vocab.VocabParallelEmbedding(256, K, params_dtype=torch.float32)
    with pytest.raises(AwqGemmConfigError, match=r"lm_head: .*tie_word_embeddings"):
        head.tie_weights(embed)


# ---------------------------------------------------------------------------
# CPU offloading, batch invariance
# ---------------------------------------------------------------------------


def test_cpu_offload_is_refused_naming_the_layer_and_option(monkeypatch):
    from vllm.config import OffloadConfig
    from vllm.config.offload import UVAOffloadConfig

    for mod in (vllm_linear, vllm_parameter):
        monkeypatch.setattr(mod, "get_tensor_model_parallel_rank", lambda: 0)
        monkeypatch.setattr(mod, "get_tensor_model_parallel_world_size", lambda: 1)
    offload = OffloadConfig(uva=UVAOffloadConfig(cpu_offload_gb=4))
    with (
        set_current_vllm_config(VllmConfig(offload_config=offload)),
        pytest.raises(AwqGemmConfigError) as info,
    ):
        _layer()
    msg = str(info.value)
    assert "model.layers.0.mlp.down_proj" in msg
    assert "does not support CPU weight offloading (--cpu-offload-gb 4" in msg


def test_batch_invariant_mode_is_refused_or_left_to_vllm(monkeypatch, vllm_ctx):
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
    monkeypatch.delenv("AWQGEMM_TAKE_OVER_AWQ", raising=False)
    with pytest.raises(AwqGemmConfigError, match="does not run batch-invariant"):
        AwqGemmConfig.from_config(CFG)
    with pytest.raises(AwqGemmConfigError, match="VLLM_BATCH_INVARIANT=1"):
        AwqGemmConfig.override_quantization_method(CFG, "awqgemm")
    monkeypatch.setenv("AWQGEMM_TAKE_OVER_AWQ", "1")
    assert AwqGemmConfig.override_quantization_method(CFG, None) is None
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "0")
    assert AwqGemmConfig.override_quantization_method(CFG, None) == "awqgemm"


# ---------------------------------------------------------------------------
# MoE detection through the override vLLM calls
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hf_config",
    [
        types.SimpleNamespace(model_type="dbrx", ffn_config=types.SimpleNamespace(moe_num_experts=16)),
        types.SimpleNamespace(model_type="ernie4_5_moe", moe_num_experts=64),
    ],
)
def test_dbrx_and_ernie_moe_are_taken_over_like_dense_models(monkeypatch, hf_config):
    monkeypatch.setenv("AWQGEMM_TAKE_OVER_AWQ", "1")
    assert AwqGemmConfig.override_quantization_method(CFG, None, hf_config=hf_config) == "awqgemm"
    monkeypatch.setenv("AWQGEMM_TAKE_OVER_AWQ", "0")
    assert AwqGemmConfig.override_quantization_method(CFG, None, hf_config=hf_config) is None


@pytest.mark.parametrize("hf_config", [types.SimpleNamespace(model_type="qwen3_moe", num_experts=128)])
def test_moe_models_are_left_to_vllm_by_a_library_without_the_moe_op(monkeypatch, hf_config):
    import awqgemm

    monkeypatch.delattr(awqgemm, "fused_moe")
    monkeypatch.setenv("AWQGEMM_TAKE_OVER_AWQ", "1")
    assert AwqGemmConfig.override_quantization_method(CFG, None, hf_config=hf_config) is None


def test_dbrx_config_from_transformers_is_moe():
    from transformers import DbrxConfig

    cfg = DbrxConfig(ffn_config={"moe_num_experts": 4, "moe_top_k": 2})
    assert _policy.is_moe_config(cfg)


# ---------------------------------------------------------------------------
# modules_to_not_convert of Hub checkpoints
# ---------------------------------------------------------------------------


def test_unquantized_layers_of_a_hub_checkpoint_are_found(monkeypatch, vllm_ctx):
    import vllm.transformers_utils.config as vllm_tcfg

    seen = {}

    def fake_metadata(model, *, revision=None):
        seen["args"] = (model, revision)
        return {
            "model.layers.0.mlp.down_proj.qweight": {"dtype": "I32"},
            "model.layers.0.mlp.gate.weight": {"dtype": "BF16"},
        }

    monkeypatch.setattr(vllm_tcfg, "get_safetensors_params_metadata", fake_metadata)
    cfg = AwqGemmConfig.from_config(CFG)
    cfg.maybe_update_config("someorg/Some-AWQ-model", revision="main")
    assert seen["args"] == ("someorg/Some-AWQ-model", "main")
    assert cfg.scanned_unquantized == ["model.layers.0.mlp.gate"]
    gate = vllm_linear.ReplicatedLinear(K, 8, bias=False, quant_config=cfg, prefix="model.layers.0.mlp.gate")
    assert not isinstance(gate.quant_method, AwqGemmLinearMethod)
    assert isinstance(_layer_with(cfg).quant_method, AwqGemmLinearMethod)


def _layer_with(cfg: AwqGemmConfig) -> torch.nn.Module:
    return vllm_linear.ReplicatedLinear(K, N, bias=False, quant_config=cfg, prefix="model.layers.0.mlp.down_proj")


# ---------------------------------------------------------------------------
# the vLLM version check at registration
# ---------------------------------------------------------------------------


def test_register_refuses_an_unsupported_vllm(monkeypatch, caplog):
    import vllm

    monkeypatch.setattr(vllm, "__version__", "0.99.0")
    monkeypatch.setattr(_register, "_registered", False)
    monkeypatch.delenv(_policy.ALLOW_UNTESTED_VLLM_ENV, raising=False)
    with pytest.raises(_policy.AwqGemmVersionError, match=r"this is vLLM 0\.99\.0"):
        awqgemm_vllm.register()
    monkeypatch.setenv(_policy.ALLOW_UNTESTED_VLLM_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="vllm.awqgemm_vllm"):
        awqgemm_vllm.register()
    assert "registering with vLLM 0.99.0 anyway" in caplog.text
