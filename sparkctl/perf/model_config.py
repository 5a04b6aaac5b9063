"""A model's config.json reduced to what decode and prefill cost: parameter
groups (attention, dense MLP, experts, LM head) and the KV cache per token.

Families: Llama, Mistral, Qwen2/Qwen3, Qwen3-MoE, Mixtral, gpt-oss, DeepSeek-V3
(MLA), Gemma 2/3/4 (sliding window, mixed head sizes), MiniMax-M2, Llama 4, and
multimodal wrappers that nest the language model under `text_config` (the
vision tower is not read per decoded token, so it is left out).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

from sparkctl.errors import InputError

# Keys under which wrappers nest the language model.
_NESTED = ("text_config", "llm_config", "language_config", "text_model")


class ConfigError(InputError):
    """config.json lacks what the model needs, or cannot be read (exit 2)."""


@dataclass(frozen=True)
class KvLayer:
    """KV cache of one layer: elements stored per token, and the sliding window
    (None: the layer attends to the whole context)."""

    elements_per_token: int
    window: int | None = None
    shared_across_tp: bool = False  # MLA's latent cache is replicated, not split, under TP
    state_bytes: int = 0  # linear attention: a fixed recurrent state, read and written every step


@dataclass(frozen=True)
class MoeShape:
    num_experts: int
    experts_per_token: int
    params_per_expert: int  # one expert in one layer
    moe_layers: int


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    family: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    num_heads: int
    head_dim: int
    tied_embeddings: bool
    attention_params: int  # all layers
    dense_mlp_params: int  # all layers, shared experts included
    moe: MoeShape | None
    kv_layers: tuple[KvLayer, ...]
    declared_dtype: str | None
    quantization_config: Mapping[str, Any] | None
    notes: tuple[str, ...] = ()

    @property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def embedding_params(self) -> int:
        return 0 if self.tied_embeddings else self.vocab_size * self.hidden_size

    @property
    def expert_params_total(self) -> int:
        return 0 if self.moe is None else self.moe.num_experts * self.moe.params_per_expert * self.moe.moe_layers

    @property
    def total_params(self) -> int:
        return (self.attention_params + self.dense_mlp_params + self.expert_params_total
                + self.lm_head_params + self.embedding_params)

    @property
    def active_params(self) -> int:
        """Parameters one token touches in decode (the LM head included, the
        embedding table not: decode reads one row of it)."""
        experts = 0 if self.moe is None else self.moe.experts_per_token * self.moe.params_per_expert * self.moe.moe_layers
        return self.attention_params + self.dense_mlp_params + experts + self.lm_head_params

    def kv_elements(self, context: int) -> int:
        """KV elements read per sequence per decode step at this context length."""
        return sum(layer.elements_per_token * (context if layer.window is None else min(context, layer.window))
                   for layer in self.kv_layers)


# ---------------------------------------------------------------- reading
def load_config(path: str) -> tuple[dict[str, Any], str]:
    """config.json as a dict, from the file or a model folder holding it."""
    target = os.path.join(path, "config.json") if os.path.isdir(path) else path
    try:
        with open(target, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{target}: file not found", hint="pass a config.json or a model folder with one") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{target}: cannot read as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{target}: expected a JSON object")
    return data, target


class _Keys:
    """Reads required and optional keys from one config level, naming the key
    (and its nesting) when one is missing or has the wrong type."""

    def __init__(self, data: Mapping[str, Any], where: str, source: str):
        self.data, self.where, self.source = data, where, source

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def integer(self, key: str, *alternatives: str) -> int:
        for name in (key, *alternatives):
            value = self.data.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        names = " or ".join(repr(self._name(n)) for n in (key, *alternatives))
        raise ConfigError(f"{self.source}: missing {names} (a positive integer), which the model's shape needs",
                          hint="pass the model's own config.json")

    def opt_int(self, key: str, *alternatives: str) -> int | None:
        for name in (key, *alternatives):
            value = self.data.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None


def parse_model(config: Mapping[str, Any], source: str = "config.json") -> ModelShape:
    """ModelShape from config.json contents. Raises ConfigError naming a missing key."""
    outer_type = str(config.get("model_type") or "")
    notes: list[str] = []
    text, where = config, ""
    for key in _NESTED:
        nested = config.get(key)
        if isinstance(nested, dict):
            text, where = nested, key
            notes.append(f"language model read from `{key}`; the vision/audio tower is not read per decoded token")
            break
    keys = _Keys(text, where, source)
    model_type = str(text.get("model_type") or outer_type or "unknown")
    quant = config.get("quantization_config") or text.get("quantization_config")
    dtype = text.get("torch_dtype") or text.get("dtype") or config.get("torch_dtype") or config.get("dtype")
    tied = bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))

    if "hybrid_override_pattern" in text:
        raise ConfigError(f"{source}: {model_type} interleaves Mamba layers (hybrid_override_pattern), which the model "
                          "does not cover", hint="compare it with a measured sparkctl bench result instead")
    if "kv_lora_rank" in text:
        return _mla(keys, text, model_type, tied, dtype, quant, notes)
    return _gqa(keys, text, model_type, tied, dtype, quant, notes)


def _family(model_type: str) -> str:
    for prefix, family in (("gpt_oss", "gpt-oss"), ("qwen3_vl_moe", "qwen3-moe"), ("qwen3_moe", "qwen3-moe"),
                           ("qwen3_5", "qwen3-hybrid"), ("qwen3_next", "qwen3-hybrid"),
                           ("qwen2_moe", "qwen3-moe"), ("qwen", "qwen"), ("mixtral", "mixtral"),
                           ("gemma", "gemma"), ("minimax", "minimax"), ("llama4", "llama4"),
                           ("llama", "llama"), ("mistral", "llama"), ("deepseek", "deepseek")):
        if model_type.startswith(prefix):
            return family
    return "llama-like"


def _layer_types(text: Mapping[str, Any], layers: int) -> list[str]:
    """'sliding_attention' or 'full_attention' per layer: `layer_types` when given,
    else Gemma's `sliding_window_pattern` (every Nth layer global), else all full."""
    declared = text.get("layer_types")
    if isinstance(declared, list) and len(declared) == layers:
        unknown = sorted({str(t) for t in declared} - {"full_attention", "sliding_attention", "linear_attention"})
        if unknown:
            raise ConfigError(f"layer_types names {', '.join(unknown)}, which the model does not cover",
                              hint="compare it with a measured sparkctl bench result instead")
        return [str(t) for t in declared]
    window = text.get("sliding_window")
    pattern = text.get("sliding_window_pattern")
    model_type = str(text.get("model_type", ""))
    if pattern is None and model_type.startswith("gemma3"):
        pattern = 6  # Gemma 3's default (five local layers, then a global one) when the file omits it
    if isinstance(window, int) and model_type.startswith("gemma2") and not isinstance(pattern, int):
        return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]  # Gemma 2 alternates
    if isinstance(window, int) and isinstance(pattern, int) and pattern > 1:
        return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)]
    if isinstance(window, int) and text.get("use_sliding_window") is True:
        return ["sliding_attention"] * layers
    if isinstance(window, int) and model_type.startswith("mistral"):
        return ["sliding_attention"] * layers
    return ["full_attention"] * layers


def _gqa(keys: _Keys, text: Mapping[str, Any], model_type: str, tied: bool, dtype: Any,
         quant: Any, notes: list[str]) -> ModelShape:
    layers = keys.integer("num_hidden_layers")
    hidden = keys.integer("hidden_size")
    vocab = keys.integer("vocab_size")
    heads = keys.integer("num_attention_heads")
    kv_heads = keys.opt_int("num_key_value_heads") or heads
    head_dim = keys.opt_int("head_dim") or hidden // heads
    global_head_dim = keys.opt_int("global_head_dim") or head_dim
    global_kv_heads = keys.opt_int("num_global_key_value_heads") or kv_heads
    k_eq_v = bool(text.get("attention_k_eq_v"))
    window = keys.opt_int("sliding_window")
    types = _layer_types(text, layers)

    attention = 0
    kv_layers: list[KvLayer] = []
    gated_q = 2 if text.get("attn_output_gate") else 1  # Qwen3.5/3.6 gate the attention output through q_proj
    for kind in types:
        if kind == "linear_attention":
            params, layer = _linear_attention(keys, text, hidden)
            attention += params
            kv_layers.append(layer)
            continue
        full = kind != "sliding_attention"
        hd, kvh = (global_head_dim, global_kv_heads) if full else (head_dim, kv_heads)
        # q and o projections, k and v projections (one of them when K equals V)
        kv_mats = 1 if (full and k_eq_v) else 2
        attention += (1 + gated_q) * hidden * heads * hd + kv_mats * hidden * kvh * hd
        kv_layers.append(KvLayer(kv_mats * kvh * hd, None if full else window))
    if global_head_dim != head_dim:
        notes.append(f"mixed head sizes: {head_dim} on sliding layers, {global_head_dim} on global layers")
    if "linear_attention" in types:
        notes.append(f"{types.count('linear_attention')} of {layers} layers use linear attention: a fixed state "
                     "per sequence instead of a growing KV cache")
    if window and any(t == "sliding_attention" for t in types):
        notes.append(f"{sum(t == 'sliding_attention' for t in types)} of {layers} layers use a "
                     f"{window}-token sliding window (their KV reads stop growing past it)")

    moe, dense = _moe_and_dense(keys, text, model_type, layers, hidden)
    return ModelShape(
        model_type=model_type, family=_family(model_type), num_layers=layers, hidden_size=hidden,
        vocab_size=vocab, num_heads=heads, head_dim=head_dim, tied_embeddings=tied,
        attention_params=attention, dense_mlp_params=dense, moe=moe, kv_layers=tuple(kv_layers),
        declared_dtype=str(dtype) if dtype else None,
        quantization_config=dict(quant) if isinstance(quant, dict) else None, notes=tuple(notes),
    )


def _linear_attention(keys: _Keys, text: Mapping[str, Any], hidden: int) -> tuple[int, KvLayer]:
    """A gated delta-net layer (Qwen3-Next, Qwen3.5/3.6): q, k, v, gate and output
    projections, and a recurrent state of value heads x key dim x value dim."""
    k_heads, k_dim = keys.integer("linear_num_key_heads"), keys.integer("linear_key_head_dim")
    v_heads, v_dim = keys.integer("linear_num_value_heads"), keys.integer("linear_value_head_dim")
    params = hidden * (2 * k_heads * k_dim + v_heads * v_dim) + hidden * v_heads * v_dim + v_heads * v_dim * hidden
    params += hidden * 2 * v_heads  # the per-head decay and beta projections
    state_elem = 4 if "32" in str(text.get("mamba_ssm_dtype", "float32")) else 2
    return params, KvLayer(0, None, state_bytes=2 * v_heads * k_dim * v_dim * state_elem)


def _moe_and_dense(keys: _Keys, text: Mapping[str, Any], model_type: str, layers: int,
                   hidden: int) -> tuple[MoeShape | None, int]:
    """Expert shape and the dense MLP parameters (gated MLPs: 3 matrices)."""
    experts = keys.opt_int("num_local_experts", "num_experts", "n_routed_experts")
    if experts is None or experts <= 1:
        return None, layers * 3 * hidden * keys.integer("intermediate_size")
    top_k = keys.integer("num_experts_per_tok", "experts_per_token", "top_k_experts", "moe_topk")
    # Mixtral, gpt-oss, MiniMax and Llama 4 name the per-expert width intermediate_size.
    expert_width = keys.opt_int("moe_intermediate_size") or keys.integer("intermediate_size")
    step = keys.opt_int("decoder_sparse_step", "interleave_moe_layer_step") or 1
    dense_only = text.get("mlp_only_layers") or []
    first_dense = keys.opt_int("first_k_dense_replace") or 0
    moe_layers = sum(1 for i in range(layers)
                     if i >= first_dense and i not in dense_only and (i + 1) % step == 0)
    dense = 0
    dense_layers = layers - moe_layers
    if dense_layers:
        width = keys.opt_int("intermediate_size_mlp") or keys.integer("intermediate_size")
        dense += dense_layers * 3 * hidden * width
    shared = keys.opt_int("shared_expert_intermediate_size", "moe_shared_expert_intermediate_size")
    n_shared = keys.opt_int("n_shared_experts")
    if shared:
        dense += moe_layers * 3 * hidden * shared
    elif n_shared:
        dense += moe_layers * 3 * hidden * expert_width * n_shared
    elif model_type.startswith("llama4"):
        dense += moe_layers * 3 * hidden * expert_width  # one shared expert per MoE layer
    if text.get("enable_moe_block") and keys.opt_int("intermediate_size"):
        dense += moe_layers * 3 * hidden * keys.integer("intermediate_size")  # Gemma 4: a dense MLP beside the experts
    return MoeShape(experts, top_k, 3 * hidden * expert_width, moe_layers), dense


def _mla(keys: _Keys, text: Mapping[str, Any], model_type: str, tied: bool, dtype: Any,
         quant: Any, notes: list[str]) -> ModelShape:
    """DeepSeek-V2/V3 multi-head latent attention: the cache holds the compressed
    latent plus the rotary key part, the same on every TP rank."""
    layers = keys.integer("num_hidden_layers")
    hidden = keys.integer("hidden_size")
    vocab = keys.integer("vocab_size")
    heads = keys.integer("num_attention_heads")
    kv_rank = keys.integer("kv_lora_rank")
    rope = keys.integer("qk_rope_head_dim")
    nope = keys.integer("qk_nope_head_dim")
    v_dim = keys.integer("v_head_dim")
    q_rank = keys.opt_int("q_lora_rank")
    q = (hidden * q_rank + q_rank * heads * (nope + rope)) if q_rank else hidden * heads * (nope + rope)
    per_layer = q + hidden * (kv_rank + rope) + kv_rank * heads * (nope + v_dim) + heads * v_dim * hidden
    notes.append(f"MLA: {kv_rank + rope} cached elements per token per layer, replicated on every TP rank")
    moe, dense = _moe_and_dense(keys, text, model_type, layers, hidden)
    return ModelShape(
        model_type=model_type, family=_family(model_type), num_layers=layers, hidden_size=hidden,
        vocab_size=vocab, num_heads=heads, head_dim=nope + rope, tied_embeddings=tied,
        attention_params=layers * per_layer, dense_mlp_params=dense, moe=moe,
        kv_layers=tuple(KvLayer(kv_rank + rope, None, shared_across_tp=True) for _ in range(layers)),
        declared_dtype=str(dtype) if dtype else None,
        quantization_config=dict(quant) if isinstance(quant, dict) else None, notes=tuple(notes),
    )
