"""The serving backends behind `up`, `down` and `status`: one interface, chosen
once from the playbook (`backend_for`) or, without one, from what the nodes
keep (`backend_found`).

    plan(nodes, hosts, reporter) -> ServePlan   what will run where; asks the nodes, starts nothing
    launch(nodes, plan, secrets, reporter)      starts it; returns what readiness watches
    observe(nodes) -> dict | None               the backend's own view for `status` (Ray's), if any
    stop(nodes, reporter, grace_s, ports)       everything this cluster runs, verified, one report per node

Teardown on failure has one owner at a time:
  * `launch` returns with every process started, or raises after stopping what
    it started, exactly once (a Ray that cannot join is stopped once, by
    start_ray_cluster, and nobody else);
  * once `launch` has returned, the caller owns the cluster: `up` calls `stop`
    when readiness fails or the user interrupts, and `down` calls it on request.

The further layouts (DpBackend: vLLM's data parallel; ReplicasBackend: replicas
behind vllm-router) are mp launches with other plans: their plan is the
ProcessSpecs each node runs (the convergence check compares them by digest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from sparkctl.agent.client import AgentClient
from sparkctl.agent.protocol import ProcessRecord, StatusReply
from sparkctl.backends.dp import plan_dp
from sparkctl.backends.mp import plan_mp
from sparkctl.backends.ray import ROLE as RAY_ROLE
from sparkctl.backends.ray import RayPlan
from sparkctl.backends.ray_cluster import (
    RayNodeStop,
    launch_ray_backend,
    prepare_ray,
    ray_view,
    stop_ray,
)
from sparkctl.backends.replicas import ROUTER_ROLE, plan_replicas, replica_members
from sparkctl.errors import SparkctlError
from sparkctl.inventory import Inventory
from sparkctl.lifecycle.launch import launch_specs
from sparkctl.lifecycle.spec import ProcessSpec, status_request
from sparkctl.lifecycle.stop import NodeStop, stop_all
from sparkctl.netplan import HostPlan
from sparkctl.playbook import Playbook
from sparkctl.progress import Reporter
from sparkctl.serve.endpoint import Member, recorded_members

P = TypeVar("P", bound="ServePlan")


@dataclass(frozen=True)
class ServePlan:
    """What a backend will leave running: one or more ProcessSpecs per node."""

    specs: tuple[ProcessSpec, ...]
    control_port: int  # the head's rendezvous (mp) or GCS (ray) port, recorded for `down`'s port check
    # servers behind the one endpoint that must each serve before the cluster is ready
    # (vllm-router answers as soon as one replica does)
    members: tuple[Member, ...] = field(default=(), kw_only=True)


@dataclass(frozen=True)
class RayServePlan(ServePlan):
    ray: RayPlan


@dataclass(frozen=True)
class Launched:
    processes: dict[str, ProcessRecord]  # node -> the process that serves there (vLLM; a Ray worker's `ray start`)
    watch: tuple[ProcessSpec, ...]  # one per node: what readiness watches
    details: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol, Generic[P]):
    name: str

    def plan(self, nodes: AgentClient, hosts: dict[str, HostPlan], reporter: Reporter) -> P: ...

    def launch(self, nodes: AgentClient, plan: P, secrets: dict[str, str], reporter: Reporter) -> Launched: ...

    def observe(self, nodes: AgentClient) -> dict[str, Any] | None: ...

    def stop(self, nodes: AgentClient, reporter: Reporter, *, grace_s: float,
             ports: dict[str, list[int]]) -> dict[str, NodeStop]: ...


class MpBackend:
    """vLLM's own multi-node executor: one `vllm serve` per node (the head serves HTTP)."""

    name = "mp"

    def __init__(self, inventory: Inventory, playbook: Playbook | None = None):
        self.inventory = inventory
        self.playbook = playbook

    def plan(self, nodes: AgentClient, hosts: dict[str, HostPlan], reporter: Reporter) -> ServePlan:
        playbook = _required(self.playbook)
        return ServePlan(tuple(plan_mp(self.inventory, playbook, hosts)), playbook.master_port)

    def launch(self, nodes: AgentClient, plan: ServePlan, secrets: dict[str, str], reporter: Reporter) -> Launched:
        try:
            processes = launch_specs(nodes, self.inventory, list(plan.specs), reporter, secrets=secrets)
        except (SparkctlError, KeyboardInterrupt):
            stop_all(nodes, self.inventory, grace_s=10, ports={}, reporter=reporter)  # whatever did start
            raise
        return Launched(processes, plan.specs)

    def observe(self, nodes: AgentClient) -> dict[str, Any] | None:
        return None

    def stop(self, nodes: AgentClient, reporter: Reporter, *, grace_s: float,
             ports: dict[str, list[int]]) -> dict[str, NodeStop]:
        return stop_all(nodes, self.inventory, grace_s=grace_s, ports=ports, reporter=reporter)


class RayBackend:
    """A Ray cluster (a `ray start` per node, membership verified through Ray's
    API), then `vllm serve --distributed-executor-backend ray` on the head."""

    name = "ray"

    def __init__(self, inventory: Inventory, playbook: Playbook | None = None):
        self.inventory = inventory
        self.playbook = playbook

    def plan(self, nodes: AgentClient, hosts: dict[str, HostPlan], reporter: Reporter) -> RayServePlan:
        ray = prepare_ray(nodes, self.inventory, _required(self.playbook), hosts, reporter)
        return RayServePlan(tuple(ray.specs), ray.gcs_port, ray)

    def launch(self, nodes: AgentClient, plan: RayServePlan, secrets: dict[str, str], reporter: Reporter) -> Launched:
        ray = plan.ray
        launch = launch_ray_backend(nodes, self.inventory, _required(self.playbook), {}, secrets, reporter, plan=ray)
        return Launched(launch.launched, tuple(launch.specs), {"ray": launch.cluster.to_dict()})

    def observe(self, nodes: AgentClient) -> dict[str, Any] | None:
        return ray_view(nodes, self.inventory)

    def stop(self, nodes: AgentClient, reporter: Reporter, *, grace_s: float,
             ports: dict[str, list[int]]) -> dict[str, NodeStop]:
        """Ray first (it has its own order and last resort), then whatever else the cluster runs."""
        ray = stop_ray(nodes, self.inventory, reporter, grace_s=grace_s)
        results = stop_all(nodes, self.inventory, grace_s=grace_s, ports=ports, reporter=reporter)
        _merge_ray(results, ray)
        return results


class DpBackend(MpBackend):
    """vLLM's multi-node data parallel: the API server and engines on the head,
    `--headless` engines elsewhere (backends/dp.py); started and stopped like mp."""

    name = "dp"

    def plan(self, nodes: AgentClient, hosts: dict[str, HostPlan], reporter: Reporter) -> ServePlan:
        playbook = _required(self.playbook)
        return ServePlan(tuple(plan_dp(self.inventory, playbook, hosts)), playbook.data_parallel_rpc_port)


class ReplicasBackend(MpBackend):
    """Independent `vllm serve` per node group, vllm-router on the head as the one
    endpoint (backends/replicas.py). The router is one more tagged process, so
    `stop` (mp's: everything with the cluster's tag) and `status` cover it."""

    name = "replicas"

    def plan(self, nodes: AgentClient, hosts: dict[str, HostPlan], reporter: Reporter) -> ServePlan:
        playbook = _required(self.playbook)
        plan = plan_replicas(self.inventory, playbook, hosts)
        for group in plan.groups:
            reporter.event(group.nodes[0], f"replica {group.index} on {', '.join(group.nodes)} at {group.url}")
        return ServePlan((*plan.servers, plan.router), playbook.master_port,
                         members=replica_members(self.inventory, playbook))

    def launch(self, nodes: AgentClient, plan: ServePlan, secrets: dict[str, str], reporter: Reporter) -> Launched:
        servers = [s for s in plan.specs if s.role != ROUTER_ROLE]
        router = [s for s in plan.specs if s.role == ROUTER_ROLE]
        try:  # one process per node per call: the servers, then the router beside the head's server
            processes = launch_specs(nodes, self.inventory, servers, reporter, secrets=secrets)
            launch_specs(nodes, self.inventory, router, reporter)
        except (SparkctlError, KeyboardInterrupt):
            stop_all(nodes, self.inventory, grace_s=10, ports={}, reporter=reporter)
            raise
        return Launched(processes, plan.specs)


BACKENDS: dict[str, type[MpBackend] | type[RayBackend]] = {"mp": MpBackend, "ray": RayBackend}


def backend_for(inventory: Inventory, playbook: Playbook) -> MpBackend | RayBackend:
    """The backend the playbook asks for: the one place `playbook.backend` is read
    (the layout keys pick the mp-based layouts)."""
    if playbook.replicas > 1:
        return ReplicasBackend(inventory, playbook)
    if playbook.data_parallel_size > 1:
        return DpBackend(inventory, playbook)
    return BACKENDS[playbook.backend](inventory, playbook)


def members_behind(recorded: dict[str, Any] | None, inventory: Inventory,
                   playbook: Playbook | None) -> tuple[Member, ...]:
    """The replicas behind the endpoint `status` and `bench` talk to: those `up` recorded
    with it, else those the playbook would start, else none."""
    if recorded and recorded.get("endpoint"):
        return recorded_members(recorded.get("members"))
    return members_for(inventory, playbook) if playbook else ()


def members_for(inventory: Inventory, playbook: Playbook) -> tuple[Member, ...]:
    """The servers behind the playbook's one endpoint (replicas behind the router), else none."""
    return replica_members(inventory, playbook) if playbook.replicas > 1 else ()


def backend_found(nodes: AgentClient, inventory: Inventory, recorded: str | None = None,
                  statuses: dict[str, StatusReply] | None = None) -> MpBackend | RayBackend:
    """The backend that runs (or ran) here, without a playbook: the one the local
    state recorded, else Ray when any node keeps a Ray record or Ray process of
    this cluster (statuses: replies already at hand, saving a round trip)."""
    if recorded == "ray" or ray_recorded(nodes, inventory, statuses):
        return RayBackend(inventory)
    return MpBackend(inventory)


def ray_recorded(nodes: AgentClient, inventory: Inventory, statuses: dict[str, StatusReply] | None = None) -> bool:
    if statuses is not None:
        return any(reply.record(RAY_ROLE) is not None for reply in statuses.values())
    outcomes = nodes.call_all(lambda n: status_request(inventory.cluster, n, RAY_ROLE), timeout_s=30)
    replies = [o.value for o in outcomes.values() if o.value is not None]
    return any(r.record(RAY_ROLE) is not None or r.processes for r in replies)


def _merge_ray(results: dict[str, NodeStop], ray: dict[str, RayNodeStop]) -> None:
    """One report per node: what stop_ray stopped counts as stopped; what it could not, as a failure."""
    for name, stopped in ray.items():
        node = results.setdefault(name, NodeStop(name))
        ray_pids = {p.get("pid") for p in stopped.stopped}
        node.stopped = [*stopped.stopped, *[p for p in node.stopped if p.get("pid") not in ray_pids]]
        if stopped.clean:
            continue
        if stopped.error and node.error is None:
            node.error = stopped.error  # the node could not be asked
        elif not stopped.error:
            survivors = (stopped.ray.remaining if stopped.ray else []) or stopped.group.get("remaining") or []
            node.remaining.extend(survivors or [{"pid": None, "cmdline": stopped.refused or "Ray left processes"}])


def _required(playbook: Playbook | None) -> Playbook:
    if playbook is None:
        raise TypeError("planning and launching need the playbook")  # a bug in the caller, not user input
    return playbook
