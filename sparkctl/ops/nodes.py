"""Agent calls on one node or on all of them, over a NodeSession."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from sparkctl.agent.client import call_agent
from sparkctl.inventory import Inventory, Node
from sparkctl.remote.session import NodeSession, Outcome, fan_out


class Nodes:
    def __init__(self, inventory: Inventory, session: NodeSession):
        self.inventory = inventory
        self.session = session

    def call(self, node: Node, op: str, *, timeout_s: float = 60.0, **payload: Any) -> dict:
        return call_agent(self.session.runner(node), node, op, timeout_s=timeout_s, **payload)

    def call_all(
        self,
        op: str,
        payload: Callable[[Node], dict[str, Any]],
        *,
        nodes: Iterable[Node] | None = None,
        timeout_s: float = 60.0,
    ) -> dict[str, Outcome[dict]]:
        """The same operation on many nodes at once; every node's outcome is returned."""
        targets = list(nodes) if nodes is not None else list(self.inventory.nodes)
        return fan_out(targets, lambda node: self.call(node, op, timeout_s=timeout_s, **payload(node)))
