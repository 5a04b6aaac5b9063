"""`sparkctl exec`: one command on every node in parallel (like pdsh / ray exec)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparkctl.agent.client import connect
from sparkctl.agent.protocol import ExecRequest
from sparkctl.inventory import Inventory
from sparkctl.remote.result import NodeUnavailable


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
    with connect(inventory) as nodes:
        outcomes = nodes.call_all(
            lambda n: ExecRequest(argv=tuple(argv), env=inventory.node_env(n), command_timeout_s=timeout_s),
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
        reply = outcome.result()
        results.append(NodeExec(node.name, reply.rc, reply.stdout, reply.stderr, reply.duration_s))
    return results
