"""Wait until a freshly started cluster really serves.

Ready means all four: every started process alive on every node, `/health`
200, `/v1/models` lists the served name, and one real completion succeeds
(a model can pass /health and die on its first request). Behind a router the
same three are asked of every replica first: vllm-router answers as soon as
one replica does, so its own /health says nothing about the others. While waiting, each
node's log is read incrementally to report start-up stages; a process that
exits, an unreachable node or the deadline ends the wait with the evidence.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from sparkctl.agent.client import AgentClient
from sparkctl.errors import DeadlineExceeded, OperationFailed
from sparkctl.inventory import Inventory
from sparkctl.lifecycle.spec import ProcessSpec
from sparkctl.lifecycle.watch import LogWatch, WatchedLog
from sparkctl.progress import Reporter
from sparkctl.serve.endpoint import Endpoint, Member
from sparkctl.serve.vllm_log import LogReader, LogReport

POLL_S = 0.1  # the endpoint: a refused connection costs nothing, and every poll saved is start-up time
NODE_POLL_S = 1.0  # the nodes' logs and processes: an agent call per node
HEARTBEAT_S = 30.0


@dataclass
class NodeWatch:
    """One node's server log as readiness reads it: the stages and findings so far, and the tail."""

    log: WatchedLog
    reader: LogReader = field(default_factory=LogReader)
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=400))

    @property
    def node(self) -> str:
        return self.log.node

    @property
    def path(self) -> str:
        return self.log.path

    def feed(self, data: str) -> None:
        self.reader.feed(data)
        self.tail.extend(line for line in data.splitlines() if line.strip())

    @property
    def report(self) -> LogReport:
        return self.reader.report


@dataclass
class Readiness:
    health_at: float | None = None
    ready_at: float | None = None
    completion_s: float | None = None
    watches: dict[str, NodeWatch] = field(default_factory=dict)


class NotReady(OperationFailed):
    """Start-up failed; carries the node, its log tail and what the log says."""

    def __init__(self, message: str, *, node: str | None, watch: NodeWatch | None, hint: str | None = None):
        details: list[str] = []
        if watch is not None:
            findings = watch.report.findings
            if findings and hint is None:
                hint = findings[0].hint
            for finding in findings[:3]:
                details.append(f"{watch.node} log: {finding.message}: {finding.evidence}")
            details.append(f"last lines of {watch.node}'s log ({watch.path}):")
            details.extend("  " + line[:300] for line in list(watch.tail)[-20:])
        super().__init__(message, hint=hint, details=details)
        self.node = node
        self.log_path = watch.path if watch else None


def wait_until_ready(
    nodes: AgentClient,
    inventory: Inventory,
    specs: list[ProcessSpec],
    endpoint: Endpoint,
    served_model_name: str,
    *,
    deadline: float,
    reporter: Reporter,
    started_at: float,
    members: Sequence[Member] = (),
) -> Readiness:
    wait = _Wait(nodes, inventory, specs, endpoint, served_model_name, reporter, members)
    next_node_poll = 0.0
    while True:
        if time.monotonic() >= next_node_poll:
            wait.poll_nodes()
            next_node_poll = time.monotonic() + NODE_POLL_S
        if wait.poll_endpoint(deadline):
            # The server may have logged its last stages after this round's log read;
            # read once more so progress and the report show every stage reached.
            wait.poll_nodes()
            return wait.state
        now = time.monotonic()
        if now > deadline:
            waiting = ", ".join([f"{n}: {s or 'no log output'}" for n, s in wait.stages.items()]
                                + [f"{m.label} at {m.url} not serving yet" for m in wait.pending])
            raise _deadline(started_at, now, waiting, wait.state.watches.get(wait.head))
        wait.heartbeat(now)
        time.sleep(POLL_S)


class _Wait:
    """The state of one wait: each node's log and stage, and the endpoint's progress."""

    def __init__(self, nodes: AgentClient, inventory: Inventory, specs: list[ProcessSpec], endpoint: Endpoint,
                 served_model_name: str, reporter: Reporter, members: Sequence[Member] = ()):
        # a node may run two processes (a router beside a replica): each is watched
        self.watch = LogWatch.of_processes(nodes, inventory, [(spec.node, spec.role) for spec in specs], scope=None)
        self.state = Readiness(watches={name: NodeWatch(log) for name, log in self.watch.logs.items()})
        self.stages: dict[str, str | None] = {name: None for name in self.state.watches}
        self.endpoint = endpoint
        self.pending = list(members)  # replicas not yet seen serving, in order
        self.served_model_name = served_model_name
        self.reporter = reporter
        self.head = inventory.head.name
        self.last_news = time.monotonic()

    def poll_nodes(self) -> None:
        """Read each node's new log lines and check its process is alive; report stage changes."""
        for log in self.watch.poll():
            watch = self.state.watches[log.key]
            if log.error is not None:
                raise NotReady(f"{log.node}: lost contact while vLLM was starting: {log.error}", node=log.node,
                               watch=watch)
            watch.feed(log.new)
            if not log.alive:
                what = "vllm-router" if log.role == "router" else "vLLM"
                raise NotReady(f"{log.node}: {what} exited during start-up", node=log.node, watch=watch)
            stage = watch.report.stage
            if stage != self.stages[log.key]:
                self.stages[log.key] = stage
                self.last_news = time.monotonic()
                self.reporter.event(log.node, f"stage: {stage}" if log.key == log.node else f"{log.role} stage: {stage}")

    def poll_endpoint(self, deadline: float) -> bool:
        """True once every member, then the endpoint, answered /health, /v1/models and one completion."""
        while self.pending:
            member = self.pending[0]
            if not self._serves(self.endpoint.at(member.url), member.node, deadline,
                                f"{member.label} ({member.url})"):
                return False
            self.pending.pop(0)
            self.last_news = time.monotonic()
        return self._serves(self.endpoint, self.head, deadline, None)

    def _serves(self, endpoint: Endpoint, node: str, deadline: float, member: str | None) -> bool:
        """One server's /health, /v1/models and first completion; the endpoint's (member None)
        set the readiness timings."""
        state = self.state
        where = f"{node}: {member}" if member else node
        if member is not None or state.health_at is None:  # the endpoint's /health is asked until it first answers
            if endpoint.health().status != 200:
                return False
            if member is None:
                state.health_at = time.monotonic()
                self.reporter.event(node, "/health 200")
                self.last_news = time.monotonic()
        models_reply, ids = endpoint.model_ids()
        if self.served_model_name not in ids:
            if models_reply.status == 200:
                raise NotReady(f"{where}: /v1/models lists {ids}, not {self.served_model_name!r}", node=node,
                               watch=state.watches.get(node),
                               hint="another server answers on this port, or served_model_name differs")
            return False
        completion = endpoint.complete(self.served_model_name, timeout_s=max(5.0, deadline - time.monotonic()))
        if completion.status == 200:
            self.reporter.event(node, f"{member + ' ' if member else ''}/v1/models lists {self.served_model_name!r}; "
                                      f"completion ok ({completion.elapsed_s:.2f}s)")
            if member is None:
                state.completion_s = completion.elapsed_s
                state.ready_at = time.monotonic()
            return True
        if completion.status is not None and completion.status >= 400:
            body = completion.body.decode("utf-8", "replace")[:300]
            raise NotReady(f"{where}: the first completion failed with HTTP {completion.status}: {body}",
                           node=node, watch=state.watches.get(node))
        return False

    def heartbeat(self, now: float) -> None:
        if now - self.last_news > HEARTBEAT_S:
            waiting = ", ".join(f"{n}={s or 'starting'}" for n, s in self.stages.items())
            self.reporter.event(None, f"still waiting ({waiting})")
            self.last_news = now


def _deadline(started_at: float, now: float, waiting: str, watch: NodeWatch | None) -> DeadlineExceeded:
    error = DeadlineExceeded(
        f"vLLM was not ready after {now - started_at:.0f}s (waiting for /health, /v1/models and a completion; {waiting})",
        hint="raise ready_timeout_s in the playbook for large models, or read the node logs (sparkctl logs)",
    )
    if watch is not None:
        error.details = [f"last lines of {watch.node}'s log ({watch.path}):"] + ["  " + line[:300] for line in list(watch.tail)[-20:]]
    return error
