"""`sparkctl status`: per node, what sparkctl started and in what state, the
node's telemetry (host, GPUs through NVML, logs), the endpoint as a client sees
it (/health, /v1/models, /metrics), and a verdict with its reasons.

One agent round trip per node per sample (status and telemetry together, over
the connection the session keeps). `Observer` keeps what a verdict needs across
samples (the token counters, since when they have been frozen), so `status
--watch` and the supervisor measure a wedge across samples, and a single
`status` samples the endpoint twice, `sample_s` apart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sparkctl.agent.client import AgentClient, Connect, connect
from sparkctl.agent.protocol import ProcessInfo, RecordStatus, TelemetryReply, TelemetryRequest, to_wire
from sparkctl.backends.serving import backend_found, members_behind
from sparkctl.findings import Finding, Severity
from sparkctl.inventory import Inventory
from sparkctl.lifecycle.spec import record_dir, tag_prefix
from sparkctl.observe.endpoint import EndpointSample, MemberSample, Rates, canary, rates, sample_endpoint
from sparkctl.observe.verdict import (
    GpuView,
    Observation,
    ProcessView,
    Progress,
    Verdict,
    judge,
    process_state,
    reason_dict,
)
from sparkctl.playbook import Playbook
from sparkctl.serve.endpoint import Endpoint, endpoint_url
from sparkctl.state import StateStore


@dataclass
class NodeStatus:
    node: str
    role: str
    records: list[dict[str, Any]] = field(default_factory=list)
    processes: list[dict[str, Any]] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    error: str | None = None
    telemetry: TelemetryReply | None = None
    states: list[ProcessView] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return bool(self.records) and all(r.get("alive") for r in self.records)

    def to_dict(self) -> dict[str, Any]:
        t = self.telemetry
        data: dict[str, Any] = {
            "node": self.node, "role": self.role, "alive": self.alive, "error": self.error,
            "records": [{**r, "state": next((s.state for s in self.states if s.pid == r.get("pid")), None)}
                        for r in self.records],
            "processes": self.processes, "ports": self.ports,
        }
        if t is not None:
            data.update(host=to_wire(t.host), gpus=[to_wire(g) for g in t.gpus], gpu_source=t.gpu_source,
                        gpu_error=t.gpu_error, unified_memory=t.unified_memory, logs=[to_wire(a) for a in t.logs])
        return data


@dataclass
class StatusResult:
    cluster: str
    state: str  # serving | degraded | wedged | down | stopped | unreachable
    reasons: tuple[Finding, ...]
    endpoint: str | None
    health: int | None
    models: list[str]
    nodes: dict[str, NodeStatus]
    recorded: dict[str, Any] | None
    ray: dict[str, Any] | None = None
    metrics: EndpointSample | None = None
    rates: Rates | None = None
    frozen_for_s: float | None = None
    canary: str | None = None
    at: float = 0.0  # time.time() of the sample

    @property
    def exit_code(self) -> int:
        return Verdict(self.state, self.reasons).exit_code

    def to_dict(self) -> dict[str, Any]:
        m = self.metrics.metrics if self.metrics else None
        return {
            "cluster": self.cluster,
            "state": self.state,
            "reasons": [reason_dict(r) for r in self.reasons],
            "at": self.at,
            "endpoint": self.endpoint,
            "health": self.health,
            "models": self.models,
            "metrics": None if m is None else {
                "running": m.running, "waiting": m.waiting, "kv_cache_usage": m.kv_cache_usage,
                "preemptions_total": m.preemptions,
                "prefix_cache_hit_rate": (m.prefix_cache_hits / m.prefix_cache_queries)
                if m.prefix_cache_hits is not None and m.prefix_cache_queries else None,
                "generation_tokens_total": m.generation_tokens, "prompt_tokens_total": m.prompt_tokens,
                "generation_tok_s": self.rates.generation_tok_s if self.rates else None,
                "prompt_tok_s": self.rates.prompt_tok_s if self.rates else None,
                "rate_window_s": self.rates.window_s if self.rates else None,
                "tokens_frozen_for_s": self.frozen_for_s,
            },
            "canary": self.canary,
            "members": [m.to_dict() for m in self.metrics.members] if self.metrics else [],
            "nodes": {name: n.to_dict() for name, n in self.nodes.items()},
            "recorded": self.recorded,
            "ray": self.ray,
        }


def _states(node: str, records: tuple[RecordStatus, ...], processes: tuple[ProcessInfo, ...]) -> list[ProcessView]:
    """Each recorded launch (running, stopped, zombie or gone), and any other
    process of the cluster (vLLM's engine and workers) that is stopped or a zombie."""
    letters = {p.pid: p.state for p in processes}
    views = [ProcessView(node, r.role, r.pid, process_state(r.alive, letters.get(r.pid))) for r in records]
    recorded = {r.pid for r in records}
    for p in processes:
        state = process_state(True, p.state)
        if p.pid not in recorded and state != "running":
            name = (p.cmdline.split() or ["?"])[0].rsplit("/", 1)[-1]
            views.append(ProcessView(node, f"{name} (child)", p.pid, state))
    return views


def _public(record: RecordStatus) -> dict[str, Any]:
    keep = ("role", "pid", "pgid", "alive", "log", "argv", "env_keys", "started_at", "tag", "hostname")
    wire = to_wire(record)
    return {k: wire[k] for k in keep}


class Observer:
    """Samples a cluster again and again, remembering what a verdict needs across samples."""

    def __init__(self, inventory: Inventory, nodes: AgentClient, *, playbook: Playbook | None = None,
                 wedge_after_s: float = 30.0, gpus: bool = True, api_key: str | None = None):
        self.inventory, self.nodes, self.wedge_after_s, self.gpus = inventory, nodes, wedge_after_s, gpus
        self.recorded = StateStore.for_cluster(inventory.cluster).load()
        url = (self.recorded or {}).get("endpoint") or (endpoint_url(inventory, playbook) if playbook else None)
        self.url: str | None = url
        self.endpoint = Endpoint(url, api_key=api_key, timeout_s=5) if url else None
        self.model = (self.recorded or {}).get("served_model_name") or (playbook.served_model_name if playbook else None)
        # replicas behind a router: asked themselves, since the router answers while one of them does
        self.members = members_behind(self.recorded, inventory, playbook)
        self.previous: EndpointSample | None = None
        self.moved_at: float | None = None  # when the token counters last moved (or were first seen)

    def _nodes(self) -> dict[str, NodeStatus]:
        outcomes = self.nodes.call_all(
            lambda n: TelemetryRequest(tag_prefix=tag_prefix(self.inventory.cluster, n),
                                       record_dir=record_dir(n, self.inventory.cluster), gpus=self.gpus),
            timeout_s=30)
        found: dict[str, NodeStatus] = {}
        for node in self.inventory.nodes:
            outcome = outcomes[node.name]
            if outcome.error is not None:
                found[node.name] = NodeStatus(node.name, node.role, error=str(outcome.error))
                continue
            t = outcome.result()
            s = t.status
            found[node.name] = NodeStatus(
                node.name, node.role, records=[_public(r) for r in s.records],
                processes=[to_wire(p) for p in s.processes], ports=list(s.ports), telemetry=t,
                states=_states(node.name, s.records, s.processes))
        return found

    def _frozen_for(self, sample: EndpointSample) -> tuple[Rates | None, float | None]:
        window = rates(self.previous, sample) if self.previous else None
        now = sample.at
        running = sample.metrics.running if sample.metrics else None
        moved = window is None or bool(window.generation_delta) or bool(window.prompt_delta) or not running
        if moved or self.moved_at is None:
            self.moved_at = self.previous.at if (self.previous and not moved) else now
        self.previous = sample
        return window, (None if moved else now - self.moved_at)

    def sample(self, *, second_look_s: float = 0.0, canary_timeout_s: float | None = None) -> StatusResult:
        """One sample; second_look_s > 0 scrapes the endpoint again after that long
        (a single `status`: rates and a wedge need two scrapes)."""
        nodes = self._nodes()
        statuses = {n: ns.telemetry.status for n, ns in nodes.items() if ns.telemetry is not None}
        ray = backend_found(self.nodes, self.inventory, statuses=statuses).observe(self.nodes)
        anything = any(ns.records or ns.processes for ns in nodes.values())
        endpoint = self.endpoint
        first = sample_endpoint(endpoint, self.members) if endpoint is not None and anything else None
        window: Rates | None = None
        frozen: float | None = None
        if endpoint is not None and first is not None:
            window, frozen = self._frozen_for(first)
            if second_look_s > 0 and first.health == 200 and first.metrics is not None:
                time.sleep(second_look_s)
                second = sample_endpoint(endpoint, self.members)
                window, _ = self._frozen_for(second)
                frozen = None  # one look, not a history: the verdict says how long it looked
                first = second
        check = None
        if canary_timeout_s and first is not None and first.health == 200 and self.model and self.endpoint:
            check = canary(self.endpoint, self.model, canary_timeout_s)
        ray_reasons = tuple(Finding("ray", Severity.ERROR, f"Ray: {problem}") for problem in _ray_problems(ray))
        member_reasons = _member_reasons(first.members if first and first.health == 200 else ())
        progress = None
        if window is not None and first is not None and first.metrics is not None:
            progress = Progress(window.window_s, first.metrics.running, window.generation_delta, window.prompt_delta)
        obs = Observation(
            unreachable=tuple(n for n, ns in nodes.items() if ns.error),
            anything_running=anything,
            health=first.health if first else None,
            processes=tuple(v for ns in nodes.values() for v in ns.states),
            progress=progress,
            frozen_for_s=frozen,
            canary=check,
            gpus=tuple(GpuView(n, g.utilization_pct, g.power_w) for n, ns in nodes.items()
                       if ns.telemetry for g in ns.telemetry.gpus),
            other=(*ray_reasons, *member_reasons),
        )
        verdict = judge(obs, wedge_after_s=self.wedge_after_s)
        return StatusResult(
            self.inventory.cluster, verdict.state, verdict.reasons, self.url, first.health if first else None,
            list(first.models) if first else [], nodes, self.recorded, ray, first, window, frozen, check, time.time())


def _member_reasons(members: tuple[MemberSample, ...]) -> tuple[Finding, ...]:
    return tuple(Finding("replica-health", Severity.ERROR,
                         f"{m.member.label} at {m.member.url} on {m.member.node}: /health "
                         f"{'no answer' if m.health is None else f'HTTP {m.health}'} (the router answers through the others)",
                         node=m.member.node)
                 for m in members if m.health != 200)


def _ray_problems(ray: dict[str, Any] | None) -> list[str]:
    if not ray:
        return []
    problems = []
    if ray.get("error"):
        problems.append(str(ray["error"]))
    if ray.get("missing"):
        problems.append(f"missing nodes: {', '.join(ray['missing'])}")
    if ray.get("unexpected"):
        problems.append(f"unexpected nodes: {', '.join(map(str, ray['unexpected']))}")
    return problems


def status(inventory: Inventory, *, playbook: Playbook | None = None, connect: Connect = connect,
           sample_s: float = 3.0, wedge_after_s: float = 30.0, canary_timeout_s: float | None = None,
           api_key: str | None = None) -> StatusResult:
    with connect(inventory) as nodes:
        observer = Observer(inventory, nodes, playbook=playbook, wedge_after_s=wedge_after_s, api_key=api_key)
        return observer.sample(second_look_s=sample_s, canary_timeout_s=canary_timeout_s)
