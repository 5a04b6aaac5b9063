"""How big a model is and how it fits on the nodes: sparkctl init's own small
estimate. `sparkctl explain` (sparkctl/perf, being written) will model this
properly; `estimate_layout` is the one function to swap for it."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from sparkctl.errors import InputError

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "fp8": 1, "int8": 1, "int4": 0.5}
# GB10's 128 GB are shared by the GPU and the OS: keep this much for the OS, the
# driver and page cache (a 16 GiB buffer has frozen Sparks, spark-networking.md 2.1)
OS_RESERVE_FRACTION = 0.12
OS_RESERVE_MIN = 10 * GIB
RUNTIME_OVERHEAD = 3 * GIB  # CUDA context, activations, CUDA graphs per GPU, roughly
TARGET_SEQUENCES = 4  # the context length is chosen so this many full-length requests fit in the KV cache


@dataclass(frozen=True)
class ModelSize:
    path: str
    weights_bytes: int
    weights_from: str  # "47 *.safetensors files" | "config.json: ~70.6 B params x 2 bytes"
    layers: int | None
    attention_heads: int | None
    kv_heads: int | None
    head_dim: int | None
    max_positions: int | None
    kv_dtype_bytes: float


@dataclass(frozen=True)
class Layout:
    tensor_parallel_size: int
    pipeline_parallel_size: int
    gpu_memory_utilization: float
    max_model_len: int
    why: dict[str, str]  # key -> the reason, for the playbook's comments
    fits: bool


def model_size(path: str) -> ModelSize:
    """From the files on this machine: *.safetensors sizes, else config.json's shapes x bytes per parameter."""
    if not os.path.isdir(path):
        raise InputError(f"{path}: no such model directory on this machine",
                         hint="give the model's folder (the same absolute path must exist on every node)")
    config = _config(path)
    shards = [os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors")]
    dtype_bytes = DTYPE_BYTES.get(str(config.get("torch_dtype") or "bfloat16"), 2)
    if "quantization_config" in config:
        dtype_bytes = 1  # fp8/int8 checkpoints; int4 ones are over-estimated, which errs on the safe side
    heads = config.get("num_attention_heads")
    hidden = config.get("hidden_size")
    head_dim = config.get("head_dim") or (hidden // heads if hidden and heads else None)
    if shards:
        weights = sum(os.path.getsize(s) for s in shards)
        source = f"{len(shards)} *.safetensors file(s)"
    else:
        params = _params_from_config(config)
        if params is None:
            raise InputError(f"{path}: no *.safetensors files and config.json lacks the shapes to size the model")
        weights = int(params * dtype_bytes)
        source = f"config.json: ~{params / 1e9:.2f} B parameters x {dtype_bytes:g} bytes"
    return ModelSize(path, weights, source, config.get("num_hidden_layers"), heads,
                     config.get("num_key_value_heads") or heads, head_dim, config.get("max_position_embeddings"),
                     2.0 if dtype_bytes < 2 else float(dtype_bytes))


def _config(path: str) -> dict[str, Any]:
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}/config.json: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}/config.json: not a JSON object")
    text = data.get("text_config")
    return text if isinstance(text, dict) else data


def _params_from_config(c: dict[str, Any]) -> float | None:
    h, layers, inter, vocab = c.get("hidden_size"), c.get("num_hidden_layers"), c.get("intermediate_size"), c.get("vocab_size")
    if not (isinstance(h, int) and isinstance(layers, int) and isinstance(inter, int) and isinstance(vocab, int)):
        return None
    heads = c.get("num_attention_heads") or 1
    kv = c.get("num_key_value_heads") or heads
    attention = h * h * 2 + 2 * h * (h * kv // heads)  # q, o and the (grouped) k, v projections
    mlp = 3 * h * inter * max(1, int(c.get("num_experts") or c.get("num_local_experts") or 1))
    return float(layers * (attention + mlp) + vocab * h * (1 if c.get("tie_word_embeddings") else 2))


def estimate_layout(model: ModelSize, nodes: int, gpus_per_node: int, node_memory_bytes: int) -> Layout:
    """TP/PP, memory utilization and context length for this model on these nodes.

    Swap point for sparkctl explain's model: same inputs, same Layout out."""
    world = nodes * gpus_per_node
    heads, kv = model.attention_heads or world, model.kv_heads or world
    tp = max(t for t in range(1, world + 1) if world % t == 0 and heads % t == 0 and (kv % t == 0 or t % kv == 0))
    pp = world // tp
    reserve = max(OS_RESERVE_MIN, OS_RESERVE_FRACTION * node_memory_bytes)
    gmu = math.floor((node_memory_bytes - reserve) / node_memory_bytes * 100) / 100
    usable = node_memory_bytes * gmu / gpus_per_node
    weights_per_gpu = model.weights_bytes / world
    kv_budget = usable - weights_per_gpu - RUNTIME_OVERHEAD
    why = {
        "tensor_parallel_size": (f"{heads} attention heads / {tp} = {heads // tp} per GPU; all-reduces over the "
                                 f"fabric, every GPU busy on every token" if pp == 1 else
                                 f"{heads} attention heads do not split {world} ways: TP {tp} within, PP {pp} across"),
        "weights": f"{model.weights_bytes / GIB:.1f} GiB of weights ({model.weights_from}) / {world} = "
                   f"{weights_per_gpu / GIB:.1f} GiB per GPU",
        "gpu_memory_utilization": (f"GB10 memory is shared with the OS: {node_memory_bytes / GIB:.1f} GiB, "
                                   f"{reserve / GIB:.1f} GiB left to the OS"),
    }
    per_token = (2 * (model.layers or 0) * (model.kv_heads or 0) * (model.head_dim or 0) * model.kv_dtype_bytes) / world
    ceiling = model.max_positions or 8192
    if per_token > 0 and kv_budget > 0:
        tokens = kv_budget / per_token
        length = int(min(ceiling, tokens / TARGET_SEQUENCES) // 1024 * 1024) or int(min(ceiling, tokens / TARGET_SEQUENCES))
        why["max_model_len"] = (f"KV cache {kv_budget / GIB:.1f} GiB per GPU at {per_token / 1024:.1f} KiB per token "
                                f"holds ~{int(tokens):,} tokens: {TARGET_SEQUENCES} requests of this length"
                                + (f" (capped at the model's {ceiling})" if length == ceiling else ""))
    else:
        length = min(ceiling, 8192)
        why["max_model_len"] = "the KV cache size could not be estimated; a conservative default"
    return Layout(tp, pp, gmu, max(length, 256), why, fits=kv_budget > 0)
