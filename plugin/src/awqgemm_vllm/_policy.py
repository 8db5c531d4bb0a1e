"""vLLM-independent rules of the plugin: config parsing, take-over decisions,
shard arithmetic and the checks behind every start-up error message.

Nothing here imports vLLM or awqgemm, so it is unit-testable anywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Names this plugin registers with vLLM: the canonical name and the alias kept
#: for command lines written for the old turbomind_vllm_plugin.
CANONICAL_NAME = "awqgemm"
ALIAS_NAME = "awq_turbomind"
OUR_NAMES = (CANONICAL_NAME, ALIAS_NAME)

#: Names under which a user may ask for vLLM's own AWQ.  On a GPU that vLLM's
#: AWQ kernels cannot run on (below sm75) we serve those requests too.
VLLM_AWQ_NAMES = ("awq", "awq_marlin", "auto_awq")

#: Environment switch: "1" makes the plugin take every compatible AWQ checkpoint,
#: even where vLLM's own AWQ kernels would run.
TAKE_OVER_ENV = "AWQGEMM_TAKE_OVER_AWQ"

SUPPORTED_BITS = (4,)
SUPPORTED_GROUP_SIZES = (32, 64, 128)
PACK_FACTOR = 8  # 4-bit values per int32
#: The zero of every group in symmetric AWQ (zero_point: false): AutoAWQ
#: quantizes to -8..7 and stores value + 8; vLLM's AWQ kernels use 8 likewise.
SYMMETRIC_ZERO = 8
#: One packed qzeros word of symmetric AWQ: 8 in each of its eight nibbles,
#: as a signed int32 (0x88888888).
_word = sum(SYMMETRIC_ZERO << (4 * i) for i in range(PACK_FACTOR))
SYMMETRIC_ZEROS_WORD = _word - 2**32 if _word >= 2**31 else _word
del _word

#: Compute capabilities (major*10+minor).
MIN_CAPABILITY = 70  # Volta
VLLM_AWQ_MIN_CAPABILITY = 75  # vLLM's own AWQ kernels need Turing or newer
BF16_MIN_CAPABILITY = 80

#: AutoAWQ / transformers "version" values whose checkpoints store qweight,
#: qzeros and scales in the GEMM layout this plugin reads.
GEMM_LAYOUT_VERSIONS = ("gemm", "exllama", "ipex")
#: Versions with a different tensor layout.
OTHER_LAYOUT_VERSIONS = ("gemv", "gemv_fast", "marlin")

#: Config files vLLM looks for when config.json has no quantization_config.
CONFIG_FILENAMES = ("quant_config.json", "quantize_config.json")


#: vLLM's switch for batch-invariant kernels.
BATCH_INVARIANT_ENV = "VLLM_BATCH_INVARIANT"


class AwqGemmConfigError(ValueError):
    """An AWQ checkpoint or a start-up setting this plugin cannot serve."""


# ---------------------------------------------------------------------------
# supported vLLM versions
# ---------------------------------------------------------------------------

#: The file (package data) that holds the supported vLLM range; pyproject.toml
#: reads the same file for the ``vllm`` extra.
VLLM_REQUIREMENT_FILE = "vllm-requirement.txt"
#: Lets the plugin register with a vLLM outside the supported range.
ALLOW_UNTESTED_VLLM_ENV = "AWQGEMM_ALLOW_UNTESTED_VLLM"


class AwqGemmVersionError(RuntimeError):
    """The installed vLLM is outside the range this plugin supports."""


def vllm_requirement() -> str:
    """The supported vLLM range as a requirement string (``vllm>=A,<B``)."""
    from importlib.resources import files

    text = files(__package__).joinpath(VLLM_REQUIREMENT_FILE).read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1 or not lines[0].startswith("vllm"):
        raise AwqGemmVersionError(f"{VLLM_REQUIREMENT_FILE} must hold one 'vllm...' requirement line, got {lines}.")
    return lines[0]


def check_vllm_version(version: str, requirement: str, allow_untested: bool = False) -> bool:
    """Whether vLLM ``version`` is in ``requirement``'s range.  Outside it raises
    :class:`AwqGemmVersionError` saying what to do, unless ``allow_untested``
    (then returns False: the caller warns)."""
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version

    spec = Requirement(requirement).specifier
    try:
        parsed = Version(version)
    except InvalidVersion:
        raise AwqGemmVersionError(f"awqgemm-vllm cannot read the vLLM version {version!r}.") from None
    # compare the release only: 0.33.1.dev3+gabc or 0.32.0+cpu count as 0.33.1, 0.32.0
    if spec.contains(Version(parsed.base_version), prereleases=True):
        return True
    if allow_untested:
        return False
    raise AwqGemmVersionError(
        f"awqgemm-vllm supports {requirement}; this is vLLM {version}. Install a "
        "supported vLLM or an awqgemm-vllm release made for this one; to try it "
        f"anyway set {ALLOW_UNTESTED_VLLM_ENV}=1."
    )


def env_flag(name: str, environ: Mapping[str, str] | None = None, hint: str = "set it to 1 or 0") -> bool:
    """A boolean environment switch: 1/true/yes/on or 0/false/no/off (default)."""
    env = os.environ if environ is None else environ
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise AwqGemmConfigError(f"{name}={env.get(name)!r} is not understood; {hint}.")


def batch_invariance_error() -> AwqGemmConfigError:
    return AwqGemmConfigError(
        f"awqgemm does not run batch-invariant ({BATCH_INVARIANT_ENV}=1): its GPU "
        "kernels pick the tiling and the split of K by the number of tokens in the "
        "batch, so a request's logits depend on what it is batched with. Drop "
        f"'--quantization {CANONICAL_NAME}' (vLLM then serves AWQ with its "
        f"batch-invariant path) or unset {BATCH_INVARIANT_ENV}."
    )


def offload_error(prefix: str, what: str) -> AwqGemmConfigError:
    return AwqGemmConfigError(
        f"{prefix or '<linear layer>'}: awqgemm does not support CPU weight offloading "
        f"({what}): the layer's weights are repacked after loading, and vLLM would "
        "keep the repacked ones on the GPU. Drop the offloading option, or serve "
        f"the checkpoint with vLLM's own AWQ (drop '--quantization {CANONICAL_NAME}')."
    )


def _first(cfg: Mapping[str, Any], keys: Sequence[str]) -> tuple[bool, Any]:
    for key in keys:
        if key in cfg:
            return True, cfg[key]
    return False, None


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str | float):
        raise AwqGemmConfigError(f"AWQ quantization config: {what} must be an integer, got {value!r}.")
    try:
        as_float = float(value)
    except ValueError:
        raise AwqGemmConfigError(f"AWQ quantization config: {what} must be an integer, got {value!r}.") from None
    if as_float != int(as_float):
        raise AwqGemmConfigError(f"AWQ quantization config: {what} must be an integer, got {value!r}.")
    return int(as_float)


def _as_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise AwqGemmConfigError(f"AWQ quantization config: {what} must be true or false, got {value!r}.")


@dataclass(frozen=True)
class AwqSettings:
    """The parts of an AWQ checkpoint config that the plugin uses."""

    weight_bits: int
    group_size: int
    zero_point: bool
    version: str | None = None
    modules_to_not_convert: tuple[str, ...] = field(default_factory=tuple)
    lm_head_quantized: bool = False


def parse_awq_config(cfg: Mapping[str, Any]) -> AwqSettings:
    """Read an AWQ quantization config (``quantization_config`` of config.json,
    ``quant_config.json`` or ``quantize_config.json``) and check that awqgemm can
    serve it.  Raises :class:`AwqGemmConfigError` naming the problem and what to do.
    """
    if not isinstance(cfg, Mapping):
        raise AwqGemmConfigError(f"AWQ quantization config must be a JSON object, got {type(cfg).__name__}.")
    method = cfg.get("quant_method")
    if method is not None and str(method).lower() != "awq":
        raise AwqGemmConfigError(
            f"awqgemm serves AWQ checkpoints (quant_method 'awq'); this checkpoint's "
            f"quant_method is {method!r}. Drop '--quantization {CANONICAL_NAME}' and "
            "let vLLM pick the method from the checkpoint."
        )

    found, bits = _first(cfg, ("w_bit", "bits"))
    if not found:
        raise AwqGemmConfigError(
            "AWQ quantization config has no 'w_bit' or 'bits' key; cannot tell the weight bit width."
        )
    bits = _as_int(bits, "bits")
    if bits not in SUPPORTED_BITS:
        raise AwqGemmConfigError(
            f"awqgemm supports 4-bit AWQ weights only; this checkpoint has bits={bits}. "
            "Serve it with vLLM's own AWQ support instead (drop "
            f"'--quantization {CANONICAL_NAME}')."
        )

    found, group = _first(cfg, ("q_group_size", "group_size"))
    if not found:
        raise AwqGemmConfigError("AWQ quantization config has no 'q_group_size' or 'group_size' key.")
    group = _as_int(group, "group_size")
    if group not in SUPPORTED_GROUP_SIZES:
        hint = " (per-channel quantization)" if group in (-1, 0) else ""
        raise AwqGemmConfigError(
            f"awqgemm supports AWQ group sizes {list(SUPPORTED_GROUP_SIZES)}; this "
            f"checkpoint has group_size={group}{hint}. Re-quantize with "
            "q_group_size 128 (the AutoAWQ default) or serve it with vLLM's own AWQ."
        )

    found, zero_point = _first(cfg, ("zero_point",))
    # zero_point: false is symmetric AWQ: every zero is SYMMETRIC_ZERO.
    zero_point = True if not found else _as_bool(zero_point, "zero_point")

    version = cfg.get("version")
    if version is not None:
        version = str(version).lower()
        if version not in GEMM_LAYOUT_VERSIONS:
            raise AwqGemmConfigError(
                f"AWQ checkpoint version {cfg.get('version')!r} stores its weights in a "
                f"layout awqgemm does not read; awqgemm reads the GEMM layout (version "
                f"one of {list(GEMM_LAYOUT_VERSIONS)}). Re-export the model with "
                "version 'GEMM'."
            )

    modules = cfg.get("modules_to_not_convert")
    if modules is None:
        modules = []
    if isinstance(modules, str) or not isinstance(modules, Iterable):
        raise AwqGemmConfigError(
            f"AWQ quantization config: modules_to_not_convert must be a list of module names, got {modules!r}."
        )
    modules = tuple(str(m) for m in modules)

    found, lm_head = _first(cfg, ("lm_head",))
    lm_head = _as_bool(lm_head, "lm_head") if found else False

    return AwqSettings(
        weight_bits=bits,
        group_size=group,
        zero_point=zero_point,
        version=version,
        modules_to_not_convert=modules,
        lm_head_quantized=lm_head,
    )


def is_awq_checkpoint(hf_quant_cfg: Mapping[str, Any] | None) -> bool:
    if not isinstance(hf_quant_cfg, Mapping):
        return False
    return str(hf_quant_cfg.get("quant_method", "")).lower() == "awq"


def env_take_over(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``AWQGEMM_TAKE_OVER_AWQ`` asks to take every AWQ checkpoint."""
    return env_flag(TAKE_OVER_ENV, environ, hint="set it to 1 (take all AWQ checkpoints) or 0 (default)")


#: Config keys that give the number of routed experts, by architecture:
#: Qwen-MoE / Jamba / OLMoE, Mixtral, DeepSeek, DBRX (under ffn_config) and
#: ERNIE 4.5 (an int, or a list per modality in the VL models).
MOE_EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
#: Sub-configs that may hold those keys.
MOE_SUB_CONFIGS = ("text_config", "ffn_config", "language_config", "llm_config")


def _config_get(cfg: Any, key: str) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key)
    return getattr(cfg, key, None)


def _more_than_one_expert(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value > 1
    if isinstance(value, list | tuple):
        return any(_more_than_one_expert(v) for v in value)
    return False


def is_moe_config(hf_config: Any) -> bool:
    """Best-effort: does a Hugging Face config (object or dict) describe a
    mixture-of-experts model?"""
    if hf_config is None:
        return False
    pending = [hf_config]
    seen: set[int] = set()
    while pending:
        cfg = pending.pop()
        if cfg is None or id(cfg) in seen or len(seen) > 16:
            continue
        seen.add(id(cfg))
        if any(_more_than_one_expert(_config_get(cfg, key)) for key in MOE_EXPERT_KEYS):
            return True
        pending.extend(_config_get(cfg, sub) for sub in MOE_SUB_CONFIGS)
    return False


@dataclass(frozen=True)
class Platform:
    """What the override decision needs to know about where vLLM runs."""

    kind: str  # "cuda", "cpu" or anything else vLLM runs on ("rocm", "xpu", ...)
    capability: int | None = None  # major*10+minor on CUDA, else None


def decide_override(
    hf_quant_cfg: Mapping[str, Any] | None,
    user_quant: str | None,
    platform: Platform,
    take_over_all: bool = False,
    hf_config: Any = None,
    batch_invariant: bool = False,
    moe_supported: bool = True,
) -> tuple[str | None, str]:
    """Decide whether the plugin serves a checkpoint.

    Mixture-of-experts models follow the same rules as dense ones (their MoE
    layers run on ``awqgemm.fused_moe``), unless ``moe_supported`` is False (an
    awqgemm library without the MoE op): then they are never taken
    automatically.

    Returns ``(name, reason)`` where ``name`` is :data:`CANONICAL_NAME` to take the
    checkpoint or ``None`` to leave it to vLLM.  Raises :class:`AwqGemmConfigError`
    when the user explicitly asked for awqgemm and the checkpoint cannot be served.
    """
    explicit = user_quant in OUR_NAMES
    if explicit:
        method = (hf_quant_cfg or {}).get("quant_method", "")
        if not is_awq_checkpoint(hf_quant_cfg):
            raise AwqGemmConfigError(
                f"'--quantization {user_quant}' serves AWQ checkpoints (quant_method "
                f"'awq'); this checkpoint's quant_method is {method!r}. Drop "
                "'--quantization' to let vLLM pick the method from the checkpoint."
            )
        assert hf_quant_cfg is not None
        parse_awq_config(hf_quant_cfg)  # raises with the reason if unsupported
        _check_platform(platform)
        if batch_invariant:
            raise batch_invariance_error()
        return CANONICAL_NAME, f"requested with --quantization {user_quant}"

    if not is_awq_checkpoint(hf_quant_cfg):
        return None, "not an AWQ checkpoint"
    if user_quant is not None and user_quant not in VLLM_AWQ_NAMES:
        return None, f"--quantization {user_quant} was requested"
    assert hf_quant_cfg is not None
    try:
        parse_awq_config(hf_quant_cfg)
    except AwqGemmConfigError as exc:
        return None, f"checkpoint not servable by awqgemm ({exc})"
    if not moe_supported and is_moe_config(hf_config):
        return None, "mixture-of-experts model, and the installed awqgemm library has no MoE op"
    if batch_invariant:
        return None, f"{BATCH_INVARIANT_ENV}=1 (awqgemm is not batch-invariant)"

    if platform.kind == "cuda" and platform.capability is not None:
        cap = platform.capability
        if MIN_CAPABILITY <= cap < VLLM_AWQ_MIN_CAPABILITY:
            return CANONICAL_NAME, (f"GPU capability {cap / 10:.1f} has no vLLM AWQ kernel; awqgemm serves it")
        if cap < MIN_CAPABILITY:
            return None, f"GPU capability {cap / 10:.1f} is below awqgemm's minimum 7.0"
    if take_over_all:
        if platform.kind not in ("cuda", "cpu"):
            return None, f"awqgemm does not run on the {platform.kind} platform"
        return CANONICAL_NAME, f"{TAKE_OVER_ENV}=1"
    return None, "vLLM's own AWQ kernels serve this GPU"


def _check_platform(platform: Platform) -> None:
    if platform.kind == "cpu":
        return
    if platform.kind != "cuda":
        raise AwqGemmConfigError(
            f"awqgemm runs on NVIDIA GPUs (compute capability 7.0 or newer) and on "
            f"the CPU; this vLLM runs on the {platform.kind} platform. Drop "
            f"'--quantization {CANONICAL_NAME}'."
        )
    if platform.capability is not None and platform.capability < MIN_CAPABILITY:
        raise AwqGemmConfigError(
            f"awqgemm needs an NVIDIA GPU of compute capability 7.0 (Volta) or newer; "
            f"this GPU has {platform.capability / 10:.1f}."
        )


def check_act_dtype(dtype_name: str, platform: Platform) -> None:
    """Activation dtype rules: fp16 everywhere, bf16 on sm80+, fp32 on CPU only."""
    if dtype_name == "float16":
        return
    if dtype_name == "bfloat16":
        if platform.kind == "cuda" and platform.capability is not None and platform.capability < BF16_MIN_CAPABILITY:
            raise AwqGemmConfigError(
                f"bfloat16 needs compute capability 8.0 or newer; this GPU has "
                f"{platform.capability / 10:.1f}. Start vLLM with '--dtype float16'."
            )
        return
    if dtype_name == "float32" and platform.kind == "cpu":
        return
    allowed = "float16 or bfloat16" + (", or float32" if platform.kind == "cpu" else "")
    raise AwqGemmConfigError(
        f"awqgemm runs activations in {allowed}; the model dtype is {dtype_name}. Start vLLM with '--dtype float16'."
    )


def check_linear_shard(
    prefix: str,
    input_size: int,
    input_size_per_partition: int,
    output_size: int,
    output_partition_sizes: Sequence[int],
    group_size: int,
) -> None:
    """Check that one rank's shard of an AWQ linear layer can be served.

    Row-parallel layers split K (the input dim): every shard must hold whole
    quantization groups.  Column-parallel layers split N: every shard must hold
    whole int32 words of 8 packed columns.
    """
    name = prefix or "<linear layer>"
    if input_size_per_partition <= 0 or any(n <= 0 for n in output_partition_sizes):
        raise AwqGemmConfigError(
            f"{name}: empty shard (input {input_size_per_partition}, outputs {list(output_partition_sizes)})."
        )
    if input_size_per_partition % group_size != 0:
        tp = max(1, input_size // input_size_per_partition)
        good = valid_row_parallel_sizes(input_size, group_size)
        raise AwqGemmConfigError(
            f"{name}: this rank's input (K) shard has {input_size_per_partition} "
            f"rows (K={input_size} split {tp} ways), not a multiple of the AWQ group "
            f"size {group_size}, so quantization groups would straddle ranks. "
            f"Use a tensor-parallel size that gives whole groups per rank "
            f"(for this layer: {good})."
        )
    for n in output_partition_sizes:
        if n % PACK_FACTOR != 0:
            raise AwqGemmConfigError(
                f"{name}: an output (N) shard has {n} columns, not a multiple of "
                f"{PACK_FACTOR} (AWQ packs 8 columns per int32), so the tensor-parallel "
                f"split cuts packed words (N={output_size}). Use a smaller "
                "tensor-parallel size."
            )


def check_moe_shard(
    prefix: str,
    hidden_size: int,
    intermediate_size_per_partition: int,
    intermediate_size: int | None,
    group_size: int,
) -> None:
    """Check that one rank's shard of an AWQ mixture-of-experts layer can be served.

    Per expert, w13 is ``[hidden, 2 * intermediate]`` (K = hidden) and w2 is
    ``[intermediate, hidden]`` (K = intermediate).  Tensor parallelism splits the
    intermediate size: every shard must hold whole quantization groups (w2's K)
    and whole int32 words of 8 packed columns (w13's N).  Expert parallelism
    splits the experts and needs nothing more.
    """
    name = prefix or "<MoE layer>"
    inter = intermediate_size_per_partition
    if hidden_size <= 0 or inter <= 0:
        raise AwqGemmConfigError(f"{name}: empty expert shard (hidden {hidden_size}, intermediate {inter}).")
    if hidden_size % group_size or hidden_size % PACK_FACTOR:
        raise AwqGemmConfigError(
            f"{name}: the hidden size {hidden_size} is not a multiple of the AWQ group size "
            f"{group_size} (and of {PACK_FACTOR}); this checkpoint cannot be an AWQ MoE "
            "checkpoint awqgemm reads."
        )
    if inter % group_size or inter % PACK_FACTOR:
        full = intermediate_size if intermediate_size else inter
        tp = max(1, full // inter)
        good = [t for t in valid_row_parallel_sizes(full, group_size) if (full // t) % PACK_FACTOR == 0]
        raise AwqGemmConfigError(
            f"{name}: this rank's share of the experts' intermediate size is {inter} "
            f"({full} split {tp} ways), not a multiple of the AWQ group size {group_size} "
            f"(and of {PACK_FACTOR}), so quantization groups would straddle ranks. Use a "
            f"tensor-parallel size that gives whole groups per rank (for this layer: {good}), "
            "or expert parallelism (--enable-expert-parallel), which splits experts, not "
            "their intermediate size."
        )


def valid_row_parallel_sizes(input_size: int, group_size: int, limit: int = 8) -> list[int]:
    """Tensor-parallel sizes (up to ``limit``) that split K into whole groups."""
    return [tp for tp in range(1, limit + 1) if input_size % tp == 0 and (input_size // tp) % group_size == 0]


def module_is_skipped(
    prefix: str,
    modules_to_not_convert: Sequence[str],
    packed_modules_mapping: Mapping[str, Sequence[str]] | None = None,
    exact_modules: Sequence[str] = (),
) -> bool:
    """AWQ ``modules_to_not_convert`` semantics (substring match), extended to
    vLLM's fused layers: a fused layer (e.g. ``qkv_proj``) is skipped when all its
    checkpoint modules are; a partly skipped fused layer is an error.
    ``exact_modules`` (found by scanning the checkpoint) match whole names only."""
    if not modules_to_not_convert and not exact_modules:
        return False
    exact = set(exact_modules)

    def skipped(name: str) -> bool:
        return name in exact or any(m in name for m in modules_to_not_convert)

    last = prefix.rsplit(".", 1)[-1]
    shards = list((packed_modules_mapping or {}).get(last, ()))
    if not shards or last in shards:
        return skipped(prefix)
    base = prefix[: len(prefix) - len(last)]
    flags = [skipped(base + s) for s in shards]
    if all(flags):
        return True
    if any(flags):
        raise AwqGemmConfigError(
            f"{prefix} fuses {shards}, but modules_to_not_convert leaves only some of "
            "them unquantized; vLLM cannot serve a fused layer that is partly "
            "quantized."
        )
    return skipped(prefix)


def moe_is_skipped(
    prefix: str,
    modules_to_not_convert: Sequence[str],
    exact_modules: Sequence[str] = (),
) -> bool:
    """Whether a MoE layer (``prefix`` = its experts module, e.g.
    ``model.layers.0.mlp.experts``) is left unquantized: by
    ``modules_to_not_convert`` (substring match, as vLLM's AWQ MoE does), or
    because the checkpoint stores its experts unquantized (``exact_modules``,
    found by scanning the safetensors, holds modules below ``prefix``)."""
    if any(m in prefix for m in modules_to_not_convert):
        return True
    below = prefix + "."
    return any(m.startswith(below) for m in exact_modules)


FLOAT_SAFETENSORS_DTYPES = ("F16", "BF16", "F32")


def unquantized_modules_from_metadata(dtypes: Mapping[str, Any]) -> list[str]:
    """Modules that carry a floating-point ``weight`` and no ``qweight``, from
    safetensors metadata: tensor name -> dtype string (``"F16"``) or a mapping
    with a ``"dtype"`` key (what vLLM's ``get_safetensors_params_metadata`` gives,
    for local folders and Hub repositories alike)."""
    float_weight: set[str] = set()
    quantized: set[str] = set()
    for name, info in dtypes.items():
        dtype = info.get("dtype", "") if isinstance(info, Mapping) else info
        module, _, leaf = str(name).rpartition(".")
        if leaf == "qweight":
            quantized.add(module)
        elif leaf == "weight" and str(dtype).upper() in FLOAT_SAFETENSORS_DTYPES:
            float_weight.add(module)
    return sorted(float_weight - quantized)


def unquantized_modules_from_safetensors(model_dir: str) -> list[str] | None:
    """:func:`unquantized_modules_from_metadata` of a local safetensors
    checkpoint (only the JSON headers are read); ``None`` when ``model_dir`` is
    not a folder with safetensors files."""
    if not os.path.isdir(model_dir):
        return None
    files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    if not files:
        return None
    dtypes: dict[str, str] = {}
    for fname in files:
        dtypes.update(_safetensors_dtypes(os.path.join(model_dir, fname)))
    return unquantized_modules_from_metadata(dtypes)


def _safetensors_dtypes(path: str) -> dict[str, str]:
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise AwqGemmConfigError(f"{path}: not a safetensors file (too short).")
        n = int.from_bytes(raw_len, "little")
        if n <= 0 or n > 100 * 2**20:
            raise AwqGemmConfigError(f"{path}: not a safetensors file (bad header size).")
        header = json.loads(f.read(n))
    return {k: v.get("dtype", "") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
