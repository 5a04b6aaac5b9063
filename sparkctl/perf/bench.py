"""Reads benchmark results: a `sparkctl bench` file ({"metadata", "steps"}) or a
`vllm bench serve --save-result` file (one flat object), into typed steps."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from sparkctl.errors import InputError


@dataclass(frozen=True)
class ServerStats:
    """What vLLM's /metrics said during the step (sparkctl bench only)."""

    running_mean: float | None
    running_max: float | None
    waiting_mean: float | None
    kv_cache_usage_mean: float | None
    kv_cache_usage_max: float | None
    preemptions: float | None
    prefix_cache_hit_rate: float | None


@dataclass(frozen=True)
class BenchStep:
    concurrency: int  # the target (max_concurrency); for a rate-driven run, requests in flight on average
    completed: int
    median_tpot_ms: float | None
    output_throughput: float
    median_ttft_ms: float | None
    input_len: float | None  # mean prompt tokens per request
    output_len: float | None
    server: ServerStats | None

    @property
    def tok_s_per_user(self) -> float | None:
        return 1000.0 / self.median_tpot_ms if self.median_tpot_ms else None


@dataclass(frozen=True)
class BenchResult:
    kind: str  # "sparkctl" | "vllm"
    model: str | None
    tensor_parallel_size: int | None
    nodes: int | None
    vllm_args: tuple[str, ...]
    steps: tuple[BenchStep, ...]


def _num(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _step(data: Mapping[str, Any], where: str) -> BenchStep:
    if not isinstance(data, Mapping):
        raise InputError(f"{where}: a step must be a JSON object")
    throughput = _num(data, "output_throughput")
    if throughput is None:
        raise InputError(f"{where}: missing 'output_throughput'", hint="pass a sparkctl bench or vllm bench serve --save-result file")
    completed = int(_num(data, "completed") or 0)
    conc = data.get("concurrency") if data.get("concurrency") is not None else data.get("max_concurrency")
    input_len = _num(data, "input_len")
    output_len = _num(data, "output_len")
    if input_len is None and completed and _num(data, "total_input_tokens") is not None:
        input_len = (_num(data, "total_input_tokens") or 0) / completed
    if output_len is None and completed and _num(data, "total_output_tokens") is not None:
        output_len = (_num(data, "total_output_tokens") or 0) / completed
    server = data.get("server")
    stats = None
    if isinstance(server, Mapping):
        stats = ServerStats(
            _num(server, "running_mean"), _num(server, "running_max"), _num(server, "waiting_mean"),
            _num(server, "kv_cache_usage_mean"), _num(server, "kv_cache_usage_max"), _num(server, "preemptions"),
            _num(server, "prefix_cache_hit_rate"))
    if not (isinstance(conc, (int, float)) and not isinstance(conc, bool) and conc > 0):
        # a rate-driven run has no concurrency cap: Little's law gives the mean in flight
        rate, e2el = _num(data, "request_throughput"), _num(data, "mean_e2el_ms")
        conc = max(1, round(rate * e2el / 1000.0)) if rate and e2el else 1
    return BenchStep(
        concurrency=int(conc),
        completed=completed, median_tpot_ms=_num(data, "median_tpot_ms"), output_throughput=throughput,
        median_ttft_ms=_num(data, "median_ttft_ms"), input_len=input_len, output_len=output_len, server=stats)


def parse_bench(data: Any, where: str) -> BenchResult:
    if not isinstance(data, Mapping):
        raise InputError(f"{where}: expected a JSON object")
    if "steps" in data:
        meta = data.get("metadata") or {}
        steps = data["steps"]
        if not isinstance(steps, list) or not steps:
            raise InputError(f"{where}: 'steps' is empty")
        args = meta.get("vllm_args") or []
        return BenchResult(
            "sparkctl", meta.get("model"), meta.get("tensor_parallel_size"), meta.get("nodes") if isinstance(
                meta.get("nodes"), int) else (len(meta["nodes"]) if isinstance(meta.get("nodes"), list) else None),
            tuple(str(a) for a in args) if isinstance(args, list) else (),
            tuple(_step(s, f"{where}: steps[{i}]") for i, s in enumerate(steps)))
    return BenchResult("vllm", data.get("model_id"), None, None, (), (_step(data, where),))


def read_bench(path: str) -> BenchResult:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read as JSON: {exc}") from None
    return parse_bench(data, path)
