"""Wait until a freshly started cluster really serves.

Ready means all four: every started process alive on every node, `/health`
200, `/v1/models` lists the served name, and one real completion succeeds
(a model can pass /health and die on its first request). While waiting, each
node's log is read incrementally to report start-up stages; a process that
exits, an unreachable node or the deadline ends the wait with the evidence.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

from sparkctl.agent.client import AgentClient
from sparkctl.agent.protocol import LogCursor
from sparkctl.backends.common import ProcessSpec, log_path, status_request
from sparkctl.errors import DeadlineExceeded, OperationFailed
from sparkctl.inventory import Inventory
from sparkctl.progress import Reporter
from sparkctl.serve.endpoint import Endpoint
from sparkctl.serve.vllm_log import LogReader, LogReport

POLL_S = 1.0
HEARTBEAT_S = 30.0


@dataclass
class NodeWatch:
    node: str
    role: str
    path: str
    offset: int = 0
    reader: LogReader = field(default_factory=LogReader)
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=400))
    alive: bool = True

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
                details.append(f"{watch.node} log: {finding.message}: {finding.line}")
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
) -> Readiness:
    cluster = inventory.cluster
    state = Readiness()
    for spec in specs:
        node = inventory.node(spec.node)
        # keyed by node; a second process on a node (a router beside a replica) by node/role
        key = spec.node if spec.node not in state.watches else f"{spec.node}/{spec.role}"
        state.watches[key] = NodeWatch(spec.node, spec.role, log_path(node, cluster, spec.role))
    stages: dict[str, str | None] = {name: None for name in state.watches}
    last_news = time.monotonic()
    head = inventory.head.name

    def poll_nodes() -> None:
        """Read each node's new log lines and check its process is alive; report stage changes."""
        nonlocal last_news
        per_node: dict[str, list[tuple[str, NodeWatch]]] = collections.defaultdict(list)
        for key, w in state.watches.items():
            per_node[w.node].append((key, w))
        outcomes = nodes.call_all(
            lambda n: status_request(cluster, n, logs=tuple(LogCursor(w.path, w.offset) for _, w in per_node[n.name])),
            nodes=[inventory.node(name) for name in per_node],
            timeout_s=30,
        )
        for name, outcome in outcomes.items():
            if outcome.error is not None:
                raise NotReady(f"{name}: lost contact while vLLM was starting: {outcome.error}", node=name,
                               watch=per_node[name][0][1])
            reply = outcome.result()
            chunks = {log.path: log for log in reply.logs}
            for key, watch in per_node[name]:
                log = chunks.get(watch.path)
                if log is not None:
                    watch.feed(log.data)
                    watch.offset = log.offset
                record = reply.record(watch.role)
                if record is None or not record.alive:
                    watch.alive = False
                    what = "vllm-router" if watch.role == "router" else "vLLM"
                    raise NotReady(f"{name}: {what} exited during start-up", node=name, watch=watch)
                stage = watch.report.stage
                if stage != stages[key]:
                    stages[key] = stage
                    last_news = time.monotonic()
                    reporter.event(name, f"stage: {stage}" if key == name else f"{watch.role} stage: {stage}")

    while True:
        poll_nodes()
        if state.health_at is None:
            reply = endpoint.health()
            if reply.status == 200:
                state.health_at = time.monotonic()
                reporter.event(head, "/health 200")
                last_news = time.monotonic()
        if state.health_at is not None:
            models_reply, ids = endpoint.model_ids()
            if served_model_name in ids:
                completion = endpoint.complete(served_model_name, timeout_s=max(5.0, deadline - time.monotonic()))
                if completion.status == 200:
                    state.completion_s = completion.elapsed_s
                    state.ready_at = time.monotonic()
                    # The server may have logged its last stages after this round's log read;
                    # read once more so progress and the report show every stage reached.
                    poll_nodes()
                    reporter.event(head, f"/v1/models lists {served_model_name!r}; completion ok ({completion.elapsed_s:.2f}s)")
                    return state
                if completion.status is not None and completion.status >= 400:
                    body = completion.body.decode("utf-8", "replace")[:300]
                    raise NotReady(
                        f"{head}: the first completion failed with HTTP {completion.status}: {body}",
                        node=head,
                        watch=state.watches.get(head),
                    )
            elif models_reply.status == 200:
                raise NotReady(
                    f"{head}: /v1/models lists {ids}, not {served_model_name!r}",
                    node=head,
                    watch=state.watches.get(head),
                    hint="another server answers on this port, or served_model_name differs",
                )
        now = time.monotonic()
        if now > deadline:
            waiting = ", ".join(f"{n}: {s or 'no log output'}" for n, s in stages.items())
            raise _deadline(started_at, now, waiting, state.watches.get(head))
        if now - last_news > HEARTBEAT_S:
            waiting = ", ".join(f"{n}={s or 'starting'}" for n, s in stages.items())
            reporter.event(None, f"still waiting ({waiting})")
            last_news = now
        time.sleep(POLL_S)


def _deadline(started_at: float, now: float, waiting: str, watch: NodeWatch | None) -> DeadlineExceeded:
    error = DeadlineExceeded(
        f"vLLM was not ready after {now - started_at:.0f}s (waiting for /health, /v1/models and a completion; {waiting})",
        hint="raise ready_timeout_s in the playbook for large models, or read the node logs (sparkctl logs)",
    )
    if watch is not None:
        error.details = [f"last lines of {watch.node}'s log ({watch.path}):"] + ["  " + l[:300] for l in list(watch.tail)[-20:]]
    return error
