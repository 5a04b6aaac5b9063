"""`sparkctl down`: stop everything sparkctl started for this cluster on every
node and verify nothing is left. Works without the local state file (each
node keeps its own record and every process carries the cluster's tag), and
treats "already gone" as success."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sparkctl.agent.client import Connect, connect
from sparkctl.backends.serving import backend_found
from sparkctl.inventory import Inventory
from sparkctl.lifecycle.stop import NodeStop
from sparkctl.playbook import Playbook
from sparkctl.progress import Reporter
from sparkctl.state import StateStore

DEFAULT_GRACE_S = 30.0


@dataclass
class DownResult:
    cluster: str
    nodes: dict[str, NodeStop] = field(default_factory=dict)
    had_state: bool = False

    @property
    def nothing_to_stop(self) -> bool:
        return all(not n.stopped and n.error is None for n in self.nodes.values())

    @property
    def clean(self) -> bool:
        return all(n.clean for n in self.nodes.values())

    @property
    def unreachable(self) -> list[str]:
        return [n.node for n in self.nodes.values() if n.error is not None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "clean": self.clean,
            "nothing_to_stop": self.nothing_to_stop,
            "had_state": self.had_state,
            "unreachable": self.unreachable,
            "nodes": {name: n.to_dict() for name, n in self.nodes.items()},
        }


def down(inventory: Inventory, reporter: Reporter, *, playbook: Playbook | None = None, grace_s: float | None = None,
         connect: Connect = connect) -> DownResult:
    store = StateStore.for_cluster(inventory.cluster)
    with store.locked("down"):
        state = store.load()
        ports: dict[str, list[int]] = dict((state or {}).get("listen_ports", {}))
        if not ports and playbook is not None:
            ports = {inventory.head.name: [playbook.port, playbook.master_port]}
        if grace_s is None:
            grace_s = playbook.stop_grace_s if playbook is not None else DEFAULT_GRACE_S
        with connect(inventory) as nodes:
            backend = backend_found(nodes, inventory, (state or {}).get("backend"))
            results = backend.stop(nodes, reporter, grace_s=grace_s, ports=ports)
        result = DownResult(inventory.cluster, results, had_state=state is not None)
        if result.clean:
            store.clear()
        return result
