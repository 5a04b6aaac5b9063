"""The performance model: one decode step and one prefill, per node.

decode step = max(memory, compute) + fixed overhead + TP communication
  memory   = (weights read + KV cache read) per node / (bandwidth x efficiency)
  compute  = 2 x active parameters x batch (+ attention) per node / (peak x efficiency)
  comm     = 2 all-reduces per layer x latency (grows with the ring's hops) + bytes / bus bandwidth
An MoE reads the experts its batch routes to: with B tokens each picking k of E
experts independently, E x (1 - (1 - k/E)^B) experts per layer are read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from sparkctl.perf.hardware import Hardware
from sparkctl.perf.model_config import ModelShape
from sparkctl.perf.quant import QuantPlan

ACTIVATION_BYTES = 2  # all-reduce messages are bf16 activations
# --enforce-eager: every kernel is launched from Python instead of replayed from a
# CUDA graph. Assumption: about 30 us of launch overhead per layer per step
# (kubis measured 0.4 ms over gpt-oss-120b's 36 layers, the vLLM blog's eager
# Nemotron baseline far more); it is only used to size the enforce-eager rule.
EAGER_US_PER_LAYER = 30.0


@dataclass(frozen=True)
class Scenario:
    model: ModelShape
    plan: QuantPlan
    hardware: Hardware
    tp: int = 1
    pp: int = 1
    concurrency: int = 1
    context: int = 1024
    kv_bytes: float = 2.0
    allreduce_us: float | None = None  # None: the hardware's default
    allreduce_source: str = "hardware default"
    step_overhead_ms: float | None = None  # None: the hardware calibration's
    overhead_source: str = "hardware calibration"
    eager: bool = False
    # Tokens each request generates and reads as prompt. With both known and more
    # than one request, arriving requests' prompts are prefilled between decode
    # steps (chunked prefill): batch x prompt / output tokens per step on average.
    output_len: int | None = None
    prompt_len: int | None = None

    @property
    def nodes(self) -> int:
        return self.tp * self.pp


@dataclass(frozen=True)
class StepTime:
    """One decode step on one node, in milliseconds, and what it read."""

    batch: int
    weights_ms: float
    kv_ms: float
    compute_ms: float
    communication_ms: float
    overhead_ms: float
    weight_bytes: float
    kv_bytes: float
    experts_read: float | None
    prefill_ms: float = 0.0  # other requests' prompts, amortized over the decode steps

    @property
    def memory_ms(self) -> float:
        return self.weights_ms + self.kv_ms

    @property
    def total_ms(self) -> float:
        return max(self.memory_ms, self.compute_ms) + self.prefill_ms + self.communication_ms + self.overhead_ms

    @property
    def bound(self) -> str:
        memory_side = "memory" if self.memory_ms >= self.compute_ms else "compute"
        parts = {memory_side: max(self.memory_ms, self.compute_ms), "network": self.communication_ms,
                 "overhead": self.overhead_ms}
        if self.prefill_ms > parts[memory_side] and memory_side == "memory":
            return "compute"  # interleaved prefill work outweighs the decode reads
        return max(parts, key=lambda k: parts[k])


@dataclass(frozen=True)
class Prefill:
    ttft_ms: float
    compute_ms: float
    memory_ms: float
    communication_ms: float
    overhead_ms: float


@dataclass(frozen=True)
class MemoryFit:
    weights_gb_per_node: float
    usable_gb_per_node: float
    kv_cache_tokens: int  # what fits beside the weights, per replica
    fits: bool


@dataclass(frozen=True)
class Layout:
    """One way to serve the load: its per-user and total decode rates."""

    name: str
    nodes: int
    tp: int
    per_user: float
    total: float
    fits: bool


@dataclass(frozen=True)
class Prediction:
    scenario: Scenario
    step: StepTime
    step_batch1: StepTime
    ceiling_tok_s_per_user: float
    prefill: Prefill
    fit: MemoryFit
    layouts: tuple[Layout, ...] = field(default_factory=tuple)

    @property
    def decode_tok_s_per_user(self) -> float:
        return 1000.0 / self.step.total_ms

    @property
    def decode_tok_s_total(self) -> float:
        return self.scenario.concurrency * self.decode_tok_s_per_user

    @property
    def bytes_per_token(self) -> float:
        """Weights and KV cache one node reads per decode step for one sequence."""
        return self.step_batch1.weight_bytes + self.step_batch1.kv_bytes


# ---------------------------------------------------------------- pieces
def experts_read(model: ModelShape, tokens: int) -> float:
    """Expected distinct experts per MoE layer for `tokens` independent tokens."""
    if model.moe is None:
        return 0.0
    e, k = model.moe.num_experts, model.moe.experts_per_token
    return e * (1.0 - (1.0 - k / e) ** max(tokens, 1))


def weight_bytes_per_node(model: ModelShape, plan: QuantPlan, tp: int, pp: int, tokens: int) -> float:
    """Weight bytes one node reads for one step over `tokens` tokens (its 1/TP
    share of every matrix, of its 1/PP share of the layers)."""
    q = plan.weights.bytes_per_param
    attention = model.attention_params * plan.attention.bytes_per_param
    lm_head = model.lm_head_params * plan.lm_head.bytes_per_param
    mlp = model.dense_mlp_params * q
    if model.moe is not None:
        mlp += experts_read(model, tokens) * model.moe.params_per_expert * model.moe.moe_layers * q
    return (attention + mlp + lm_head) / pp / tp  # the LM head sits on the last stage: averaged over stages


def total_weight_bytes_per_node(model: ModelShape, plan: QuantPlan, tp: int, pp: int) -> float:
    q = plan.weights.bytes_per_param
    stored = (model.attention_params * plan.attention.bytes_per_param
              + (model.dense_mlp_params + model.expert_params_total) * q) / pp
    stored += model.lm_head_params * plan.lm_head.bytes_per_param + model.embedding_params * 2.0
    return stored / tp


def kv_bytes_per_node(model: ModelShape, context: int, kv_bytes: float, tp: int, pp: int) -> float:
    """KV cache bytes one node reads per sequence per step (KV heads split by TP,
    MLA's latent cache replicated)."""
    total = 0.0
    for layer in model.kv_layers:
        tokens = context if layer.window is None else min(context, layer.window)
        share = 1 if layer.shared_across_tp else tp
        total += (layer.elements_per_token * tokens * kv_bytes + layer.state_bytes) / share
    return total / pp


def allreduce_ms(scenario: Scenario, message_bytes: float) -> float:
    """One all-reduce across the TP group: latency (a ring across nodes adds a hop
    per extra rank) plus the bytes over the bus bandwidth."""
    tp = scenario.tp
    if tp <= 1:
        return 0.0
    hw = scenario.hardware
    base = scenario.allreduce_us if scenario.allreduce_us is not None else hw.allreduce_us
    latency_us = base * (tp - 1) if hw.tp_across_nodes else base
    transfer_s = message_bytes * 2 * (tp - 1) / tp / (hw.link_busbw_gbs * 1e9)
    return latency_us / 1000.0 + transfer_s * 1000.0


def overhead_ms(scenario: Scenario) -> float:
    base = (scenario.step_overhead_ms if scenario.step_overhead_ms is not None
            else scenario.hardware.calibration.step_overhead_ms)
    eager = scenario.model.num_layers * EAGER_US_PER_LAYER / 1000.0 if scenario.eager else 0.0
    return base + eager


def decode_step(scenario: Scenario, batch: int) -> StepTime:
    """One token for each of `batch` sequences, as each sequence sees it. Under PP
    the batch is split into one microbatch per stage and a token passes the stages
    one after the other, so every stage's time counts once per token."""
    model, hw, cal = scenario.model, scenario.hardware, scenario.hardware.calibration
    pp = scenario.pp
    micro = math.ceil(batch / pp)
    bandwidth = hw.mem_bw_gbs * 1e9 * cal.bw_efficiency
    weights = weight_bytes_per_node(model, scenario.plan, scenario.tp, pp, micro)
    kv = micro * kv_bytes_per_node(model, scenario.context, scenario.kv_bytes, scenario.tp, pp)
    # QK and PV over the context, per head (sliding windows ignored: small next to the GEMMs)
    attention_flops = 4.0 * micro * scenario.context * model.num_heads * model.head_dim * model.num_layers
    flops = (2.0 * model.active_params * micro + attention_flops) / scenario.tp
    peak = hw.peak_tflops(scenario.plan.weights.compute) * 1e12 * cal.compute_efficiency
    comm = 2 * model.num_layers * allreduce_ms(scenario, micro * model.hidden_size * ACTIVATION_BYTES)
    if pp > 1:  # activations hop between stages once per stage boundary
        comm += (pp - 1) * (scenario.allreduce_us or hw.allreduce_us) / 1000.0
    return StepTime(
        batch=batch, weights_ms=pp * weights / bandwidth * 1000.0, kv_ms=pp * kv / bandwidth * 1000.0,
        compute_ms=flops / peak * 1000.0, communication_ms=comm, overhead_ms=overhead_ms(scenario),
        weight_bytes=weights, kv_bytes=kv, experts_read=experts_read(model, micro) if model.moe else None,
        prefill_ms=interleaved_prefill_ms(scenario, batch),
    )


def interleaved_prefill_ms(scenario: Scenario, batch: int) -> float:
    """Compute time per decode step spent on arriving requests' prompts: prefill
    chunks are compute-bound, so their time adds to the memory-bound decode."""
    if batch <= 1 or not scenario.output_len:
        return 0.0
    model, hw = scenario.model, scenario.hardware
    prompt = scenario.prompt_len or scenario.context
    tokens = batch * prompt / scenario.output_len
    per_token = 2.0 * model.active_params + 2.0 * prompt * model.num_heads * model.head_dim * model.num_layers
    peak = hw.peak_tflops(scenario.plan.weights.compute) * 1e12 * hw.calibration.compute_efficiency
    return tokens * per_token / scenario.nodes / peak * 1000.0


def prefill(scenario: Scenario) -> Prefill:
    """Time to first token for one prompt of `context` tokens, alone on the server."""
    model, hw, cal = scenario.model, scenario.hardware, scenario.hardware.calibration
    tokens = max(scenario.context, 1)
    attention = 2.0 * tokens * tokens * model.num_heads * model.head_dim * model.num_layers  # causal QK and PV
    # PP stages run one after the other for one prompt: only TP divides the work
    flops = (2.0 * model.active_params * tokens + attention) / scenario.tp
    peak = hw.peak_tflops(scenario.plan.weights.compute) * 1e12 * cal.compute_efficiency
    weights = scenario.pp * weight_bytes_per_node(model, scenario.plan, scenario.tp, scenario.pp, tokens)
    memory = weights / (hw.mem_bw_gbs * 1e9 * cal.bw_efficiency) * 1000.0
    comm = 2 * model.num_layers * allreduce_ms(scenario, tokens * model.hidden_size * ACTIVATION_BYTES)
    compute = flops / peak * 1000.0
    over = overhead_ms(scenario)
    return Prefill(max(compute, memory) + comm + over, compute, memory, comm, over)


def memory_fit(scenario: Scenario, tp: int, pp: int) -> MemoryFit:
    hw = scenario.hardware
    weights = total_weight_bytes_per_node(scenario.model, scenario.plan, tp, pp) / 1e9
    usable = hw.memory_gb * hw.usable_memory_fraction
    # what one more token of context costs (linear-attention state is per sequence, not per token)
    per_token = (kv_bytes_per_node(scenario.model, 2, scenario.kv_bytes, tp, pp)
                 - kv_bytes_per_node(scenario.model, 1, scenario.kv_bytes, tp, pp))
    free = max(0.0, usable - weights) * 1e9
    tokens = int(free / per_token) if per_token > 0 else 0
    return MemoryFit(round(weights, 2), round(usable, 1), tokens, weights < usable * 0.95)


def layouts(scenario: Scenario) -> tuple[Layout, ...]:
    """The configured TP layout against one single-node replica per node for the
    same concurrency (data parallel behind a router)."""
    nodes = scenario.nodes
    if nodes <= 1:
        return ()
    configured = decode_step(scenario, scenario.concurrency)
    per_user = 1000.0 / configured.total_ms
    out = [Layout(f"TP={scenario.tp}" + (f" PP={scenario.pp}" if scenario.pp > 1 else ""), nodes, scenario.tp,
                  per_user, per_user * scenario.concurrency, memory_fit(scenario, scenario.tp, scenario.pp).fits)]
    single = replace(scenario, tp=1, pp=1)
    batch = max(1, math.ceil(scenario.concurrency / nodes))
    step = decode_step(single, batch)
    rep_user = 1000.0 / step.total_ms
    out.append(Layout(f"{nodes} x TP=1 replicas", nodes, 1, rep_user, rep_user * scenario.concurrency,
                      memory_fit(single, 1, 1).fits))
    return tuple(out)


def predict(scenario: Scenario) -> Prediction:
    step = decode_step(scenario, scenario.concurrency)
    one = decode_step(scenario, 1) if scenario.concurrency != 1 else step
    raw_bandwidth = scenario.hardware.mem_bw_gbs * 1e9
    ceiling = raw_bandwidth / (scenario.pp * (one.weight_bytes + one.kv_bytes))  # PP stages read in turn
    return Prediction(scenario, step, one, ceiling, prefill(scenario), memory_fit(scenario, scenario.tp, scenario.pp),
                      layouts(scenario))
