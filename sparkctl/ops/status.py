"""`sparkctl status`: per node, what sparkctl started and whether it lives,
plus the endpoint as a client sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sparkctl.agent.client import Connect, connect
from sparkctl.agent.protocol import RecordStatus, to_wire
from sparkctl.backends.serving import backend_found
from sparkctl.inventory import Inventory
from sparkctl.lifecycle.spec import status_request
from sparkctl.playbook import Playbook
from sparkctl.serve.endpoint import Endpoint, endpoint_url
from sparkctl.state import StateStore


@dataclass
class NodeStatus:
    node: str
    role: str
    records: list[dict] = field(default_factory=list)
    processes: list[dict] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def alive(self) -> bool:
        return bool(self.records) and all(r.get("alive") for r in self.records)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, alive=self.alive)


@dataclass
class StatusResult:
    cluster: str
    state: str  # "serving" | "degraded" | "stopped" | "unreachable"
    endpoint: str | None
    health: int | None
    models: list[str]
    nodes: dict[str, NodeStatus]
    recorded: dict[str, Any] | None
    ray: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "state": self.state,
            "endpoint": self.endpoint,
            "health": self.health,
            "models": self.models,
            "nodes": {name: n.to_dict() for name, n in self.nodes.items()},
            "recorded": self.recorded,
            "ray": self.ray,
        }


def status(inventory: Inventory, *, playbook: Playbook | None = None, connect: Connect = connect) -> StatusResult:
    recorded = StateStore.for_cluster(inventory.cluster).load()
    ray: dict[str, Any] | None = None
    with connect(inventory) as nodes_api:
        outcomes = nodes_api.call_all(lambda n: status_request(inventory.cluster, n), timeout_s=30)
        statuses = {name: o.value for name, o in outcomes.items() if o.value is not None}
        ray = backend_found(nodes_api, inventory, statuses=statuses).observe(nodes_api)  # Ray's view beside ours
    nodes: dict[str, NodeStatus] = {}
    for node in inventory.nodes:
        outcome = outcomes[node.name]
        if outcome.error is not None:
            nodes[node.name] = NodeStatus(node.name, node.role, error=str(outcome.error))
            continue
        reply = outcome.result()
        nodes[node.name] = NodeStatus(
            node.name,
            node.role,
            records=[_public(r) for r in reply.records],
            processes=[to_wire(p) for p in reply.processes],
            ports=list(reply.ports),
        )
    url = (recorded or {}).get("endpoint") or (endpoint_url(inventory, playbook) if playbook else None)
    health: int | None = None
    models: list[str] = []
    if url and any(n.records for n in nodes.values()):
        endpoint = Endpoint(url, timeout_s=5)
        health = endpoint.health().status
        if health == 200:
            _, models = endpoint.model_ids()
    state = _overall(nodes, health)
    if state == "serving" and ray is not None and (ray.get("missing") or ray.get("unexpected") or ray.get("error")):
        state = "degraded"
    return StatusResult(inventory.cluster, state, url, health, models, nodes, recorded, ray)


def _overall(nodes: dict[str, NodeStatus], health: int | None) -> str:
    if any(n.error for n in nodes.values()):
        return "unreachable"
    if not any(n.records or n.processes for n in nodes.values()):
        return "stopped"
    if all(n.alive for n in nodes.values()) and health == 200:
        return "serving"
    return "degraded"


def _public(record: RecordStatus) -> dict[str, Any]:
    keep = ("role", "pid", "pgid", "alive", "log", "argv", "env_keys", "started_at", "tag", "hostname")
    wire = to_wire(record)
    return {k: wire[k] for k in keep}
