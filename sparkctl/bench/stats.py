"""From the records of one step to its figures, with vLLM's definitions
(`vllm bench serve`'s calculate_metrics):

- duration: first dispatch to last completion, failed requests included;
- latency statistics over successful requests only; TPOT per request, ITL pooled
  over every gap of every request; percentiles by linear interpolation (numpy's
  default), std as the population standard deviation;
- goodput: successful requests meeting every SLO given, per second.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from sparkctl.bench.client import RequestRecord
from sparkctl.bench.metrics import ServerView
from sparkctl.bench.options import LoadStep, Slo

# below this share of the target, a closed loop did not hold its concurrency
ACHIEVED_CONCURRENCY_FLOOR = 0.9
# an open loop whose completions fall below this share of the offered rate is behind
OPEN_LOOP_RATE_FLOOR = 0.9


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Distribution:
    """mean / median / std / percentiles of one latency metric, in milliseconds."""

    mean: float | None
    median: float | None
    std: float | None
    percentiles: tuple[tuple[float, float | None], ...]

    @classmethod
    def of(cls, seconds: list[float], percentiles: tuple[float, ...]) -> Distribution:
        if not seconds:
            return cls(None, None, None, tuple((p, None) for p in percentiles))
        ms = [s * 1000.0 for s in seconds]
        return cls(
            statistics.fmean(ms),
            statistics.median(ms),
            statistics.pstdev(ms),
            tuple((p, percentile(ms, p)) for p in percentiles),
        )

    def flat(self, metric: str) -> dict[str, float | None]:
        """vLLM's keys: mean_ttft_ms, median_ttft_ms, std_ttft_ms, p99_ttft_ms, ..."""
        out: dict[str, float | None] = {
            f"mean_{metric}_ms": self.mean,
            f"median_{metric}_ms": self.median,
            f"std_{metric}_ms": self.std,
        }
        for p, value in self.percentiles:
            out[f"p{p:g}_{metric}_ms"] = value
        return out


@dataclass(frozen=True)
class StepResult:
    step: LoadStep
    num_requests: int
    duration: float
    completed: int
    failed: int
    errors: dict[str, int]
    total_input_tokens: int
    total_output_tokens: int
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2el: Distribution
    nodes: int
    request_goodput: float | None
    achieved_concurrency: float
    token_count_mismatches: int  # server usage count != client chunk count
    short_outputs: int  # fewer tokens than asked for (the server ended early)
    server: ServerView | None
    saturation_reasons: tuple[str, ...]
    interrupted: bool = False
    sample_errors: tuple[str, ...] = field(default=())
    started_at: float = 0.0  # time.time() of the step's first request and last answer
    ended_at: float = 0.0
    telemetry: dict[str, dict[str, float | int | None]] | None = None  # per node, with an inventory

    @property
    def saturated(self) -> bool:
        return bool(self.saturation_reasons)

    def _per_s(self, count: float) -> float:
        return count / self.duration if self.duration > 0 else 0.0

    @property
    def request_throughput(self) -> float:
        return self._per_s(self.completed)

    @property
    def output_throughput(self) -> float:
        return self._per_s(self.total_output_tokens)

    @property
    def total_token_throughput(self) -> float:
        return self._per_s(self.total_input_tokens + self.total_output_tokens)

    @property
    def tok_s_per_user(self) -> float | None:
        return 1000.0 / self.tpot.median if self.tpot.median else None

    @property
    def output_throughput_per_node(self) -> float:
        return self.output_throughput / max(self.nodes, 1)

    def to_dict(self) -> dict[str, object]:
        s = self.step
        data: dict[str, object] = {
            "label": s.label,
            "input_len": s.input_len,
            "output_len": s.output_len,
            "concurrency": s.concurrency,
            "max_concurrency": s.in_flight_cap,
            "request_rate": s.request_rate,
            "burstiness": s.burstiness if not s.closed_loop else None,
            "num_prompts": self.num_requests,
            "duration": self.duration,
            "completed": self.completed,
            "failed": self.failed,
            "errors": dict(self.errors),
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "request_throughput": self.request_throughput,
            "request_goodput": self.request_goodput,
            "output_throughput": self.output_throughput,
            "total_token_throughput": self.total_token_throughput,
        }
        for name in ("ttft", "tpot", "itl", "e2el"):
            data.update(getattr(self, name).flat(name))
        data.update(
            {
                "tok_s_per_user": self.tok_s_per_user,
                "output_throughput_per_node": self.output_throughput_per_node,
                "nodes": self.nodes,
                "achieved_concurrency": self.achieved_concurrency,
                "saturated": self.saturated,
                "saturation_reasons": list(self.saturation_reasons),
                "token_count_mismatches": self.token_count_mismatches,
                "short_outputs": self.short_outputs,
                "interrupted": self.interrupted,
                "error_samples": list(self.sample_errors),
                "server": self.server.to_dict() if self.server else None,
                "telemetry": self.telemetry,
                "started_at": self.started_at,
                "ended_at": self.ended_at,
            }
        )
        return data


def _saturation(step: LoadStep, achieved: float, completed: int, duration: float,
                server: ServerView | None) -> tuple[str, ...]:
    reasons: list[str] = []
    if step.closed_loop and step.concurrency and achieved < ACHIEVED_CONCURRENCY_FLOOR * step.concurrency:
        reasons.append(f"achieved concurrency {achieved:.2f} is below the target {step.concurrency}")
    if not step.closed_loop and step.request_rate and duration > 0:
        rate = completed / duration
        if rate < OPEN_LOOP_RATE_FLOOR * step.request_rate:
            reasons.append(f"completed {rate:.2f} req/s of {step.request_rate:g} offered")
    if server is not None and server.waiting_mean is not None and server.waiting_mean >= 0.5:
        grows = server.waiting_growth is not None and server.waiting_growth > 0.5
        reasons.append(f"the server queued requests (waiting mean {server.waiting_mean:.1f}, "
                       f"max {server.waiting_max:g}{', growing' if grows else ''})")
    return tuple(reasons)


def step_result(step: LoadStep, records: list[RequestRecord], *, duration: float, nodes: int,
                percentiles: tuple[float, ...], slo: Slo, server: ServerView | None,
                interrupted: bool = False) -> StepResult:
    good = [r for r in records if r.ok]
    bad = [r for r in records if not r.ok]
    errors: dict[str, int] = {}
    for r in bad:
        errors[r.error_kind or "unknown"] = errors.get(r.error_kind or "unknown", 0) + 1
    samples = tuple(dict.fromkeys(f"{r.error_kind}: {r.error}" for r in bad))[:5]
    ttfts = [r.ttft for r in good if r.ttft is not None]
    tpots = [t for t in (r.tpot for r in good) if t is not None]
    e2els = [r.e2el for r in good if r.e2el is not None]
    itls = [gap for r in good for gap in r.itl]
    goodput = None
    if slo.given:
        met = sum(
            1 for r in good
            if slo.met((r.ttft or 0.0) * 1000, (r.tpot or 0.0) * 1000, (r.e2el or 0.0) * 1000)
        )
        goodput = met / duration if duration > 0 else 0.0
    busy = sum((r.e2el or 0.0) for r in records if r.e2el is not None)
    achieved = busy / duration if duration > 0 else 0.0
    return StepResult(
        step=step,
        num_requests=len(records),
        duration=duration,
        completed=len(good),
        failed=len(bad),
        errors=errors,
        total_input_tokens=sum(r.prompt_len for r in good),
        total_output_tokens=sum(r.output_len for r in good),
        ttft=Distribution.of(ttfts, percentiles),
        tpot=Distribution.of(tpots, percentiles),
        itl=Distribution.of(itls, percentiles),
        e2el=Distribution.of(e2els, percentiles),
        nodes=nodes,
        request_goodput=goodput,
        achieved_concurrency=achieved,
        token_count_mismatches=sum(1 for r in good if r.output_tokens is not None and r.output_tokens != r.chunks),
        short_outputs=sum(1 for r in good if r.output_len < step.output_len),
        server=server,
        saturation_reasons=() if interrupted else _saturation(step, achieved, len(good), duration, server),
        interrupted=interrupted,
        sample_errors=samples,
    )
