"""`sparkctl logs`: the tail of each node's vLLM log, read through the agent."""

from __future__ import annotations

from typing import Any

from sparkctl.backends.common import log_path, record_dir, tag_prefix
from sparkctl.errors import InputError
from sparkctl.inventory import Inventory
from sparkctl.ops.nodes import Nodes
from sparkctl.remote.session import NodeSession
from sparkctl.serve.vllm_log import tail_lines


def read_logs(inventory: Inventory, *, node: str | None, lines: int, role: str = "vllm") -> dict[str, dict[str, Any]]:
    targets = list(inventory.nodes)
    if node is not None:
        try:
            targets = [inventory.node(node)]
        except KeyError:
            raise InputError(f"no node {node!r} in {inventory.path}", hint=f"nodes: {', '.join(n.name for n in inventory.nodes)}") from None
    with NodeSession(inventory) as session:
        outcomes = Nodes(inventory, session).call_all(
            "status",
            lambda n: {
                "tag_prefix": tag_prefix(inventory.cluster, n),
                "record_dir": record_dir(n, inventory.cluster),
                "logs": [{"path": log_path(n, inventory.cluster, role), "offset": None}],
            },
            nodes=targets,
            timeout_s=30,
        )
    result: dict[str, dict[str, Any]] = {}
    for target in targets:
        outcome = outcomes[target.name]
        if outcome.error is not None:
            result[target.name] = {"error": str(outcome.error)}
            continue
        log = (outcome.value or {}).get("logs", [{}])[0]
        result[target.name] = {
            "path": log.get("path"),
            "exists": log.get("exists", False),
            "lines": tail_lines(log.get("data", ""), lines),
        }
    return result
