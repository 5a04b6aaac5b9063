"""The server's own view: vLLM's Prometheus `/metrics`, parsed with
prometheus_client, reduced to the few series a benchmark step needs.

Both metric-name generations are read: `vllm:kv_cache_usage_perc` and
`vllm:prefix_cache_*` (current), `vllm:gpu_cache_usage_perc` and
`vllm:gpu_prefix_cache_*` (removed from vLLM in late 2025, still served by older
installs). Series with several label sets (engines, finish reasons) are summed,
except KV cache usage, which is averaged across engines.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterable, Sequence

from prometheus_client.parser import text_string_to_metric_families

# field of MetricsSample -> metric names (without a `_total` suffix), newest first
_SERIES: dict[str, tuple[str, ...]] = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "generation_tokens": ("vllm:generation_tokens",),
    "prompt_tokens": ("vllm:prompt_tokens",),
    "preemptions": ("vllm:num_preemptions",),
    "requests_success": ("vllm:request_success",),
    "prefix_cache_queries": ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries"),
    "prefix_cache_hits": ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits"),
}
_AVERAGED = {"kv_cache_usage"}


@dataclass(frozen=True)
class MetricsSample:
    """One scrape. None: the server does not publish that series."""

    at: float  # time.perf_counter() when the scrape returned
    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None  # 0..1
    generation_tokens: float | None = None
    prompt_tokens: float | None = None
    preemptions: float | None = None
    requests_success: float | None = None
    prefix_cache_queries: float | None = None
    prefix_cache_hits: float | None = None


def parse_metrics(text: str, at: float = 0.0) -> MetricsSample:
    """Prometheus text -> MetricsSample. Raises ValueError for text that is not Prometheus."""
    wanted = {name: key for key, names in _SERIES.items() for name in names}
    found: dict[str, dict[str, list[float]]] = {}  # key -> metric name -> values
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")
            key = wanted.get(name)
            if key is not None:
                found.setdefault(key, {}).setdefault(name, []).append(float(sample.value))
    values: dict[str, float] = {}
    for key, by_name in found.items():
        name = next(n for n in _SERIES[key] if n in by_name)  # the newest generation present
        series = by_name[name]
        values[key] = sum(series) / len(series) if key in _AVERAGED else sum(series)
    return MetricsSample(at=at, **values)


def combine_samples(samples: Sequence[MetricsSample]) -> MetricsSample:
    """Several servers' scrapes taken together as one server (replicas behind a router):
    counters and queue lengths add up, the KV cache usage is their mean; a series is
    None only where no server publishes it."""
    values: dict[str, float] = {}
    for f in fields(MetricsSample):
        if f.name == "at":
            continue
        present = [v for v in (getattr(s, f.name) for s in samples) if v is not None]
        if present:
            values[f.name] = sum(present) / len(present) if f.name in _AVERAGED else sum(present)
    return MetricsSample(at=max((s.at for s in samples), default=0.0), **values)


@dataclass(frozen=True)
class ServerView:
    """What the server saw during one step: counter deltas from just before the
    step to just after it, and gauges sampled while it ran."""

    samples: int
    generation_tokens: float | None
    prompt_tokens: float | None
    preemptions: float | None
    requests_success: float | None
    prefix_cache_hit_rate: float | None
    running_mean: float | None
    running_max: float | None
    waiting_mean: float | None
    waiting_max: float | None
    waiting_growth: float | None  # mean of the step's second half minus its first half
    kv_cache_usage_mean: float | None
    kv_cache_usage_max: float | None

    def to_dict(self) -> dict[str, float | int | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _delta(before: MetricsSample, after: MetricsSample, key: str) -> float | None:
    a, b = getattr(before, key), getattr(after, key)
    if a is None or b is None or b < a:  # missing, or the server restarted in between
        return None
    return b - a


def _gauge(samples: Iterable[MetricsSample], key: str) -> list[float]:
    return [v for v in (getattr(s, key) for s in samples) if v is not None]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def server_view(before: MetricsSample, during: list[MetricsSample], after: MetricsSample) -> ServerView:
    gauges = during or [before, after]
    queries, hits = _delta(before, after, "prefix_cache_queries"), _delta(before, after, "prefix_cache_hits")
    waiting = _gauge(gauges, "waiting")
    half = len(waiting) // 2
    growth = (_mean(waiting[half:]) or 0.0) - (_mean(waiting[:half]) or 0.0) if half else None
    running, kv = _gauge(gauges, "running"), _gauge(gauges, "kv_cache_usage")
    return ServerView(
        samples=len(during),
        generation_tokens=_delta(before, after, "generation_tokens"),
        prompt_tokens=_delta(before, after, "prompt_tokens"),
        preemptions=_delta(before, after, "preemptions"),
        requests_success=_delta(before, after, "requests_success"),
        prefix_cache_hit_rate=(hits / queries) if queries and hits is not None else None,
        running_mean=_mean(running),
        running_max=max(running, default=None),
        waiting_mean=_mean(waiting),
        waiting_max=max(waiting, default=None),
        waiting_growth=growth,
        kv_cache_usage_mean=_mean(kv),
        kv_cache_usage_max=max(kv, default=None),
    )
