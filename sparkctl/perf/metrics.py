"""A snapshot of vLLM's Prometheus /metrics: what is running, waiting, and how
full the KV cache is (summed over engines, label sets ignored)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE = re.compile(r"^(vllm:[a-z_]+)(?:\{[^}]*\})?\s+([0-9.eE+-]+|NaN)\s*$")
# Newer vLLM names first; older releases called the KV cache gauge gpu_cache_usage_perc.
_KV = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


@dataclass(frozen=True)
class MetricsSnapshot:
    running: float
    waiting: float
    kv_cache_usage: float | None  # 0..1


def parse_metrics(text: str) -> MetricsSnapshot | None:
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if match and match.group(2) != "NaN":
            values[match.group(1)] = values.get(match.group(1), 0.0) + float(match.group(2))
    if "vllm:num_requests_running" not in values:
        return None
    kv = next((values[name] for name in _KV if name in values), None)
    return MetricsSnapshot(values["vllm:num_requests_running"], values.get("vllm:num_requests_waiting", 0.0), kv)
