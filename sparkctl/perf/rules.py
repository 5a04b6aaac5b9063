"""Misconfiguration rules. Each finding carries its evidence, the gain the model
predicts from fixing it (when the model can say), and the fix (its hint)."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, replace
from typing import Any

from sparkctl.bench.metrics import MetricsSample
from sparkctl.findings import Finding, Severity, level
from sparkctl.perf.bench import BenchStep
from sparkctl.perf.predict import Prediction, Scenario, decode_step, memory_fit, predict
from sparkctl.perf.store import ProbeRecord

GB10_MAX_GPU_MEMORY_UTILIZATION = 0.9  # page cache and the OS share GB10's 128 GB; 0.85-0.87 is the usual advice


def _warning(code: str, message: str, evidence: str, predicted_gain: str | None, fix: str) -> Finding:
    """Every rule here is a WARNING: the cluster serves, slower than it could."""
    return Finding(code, Severity.WARNING, message, evidence=evidence, hint=fix, predicted_gain=predicted_gain)


def finding_dict(f: Finding) -> dict[str, Any]:
    """A finding in `explain --json` and doctor's performance_findings: the hint is the `fix`."""
    return {"code": f.code, "level": level(f.severity), "message": f.message, "evidence": f.evidence,
            "predicted_gain": f.predicted_gain, "fix": f.hint}


@dataclass(frozen=True)
class ServingConfig:
    """The vLLM settings the rules look at, and where they were read."""

    source: str
    enforce_eager: bool = False
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    kv_cache_dtype: str | None = None
    cuda: bool = True


def config_from_args(args: tuple[str, ...], source: str) -> ServingConfig:
    """From `vllm serve` arguments (`--flag value` or `--flag=value`)."""
    values: dict[str, str] = {}
    flags: set[str] = set()
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            name = name.replace("_", "-")
            flags.add(name)
            if eq:
                values[name] = value
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                values[name] = args[i + 1]
                i += 1
        i += 1

    def number(name: str) -> float | None:
        try:
            return float(values[name]) if name in values else None
        except ValueError:
            return None

    seqs = number("max-num-seqs")
    return ServingConfig(source, enforce_eager="enforce-eager" in flags,
                         gpu_memory_utilization=number("gpu-memory-utilization"),
                         max_num_seqs=int(seqs) if seqs else None, kv_cache_dtype=values.get("kv-cache-dtype"))


NON_DEFAULT = "non-default args:"
MAX_ARGS_LINE = 64 * 1024  # an args line longer than this is not vLLM's
_GB10 = re.compile(r"\bGB10\b|sm_?121|capability[^\n]{0,20}12\.1")
_CPU = re.compile(r"platform cpu|CPU KV cache|VLLM_CPU_", re.IGNORECASE)
# The only kinds of line the log rules read; doctor keeps the last of each while it streams a long log.
LOG_EVIDENCE = {"args": re.compile(re.escape(NON_DEFAULT)), "cpu": _CPU, "gb10": _GB10}


def config_from_log(text: str) -> ServingConfig | None:
    """From the `non-default args: {...}` line vLLM logs at start-up."""
    found = None
    for line in text.splitlines():
        # str.find, not a regular expression: linear on any line, however hostile
        at = line.find(NON_DEFAULT, 0, MAX_ARGS_LINE)
        if at >= 0:
            start, end = line.find("{", at, MAX_ARGS_LINE), line.rfind("}", 0, MAX_ARGS_LINE)
            if 0 <= start < end:
                found = line[start:end + 1]
    if found is None:
        return None
    try:
        args = ast.literal_eval(found)  # a Python dict literal of plain values
    except (ValueError, SyntaxError):
        return None
    if not isinstance(args, dict):
        return None
    util = args.get("gpu_memory_utilization")
    seqs = args.get("max_num_seqs")
    # vLLM for CPU has no CUDA graphs to lose: its log names CPU KV cache or VLLM_CPU_ settings
    cuda = not _CPU.search(text)
    return ServingConfig("vLLM log (non-default args)", enforce_eager=bool(args.get("enforce_eager")),
                         gpu_memory_utilization=float(util) if isinstance(util, (int, float)) else None,
                         max_num_seqs=int(seqs) if isinstance(seqs, int) else None,
                         kv_cache_dtype=str(args["kv_cache_dtype"]) if args.get("kv_cache_dtype") else None, cuda=cuda)


def log_mentions_gb10(text: str) -> bool:
    return bool(_GB10.search(text))


def _gain(before: float, after: float, unit: str) -> str:
    return f"{before:.1f} -> {after:.1f} {unit} ({(after - before) / before:+.0%})" if before > 0 else f"{after:.1f} {unit}"


# ---------------------------------------------------------------- rules
def enforce_eager(config: ServingConfig, scenario: Scenario | None) -> Finding | None:
    if not (config.enforce_eager and config.cuda):
        return None
    gain = None
    if scenario is not None:
        eager = predict(replace(scenario, eager=True)).decode_tok_s_per_user
        graphs = predict(replace(scenario, eager=False)).decode_tok_s_per_user
        gain = _gain(eager, graphs, "tok/s per user")
    return _warning("enforce-eager", "CUDA graphs are off (--enforce-eager): every decode step launches "
                   "its kernels from Python", f"enforce_eager in {config.source}", gain,
                   "remove --enforce-eager (keep it only to debug a graph-capture failure)")


def gpu_memory_utilization(config: ServingConfig, on_gb10: bool) -> Finding | None:
    util = config.gpu_memory_utilization
    if not on_gb10 or util is None or util <= GB10_MAX_GPU_MEMORY_UTILIZATION:
        return None
    return _warning("gpu-memory-utilization",
                   f"--gpu-memory-utilization {util:g} leaves too little of GB10's unified memory to the OS and page cache",
                   f"gpu_memory_utilization={util:g} in {config.source}", None,
                   "use 0.85 or less on a DGX Spark (the memory is shared with the CPU; higher values end in OOM kills or a frozen node)")


def tp_vs_replicas(prediction: Prediction) -> Finding | None:
    if len(prediction.layouts) < 2:
        return None
    tp, replicas = prediction.layouts[0], prediction.layouts[1]
    if not replicas.fits or replicas.total <= tp.total * 1.1:
        return None
    return _warning("tp-vs-replicas",
                   f"the model fits on one node and {replicas.name} serve this load faster than {tp.name}",
                   f"at concurrency {prediction.scenario.concurrency}: {tp.name} {tp.total:.0f} tok/s total "
                   f"({tp.per_user:.1f}/user), {replicas.name} {replicas.total:.0f} tok/s total ({replicas.per_user:.1f}/user)",
                   _gain(tp.total, replicas.total, "tok/s total"),
                   "run one TP=1 server per node behind a router, unless one user needs the TP per-user speed")


def tp_latency_bound(prediction: Prediction) -> Finding | None:
    s = prediction.scenario
    if s.tp <= 1 or not s.hardware.tp_across_nodes:
        return None
    single = replace(s, tp=1, pp=1)
    if not memory_fit(single, 1, 1).fits:
        return None
    one = decode_step(single, 1)
    split = decode_step(s, 1)
    if 1000.0 / split.total_ms >= 1.15 * 1000.0 / one.total_ms:
        return None
    saved = one.memory_ms - split.memory_ms
    return _warning("tp-latency-bound",
                   f"TP={s.tp} across nodes barely helps one user: the model reads too few bytes per token for the "
                   "link's latency to pay off",
                   f"TP saves {saved:.1f} ms of memory reads per token but adds {split.communication_ms:.1f} ms of "
                   f"all-reduces ({2 * s.model.num_layers} per token); per user {1000 / one.total_ms:.1f} (TP=1) vs "
                   f"{1000 / split.total_ms:.1f} tok/s (TP={s.tp})",
                   _gain(1000 / split.total_ms, 1000 / one.total_ms, "tok/s per user (TP=1)"),
                   "serve it on one node (one replica per node for more users)")


def max_num_seqs(config: ServingConfig, prediction: Prediction, kv_cache_tokens: int | None) -> Finding | None:
    seqs = config.max_num_seqs
    s = prediction.scenario
    capacity_tokens = kv_cache_tokens or prediction.fit.kv_cache_tokens
    if not seqs or not capacity_tokens or s.concurrency <= seqs:
        return None
    capacity = capacity_tokens // max(s.context, 1)
    if capacity < 4 * seqs:
        return None
    served = predict(replace(s, concurrency=seqs)).decode_tok_s_total
    possible = predict(replace(s, concurrency=min(s.concurrency, capacity))).decode_tok_s_total
    return _warning("max-num-seqs",
                   f"--max-num-seqs {seqs} caps the batch far below what the KV cache holds",
                   f"KV cache {capacity_tokens:,} tokens = {capacity} sequences of {s.context} tokens; "
                   f"{s.concurrency} users, {seqs} served at a time ({config.source})",
                   _gain(served, possible, "tok/s total"), f"raise --max-num-seqs to {min(s.concurrency, capacity)}")


def kv_underused(step: BenchStep, prediction: Prediction | None) -> Finding | None:
    server = step.server
    if server is None or server.running_mean is None or step.concurrency < 4:
        return None
    if server.running_mean >= 0.5 * step.concurrency:
        return None
    usage = f", KV cache use {server.kv_cache_usage_max:.0%} at most" if server.kv_cache_usage_max is not None else ""
    gain = None
    if prediction is not None:
        s = prediction.scenario
        low = predict(replace(s, concurrency=max(1, round(server.running_mean)))).decode_tok_s_total
        gain = _gain(low, predict(replace(s, concurrency=step.concurrency)).decode_tok_s_total, "tok/s total")
    return _warning("batching-underused",
                   "the server ran far fewer requests at once than the load offered",
                   f"target concurrency {step.concurrency}, server running {server.running_mean:.1f} on average{usage}",
                   gain, "check --max-num-seqs and --max-num-batched-tokens, and that the client keeps requests in flight")


def queue_with_free_kv(snapshot: MetricsSample | None, config: ServingConfig | None) -> Finding | None:
    """Requests wait while the KV cache has room: the batch limit, not memory, holds them."""
    if (snapshot is None or snapshot.waiting is None or snapshot.waiting < 1 or snapshot.kv_cache_usage is None
            or snapshot.kv_cache_usage >= 0.5):
        return None
    limit = f"--max-num-seqs {config.max_num_seqs}" if config and config.max_num_seqs else "--max-num-seqs"
    return _warning("batching-underused", "requests wait in the queue while the KV cache is mostly empty",
                   f"/metrics: {snapshot.running or 0:g} running, {snapshot.waiting:g} waiting, KV cache "
                   f"{snapshot.kv_cache_usage:.0%} used", None,
                   f"raise {limit} (and --max-num-batched-tokens if prompts are long) so waiting requests join the batch")


def nccl_transport(probe: ProbeRecord | None, prediction: Prediction | None) -> Finding | None:
    if probe is None or probe.backend != "nccl":
        return None
    sockets = sorted(n for n, t in probe.transports.items() if t in ("socket", "tcp"))
    single = "single-hca" in probe.findings
    if not sockets and not single:
        return None
    gain = None
    if prediction is not None and prediction.scenario.tp > 1:
        healthy = replace(prediction.scenario, allreduce_us=None)
        gain = _gain(prediction.decode_tok_s_per_user, predict(healthy).decode_tok_s_per_user, "tok/s per user")
    what = f"NCCL fell back to TCP sockets on {', '.join(sockets)}" if sockets else "NCCL used only one RDMA twin"
    return _warning("nccl-transport", what,
                   "last sparkctl nccl-probe: " + (f"transport {probe.transports}" if sockets else "finding single-hca"),
                   gain, "run `sparkctl check` (RDMA devices, GIDs, NCCL_IB_HCA with both twins) and re-run nccl-probe")


def apply_all(prediction: Prediction, config: ServingConfig | None, *, probe: ProbeRecord | None = None,
              kv_cache_tokens: int | None = None, bench_steps: tuple[BenchStep, ...] = (),
              metrics: MetricsSample | None = None) -> list[Finding]:
    s = prediction.scenario
    found: list[Finding | None] = [tp_vs_replicas(prediction), tp_latency_bound(prediction), nccl_transport(probe, prediction),
                                   queue_with_free_kv(metrics, config)]
    if config is not None:
        found += [enforce_eager(config, s), gpu_memory_utilization(config, s.hardware.name == "gb10"),
                  max_num_seqs(config, prediction, kv_cache_tokens)]
    found += [kv_underused(step, prediction) for step in bench_steps]
    return [f for f in found if f is not None]


def log_findings(text: str, *, kv_cache_tokens: int | None = None, max_concurrency: float | None = None) -> list[Finding]:
    """The rules a vLLM log alone can support (doctor vllm-log)."""
    config = config_from_log(text)
    if config is None:
        return []
    out = [enforce_eager(config, None), gpu_memory_utilization(config, log_mentions_gb10(text))]
    if config.max_num_seqs and max_concurrency and max_concurrency >= 4 * config.max_num_seqs:
        out.append(_warning("max-num-seqs",
                           f"--max-num-seqs {config.max_num_seqs} caps the batch far below what the KV cache holds",
                           f"the log's KV cache fits {max_concurrency:g} full-length requests"
                           + (f" ({kv_cache_tokens:,} tokens)" if kv_cache_tokens else ""), None,
                           "raise --max-num-seqs if more users than that arrive at once"))
    return [f for f in out if f is not None]
