"""`sparkctl up`: converge the cluster to "serving this playbook".

Stages: validate -> facts from every node -> per-host plan -> observe what
already runs -> preflight checks (as `sparkctl check`) -> launch -> wait until
really ready -> record. Running it again on a healthy cluster
that serves the same plan starts nothing. On any failure (or Ctrl-C) the
processes this run started are stopped before the error is raised.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from sparkctl.agent.client import AgentClient, Connect, connect
from sparkctl.agent.protocol import ProcessRecord, StatusReply
from sparkctl.backends.serving import Backend, ServePlan, backend_for, backend_found
from sparkctl.checks import ClusterSpec, check_cluster, derive_plan
from sparkctl.errors import InputError, Interrupted, OperationFailed, SparkctlError
from sparkctl.findings import Severity, check_status
from sparkctl.inventory import Inventory
from sparkctl.lifecycle.launch import plan_digest
from sparkctl.lifecycle.spec import ProcessSpec, status_request
from sparkctl.netplan import HostPlan
from sparkctl.ops.check import Facts, host_plans, probe_reach, reachable_facts, refusals
from sparkctl.playbook import Playbook, check_against_inventory
from sparkctl.progress import Reporter
from sparkctl.serve.endpoint import Endpoint, endpoint_url
from sparkctl.serve.readiness import Readiness, wait_until_ready
from sparkctl.state import StateStore


@dataclass(frozen=True)
class UpResult:
    outcome: str  # "started" | "already-up"
    cluster: str
    endpoint: str
    served_model_name: str
    backend: str
    nodes: dict[str, Any] = field(default_factory=dict)
    kv_cache: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    network_plan: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def forwarded_secrets(playbook: Playbook, environ: Mapping[str, str]) -> dict[str, str]:
    missing = [name for name in playbook.forward_env if not environ.get(name)]
    if missing:
        raise InputError(
            f"forward_env names {', '.join(missing)}, but it is not set in this shell",
            hint=f"export {missing[0]}=... before running sparkctl (the value goes to the nodes on stdin, never in argv or logs)",
        )
    return {name: environ[name] for name in playbook.forward_env}


def up(
    inventory: Inventory,
    playbook: Playbook,
    reporter: Reporter,
    *,
    environ: Mapping[str, str] | None = None,
    ignore_checks: set[str] | frozenset[str] = frozenset(),
    connect: Connect = connect,
) -> UpResult:
    environ = os.environ if environ is None else environ
    problems = check_against_inventory(playbook, inventory)
    if problems:
        raise InputError("the playbook does not fit the inventory", details=problems)
    secrets = forwarded_secrets(playbook, environ)
    store = StateStore.for_cluster(inventory.cluster)
    started_at = time.monotonic()
    with store.locked("up"), connect(inventory) as nodes:
        run = _UpRun(inventory, playbook, reporter, nodes, store, secrets)
        reporter.event(None, f"cluster {inventory.cluster}: {len(inventory.nodes)} node(s), backend {playbook.backend}")
        run.plan()
        statuses = _statuses(run.nodes, inventory)
        current = _already_serving(statuses, run.serve_plan, run.endpoint, playbook)
        if current is not None:
            return run.already_up(current)
        if _stop_leftovers(run.nodes, inventory, playbook, reporter, statuses):
            run.plan()  # ports and memory changed
        run.preflight(ignore_checks)
        launch_started = time.monotonic()
        launched = run.launch()
        ready = run.wait_until_ready(launched)
        return run.finish(ready, Timings(started_at, launch_started, launched.at))


@dataclass(frozen=True)
class Timings:
    started_at: float
    launch_started: float
    launched_at: float

    def to_dict(self, ready: Readiness, init_engine_s: float | None) -> dict[str, float]:
        health_at = ready.health_at if ready.health_at is not None else self.launched_at
        ready_at = ready.ready_at if ready.ready_at is not None else health_at
        return {
            "preflight_s": round(self.launch_started - self.started_at, 2),
            "launch_s": round(self.launched_at - self.launch_started, 2),
            "vllm_startup_s": round(health_at - self.launched_at, 2),
            "first_completion_s": round(ready.completion_s or 0.0, 2),
            "total_s": round(ready_at - self.started_at, 2),
            "vllm_init_engine_s": init_engine_s or 0.0,
        }


@dataclass(frozen=True)
class _Launch:
    processes: dict[str, ProcessRecord]
    watch: tuple[ProcessSpec, ...]
    at: float


class _UpRun:
    """One `up`, stage by stage: plan, preflight, launch, wait, record. It owns
    the cluster once the backend's launch has returned (see backends.serving)."""

    def __init__(self, inventory: Inventory, playbook: Playbook, reporter: Reporter, nodes: AgentClient,
                 store: StateStore, secrets: dict[str, str]):
        self.inventory = inventory
        self.playbook = playbook
        self.reporter = reporter
        self.nodes = nodes
        self.store = store
        self.secrets = secrets
        self.spec = ClusterSpec.from_config(inventory, playbook)
        self.backend: Backend[Any] = backend_for(inventory, playbook)
        self.endpoint = Endpoint(endpoint_url(inventory, playbook), api_key=secrets.get("VLLM_API_KEY"))

    def plan(self) -> None:
        """Facts from every node, the per-host network plan, and the backend's processes."""
        self.facts = reachable_facts(self.nodes, self.spec, self.inventory)
        self.hosts = host_plans(self.spec, self.facts)
        self.serve_plan = self.backend.plan(self.nodes, self.hosts, self.reporter)

    def already_up(self, current: dict[str, ProcessRecord]) -> UpResult:
        self.reporter.event(None, f"already serving {self.playbook.served_model_name!r} at {self.endpoint.base_url}; "
                                  "nothing started")
        previous = self.store.load() or {}
        result = self._result("already-up", current, kv_cache=previous.get("kv_cache", {}))
        self._save(result)
        return result

    def preflight(self, ignore_checks: set[str] | frozenset[str]) -> None:
        _preflight_checks(self.nodes, self.spec, self.inventory, self.facts, self.reporter, ignore_checks)

    def launch(self) -> _Launch:
        """Start the backend; if it fails it has already stopped what it started."""
        try:
            launched = self.backend.launch(self.nodes, self.serve_plan, self.secrets, self.reporter)
        except KeyboardInterrupt:
            self.store.clear()
            raise Interrupted("interrupted; every process this run started has been stopped") from None
        except SparkctlError:
            self.store.clear()  # an earlier start's record no longer describes the nodes
            raise
        except Exception:  # noqa: BLE001 - a bug between launch steps: stop what may have started
            self._stop()
            raise
        self._save(self._result("started", launched.processes))
        self.launched = _Launch(launched.processes, launched.watch, time.monotonic())
        return self.launched

    def wait_until_ready(self, launched: _Launch) -> Readiness:
        """Ready, or everything stopped before the error is raised."""
        self.reporter.event(None, f"waiting until ready: processes alive, /health, /v1/models, one completion "
                                  f"(deadline {self.playbook.ready_timeout_s:.0f}s)")
        try:
            return wait_until_ready(
                self.nodes, self.inventory, list(launched.watch), self.endpoint, self.playbook.served_model_name,
                deadline=launched.at + self.playbook.ready_timeout_s, reporter=self.reporter, started_at=launched.at,
                members=self.serve_plan.members,
            )
        except KeyboardInterrupt:
            self.reporter.event(None, "interrupted: stopping what this run started")
            self._stop()
            raise Interrupted("interrupted; every process this run started has been stopped") from None
        except Exception as exc:  # noqa: BLE001 - sparkctl's errors and its bugs alike: nothing is left running
            self.reporter.event(None, "start-up failed: stopping what this run started")
            unstopped = self._stop()
            if unstopped and isinstance(exc, SparkctlError):
                # a lost node keeps what was started there: say so, and what cleans it up
                exc.details.append(f"not stopped (the node did not answer): {', '.join(unstopped)}")
                cleanup = (f"once {', '.join(unstopped)} answer{'s' if len(unstopped) == 1 else ''} again, "
                           f"`sparkctl down -i {self.inventory.path}` stops what is left")
                exc.hint = f"{exc.hint}; {cleanup}" if exc.hint else cleanup
            raise

    def finish(self, ready: Readiness, timings: Timings) -> UpResult:
        head_report = ready.watches[self.inventory.head.name].report
        kv_cache = {
            "tokens": head_report.kv_cache_tokens,
            "device": head_report.kv_cache_device,
            "max_concurrency": head_report.max_concurrency,
            "tokens_per_request": head_report.max_concurrency_tokens,
        }
        result = self._result("started", self.launched.processes, kv_cache=kv_cache,
                              timings=timings.to_dict(ready, head_report.init_engine_s))
        self._save(result)
        return result

    def _stop(self) -> list[str]:
        """Stop what this run started; the nodes where that could not be done."""
        results = self.backend.stop(self.nodes, self.reporter, grace_s=self.playbook.stop_grace_s, ports={})
        self.store.clear()
        return [name for name, result in results.items() if not result.clean]

    def _result(self, outcome: str, processes: dict[str, ProcessRecord], *, kv_cache: dict[str, Any] | None = None,
                timings: dict[str, float] | None = None) -> UpResult:
        return _result(outcome, self.inventory, self.playbook, self.endpoint, processes, self.hosts,
                       kv_cache=kv_cache or {}, timings=timings or {})

    def _save(self, result: UpResult) -> None:
        _save(self.store, self.inventory, self.playbook, result, self.serve_plan)


def _preflight_checks(
    nodes: AgentClient,
    spec: ClusterSpec,
    inventory: Inventory,
    facts: Facts,
    reporter: Reporter,
    ignore_checks: set[str] | frozenset[str],
) -> None:
    """The same checks as `sparkctl check`; a FAIL stops `up` before anything starts."""
    probe_reach(nodes, spec, inventory, facts, derive_plan(spec, facts.by_node))
    report = check_cluster(spec, facts.by_node, timing=facts.timing)
    for finding in report.findings:
        if finding.severity is not Severity.OK:
            reporter.event(finding.node, f"{check_status(finding.severity)} {finding.code}: {finding.evidence}")
    counts = report.counts()
    reporter.event(None, f"checks: {counts['PASS']} PASS, {counts['WARN']} WARN, {counts['FAIL']} FAIL")
    blocking = refusals(report, set(ignore_checks))
    if blocking:
        raise OperationFailed(
            "preflight checks failed; nothing was started",
            details=blocking,
            hint="fix what they name (`sparkctl check` shows the evidence), or start anyway with --ignore-check ID",
        )


def _statuses(nodes: AgentClient, inventory: Inventory) -> dict[str, StatusReply]:
    """What this cluster runs on every node (raising when a node cannot be asked)."""
    outcomes = nodes.call_all(lambda n: status_request(inventory.cluster, n), timeout_s=30)
    return {name: outcome.result() for name, outcome in outcomes.items()}


def _already_serving(
    statuses: dict[str, StatusReply], plan: ServePlan, endpoint: Endpoint, playbook: Playbook
) -> dict[str, ProcessRecord] | None:
    """The running processes when every node runs exactly the planned command and the
    endpoint (and every replica behind it) answers."""
    running: dict[str, ProcessRecord] = {}
    for process in plan.specs:
        record = statuses[process.node].record(process.role)
        if record is None or not record.alive or record.plan_digest != plan_digest(process):
            return None
        running.setdefault(process.node, record)  # the node's server, not the router beside it
    servers = [endpoint, *(endpoint.at(m.url) for m in plan.members)]
    for server in servers:
        if server.health().status != 200 or playbook.served_model_name not in server.model_ids()[1]:
            return None
    return running


def _stop_leftovers(nodes: AgentClient, inventory: Inventory, playbook: Playbook, reporter: Reporter,
                    statuses: dict[str, StatusReply]) -> bool:
    """Converge: whatever this cluster's tag still runs (half-dead, other plan) goes
    first, stopped by the backend that started it (Ray only where Ray was started)."""
    leftovers = {name: s.processes for name, s in statuses.items() if s.processes}
    if not leftovers:
        return False
    summary = ", ".join(f"{name}: {len(p)} process(es)" for name, p in leftovers.items())
    reporter.event(None, f"found processes of an earlier start that do not match this plan ({summary}); stopping them")
    backend = backend_found(nodes, inventory, statuses=statuses)
    backend.stop(nodes, reporter, grace_s=playbook.stop_grace_s, ports={})
    return True


def _result(
    outcome: str,
    inventory: Inventory,
    playbook: Playbook,
    endpoint: Endpoint,
    processes: dict[str, ProcessRecord],
    plans: dict[str, HostPlan],
    *,
    kv_cache: dict[str, Any],
    timings: dict[str, float],
) -> UpResult:
    return UpResult(
        outcome=outcome,
        cluster=inventory.cluster,
        endpoint=endpoint.base_url,
        served_model_name=playbook.served_model_name,
        backend=playbook.backend,
        nodes={
            name: {
                "role": inventory.node(name).role,
                "pid": proc.pid,
                "starttime": proc.starttime,
                "log": proc.log,
                "tag": proc.tag,
            }
            for name, proc in processes.items()
        },
        network_plan={
            name: {"address": p.address, "interface": p.interface, "master_addr": p.master_addr, "env": p.env, "why": p.why}
            for name, p in plans.items()
        },
        kv_cache=kv_cache,
        timings=timings,
    )


def _save(store: StateStore, inventory: Inventory, playbook: Playbook, result: UpResult, plan: ServePlan) -> None:
    store.save(
        {
            "inventory": os.path.abspath(inventory.path),
            "playbook": os.path.abspath(playbook.path),
            "backend": playbook.backend,
            "endpoint": result.endpoint,
            "served_model_name": result.served_model_name,
            "outcome": result.outcome,
            "nodes": result.nodes,
            "members": [member.to_dict() for member in plan.members],  # replicas behind the router
            "listen_ports": {inventory.head.name: [playbook.port, plan.control_port]},
            "kv_cache": result.kv_cache,
            "timings": result.timings,
        }
    )
