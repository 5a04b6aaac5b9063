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
    """Watches one process (role) per node; `scope` is the tag prefix's role
    (None: everything of the cluster on the node)."""

    nodes: AgentClient
    inventory: Inventory
    logs: dict[str, WatchedLog] = field(default_factory=dict)
    scope: str | None = None

    @classmethod
    def of(cls, nodes: AgentClient, inventory: Inventory, roles: dict[str, str], *, scope: str | None = None,
           max_chars: int = 256 * 1024) -> LogWatch:
        """roles: node -> the role whose log and record to watch there."""
        logs = {name: WatchedLog(name, role, log_path(inventory.node(name), inventory.cluster, role), max_chars)
                for name, role in roles.items()}
        return cls(nodes, inventory, logs, scope)

    def poll(self, names: list[str] | None = None) -> list[WatchedLog]:
        """One status round on the named nodes (default: all); every node's
        outcome is recorded (error set when it did not answer), nothing raised."""
        targets = list(self.logs) if names is None else names
        outcomes = self.nodes.call_all(
            lambda n: status_request(self.inventory.cluster, n, self.scope,
                                     logs=(LogCursor(self.logs[n.name].path, self.logs[n.name].offset),)),
            nodes=[self.inventory.node(name) for name in targets],
            timeout_s=30,
        )
        polled = []
        for name in targets:
            watched, outcome = self.logs[name], outcomes[name]
            watched.new, watched.error = "", outcome.error
            if outcome.value is not None:
                for chunk in outcome.value.logs:
                    watched.new += chunk.data
                    watched.offset = chunk.offset
                watched.text = (watched.text + watched.new)[-watched.max_chars:]
                watched.record = outcome.value.record(watched.role)
            polled.append(watched)
        return polled
