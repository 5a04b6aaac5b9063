"""`sparkctl logs`: the tail of each node's vLLM log, read through the agent."""

from __future__ import annotations

from typing import Any

from sparkctl.agent.client import connect
from sparkctl.agent.protocol import LogCursor
from sparkctl.errors import InputError
from sparkctl.inventory import Inventory
from sparkctl.lifecycle.spec import log_path, status_request
from sparkctl.serve.vllm_log import tail_lines


def read_logs(inventory: Inventory, *, node: str | None, lines: int, role: str = "vllm") -> dict[str, dict[str, Any]]:
    targets = list(inventory.nodes)
    if node is not None:
        try:
            targets = [inventory.node(node)]
        except KeyError:
            raise InputError(f"no node {node!r} in {inventory.path}", hint=f"nodes: {', '.join(n.name for n in inventory.nodes)}") from None
    with connect(inventory) as nodes:
        outcomes = nodes.call_all(
            lambda n: status_request(inventory.cluster, n, logs=(LogCursor(log_path(n, inventory.cluster, role), None),)),
            nodes=targets,
            timeout_s=30,
        )
    result: dict[str, dict[str, Any]] = {}
    for target in targets:
        outcome = outcomes[target.name]
        if outcome.error is not None:
            result[target.name] = {"error": str(outcome.error)}
            continue
        (log,) = outcome.result().logs
        result[target.name] = {"path": log.path, "exists": log.exists, "lines": tail_lines(log.data, lines)}
    return result
