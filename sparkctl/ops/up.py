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

from sparkctl.agent.client import AgentClient
from sparkctl.agent.protocol import ProcessRecord
from sparkctl.backends.common import ProcessSpec, status_request
from sparkctl.backends.mp import plan_mp
from sparkctl.checks import ClusterSpec, check_cluster, derive_plan
from sparkctl.checks.findings import Status
from sparkctl.errors import InputError, Interrupted, OperationFailed, SparkctlError
from sparkctl.inventory import Inventory
from sparkctl.netplan import HostPlan
from sparkctl.ops.check import Facts, host_plans, probe_reach, reachable_facts, refusals
from sparkctl.backends.ray import RayPlan
from sparkctl.lifecycle.launch import launch_specs, plan_digest
from sparkctl.backends.ray_cluster import launch_ray_backend, prepare_ray, stop_ray
from sparkctl.lifecycle.stop import stop_all
from sparkctl.playbook import Playbook, check_against_inventory
from sparkctl.progress import Reporter
from sparkctl.remote.session import NodeSession
from sparkctl.serve.endpoint import Endpoint
from sparkctl.serve.readiness import wait_until_ready
from sparkctl.state import StateStore


@dataclass
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


def endpoint_url(inventory: Inventory, playbook: Playbook) -> str:
    """Where a client on the controller reaches the head's HTTP server."""
    host = playbook.host
    if host in {"0.0.0.0", "::", ""}:
        host = inventory.head.host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{playbook.port}"


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
) -> UpResult:
    environ = os.environ if environ is None else environ
    problems = check_against_inventory(playbook, inventory)
    if problems:
        raise InputError("the playbook does not fit the inventory", details=problems)
    secrets = forwarded_secrets(playbook, environ)
    store = StateStore.for_cluster(inventory.cluster)
    spec = ClusterSpec.from_config(inventory, playbook)
    started_at = time.monotonic()
    with store.locked("up"), NodeSession(inventory) as session:
        nodes = AgentClient(inventory, session)
        reporter.event(None, f"cluster {inventory.cluster}: {len(inventory.nodes)} node(s), backend {playbook.backend}")
        facts = reachable_facts(nodes, spec, inventory)
        plans = host_plans(spec, facts)
        ray_plan, specs = _plan_backend(nodes, inventory, playbook, plans, reporter)
        endpoint = Endpoint(endpoint_url(inventory, playbook), api_key=secrets.get("VLLM_API_KEY"))
        current = _already_serving(nodes, inventory, specs, endpoint, playbook)
        if current is not None:
            reporter.event(None, f"already serving {playbook.served_model_name!r} at {endpoint.base_url}; nothing started")
            result = _result("already-up", inventory, playbook, endpoint, current, plans)
            previous = store.load() or {}
            result.kv_cache = previous.get("kv_cache", {})
            _save(store, inventory, playbook, result, ray_plan)
            return result
        if _stop_leftovers(nodes, inventory, playbook, reporter):
            facts = reachable_facts(nodes, spec, inventory)  # ports and memory changed
            plans = host_plans(spec, facts)
            ray_plan, specs = _plan_backend(nodes, inventory, playbook, plans, reporter)
        _preflight_checks(nodes, spec, inventory, facts, reporter, ignore_checks)
        launched: dict[str, ProcessRecord] = {}
        try:
            launch_started = time.monotonic()
            if ray_plan is not None:
                launch = launch_ray_backend(nodes, inventory, playbook, plans, secrets, reporter, plan=ray_plan)
                launched, watch = launch.launched, launch.specs
            else:
                launched, watch = _launch_all(nodes, inventory, specs, secrets, reporter), specs
            launched_at = time.monotonic()
            result = _result("started", inventory, playbook, endpoint, launched, plans)
            _save(store, inventory, playbook, result, ray_plan)
            reporter.event(None, f"waiting until ready: processes alive, /health, /v1/models, one completion "
                                 f"(deadline {playbook.ready_timeout_s:.0f}s)")
            ready = wait_until_ready(
                nodes,
                inventory,
                watch,
                endpoint,
                playbook.served_model_name,
                deadline=launched_at + playbook.ready_timeout_s,
                reporter=reporter,
                started_at=launched_at,
            )
        except KeyboardInterrupt:
            reporter.event(None, "interrupted: stopping what this run started")
            _stop_everything(nodes, inventory, playbook, reporter)
            store.clear()
            raise Interrupted("interrupted; every process this run started has been stopped") from None
        except SparkctlError:
            if launched or ray_plan is not None:
                reporter.event(None, "start-up failed: stopping what this run started")
                _stop_everything(nodes, inventory, playbook, reporter)
                store.clear()
            raise
        head_report = ready.watches[inventory.head.name].report
        result.kv_cache = {
            "tokens": head_report.kv_cache_tokens,
            "device": head_report.kv_cache_device,
            "max_concurrency": head_report.max_concurrency,
            "tokens_per_request": head_report.max_concurrency_tokens,
        }
        assert ready.health_at is not None and ready.ready_at is not None
        result.timings = {
            "preflight_s": round(launch_started - started_at, 2),
            "launch_s": round(launched_at - launch_started, 2),
            "vllm_startup_s": round(ready.health_at - launched_at, 2),
            "first_completion_s": round(ready.completion_s or 0.0, 2),
            "total_s": round(ready.ready_at - started_at, 2),
            "vllm_init_engine_s": head_report.init_engine_s or 0.0,
        }
        _save(store, inventory, playbook, result, ray_plan)
        return result


def _plan_backend(
    nodes: AgentClient, inventory: Inventory, playbook: Playbook, plans: dict[str, HostPlan], reporter: Reporter
) -> tuple[RayPlan | None, list[ProcessSpec]]:
    """The processes the backend starts: vLLM on every node (mp), or Ray on
    every node and vLLM on the head (ray)."""
    if playbook.backend == "ray":
        ray_plan = prepare_ray(nodes, inventory, playbook, plans, reporter)
        return ray_plan, ray_plan.specs
    return None, plan_mp(inventory, playbook, plans)


def _stop_everything(nodes: AgentClient, inventory: Inventory, playbook: Playbook, reporter: Reporter) -> None:
    """Ray first (it has its own order and last resort), then whatever else this cluster runs."""
    if playbook.backend == "ray":
        stop_ray(nodes, inventory, reporter, grace_s=playbook.stop_grace_s)
    stop_all(nodes, inventory, grace_s=playbook.stop_grace_s, ports={}, reporter=reporter)


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
        if finding.status != Status.PASS:
            reporter.event(finding.node, f"{finding.status.value} {finding.check}: {finding.evidence}")
    counts = report.counts()
    reporter.event(None, f"checks: {counts['PASS']} PASS, {counts['WARN']} WARN, {counts['FAIL']} FAIL")
    blocking = refusals(report, set(ignore_checks))
    if blocking:
        raise OperationFailed(
            "preflight checks failed; nothing was started",
            details=blocking,
            hint="fix what they name (`sparkctl check` shows the evidence), or start anyway with --ignore-check ID",
        )


def _already_serving(
    nodes: AgentClient, inventory: Inventory, specs: list[ProcessSpec], endpoint: Endpoint, playbook: Playbook
) -> dict[str, ProcessRecord] | None:
    """The running processes when every node runs exactly the planned command and the endpoint answers."""
    outcomes = nodes.call_all(lambda n: status_request(inventory.cluster, n), timeout_s=30)
    running: dict[str, ProcessRecord] = {}
    for process in specs:
        record = outcomes[process.node].result().record(process.role)
        if record is None or not record.alive or record.plan_digest != plan_digest(process):
            return None
        running[process.node] = record
    if endpoint.health().status != 200:
        return None
    _, ids = endpoint.model_ids()
    return running if playbook.served_model_name in ids else None


def _stop_leftovers(nodes: AgentClient, inventory: Inventory, playbook: Playbook, reporter: Reporter) -> bool:
    """Converge: whatever this cluster's tag still runs (half-dead, other plan) goes first."""
    outcomes = nodes.call_all(lambda n: status_request(inventory.cluster, n), timeout_s=30)
    leftovers = {name: o.value.processes for name, o in outcomes.items() if o.value and o.value.processes}
    if not leftovers:
        return False
    summary = ", ".join(f"{name}: {len(p)} process(es)" for name, p in leftovers.items())
    reporter.event(None, f"found processes of an earlier start that do not match this plan ({summary}); stopping them")
    stop_ray(nodes, inventory, reporter, grace_s=playbook.stop_grace_s)  # a no-op where no Ray was started
    stop_all(nodes, inventory, grace_s=playbook.stop_grace_s, ports={}, reporter=reporter)
    return True


def _launch_all(
    nodes: AgentClient, inventory: Inventory, specs: list[ProcessSpec], secrets: dict[str, str], reporter: Reporter
) -> dict[str, ProcessRecord]:
    try:
        return launch_specs(nodes, inventory, specs, reporter, secrets=secrets)
    except SparkctlError:
        stop_all(nodes, inventory, grace_s=10, ports={}, reporter=reporter)  # whatever did start
        raise


def _result(
    outcome: str,
    inventory: Inventory,
    playbook: Playbook,
    endpoint: Endpoint,
    processes: dict[str, ProcessRecord],
    plans: dict[str, HostPlan],
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
    )


def _save(store: StateStore, inventory: Inventory, playbook: Playbook, result: UpResult,
          ray_plan: RayPlan | None = None) -> None:
    store.save(
        {
            "inventory": os.path.abspath(inventory.path),
            "playbook": os.path.abspath(playbook.path),
            "backend": playbook.backend,
            "endpoint": result.endpoint,
            "served_model_name": result.served_model_name,
            "outcome": result.outcome,
            "nodes": result.nodes,
            "listen_ports": {inventory.head.name: [playbook.port, ray_plan.gcs_port if ray_plan else playbook.master_port]},
            "kv_cache": result.kv_cache,
            "timings": result.timings,
        }
    )
