"""Agent calls on one node or on all of them, over a NodeSession."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from sparkctl.agent.client import call_agent
from sparkctl.errors import SparkctlError
from sparkctl.inventory import Inventory, Node
from sparkctl.remote.session import NodeSession, Outcome, fan_out


class Nodes:
    def __init__(self, inventory: Inventory, session: NodeSession):
        self.inventory = inventory
        self.session = session

    def call(self, node: Node, op: str, *, timeout_s: float = 60.0, modules: tuple[str, ...] = (), **payload: Any) -> dict:
        return call_agent(self.session.runner(node), node, op, timeout_s=timeout_s, modules=modules, **payload)

    def call_all(
        self,
        op: str,
        payload: Callable[[Node], dict[str, Any]],
        *,
        nodes: Iterable[Node] | None = None,
        timeout_s: float = 60.0,
        modules: tuple[str, ...] = (),
    ) -> dict[str, Outcome[dict]]:
        """The same operation on many nodes at once; every node's outcome is returned.

        Node failures (SparkctlError: unreachable, agent errors, timeouts) are
        outcomes; anything else is a bug and is raised, not reported per node."""
        targets = list(nodes) if nodes is not None else list(self.inventory.nodes)
        outcomes = fan_out(targets, lambda node: self.call(node, op, timeout_s=timeout_s, modules=modules, **payload(node)))
        for outcome in outcomes.values():
            if outcome.error is not None and not isinstance(outcome.error, SparkctlError):
                raise outcome.error
        return outcomes
