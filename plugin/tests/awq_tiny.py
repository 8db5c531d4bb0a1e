"""Test helpers: a small AWQ quantizer writing the real AWQ checkpoint format,
tiny random Llama / Qwen2 models and Qwen3-MoE / Mixtral mixture-of-experts
models, and a locally trained byte-level BPE tokenizer.

MoE checkpoints are written as AutoAWQ writes them: one AWQ triple per expert
projection (``mlp.experts.<e>.{gate,up,down}_proj`` for Qwen3-MoE,
``block_sparse_moe.experts.<e>.{w1,w3,w2}`` for Mixtral), the router
(``gate``) unquantized in fp16.  transformers (5.x) keeps each layer's experts
fused (``experts.gate_up_proj`` [E, 2I, H], ``experts.down_proj`` [E, H, I]):
the reference state dict is built in that layout from the same dequantized
values.

The quantizer is AWQ's zero-point round-to-nearest step (per group along K:
scale = (max - min) / 15, zero = round(-min / scale)) without the activation-aware
scale search; the tensors it writes are exactly what AutoAWQ's GEMM export
writes: ``qweight`` int32 [K, N/8], ``qzeros`` int32 [K/G, N/8], ``scales`` fp16
[K/G, N], eight 4-bit values per int32 with column j of each group of eight in
nibble ``AWQ_NIBBLE_OF_COLUMN[j]``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

#: nibble (4-bit slot, 0 = lowest bits) holding column j of 8 packed columns
AWQ_NIBBLE_OF_COLUMN = (0, 4, 1, 5, 2, 6, 3, 7)

LINEAR_NAMES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


# ---------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------


def pack_awq_int4(values: torch.Tensor) -> torch.Tensor:
    """[R, C] integers in 0..15 → int32 [R, C/8] in AWQ nibble order."""
    if values.dim() != 2 or values.shape[1] % 8:
        raise ValueError(f"need [R, C] with C % 8 == 0, got {tuple(values.shape)}")
    if values.min() < 0 or values.max() > 15:
        raise ValueError("values must be in 0..15")
    v = values.to(torch.int64).reshape(values.shape[0], -1, 8)
    word = torch.zeros(v.shape[:2], dtype=torch.int64)
    for col, nib in enumerate(AWQ_NIBBLE_OF_COLUMN):
        word |= v[:, :, col] << (4 * nib)
    word = torch.where(word >= 2**31, word - 2**32, word)  # two's complement int32
    return word.to(torch.int32)


def unpack_awq_int4(words: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_awq_int4`: int32 [R, C/8] → int64 [R, C]."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    cols = [(w >> (4 * nib)) & 0xF for nib in AWQ_NIBBLE_OF_COLUMN]
    return torch.stack(cols, dim=-1).reshape(words.shape[0], -1)


@dataclass
class AwqTensors:
    qweight: torch.Tensor  # int32 [K, N/8]
    qzeros: torch.Tensor  # int32 [K/G, N/8]
    scales: torch.Tensor  # fp16 [K/G, N]


def quantize_awq(weight: torch.Tensor, group_size: int, zero_point: bool = True) -> AwqTensors:
    """Quantize an nn.Linear weight [N, K] to AWQ tensors (4 bit). With
    ``zero_point=False`` it is AutoAWQ's symmetric mode: scale = max|w| / 7,
    values -8..7 stored with an offset of 8 (qzeros all 8)."""
    n, k = weight.shape
    if k % group_size or n % 8:
        raise ValueError(f"weight {tuple(weight.shape)} vs group {group_size}")
    w = weight.detach().to(torch.float32).t().contiguous()  # [K, N]
    g = w.reshape(k // group_size, group_size, n)
    wmax = g.amax(dim=1)
    wmin = g.amin(dim=1)
    if zero_point:
        scales = ((wmax - wmin).clamp(min=1e-5) / 15).to(torch.float16)
        s = scales.to(torch.float32)
        zeros = torch.clamp(torch.round(-wmin / s), 0, 15)
    else:
        scales = (torch.maximum(wmax.abs(), wmin.abs()).clamp(min=1e-5) / 7).to(torch.float16)
        s = scales.to(torch.float32)
        zeros = torch.full_like(s, 8.0)
    q = torch.clamp(torch.round(g / s[:, None, :]) + zeros[:, None, :], 0, 15)
    return AwqTensors(
        qweight=pack_awq_int4(q.reshape(k, n).to(torch.int64)),
        qzeros=pack_awq_int4(zeros.to(torch.int64)),
        scales=scales,
    )


def dequantize(t: AwqTensors, group_size: int) -> torch.Tensor:
    """The test suite's own dequantizer: AWQ tensors → fp32 [K, N]."""
    q = unpack_awq_int4(t.qweight).to(torch.float32)
    z = unpack_awq_int4(t.qzeros).to(torch.float32).repeat_interleave(group_size, 0)
    s = t.scales.to(torch.float32).repeat_interleave(group_size, 0)
    return (q - z) * s


# ---------------------------------------------------------------------------
# tokenizer and tiny models
# ---------------------------------------------------------------------------

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Serving quantized language models needs fast matrix multiplication.",
    "Four bit weights with group scales and zero points.",
    "Volta, Turing, Ampere, Ada, Hopper and Blackwell are GPU generations.",
    "Hello world! This tokenizer was trained on a handful of sentences.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 32 64 128 256.",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "def gemm(x, w): return x @ w  # a tiny code sample",
]


def train_tokenizer(out_dir: str, vocab_size: int = 512) -> int:
    """Train a byte-level BPE tokenizer locally; save it as a HF fast tokenizer.
    Returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    if tok.get_vocab_size() > vocab_size:
        raise ValueError(f"trained {tok.get_vocab_size()} tokens > {vocab_size}")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    # Fill the vocabulary up to the model's size, so every id decodes.
    fast.add_tokens([f"<extra_{i}>" for i in range(vocab_size - len(fast))])
    assert len(fast) == vocab_size, len(fast)
    fast.save_pretrained(out_dir)
    return len(fast)


#: Mixture-of-experts families: checkpoint name of each layer's MoE block and of
#: the (gate, up, down) projections of one expert.
MOE_FAMILIES = {
    "qwen3_moe": ("mlp", ("gate_proj", "up_proj", "down_proj")),
    "mixtral": ("block_sparse_moe", ("w1", "w3", "w2")),
}


@dataclass(frozen=True)
class TinySpec:
    family: str  # "llama", "qwen2", "qwen3_moe" or "mixtral"
    group_size: int
    hidden: int = 128
    intermediate: int = 384
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    vocab: int = 512
    seed: int = 0
    zero_point: bool = True  # False: symmetric AWQ (zero_point: false)
    quantize_lm_head: bool = False  # True: lm_head quantized too (lm_head: true)
    # mixture-of-experts families: routed experts per layer, top-k, and each
    # expert's intermediate size (``intermediate`` is unused there)
    num_experts: int = 4
    top_k: int = 2
    moe_intermediate: int = 64
    norm_topk_prob: bool = True  # Qwen3-MoE's renormalization of the top-k weights

    @property
    def is_moe(self) -> bool:
        return self.family in MOE_FAMILIES


def _hf_config(spec: TinySpec, tok_dir: str) -> Any:
    from transformers import AutoTokenizer, LlamaConfig, MixtralConfig, Qwen2Config, Qwen3MoeConfig

    tok = AutoTokenizer.from_pretrained(tok_dir)
    common: dict[str, Any] = dict(
        vocab_size=spec.vocab,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        initializer_range=0.08,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    if spec.family == "llama":
        return LlamaConfig(**common, attention_bias=False, mlp_bias=False)
    if spec.family == "qwen2":
        return Qwen2Config(**common, use_sliding_window=False)
    if spec.family == "qwen3_moe":
        common.pop("intermediate_size")
        return Qwen3MoeConfig(
            **common,
            intermediate_size=spec.moe_intermediate,  # dense MLPs: none (every layer is sparse)
            moe_intermediate_size=spec.moe_intermediate,
            num_experts=spec.num_experts,
            num_experts_per_tok=spec.top_k,
            norm_topk_prob=spec.norm_topk_prob,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            head_dim=spec.hidden // spec.heads,
            use_sliding_window=False,
            output_router_logits=False,
            architectures=["Qwen3MoeForCausalLM"],
        )
    if spec.family == "mixtral":
        common.pop("intermediate_size")
        return MixtralConfig(
            **common,
            intermediate_size=spec.moe_intermediate,
            num_local_experts=spec.num_experts,
            num_experts_per_tok=spec.top_k,
            sliding_window=None,
            output_router_logits=False,
            architectures=["MixtralForCausalLM"],
        )
    raise ValueError(spec.family)


def make_random_state(spec: TinySpec, tok_dir: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """A tiny random model of the family: (HF config, fp32 state dict)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(spec.seed)
    cfg = _hf_config(spec, tok_dir)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        # Sharper next-token distributions than the default init, so greedy
        # decoding has clear winners rather than near-ties.
        model.lm_head.weight.mul_(8.0)
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
            elif name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
                # the fused expert tensors are not nn.Linear: give them the
                # linear layers' scale (std 0.08, the config's initializer_range)
                p.copy_(0.08 * torch.randn_like(p))
            elif name.endswith(".gate.weight") and spec.is_moe:
                # a router with clear preferences: routing decisions far from ties
                p.copy_(0.5 * torch.randn_like(p))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return cfg, state


def write_awq_checkpoint(
    out_dir: str,
    spec: TinySpec,
    tok_dir: str,
    *,
    quant_config: Mapping[str, Any] | None = None,
    config_location: str = "config.json",
) -> dict[str, torch.Tensor]:
    """Quantize a tiny random model and save it as an AWQ checkpoint.

    ``config_location`` is "config.json" (quantization_config inside config.json,
    as transformers writes it) or "quant_config.json" (AutoAWQ's separate file).
    Returns the fp32 reference state dict of the *dequantized* model (what
    transformers should compute with).
    """
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    cfg, state = make_random_state(spec, tok_dir)
    tensors: dict[str, torch.Tensor] = {}
    reference: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        module, _, leaf = name.rpartition(".")
        if spec.is_moe and module.endswith(".mlp.experts"):
            _write_experts(spec, module, leaf, value, tensors, reference)
            continue
        if spec.is_moe and module.endswith(".mlp.gate"):
            # the router: unquantized, under the family's checkpoint name
            block = MOE_FAMILIES[spec.family][0]
            disk = name.replace(".mlp.gate.", f".{block}.gate.")
            tensors[disk] = value.to(torch.float16)
            reference[name] = tensors[disk].to(torch.float32)
            continue
        is_linear = leaf == "weight" and any(module.endswith(n) for n in LINEAR_NAMES)
        is_linear = is_linear or (spec.quantize_lm_head and name == "lm_head.weight")
        if is_linear:
            q = quantize_awq(value, spec.group_size, spec.zero_point)
            tensors[module + ".qweight"] = q.qweight
            tensors[module + ".qzeros"] = q.qzeros
            tensors[module + ".scales"] = q.scales
            reference[name] = dequantize(q, spec.group_size).t().contiguous()
        else:
            half = value.to(torch.float16)
            tensors[name] = half
            reference[name] = half.to(torch.float32)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        os.path.join(out_dir, "model.safetensors"),
        metadata={"format": "pt"},
    )

    qcfg: dict[str, Any] = dict(
        quant_config
        or {
            "quant_method": "awq",
            "bits": 4,
            "group_size": spec.group_size,
            "zero_point": spec.zero_point,
            "version": "gemm",
            "modules_to_not_convert": None,
            **({"lm_head": True} if spec.quantize_lm_head else {}),
        }
    )
    cfg_dict = cfg.to_dict()
    cfg_dict["torch_dtype"] = "float16"
    cfg_dict.pop("dtype", None)
    if config_location == "config.json":
        cfg_dict["quantization_config"] = qcfg
    elif config_location == "quant_config.json":
        qcfg.pop("quant_method", None)
        with open(os.path.join(out_dir, "quant_config.json"), "w") as f:
            json.dump(qcfg, f, indent=2)
    else:
        raise ValueError(config_location)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2)
    for fname in os.listdir(tok_dir):
        with (
            open(os.path.join(tok_dir, fname), "rb") as src,
            open(os.path.join(out_dir, fname), "wb") as dst,
        ):
            dst.write(src.read())
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id}, f)
    return reference


def _write_experts(
    spec: TinySpec,
    module: str,
    leaf: str,
    value: torch.Tensor,
    tensors: dict[str, torch.Tensor],
    reference: dict[str, torch.Tensor],
) -> None:
    """One fused transformers expert tensor (``gate_up_proj`` [E, 2I, H] or
    ``down_proj`` [E, H, I]) -> per-expert AWQ triples under the family's
    checkpoint names, and the dequantized fused tensor as the reference."""
    block, (gate, up, down) = MOE_FAMILIES[spec.family]
    disk_prefix = module.replace(".mlp.experts", f".{block}.experts")
    inter = spec.moe_intermediate
    deq = []
    for e in range(value.shape[0]):
        if leaf == "gate_up_proj":
            parts = [(gate, value[e, :inter]), (up, value[e, inter:])]
        elif leaf == "down_proj":
            parts = [(down, value[e])]
        else:
            raise ValueError(f"unexpected expert tensor {module}.{leaf}")
        rows = []
        for proj, weight in parts:  # weight [N, K], as nn.Linear stores it
            q = quantize_awq(weight, spec.group_size, spec.zero_point)
            base = f"{disk_prefix}.{e}.{proj}"
            tensors[base + ".qweight"] = q.qweight
            tensors[base + ".qzeros"] = q.qzeros
            tensors[base + ".scales"] = q.scales
            rows.append(dequantize(q, spec.group_size).t())
        deq.append(torch.cat(rows, dim=0))
    reference[f"{module}.{leaf}"] = torch.stack(deq).contiguous()


def reference_model(spec: TinySpec, tok_dir: str, reference: dict[str, torch.Tensor]) -> Any:
    """The dequantized model in transformers, fp32, eval mode."""
    from transformers import AutoModelForCausalLM

    cfg = _hf_config(spec, tok_dir)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(reference, strict=False)
    # rotary inv_freq buffers are not in the state dict on some versions
    assert not [m for m in missing if "rotary" not in m], missing
    assert not unexpected, unexpected
    return model.eval()


@torch.no_grad()
def teacher_forced_logprobs(model: Any, token_ids: list[int]) -> list[float]:
    """log p(token_i | tokens_<i) for i = 1..len-1 under ``model``."""
    ids = torch.tensor([token_ids])
    logits = model(input_ids=ids).logits[0].to(torch.float64)
    logp = torch.log_softmax(logits, dim=-1)
    return [float(logp[i - 1, token_ids[i]]) for i in range(1, len(token_ids))]


@torch.no_grad()
def greedy_margins(model: Any, token_ids: list[int]) -> list[float]:
    """top1 - top2 logit gap at each position predicting token 1..len-1."""
    ids = torch.tensor([token_ids])
    logits = model(input_ids=ids).logits[0].to(torch.float64)
    top2 = logits.topk(2, dim=-1).values
    return [float(top2[i - 1, 0] - top2[i - 1, 1]) for i in range(1, len(token_ids))]


@torch.no_grad()
def greedy_argmax(model: Any, token_ids: list[int]) -> list[int]:
    """argmax token at each position predicting token 1..len-1."""
    ids = torch.tensor([token_ids])
    logits = model(input_ids=ids).logits[0]
    return [int(logits[i - 1].argmax()) for i in range(1, len(token_ids))]
