"""Weight formats: bytes per parameter including their scales, which tensors
stay in 16 bits, and what a model's `quantization_config` declares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from sparkctl.errors import InputError
from sparkctl.perf.model_config import ModelShape


@dataclass(frozen=True)
class WeightFormat:
    name: str
    bytes_per_param: float  # scales included
    compute: str  # which tensor-core peak its GEMMs run at: bf16, fp8 or fp4
    explanation: str


# Scale overheads: FP8 checkpoints carry one fp32 scale per 128x128 block (or per
# channel), negligible; NVFP4 one fp8 scale per 16 values; MXFP4 one e8m0 scale per
# 32; AWQ/GPTQ int4 one fp16 scale and a 4-bit zero point per group of 128.
FORMATS: dict[str, WeightFormat] = {
    "fp32": WeightFormat("fp32", 4.0, "bf16", "32-bit weights (CPU test models)"),
    "bf16": WeightFormat("bf16", 2.0, "bf16", "16-bit weights"),
    "fp16": WeightFormat("fp16", 2.0, "bf16", "16-bit weights"),
    "fp8": WeightFormat("fp8", 1.0 + 4 / (128 * 128), "fp8", "8-bit float, one fp32 scale per 128x128 block"),
    "nvfp4": WeightFormat("nvfp4", 0.5 + 1 / 16, "fp4", "4-bit float, one fp8 scale per 16 values"),
    "mxfp4": WeightFormat("mxfp4", 0.5 + 1 / 32, "fp4", "4-bit float, one 8-bit exponent scale per 32 values"),
    "int4": WeightFormat("int4", 0.5 + 2.5 / 128, "bf16",
                         "4-bit integer (AWQ/GPTQ), fp16 scale and 4-bit zero per group of 128; 16-bit GEMMs"),
}
KV_BYTES = {"bf16": 2.0, "fp16": 2.0, "auto": 2.0, "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0}


@dataclass(frozen=True)
class QuantPlan:
    """How each parameter group is stored. Embeddings are never counted per token
    (decode reads one row); attention and the LM head often keep another format
    than the MLP/expert weights."""

    weights: WeightFormat  # MLP and expert weights
    attention: WeightFormat
    lm_head: WeightFormat
    source: str  # "--quant", "config.json quantization_config", "config.json dtype"

    @property
    def attention_16bit(self) -> bool:
        return self.attention.bytes_per_param >= 2

    @property
    def lm_head_16bit(self) -> bool:
        return self.lm_head.bytes_per_param >= 2

    def describe(self) -> str:
        others = [f"{name} {fmt.name}" for name, fmt in (("attention", self.attention), ("LM head", self.lm_head))
                  if fmt.name != self.weights.name]
        tail = f"; {', '.join(others)}" if others else ""
        return f"{self.weights.name} ({self.weights.bytes_per_param:.4g} B/param){tail} [{self.source}]"


def weight_format(name: str) -> WeightFormat:
    key = name.lower().replace("-", "")
    aliases = {"awq": "int4", "gptq": "int4", "w4a16": "int4", "float16": "fp16", "bfloat16": "bf16",
               "half": "fp16", "fp8_e4m3": "fp8"}
    key = aliases.get(key, key)
    if key not in FORMATS:
        raise InputError(f"unknown weight format {name!r}", hint=f"use one of: {', '.join(FORMATS)}")
    return FORMATS[key]


def kv_bytes(name: str) -> float:
    if name.lower() not in KV_BYTES:
        raise InputError(f"unknown KV cache dtype {name!r}", hint="use bf16, fp16 or fp8")
    return KV_BYTES[name.lower()]


def declared_format(quant: Mapping[str, Any] | None) -> str | None:
    """The weight format a `quantization_config` declares, or None for none/unknown."""
    if not quant:
        return None
    method = str(quant.get("quant_method") or quant.get("quant_algo") or "").lower()
    if method in ("fp8", "fbgemm_fp8"):
        return "fp8"
    if method == "mxfp4":
        return "mxfp4"
    if method in ("awq", "gptq", "awq_marlin", "gptq_marlin", "auto-round", "autoround"):
        return "int4" if int(quant.get("bits", 4) or 4) == 4 else "fp8"
    if method in ("modelopt", "modelopt_fp4", "nvfp4"):
        algo = str(quant.get("quant_algo") or method).lower()
        return "nvfp4" if "fp4" in algo else "fp8"
    if method == "compressed-tensors":
        fmt = str(quant.get("format") or "").lower()
        if "nvfp4" in fmt:
            return "nvfp4"
        if "float" in fmt or "fp8" in fmt:
            return "fp8"
        if "pack" in fmt or "int" in fmt:
            return "int4"
    return None


_ALGOS = {"fp8": "fp8", "nvfp4": "nvfp4", "w4a16_nvfp4": "nvfp4", "w4a8_nvfp4_fp8": "nvfp4", "mxfp4": "mxfp4",
          "w4a16_awq": "int4", "int4_awq": "int4", "w4a16": "int4"}


def mixed_formats(quant: Mapping[str, Any] | None) -> dict[str, str] | None:
    """Per-group formats of a ModelOpt MIXED_PRECISION checkpoint: which algorithm its
    `quantized_layers` give the MLP/experts, the attention and the LM head."""
    layers = (quant or {}).get("quantized_layers")
    if str((quant or {}).get("quant_algo", "")).upper() != "MIXED_PRECISION" or not isinstance(layers, dict):
        return None
    found: dict[str, str] = {}
    for name, spec in layers.items():
        algo = _ALGOS.get(str((spec or {}).get("quant_algo", "")).lower())
        group = "lm_head" if name.endswith("lm_head") else "attention" if "attn" in name else "mlp" if "mlp" in name else None
        if algo and group and group not in found:
            found[group] = algo
    return found or None


def _not_converted(quant: Mapping[str, Any] | None) -> list[str]:
    names = (quant or {}).get("modules_to_not_convert") or (quant or {}).get("ignore") or []
    return [str(n) for n in names] if isinstance(names, list) else []


def plan_for(model: ModelShape, quant_flag: str | None, *, all_linear: bool = False) -> QuantPlan:
    """--quant wins over the config's quantization_config, which wins over its dtype.

    The LM head stays 16-bit in every quantized format unless all_linear (e.g. a
    vLLM build run with MXFP4 for qkv, o and lm_head too); gpt-oss keeps attention
    in bf16 the same way. A ModelOpt mixed-precision checkpoint says per group."""
    bf16 = FORMATS["bf16"]
    mixed = None if quant_flag else mixed_formats(model.quantization_config)
    if mixed:
        mlp = weight_format(mixed.get("mlp", "bf16"))
        return QuantPlan(mlp, weight_format(mixed.get("attention", "bf16")), weight_format(mixed.get("lm_head", "bf16")),
                         "config.json quantization_config (mixed precision)")
    declared = declared_format(model.quantization_config)
    if quant_flag:
        fmt, source = weight_format(quant_flag), "--quant"
    elif declared:
        fmt, source = weight_format(declared), "config.json quantization_config"
    else:
        dtype = (model.declared_dtype or "bfloat16").lower()
        fmt = FORMATS[{"float16": "fp16", "float32": "fp32"}.get(dtype, "bf16")]
        source = "config.json dtype" if model.declared_dtype else "assumed bf16"
    if fmt.bytes_per_param >= 2:
        return QuantPlan(fmt, fmt, fmt, source)
    if all_linear:
        return QuantPlan(fmt, fmt, fmt, source + " (all linear layers quantized)")
    skipped = _not_converted(model.quantization_config) if source != "--quant" or declared == fmt.name else []
    attention_16 = model.family == "gpt-oss" or any("self_attn" in n or "attn" == n for n in skipped)
    return QuantPlan(fmt, bf16 if attention_16 else fmt, bf16, source)
