"""`sparkctl exec`: one command on every node in parallel (like pdsh / ray exec)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparkctl.inventory import Inventory
from sparkctl.ops.nodes import Nodes
from sparkctl.remote.result import NodeUnavailable
from sparkctl.remote.session import NodeSession


@dataclass
class NodeExec:
    node: str
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    error: str | None = None
    error_kind: str | None = None
    unreachable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def exec_all(inventory: Inventory, argv: list[str], *, timeout_s: float) -> list[NodeExec]:
    with NodeSession(inventory) as session:
        outcomes = Nodes(inventory, session).call_all(
            "exec",
            lambda n: {"argv": argv, "env": inventory.node_env(n), "command_timeout_s": timeout_s},
            timeout_s=timeout_s + 30,
        )
    results = []
    for node in inventory.nodes:
        outcome = outcomes[node.name]
        if outcome.error is not None:
            kind = getattr(getattr(outcome.error, "kind", None), "value", None)
            results.append(
                NodeExec(node.name, None, "", "", 0.0, error=str(outcome.error), error_kind=kind,
                         unreachable=isinstance(outcome.error, NodeUnavailable))
            )
            continue
        reply = outcome.value or {}
        results.append(
            NodeExec(node.name, reply.get("rc"), reply.get("stdout", ""), reply.get("stderr", ""), reply.get("duration_s", 0.0))
        )
    return results
