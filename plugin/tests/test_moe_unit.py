"""The MoE method on vLLM's real MoE layer (``FusedMoEFactory`` -> ``MoERunner`` /
``RoutedExperts``), no engine: weight shapes, loading per-expert AWQ tensors
through vLLM's expert weight loader (also as simulated tensor- and
expert-parallel ranks), the forward against an independent fp32 reference
(this file's own dequantizer and routing), and the refusals."""

from __future__ import annotations

import tempfile

import pytest
import torch

import awq_tiny
import awqgemm_vllm
from awqgemm_vllm import _platform
from awqgemm_vllm._policy import AwqGemmConfigError, Platform

pytestmark = pytest.mark.vllm

import vllm.model_executor.layers.fused_moe.config as vllm_moe_config  # noqa: E402
from vllm.config import VllmConfig, set_current_vllm_config  # noqa: E402
from vllm.forward_context import set_forward_context  # noqa: E402
from vllm.model_executor.layers.fused_moe import FusedMoEFactory, UnquantizedFusedMoEMethod  # noqa: E402

from awqgemm_vllm import moe as moe_mod  # noqa: E402
from awqgemm_vllm.config import AwqGemmConfig  # noqa: E402
from awqgemm_vllm.moe import AwqGemmMoEMethod  # noqa: E402

E, H, INTER, TOPK = 4, 128, 128, 2
PREFIX = "model.layers.0.mlp.experts"
#: checkpoint projection -> vLLM's shard id
SHARDS = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}


def cfg_of(group: int = 32, zero_point: bool = True, **extra) -> AwqGemmConfig:
    return AwqGemmConfig.from_config(
        {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": zero_point, "version": "gemm", **extra}
    )


@pytest.fixture(scope="module", autouse=True)
def _distributed():
    """One gloo rank: vLLM's MoE layer reads its parallel groups at construction."""
    from vllm.distributed import (
        destroy_distributed_environment,
        destroy_model_parallel,
        init_distributed_environment,
        initialize_model_parallel,
        parallel_state,
    )

    awqgemm_vllm.register()
    fresh = parallel_state._WORLD is None
    if fresh:
        init_distributed_environment(
            world_size=1,
            rank=0,
            distributed_init_method=f"file://{tempfile.mktemp(prefix='awqgemm-moe-')}",
            local_rank=0,
            backend="gloo",
        )
        with set_current_vllm_config(VllmConfig()):
            initialize_model_parallel(1, 1)
    yield
    if fresh:
        destroy_model_parallel()
        destroy_distributed_environment()


def make_layer(cfg, *, dtype=torch.float32, tp=(0, 1), ep=False, monkeypatch=None, vc=None, **kw):
    """A MoE runner built by vLLM for rank ``tp[0]`` of ``tp[1]`` (experts split
    instead of the intermediate size when ``ep``)."""
    vc = vc or VllmConfig()
    vc.parallel_config.enable_expert_parallel = ep
    rank, size = tp
    if monkeypatch is not None:
        monkeypatch.setattr(vllm_moe_config, "get_tensor_model_parallel_rank", lambda: rank)
    with set_current_vllm_config(vc):
        runner = FusedMoEFactory(
            num_experts=kw.pop("num_experts", E),
            top_k=TOPK,
            hidden_size=kw.pop("hidden_size", H),
            intermediate_size=kw.pop("intermediate_size", INTER),
            params_dtype=dtype,
            renormalize=kw.pop("renormalize", True),
            quant_config=cfg,
            tp_size=size,
            prefix=kw.pop("prefix", PREFIX),
            **kw,
        )
    runner.vllm_config = vc
    return runner


def checkpoint(group: int, zero_point: bool = True, seed: int = 0, num_experts: int = E):
    """Per-expert AWQ tensors (as a checkpoint stores them) and their fp32
    dequantization [K, N], by this test suite's own quantizer."""
    gen = torch.Generator().manual_seed(seed)
    tensors, ref = {}, {}
    for e in range(num_experts):
        for name, (n, k) in (("gate_proj", (INTER, H)), ("up_proj", (INTER, H)), ("down_proj", (H, INTER))):
            w = torch.randn(n, k, generator=gen) / k**0.5
            q = awq_tiny.quantize_awq(w, group, zero_point)
            tensors[e, name] = q
            ref[e, name] = awq_tiny.dequantize(q, group)
    return tensors, ref


def load(runner, tensors, dtype=torch.float32) -> None:
    layer = runner.routed_experts
    for (e, name), q in tensors.items():
        shard = SHARDS[name]
        stem = "w2" if shard == "w2" else "w13"
        for leaf in ("qweight", "qzeros", "scales"):
            t = getattr(q, leaf)
            if leaf == "scales":
                t = t.to(dtype)
            param = getattr(layer, f"{stem}_{leaf}")
            layer.weight_loader(param, t, f"{PREFIX}.{stem}_{leaf}", shard, e)
    layer.quant_method.process_weights_after_loading(layer)


def reference(x, ref, topk_weights, topk_ids, experts=None):
    """sum_j w_j * down(silu(gate) * up), fp64, over the chosen experts (or only
    those in ``experts``)."""
    x = x.double()
    out = torch.zeros(x.shape[0], H, dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(topk_ids.shape[1]):
            e = int(topk_ids[t, j])
            if experts is not None and e not in experts:
                continue
            g = x[t] @ ref[e, "gate_proj"].double()
            u = x[t] @ ref[e, "up_proj"].double()
            out[t] += float(topk_weights[t, j]) * ((torch.nn.functional.silu(g) * u) @ ref[e, "down_proj"].double())
    return out


def softmax_topk(logits, renormalize=True):
    p = torch.softmax(logits.float(), -1)
    w, ids = p.topk(TOPK, -1)
    if renormalize:
        w = w / w.sum(-1, keepdim=True)
    return w, ids


# ---------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------


def test_quant_method_and_weight_shapes():
    runner = make_layer(cfg_of(32))
    layer = runner.routed_experts
    assert isinstance(layer.quant_method, AwqGemmMoEMethod)
    shapes = {n: (tuple(p.shape), p.dtype) for n, p in layer.named_parameters()}
    assert shapes == {
        "w13_qweight": ((E, H, 2 * INTER // 8), torch.int32),
        "w13_qzeros": ((E, H // 32, 2 * INTER // 8), torch.int32),
        "w13_scales": ((E, H // 32, 2 * INTER), torch.float32),
        "w2_qweight": ((E, INTER, H // 8), torch.int32),
        "w2_qzeros": ((E, INTER // 32, H // 8), torch.int32),
        "w2_scales": ((E, INTER // 32, H), torch.float32),
    }
    for p in layer.parameters():
        assert p.is_transposed is True and p.quant_method == "group"


@pytest.mark.parametrize(("group", "zero_point"), [(32, True), (64, True), (128, True), (64, False)])
def test_load_pack_and_forward_through_vllms_router(group, zero_point):
    """Through the whole MoE runner: vLLM's router (softmax top-k, renormalized)
    picks the experts, awqgemm computes them."""
    runner = make_layer(cfg_of(group, zero_point))
    tensors, ref = checkpoint(group, zero_point, seed=group)
    load(runner, tensors)
    layer = runner.routed_experts
    names = {n for n, _ in layer.named_parameters()}
    assert names == set(moe_mod.PACKED_PARAMS), names  # checkpoint tensors freed
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, H, generator=gen)
    logits = torch.randn(7, E, generator=gen)
    with set_forward_context(None, runner.vllm_config):
        out = runner(x, logits)
    w, ids = softmax_topk(logits)
    want = reference(x, ref, w, ids)
    err = (out.double() - want).abs().max().item()
    assert err < 1e-4 * max(1.0, want.abs().max().item()), err


def test_no_renormalize_as_qwen3_moe_without_norm_topk_prob():
    runner = make_layer(cfg_of(32), renormalize=False)
    tensors, ref = checkpoint(32, seed=5)
    load(runner, tensors)
    gen = torch.Generator().manual_seed(2)
    x, logits = torch.randn(5, H, generator=gen), torch.randn(5, E, generator=gen)
    with set_forward_context(None, runner.vllm_config):
        out = runner(x, logits)
    want = reference(x, ref, *softmax_topk(logits, renormalize=False))
    assert (out.double() - want).abs().max().item() < 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_forward(dtype):
    runner = make_layer(cfg_of(64), dtype=dtype)
    tensors, ref = checkpoint(64, seed=9)
    load(runner, tensors, dtype)
    layer = runner.routed_experts
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, H, generator=gen)
    w, ids = softmax_topk(torch.randn(6, E, generator=gen))
    out = layer.forward_modular(x.to(dtype), w, ids.to(torch.int32))
    assert out.dtype == dtype
    # the scales themselves are rounded to the dtype: compare with the reference
    # of the rounded checkpoint, at the activations' rounding
    want = reference(x.to(dtype).float(), ref, w, ids)
    tol = 0.05 * want.abs().max().item()
    assert (out.double() - want).abs().max().item() < tol


def test_tensor_parallel_ranks_sum_to_the_full_layer(monkeypatch):
    """Two simulated TP ranks: each loads its half of the intermediate size from
    the full checkpoint tensors; their partial outputs (vLLM all-reduces them)
    sum to the unsharded result."""
    tensors, ref = checkpoint(32, seed=11)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(9, H, generator=gen)
    w, ids = softmax_topk(torch.randn(9, E, generator=gen))
    total = torch.zeros(9, H, dtype=torch.float64)
    for rank in range(2):
        runner = make_layer(cfg_of(32), tp=(rank, 2), monkeypatch=monkeypatch)
        layer = runner.routed_experts
        assert layer.w2_qweight.shape == (E, INTER // 2, H // 8)
        load(runner, tensors)
        total += layer.forward_modular(x, w, ids).double()
    want = reference(x, ref, w, ids)
    assert (total - want).abs().max().item() < 1e-4


def test_expert_parallel_ranks_hold_their_experts(monkeypatch):
    """Two simulated EP ranks: each loads only its experts; global top-k ids go
    through vLLM's expert map; the ranks' outputs sum to the full layer."""
    tensors, ref = checkpoint(32, seed=13)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(9, H, generator=gen)
    w, ids = softmax_topk(torch.randn(9, E, generator=gen))
    total = torch.zeros(9, H, dtype=torch.float64)
    for rank in range(2):
        runner = make_layer(cfg_of(32), tp=(rank, 2), ep=True, monkeypatch=monkeypatch)
        layer = runner.routed_experts
        assert layer.local_num_experts == E // 2 and layer.expert_map is not None
        assert layer.w13_qweight.shape == (E // 2, H, 2 * INTER // 8)
        load(runner, tensors)
        local = {e for e in range(E) if int(layer.expert_map[e]) >= 0}
        out = layer.forward_modular(x, w, ids).double()
        assert (out - reference(x, ref, w, ids, experts=local)).abs().max().item() < 1e-4
        total += out
    assert (total - reference(x, ref, w, ids)).abs().max().item() < 1e-4


def test_repacking_is_idempotent_and_follows_a_reload():
    """A second process_weights_after_loading keeps the packed weights; a reload
    that puts checkpoint-layout tensors back (vLLM's reload_weights) repacks them."""
    runner = make_layer(cfg_of(32))
    layer = runner.routed_experts
    saved = {n: p.detach().clone() for n, p in layer.named_parameters()}  # uninitialised shapes
    tensors, _ = checkpoint(32, seed=21)
    load(runner, tensors)
    layer.quant_method.process_weights_after_loading(layer)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(4, H, generator=gen)
    w, ids = softmax_topk(torch.randn(4, E, generator=gen))
    first = layer.forward_modular(x, w, ids)
    # reload other weights: the checkpoint-layout parameters are registered again
    for name in moe_mod.PACKED_PARAMS:
        delattr(layer, name)
    for name, t in saved.items():
        param = torch.nn.Parameter(torch.empty_like(t), requires_grad=False)
        param.weight_loader = layer.weight_loader
        param.is_transposed = True
        param.quant_method = "group"
        layer.register_parameter(name, param)
    tensors2, ref2 = checkpoint(32, seed=22)
    load(runner, tensors2)
    second = layer.forward_modular(x, w, ids)
    assert (second.double() - reference(x, ref2, w, ids)).abs().max().item() < 1e-4
    assert (first - second).abs().max().item() > 1e-3


# ---------------------------------------------------------------------------
# which layers, and refusals
# ---------------------------------------------------------------------------


def test_modules_to_not_convert_leaves_experts_unquantized():
    runner = make_layer(cfg_of(32, modules_to_not_convert=["mlp.experts"]))
    assert isinstance(runner.routed_experts.quant_method, UnquantizedFusedMoEMethod)
    cfg = cfg_of(32)
    cfg.scanned_unquantized = [f"{PREFIX}.0.gate_proj", f"{PREFIX}.0.up_proj"]
    runner = make_layer(cfg)
    assert isinstance(runner.routed_experts.quant_method, UnquantizedFusedMoEMethod)


def test_tensor_parallel_shard_of_half_groups_is_refused(monkeypatch):
    # intermediate 128 over 2 ranks = 64 rows: half a group of 128
    with pytest.raises(AwqGemmConfigError, match=r"intermediate size is 64 \(128 split 2 ways\)"):
        make_layer(cfg_of(128), tp=(0, 2), monkeypatch=monkeypatch)


def test_activation_other_than_silu_is_refused():
    with pytest.raises(AwqGemmConfigError, match="activation is 'gelu'"):
        make_layer(cfg_of(32), activation="gelu")


def test_swiglu_limits_and_expert_biases_are_refused():
    with pytest.raises(AwqGemmConfigError, match="swiglu_limit"):
        make_layer(cfg_of(32), swiglu_limit=7.0)
    with pytest.raises(AwqGemmConfigError, match="biases"):
        make_layer(cfg_of(32), has_bias=True)


def test_lora_on_moe_layers_is_refused():
    from vllm.config import LoRAConfig

    vc = VllmConfig()
    vc.lora_config = LoRAConfig(max_lora_rank=8)
    with pytest.raises(AwqGemmConfigError, match="LoRA on mixture-of-experts layers"):
        make_layer(cfg_of(32), vc=vc)


def test_float32_activations_are_refused_on_a_gpu(monkeypatch):
    monkeypatch.setattr(_platform, "current", lambda: Platform("cuda", 80))
    with pytest.raises(AwqGemmConfigError, match="the model dtype is float32"):
        make_layer(cfg_of(32), dtype=torch.float32)


def test_library_without_the_moe_op_is_refused(monkeypatch):
    import awqgemm

    monkeypatch.delattr(awqgemm, "pack_awq_experts")
    with pytest.raises(AwqGemmConfigError, match="has no mixture-of-experts op"):
        make_layer(cfg_of(32))


def test_unknown_vllm_moe_interface_is_refused(monkeypatch):
    monkeypatch.setattr(moe_mod, "_base_apply_parameters", lambda: ["self", "layer", "x", "something_new"])
    with pytest.raises(AwqGemmConfigError, match="does not know the MoE method interface"):
        make_layer(cfg_of(32))


def test_interface_detection():
    assert moe_mod.moe_interface() == "routed"  # the installed vLLM
    routed_026 = ["self", "layer", "x", "topk_weights", "topk_ids", "shared_experts", "shared_experts_input"]
    assert moe_mod.moe_interface(routed_026) == "routed"
    assert moe_mod.moe_interface(["self", "layer", "x", "router_logits"]) == "router_logits"
    legacy = ["self", "layer", "x", "router_logits", "top_k", "renormalize", "use_grouped_topk"]
    assert moe_mod.moe_interface(legacy) == "router_logits"
    assert moe_mod.moe_interface(["self", "layer", "x"]) == "unknown"


def test_legacy_router_logits_interface_routes_through_the_layer(monkeypatch):
    """Older vLLM: apply(layer, x, router_logits, ...) and the layer's
    select_experts (a method of two arguments, or a static function of every
    routing option): both are called with what they take."""
    runner = make_layer(cfg_of(32))
    layer = runner.routed_experts
    tensors, ref = checkpoint(32, seed=31)
    load(runner, tensors)
    method = layer.quant_method
    gen = torch.Generator().manual_seed(7)
    x, logits = torch.randn(5, H, generator=gen), torch.randn(5, E, generator=gen)
    want = reference(x, ref, *softmax_topk(logits))

    def select_new(hidden_states, router_logits):
        return softmax_topk(router_logits)

    def select_old(hidden_states, router_logits, top_k, renormalize, use_grouped_topk=False):
        assert top_k == TOPK and renormalize is True and use_grouped_topk is False
        w, ids = softmax_topk(router_logits, renormalize)
        return w, ids, None, None  # releases with zero experts return four values

    monkeypatch.setattr(method, "interface", "router_logits")
    for select, kwargs in ((select_new, {}), (select_old, {"top_k": TOPK, "renormalize": True})):
        monkeypatch.setattr(layer, "select_experts", select, raising=False)
        out = method.apply(layer=layer, x=x, router_logits=logits, activation="silu", **kwargs)
        assert (out.double() - want).abs().max().item() < 1e-4
    with pytest.raises(AwqGemmConfigError, match="activation is 'gelu'"):
        method.apply(layer=layer, x=x, router_logits=logits, activation="gelu")


def test_config_get_quant_method_for_a_moe_layer():
    runner = make_layer(cfg_of(64))
    method = runner.routed_experts.quant_method
    assert type(method).__name__ == "AwqGemmMoEMethod"
    assert method.get_fused_moe_quant_config(runner.routed_experts) is None
    assert not method.is_monolithic


def test_pickled_config_still_serves_moe():
    import pickle

    cfg = pickle.loads(pickle.dumps(cfg_of(32)))
    runner = make_layer(cfg)
    assert isinstance(runner.routed_experts.quant_method, AwqGemmMoEMethod)
