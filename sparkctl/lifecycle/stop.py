"""Stop what sparkctl started on nodes, by tag and recorded pid, and verify."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sparkctl.agent.client import AgentClient
from sparkctl.agent.protocol import StopRequest, to_wire
from sparkctl.inventory import Inventory
from sparkctl.lifecycle.spec import record_dir, tag_prefix
from sparkctl.progress import Reporter


@dataclass
class NodeStop:
    node: str
    stopped: list[dict[str, Any]] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)
    remaining: list[dict[str, Any]] = field(default_factory=list)
    ports_in_use: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    error: str | None = None
    error_kind: str | None = None

    @property
    def clean(self) -> bool:
        return self.error is None and not self.remaining

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, clean=self.clean)


def stop_all(
    nodes: AgentClient,
    inventory: Inventory,
    *,
    grace_s: float,
    ports: dict[str, list[int]],
    reporter: Reporter,
    role: str | None = None,
) -> dict[str, NodeStop]:
    """SIGTERM each node's tagged processes (group-wise), SIGKILL after grace_s, then verify.

    With `role`, only that kind of process (e.g. a probe) is stopped."""
    outcomes = nodes.call_all(
        lambda n: StopRequest(
            tag_prefix=tag_prefix(inventory.cluster, n, role),
            record_dir=record_dir(n, inventory.cluster),
            grace_s=grace_s,
            ports=tuple(ports.get(n.name, [])),
        ),
        timeout_s=grace_s + 60,
    )
    results: dict[str, NodeStop] = {}
    for name, outcome in outcomes.items():
        if outcome.error is not None:
            kind = getattr(getattr(outcome.error, "kind", None), "value", None)
            results[name] = NodeStop(name, error=str(outcome.error), error_kind=kind)
            reporter.event(name, f"could not stop: {outcome.error}")
            continue
        reply = outcome.result()
        result = NodeStop(
            name,
            stopped=[to_wire(p) for p in reply.stopped],
            killed=list(reply.killed),
            remaining=[to_wire(p) for p in reply.remaining],
            ports_in_use=[to_wire(p) for p in reply.in_use],
            elapsed_s=reply.elapsed_s,
        )
        results[name] = result
        if result.stopped:
            how = f", {len(result.killed)} needed SIGKILL" if result.killed else ""
            reporter.event(name, f"stopped {len(result.stopped)} process(es) in {result.elapsed_s:.1f}s{how}")
        if result.remaining:
            reporter.event(name, f"{len(result.remaining)} process(es) survived SIGKILL")
    return results
