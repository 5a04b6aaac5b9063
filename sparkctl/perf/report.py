"""The explain report: prediction, measurement beside it, findings; as a JSON
document and as text for people."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sparkctl.findings import Finding
from sparkctl.perf.bench import BenchResult, BenchStep
from sparkctl.perf.predict import Prediction, decode_step, predict
from sparkctl.perf.rules import finding_dict


@dataclass(frozen=True)
class StepComparison:
    step: BenchStep
    context: int
    predicted_per_user: float
    predicted_total: float
    measured_per_user: float | None
    mbu: float | None  # achieved share of peak memory bandwidth
    causes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        gap = (self.measured_per_user / self.predicted_per_user) if self.measured_per_user else None
        return {
            "concurrency": self.step.concurrency, "context": self.context,
            "measured_tok_s_per_user": _r(self.measured_per_user), "measured_tok_s_total": _r(self.step.output_throughput),
            "predicted_tok_s_per_user": _r(self.predicted_per_user), "predicted_tok_s_total": _r(self.predicted_total),
            "measured_over_predicted": _r(gap, 3), "mbu": _r(self.mbu, 3), "likely_causes": list(self.causes),
        }


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def compare(prediction: Prediction, bench: BenchResult) -> tuple[StepComparison, ...]:
    base = prediction.scenario
    out = []
    for step in bench.steps:
        context = base.context
        if step.input_len is not None:
            context = int(step.input_len + (step.output_len or 0) / 2)
        scenario = replace(base, concurrency=step.concurrency, context=max(context, 1),
                           prompt_len=int(step.input_len) if step.input_len else base.prompt_len,
                           output_len=int(step.output_len) if step.output_len else base.output_len)
        guess = predict(scenario)
        measured = step.tok_s_per_user
        mbu = None
        if step.median_tpot_ms:
            moved = decode_step(scenario, step.concurrency)
            mbu = (moved.weight_bytes + moved.kv_bytes) / (step.median_tpot_ms / 1000.0) / (base.hardware.mem_bw_gbs * 1e9)
        out.append(StepComparison(step, scenario.context, guess.decode_tok_s_per_user, guess.decode_tok_s_total,
                                  measured, mbu, _causes(step, guess, measured)))
    return tuple(out)


def _causes(step: BenchStep, guess: Prediction, measured: float | None) -> tuple[str, ...]:
    if measured is None:
        return ("no TPOT in the result: per-user speed unknown",)
    ratio = measured / guess.decode_tok_s_per_user
    s = guess.scenario
    causes = []
    # what the server itself reported holds whatever the ratio
    server = step.server
    if server is not None and server.running_mean is not None and server.running_mean < 0.5 * step.concurrency:
        causes.append(f"the server ran {server.running_mean:.1f} requests at once for a target of {step.concurrency}")
    if server is not None and server.preemptions:
        causes.append(f"{server.preemptions:g} preemptions: the KV cache ran full and requests were recomputed")
    if ratio > 1.2:
        return (*causes, "faster than modelled: speculative decoding or MTP, prefix caching, or shorter contexts than assumed")
    if ratio >= 0.8:
        return tuple(causes)
    if step.concurrency > 1 and (step.input_len or 0) > 4 * (step.output_len or 1):
        causes.append(f"long prompts ({step.input_len:.0f} tokens) are prefilled between decode steps and stretch TPOT")
    if s.tp > 1:
        causes.append(f"all-reduce slower than the {s.allreduce_us or s.hardware.allreduce_us:g} us assumed "
                      "(run sparkctl nccl-probe; sockets or one RDMA twin)")
    causes.append(f"per-step overhead above the {guess.step.overhead_ms:.1f} ms assumed (--enforce-eager, CPU contention, "
                  "an older vLLM); `sparkctl explain --calibrate` fits it for this cluster")
    return tuple(causes)


def to_dict(prediction: Prediction, findings: list[Finding], *, sources: dict[str, str],
            comparisons: tuple[StepComparison, ...] = ()) -> dict[str, Any]:
    s, step, m = prediction.scenario, prediction.step, prediction.scenario.model
    layouts = [{"layout": lay.name, "nodes": lay.nodes, "tok_s_per_user": _r(lay.per_user),
                "tok_s_total": _r(lay.total), "fits": lay.fits} for lay in prediction.layouts]
    fitting = [lay for lay in prediction.layouts if lay.fits]
    winner = max(fitting, key=lambda lay: lay.total).name if fitting else None
    data: dict[str, Any] = {
        "decode_tok_s_per_user": _r(prediction.decode_tok_s_per_user),
        "decode_tok_s_total": _r(prediction.decode_tok_s_total),
        "ceiling_tok_s_per_user": _r(prediction.ceiling_tok_s_per_user),
        "bytes_per_token": round(prediction.bytes_per_token),
        "bound": step.bound,
        "ttft_ms": _r(prediction.prefill.ttft_ms, 1),
        "breakdown": {
            "step_ms": _r(step.total_ms, 3), "weights_ms": _r(step.weights_ms, 3), "kv_cache_ms": _r(step.kv_ms, 3),
            "compute_ms": _r(step.compute_ms, 3), "communication_ms": _r(step.communication_ms, 3),
            "overhead_ms": _r(step.overhead_ms, 3), "prefill_interleaved_ms": _r(step.prefill_ms, 3),
            "weight_bytes_per_node": round(step.weight_bytes),
            "kv_bytes_per_node": round(step.kv_bytes), "experts_read_per_layer": _r(step.experts_read),
        },
        "prefill": {"ttft_ms": _r(prediction.prefill.ttft_ms, 1), "compute_ms": _r(prediction.prefill.compute_ms, 1),
                    "memory_ms": _r(prediction.prefill.memory_ms, 1),
                    "communication_ms": _r(prediction.prefill.communication_ms, 1)},
        "model": {"model_type": m.model_type, "family": m.family, "layers": m.num_layers, "hidden_size": m.hidden_size,
                  "total_params": m.total_params, "active_params": m.active_params,
                  "moe": None if m.moe is None else {"experts": m.moe.num_experts, "per_token": m.moe.experts_per_token},
                  "kv_elements_per_token": m.kv_elements(1), "notes": list(m.notes)},
        "weights": s.plan.describe(),
        "setup": {"hardware": s.hardware.name, "tp": s.tp, "pp": s.pp, "nodes": s.nodes, "concurrency": s.concurrency,
                  "context": s.context, "kv_bytes_per_element": s.kv_bytes, "enforce_eager": s.eager},
        "hardware": {"name": s.hardware.name, "mem_bw_gbs": s.hardware.mem_bw_gbs, "tflops": {"bf16": s.hardware.tflops.bf16, "fp8": s.hardware.tflops.fp8,
                                                                        "fp4": s.hardware.tflops.fp4},
                     "source": s.hardware.source},
        "calibration": {"bw_efficiency": s.hardware.calibration.bw_efficiency,
                        "step_overhead_ms": step.overhead_ms, "compute_efficiency": s.hardware.calibration.compute_efficiency,
                        "overhead_source": s.overhead_source},
        "allreduce": {"us": s.allreduce_us if s.allreduce_us is not None else s.hardware.allreduce_us,
                      "source": s.allreduce_source} if s.tp > 1 else None,
        "memory": {"weights_gb_per_node": prediction.fit.weights_gb_per_node,
                   "usable_gb_per_node": prediction.fit.usable_gb_per_node,
                   "kv_cache_tokens": prediction.fit.kv_cache_tokens, "fits": prediction.fit.fits},
        "layouts": layouts, "layout_winner": winner,
        "findings": [finding_dict(f) for f in findings],
        "sources": dict(sources),
    }
    if m.moe is not None and s.concurrency > 1:
        data["model"]["notes"].append(
            f"experts read per layer ({step.experts_read:.1f} of {m.moe.num_experts}) assume each token routes "
            "independently: an upper bound; batches of similar text share experts and can decode up to about 2x "
            "faster (docs/explain-calibration.md, the kubis rows)")
    if comparisons:
        data["bench"] = [c.to_dict() for c in comparisons]
    return data


def render_text(data: dict[str, Any]) -> str:
    b, setup = data["breakdown"], data["setup"]
    lines = [
        f"model: {data['model']['model_type']} ({data['model']['family']}), {data['model']['layers']} layers, "
        f"{data['model']['total_params'] / 1e9:.1f}B parameters, {data['model']['active_params'] / 1e9:.2f}B read per token",
        f"weights: {data['weights']}",
        f"setup: {setup['hardware']}, TP={setup['tp']} PP={setup['pp']} ({setup['nodes']} node(s)), "
        f"concurrency {setup['concurrency']}, context {setup['context']} tokens",
        "",
        f"decode: {data['decode_tok_s_per_user']:.1f} tok/s per user, {data['decode_tok_s_total']:.1f} tok/s total "
        f"(bound: {data['bound']})",
        f"ceiling (memory roofline, 100% bandwidth, one user): {data['ceiling_tok_s_per_user']:.1f} tok/s; "
        f"{data['bytes_per_token'] / 1e9:.2f} GB read per node per token",
        f"time per step {b['step_ms']:.2f} ms = weights {b['weights_ms']:.2f} + KV cache {b['kv_cache_ms']:.2f} "
        f"(or compute {b['compute_ms']:.2f}, whichever is larger) + communication {b['communication_ms']:.2f} "
        f"+ fixed overhead {b['overhead_ms']:.2f}"
        + (f" + other requests' prefill {b['prefill_interleaved_ms']:.2f}" if b["prefill_interleaved_ms"] else ""),
        f"prefill of {setup['context']} tokens: TTFT about {data['ttft_ms']:.0f} ms",
        f"memory per node: weights {data['memory']['weights_gb_per_node']:.1f} GB of {data['memory']['usable_gb_per_node']:.0f} "
        f"GB usable; KV cache room {data['memory']['kv_cache_tokens']:,} tokens" + ("" if data["memory"]["fits"] else " (DOES NOT FIT)"),
    ]
    if data["allreduce"]:
        lines.append(f"all-reduce latency: {data['allreduce']['us']:g} us ({data['allreduce']['source']})")
    lines.append(f"fixed overhead: {data['calibration']['step_overhead_ms']:.2f} ms per step ({data['calibration']['overhead_source']})")
    if data["layouts"]:
        lines.append("")
        lines.append(f"same load on {data['layouts'][0]['nodes']} nodes:")
        for lay in data["layouts"]:
            lines.append(f"  {lay['layout']:<20} {lay['tok_s_per_user']:8.1f} tok/s per user {lay['tok_s_total']:9.1f} total"
                         + ("" if lay["fits"] else "  (does not fit on one node)"))
        if data["layout_winner"]:
            lines.append(f"  more total throughput: {data['layout_winner']}")
    for c in data.get("bench", []):
        measured = "-" if c["measured_tok_s_per_user"] is None else f"{c['measured_tok_s_per_user']:.1f}"
        mbu = "-" if c["mbu"] is None else f"{c['mbu']:.0%}"
        lines.append(f"bench c={c['concurrency']}: measured {measured}/user {c['measured_tok_s_total']:.1f} total; "
                     f"predicted {c['predicted_tok_s_per_user']:.1f}/user {c['predicted_tok_s_total']:.1f} total; MBU {mbu}")
        lines += [f"    likely: {cause}" for cause in c["likely_causes"]]
    if data["findings"]:
        lines.append("")
    for f in data["findings"]:
        lines.append(f"{f['level'].upper():7} {f['code']}: {f['message']}")
        lines.append(f"        evidence: {f['evidence']}")
        if f["predicted_gain"]:
            lines.append(f"        predicted gain: {f['predicted_gain']}")
        lines.append(f"        fix: {f['fix']}")
    for note in data["model"]["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)
