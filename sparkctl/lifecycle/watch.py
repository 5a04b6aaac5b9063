"""The one incremental log watcher: each watched node's launch record and the new
part of its log, read in one agent `status` call per node and poll. Readiness
(vLLM start-up stages), the Ray bring-up and run-to-completion groups all watch
their processes through it and decide for themselves what a reply means."""

from __future__ import annotations

from dataclasses import dataclass, field

from sparkctl.agent.client import AgentClient
from sparkctl.agent.protocol import LogCursor, RecordStatus
from sparkctl.inventory import Inventory
from sparkctl.lifecycle.spec import log_path, status_request


@dataclass
class WatchedLog:
    node: str
    role: str
    path: str
    max_chars: int
    key: str = ""  # how LogWatch.logs names it: the node, or node/role for a second process there
    offset: int = 0
    text: str = ""  # the last max_chars of the log
    new: str = ""  # what the last poll added
    record: RecordStatus | None = None  # the role's launch record as of the last poll
    error: BaseException | None = None  # why the last poll got no answer

    @property
    def alive(self) -> bool:
        return self.record is not None and self.record.alive

    def tail(self, count: int = 20) -> list[str]:
        return [line for line in self.text.splitlines() if line.strip()][-count:]

    def details(self, what: str = "log", count: int = 20) -> list[str]:
        return [f"last lines of {self.node}'s {what} ({self.path}):"] + ["  " + line[:300] for line in self.tail(count)]


@dataclass
class LogWatch:
    """Watches processes (roles) on nodes, usually one per node (keyed by the node; a
    second one on a node, a router beside a replica, by node/role); `scope` is the tag
    prefix's role (None: everything of the cluster on the node). One status call per
    node and poll, whatever it watches there."""

    nodes: AgentClient
    inventory: Inventory
    logs: dict[str, WatchedLog] = field(default_factory=dict)
    scope: str | None = None

    @classmethod
    def of(cls, nodes: AgentClient, inventory: Inventory, roles: dict[str, str], *, scope: str | None = None,
           max_chars: int = 256 * 1024) -> LogWatch:
        """roles: node -> the role whose log and record to watch there."""
        return cls.of_processes(nodes, inventory, list(roles.items()), scope=scope, max_chars=max_chars)

    @classmethod
    def of_processes(cls, nodes: AgentClient, inventory: Inventory, processes: list[tuple[str, str]], *,
                     scope: str | None = None, max_chars: int = 256 * 1024) -> LogWatch:
        """processes: (node, role) pairs, several per node if need be."""
        logs: dict[str, WatchedLog] = {}
        for name, role in processes:
            key = name if name not in logs else f"{name}/{role}"
            logs[key] = WatchedLog(name, role, log_path(inventory.node(name), inventory.cluster, role), max_chars, key=key)
        return cls(nodes, inventory, logs, scope)

    def poll(self, names: list[str] | None = None) -> list[WatchedLog]:
        """One status round on the nodes of the named logs (default: all); every
        outcome is recorded (error set when the node did not answer), nothing raised."""
        targets = [self.logs[key] for key in (list(self.logs) if names is None else names)]
        by_node: dict[str, list[WatchedLog]] = {}
        for watched in targets:
            by_node.setdefault(watched.node, []).append(watched)
        outcomes = self.nodes.call_all(
            lambda n: status_request(self.inventory.cluster, n, self.scope,
                                     logs=tuple(LogCursor(w.path, w.offset) for w in by_node[n.name])),
            nodes=[self.inventory.node(name) for name in by_node],
            timeout_s=30,
        )
        for name, watched_here in by_node.items():
            outcome = outcomes[name]
            # the agent answers the cursors in the order they were asked (it names paths expanded: ~ -> home)
            chunks = outcome.value.logs if outcome.value is not None else ()
            for i, watched in enumerate(watched_here):
                watched.new, watched.error = "", outcome.error
                if outcome.value is not None:
                    if i < len(chunks):
                        watched.new = chunks[i].data
                        watched.offset = chunks[i].offset
                    watched.text = (watched.text + watched.new)[-watched.max_chars:]
                    watched.record = outcome.value.record(watched.role)
        return targets
