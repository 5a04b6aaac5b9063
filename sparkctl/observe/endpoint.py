"""The endpoint as `status` sees it: /health, /v1/models and /metrics at one
moment, token rates between two such moments, and a one-token canary."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sparkctl.bench.metrics import MetricsSample, combine_samples, parse_metrics
from sparkctl.serve.endpoint import Endpoint, Member


@dataclass(frozen=True)
class MemberSample:
    """One server behind the endpoint (a replica behind the router), asked itself."""

    member: Member
    health: int | None
    metrics: MetricsSample | None
    metrics_error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {**self.member.to_dict(), "health": self.health, "metrics_error": self.metrics_error}


@dataclass(frozen=True)
class EndpointSample:
    at: float  # time.monotonic()
    health: int | None
    models: tuple[str, ...]
    metrics: MetricsSample | None
    metrics_error: str | None = None
    members: tuple[MemberSample, ...] = ()


def sample_endpoint(endpoint: Endpoint, members: Sequence[Member] = ()) -> EndpointSample:
    """/health, /v1/models and /metrics of the endpoint; with members (replicas behind a
    router, which publishes no vLLM metrics), each member's /health and the sum of their /metrics."""
    at = time.monotonic()
    health = endpoint.health().status
    if health != 200:
        return EndpointSample(at, health, (), None, members=_members(endpoint, members))
    _, models = endpoint.model_ids()
    if members:
        asked = _members(endpoint, members)
        failed = next((m for m in asked if m.metrics is None), None)
        if failed is not None:
            return EndpointSample(at, health, tuple(models), None, f"{failed.member.label}: {failed.metrics_error}", asked)
        return EndpointSample(at, health, tuple(models), combine_samples([m.metrics for m in asked if m.metrics]),
                              members=asked)
    metrics, error = _metrics(endpoint)
    return EndpointSample(at, health, tuple(models), metrics, error)


def _members(endpoint: Endpoint, members: Sequence[Member]) -> tuple[MemberSample, ...]:
    samples = []
    for member in members:
        server = endpoint.at(member.url)
        health = server.health().status
        metrics, error = _metrics(server) if health == 200 else (None, f"/health: {health or 'no answer'}")
        samples.append(MemberSample(member, health, metrics, error))
    return tuple(samples)


def _metrics(endpoint: Endpoint) -> tuple[MetricsSample | None, str | None]:
    reply = endpoint.request("GET", "/metrics")
    if reply.status != 200:
        return None, f"/metrics: {reply.error or reply.status}"
    try:
        return parse_metrics(reply.body.decode("utf-8", "replace"), at=time.monotonic()), None
    except ValueError as exc:
        return None, f"/metrics: not Prometheus text: {exc}"


@dataclass(frozen=True)
class Rates:
    """Counter deltas between two samples, and per second."""

    window_s: float
    generation_delta: float | None
    prompt_delta: float | None

    def per_s(self, delta: float | None) -> float | None:
        return None if delta is None or self.window_s <= 0 else delta / self.window_s

    @property
    def generation_tok_s(self) -> float | None:
        return self.per_s(self.generation_delta)

    @property
    def prompt_tok_s(self) -> float | None:
        return self.per_s(self.prompt_delta)


def rates(before: EndpointSample, after: EndpointSample) -> Rates | None:
    a, b = before.metrics, after.metrics
    if a is None or b is None:
        return None

    def delta(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None or y < x else y - x

    return Rates(b.at - a.at, delta(a.generation_tokens, b.generation_tokens), delta(a.prompt_tokens, b.prompt_tokens))


def canary(endpoint: Endpoint, model: str, timeout_s: float) -> str:
    """One `max_tokens: 1` completion with a deadline: "ok", or what went wrong."""
    reply = endpoint.request("POST", "/v1/completions",
                             {"model": model, "prompt": "ping", "max_tokens": 1, "temperature": 0}, timeout_s=timeout_s)
    if reply.status == 200:
        try:
            json.loads(reply.body)
            return "ok"
        except ValueError:
            return "an answer that is not JSON"
    if reply.status is None:
        return f"no answer within {timeout_s:g} s ({reply.error})"
    return f"HTTP {reply.status}"
