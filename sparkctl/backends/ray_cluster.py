"""Bring a Ray cluster up across the nodes, verify it through Ray's own API,
start `vllm serve --distributed-executor-backend ray` on it, show Ray's view,
and take it all down again.

Everything runs through the node agent: `ray start --block` is launched like
any other sparkctl process (detached, tagged, recorded, logged), membership is
read by running the cluster's own Ray Python on the head (`exec` op, argv
list, a small script that prints JSON), and stopping is by tag and recorded
pid. `ray stop` is used only as a last resort on a host where every Ray
process is this cluster's, because it kills every Ray on the machine.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from sparkctl.agent.client import AgentClient
from sparkctl.agent.protocol import (
    ExecRequest,
    HostScanRequest,
    ProbeRequest,
    ProcessRecord,
    RayGroupStopReply,
    RayGroupStopRequest,
    RecordStatus,
    RemoveRequest,
    to_wire,
)
from sparkctl.agent.ray_view import RESULT_MARKER
from sparkctl.backends.ray import (
    ROLE,
    SERVE_ROLE,
    ExpectedNode,
    Membership,
    RayPlan,
    choose_ports,
    diagnose_ray_log,
    map_view,
    plan_ray,
    port_candidates,
    temp_dir,
    verify_membership,
)
from sparkctl.errors import DeadlineExceeded, OperationFailed, SparkctlError
from sparkctl.findings import Severity
from sparkctl.inventory import Inventory, Node
from sparkctl.lifecycle.launch import launch_specs, values_or_raise
from sparkctl.lifecycle.spec import ProcessSpec, status_request, tag_prefix
from sparkctl.lifecycle.stop import NodeStop, stop_all
from sparkctl.lifecycle.watch import LogWatch
from sparkctl.netplan import HostPlan
from sparkctl.playbook import Playbook, ray_command
from sparkctl.progress import Reporter

POLL_S = 1.0
VIEW_TIMEOUT_S = 30.0


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------
@dataclass
class RayCluster:
    plan: RayPlan
    processes: dict[str, ProcessRecord] = field(default_factory=dict)  # node -> `ray start` process as launched
    membership: Membership | None = None
    view: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.plan.gcs_address,
            "plan": self.plan.to_dict(),
            "processes": {n: {"pid": p.pid, "log": p.log} for n, p in self.processes.items()},
            "membership": self.membership.to_dict() if self.membership else None,
            "ray_version": self.view.get("ray_version"),
            "timings": dict(self.timings),
        }


@dataclass
class RayLaunch:
    """What `up` needs after the Ray backend started: the specs readiness watches
    (vLLM on the head, Ray on each worker), and the processes as launched."""

    plan: RayPlan
    cluster: RayCluster
    specs: list[ProcessSpec]
    launched: dict[str, ProcessRecord]  # node -> process (the head: vLLM; a worker: its `ray start`)
    serve: ProcessRecord


@dataclass
class RayNodeStop:
    node: str
    vllm: NodeStop | None = None
    ray: NodeStop | None = None
    forced: bool = False  # `ray stop --force` had to run
    refused: str | None = None  # why `ray stop --force` was not run although something survived
    removed: list[str] = field(default_factory=list)  # stale ray_current_cluster files
    group: dict[str, Any] = field(default_factory=dict)  # how `ray start` and its process group stopped
    error: str | None = None

    @property
    def stopped(self) -> list[dict[str, Any]]:
        """Every process stopped on the node ({pid, cmdline}), vLLM and Ray."""
        seen: set[int] = set()
        out: list[dict[str, Any]] = []
        for proc in [*(self.vllm.stopped if self.vllm else []), *self.group.get("stopped", []),
                     *(self.ray.stopped if self.ray else [])]:
            if proc.get("pid") not in seen:
                seen.add(proc.get("pid"))
                out.append(proc)
        return out

    @property
    def clean(self) -> bool:
        parts = [p for p in (self.vllm, self.ray) if p is not None]
        return (self.error is None and all(p.clean for p in parts) and self.refused is None
                and not self.group.get("remaining"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "clean": self.clean,
            "stopped": self.stopped,
            "vllm": self.vllm.to_dict() if self.vllm else None,
            "ray": self.ray.to_dict() if self.ray else None,
            "forced": self.forced,
            "refused": self.refused,
            "removed": list(self.removed),
            "group": dict(self.group),
            "error": self.error,
        }


# ---------------------------------------------------------------------------
# planning (asks the nodes: Ray's command, its Python, busy ports, hostnames)
# ---------------------------------------------------------------------------
def prepare_ray(nodes: AgentClient, inventory: Inventory, playbook: Playbook, plans: dict[str, HostPlan], reporter: Reporter) -> RayPlan:
    """Probe every node for the `ray` command, its interpreter and Ray's ports,
    then plan. Ports held by this cluster's own processes count as free (a
    re-run of `up` replaces them)."""
    command = ray_command(playbook)
    candidates = port_candidates(inventory, playbook)
    outcomes = nodes.call_all(
        lambda n: ProbeRequest(commands=(command[0],), ports=tuple(candidates.get(n.name, []))), timeout_s=60)
    replies = values_or_raise(outcomes, "could not be asked about Ray")
    problems: list[str] = []
    busy: dict[str, Iterable[int]] = {}
    hostnames: dict[str, str] = {}
    pythons: dict[str, str | None] = {}
    ours = f"{inventory.cluster}/"
    for node in inventory.nodes:
        facts = replies[node.name]
        if facts.commands.get(command[0]) is None:
            problems.append(f"{node.name}: Ray command {command[0]!r} not found")
        pythons[node.name] = facts.interpreters.get(command[0])
        hostnames[node.name] = facts.hostname
        busy[node.name] = [hit.port for hit in facts.in_use if not (hit.tag or "").startswith(ours)]
    if problems:
        raise OperationFailed(
            "Ray is not installed where the playbook says",
            details=problems,
            hint="install ray[default] into the vLLM environment on every node (same version everywhere), "
            "or set ray.command in the playbook",
        )
    ports = choose_ports(inventory, playbook, busy)
    for note in ports.notes:
        reporter.event(None, note)
    # the interpreter of the `ray` script (its #! line), or the command itself when it is a Python
    head_python = pythons.get(inventory.head.name)
    return plan_ray(inventory, playbook, plans, ports=ports, ray_python=head_python,
                    hostnames={k: v for k, v in hostnames.items() if v})


# ---------------------------------------------------------------------------
# bring-up
# ---------------------------------------------------------------------------
def start_ray_cluster(
    nodes: AgentClient,
    inventory: Inventory,
    playbook: Playbook,
    plans: dict[str, HostPlan],
    reporter: Reporter,
    *,
    deadline: float | None = None,
    plan: RayPlan | None = None,
    secrets: dict[str, str] | None = None,
    grace_s: float = 15.0,
) -> RayCluster:
    """Start Ray on every node (head first) and wait until Ray's API shows every
    inventory node alive at its fabric address with its GPUs, or fail with the
    node, the evidence and a hint. On failure (or Ctrl-C) every `ray start`
    this call launched is stopped before the error propagates."""
    plan = plan or prepare_ray(nodes, inventory, playbook, plans, reporter)
    deadline = deadline if deadline is not None else time.monotonic() + plan.join_timeout_s
    cluster = RayCluster(plan)
    if plan.ray_python is None:
        raise OperationFailed(
            f"{plan.head}: cannot tell which Python runs {plan.ray_command[0]!r}",
            hint="set ray.command to the `ray` script of the vLLM environment (its #! line names the interpreter)",
        )
    started = time.monotonic()
    watch = LogWatch.of(nodes, inventory, {s.node: ROLE for s in plan.ray_specs}, scope=ROLE)
    try:
        head_spec = plan.ray_specs[0]
        cluster.processes.update(_launch(nodes, inventory, [head_spec], secrets or {}, reporter, plan.files))
        reporter.event(plan.head, f"Ray head starting at {plan.gcs_address} (temp dir {plan.temp_dirs[plan.head]})")
        head_only = [e for e in plan.expected if e.name == plan.head]
        view, _ = _wait_for(
            nodes, inventory, plan, watch, head_only, deadline, reporter, what="the Ray head to come up",
            check=lambda m: plan.head in m.joined,
        )
        cluster.timings["head_s"] = round(time.monotonic() - started, 2)
        reporter.event(plan.head, f"Ray head up ({cluster.timings['head_s']:.1f}s, Ray {view.get('ray_version')})")
        workers = list(plan.ray_specs[1:])
        if workers:
            cluster.processes.update(_launch(nodes, inventory, workers, secrets or {}, reporter, {}))
        view, membership = _wait_for(
            nodes, inventory, plan, watch, list(plan.expected), deadline, reporter,
            what=f"{len(plan.expected)} node(s) and {plan.world_size} GPU(s) in Ray", check=lambda m: m.ok,
        )
    except KeyboardInterrupt:
        stop_ray(nodes, inventory, reporter, grace_s=grace_s)
        raise
    except SparkctlError:
        reporter.event(None, "Ray bring-up failed: stopping the Ray this run started")
        stop_ray(nodes, inventory, reporter, grace_s=grace_s)
        raise
    cluster.view = view
    cluster.membership = membership
    cluster.timings["join_s"] = round(time.monotonic() - started, 2)
    reporter.event(None, f"Ray cluster ready: {len(membership.joined)} node(s), {membership.gpus:g} GPU(s) "
                         f"at {plan.gcs_address} ({cluster.timings['join_s']:.1f}s)")
    return cluster


def launch_ray_backend(
    nodes: AgentClient,
    inventory: Inventory,
    playbook: Playbook,
    plans: dict[str, HostPlan],
    secrets: dict[str, str],
    reporter: Reporter,
    *,
    plan: RayPlan | None = None,
    deadline: float | None = None,
) -> RayLaunch:
    """For `up` with backend ray: Ray on every node, verified, then `vllm serve`
    on the head. Returns the specs `wait_until_ready` watches; readiness and
    the failure/Ctrl-C cleanup stay `up`'s. If this call fails, whatever it
    started is stopped before the error is raised."""
    plan = plan or prepare_ray(nodes, inventory, playbook, plans, reporter)
    cluster = start_ray_cluster(nodes, inventory, playbook, plans, reporter, deadline=deadline, plan=plan, secrets=secrets)
    try:
        serve = _launch(nodes, inventory, [plan.serve], secrets, reporter, plan.files)[plan.head]
    except (SparkctlError, KeyboardInterrupt):
        stop_ray(nodes, inventory, reporter, grace_s=15)
        raise
    launched = {plan.head: serve, **{name: p for name, p in cluster.processes.items() if name != plan.head}}
    return RayLaunch(plan=plan, cluster=cluster, specs=plan.watch_specs, launched=launched, serve=serve)


def _launch(
    nodes: AgentClient,
    inventory: Inventory,
    specs: list[ProcessSpec],
    secrets: dict[str, str],
    reporter: Reporter,
    files: dict[str, dict[str, str]],
) -> dict[str, ProcessRecord]:
    return launch_specs(nodes, inventory, specs, reporter, secrets=secrets, files=files)


def _wait_for(
    nodes: AgentClient,
    inventory: Inventory,
    plan: RayPlan,
    watch: LogWatch,
    expected: list[ExpectedNode],
    deadline: float,
    reporter: Reporter,
    *,
    what: str,
    check: Callable[[Membership], bool],
) -> tuple[dict[str, Any], Membership]:
    names = [e.name for e in expected]
    last_missing: list[str] | None = None
    last_error: str | None = None
    membership = Membership(ok=False, missing=list(names))
    while True:
        for log in watch.poll(names):
            if log.error is not None:
                raise OperationFailed(f"{log.node}: lost contact while Ray was starting: {log.error}",
                                      hint=getattr(log.error, "hint", None))
        # a `ray start` that exited, or a log that says it cannot join, ends the wait
        for name in names:
            if name in membership.joined:
                continue
            finding = diagnose_ray_log(watch.logs[name].text, node=name, gcs_address=plan.gcs_address,
                                       fabric_address=next(e.address for e in plan.expected if e.name == name))
            if not watch.logs[name].alive:
                raise OperationFailed(
                    f"{name}: `ray start` exited" + (f": {finding.message.split(': ', 1)[-1]}" if finding else ""),
                    details=([f"{name} log: {finding.evidence}"] if finding else []) + watch.logs[name].details("Ray log", 15),
                    hint=finding.hint if finding else "the log above says why; `sparkctl logs` shows more",
                )
            if finding is not None and finding.severity is Severity.ERROR:
                raise OperationFailed(
                    f"{finding.message}; it did not join the Ray cluster",
                    details=[f"{name} log: {finding.evidence}"] + watch.logs[name].details("Ray log", 15),
                    hint=finding.hint,
                )
        view = ray_cluster_view(nodes, inventory.node(plan.head), plan.ray_python or "python3", plan.gcs_address,
                                plan.expected[0].address)
        if view.get("ok"):
            membership = verify_membership(view, expected, plan.world_size if len(expected) == len(plan.expected)
                                           else sum(e.gpus for e in expected))
            if check(membership):
                return view, membership
            if membership.problems and not membership.missing:
                raise OperationFailed(
                    "the Ray cluster is not what the inventory describes",
                    details=membership.problems + [f"Ray's view: {json.dumps([_short(n) for n in view.get('nodes', [])])}"],
                    hint="every node must run its own `ray start` at its fabric address (nodes[].fabric_ip) with "
                    "its GPUs; `sparkctl down` clears stale raylets",
                )
            if membership.missing != last_missing:
                last_missing = list(membership.missing)
                joined = ", ".join(membership.joined) or "none"
                reporter.event(None, f"Ray: joined {joined}; waiting for {', '.join(membership.missing)}")
        else:
            error = str(view.get("error") or "no answer")
            if "Version mismatch" in error:
                raise OperationFailed(
                    f"{plan.head}: the Ray Python on the head does not match the running cluster",
                    details=[error[:600]],
                    hint="use one Ray version and Python minor version everywhere (ray.command picks the `ray` script)",
                )
            if error != last_error:
                last_error = error
                reporter.event(plan.head, f"Ray not answering yet: {error[:160]}")
        if time.monotonic() > deadline:
            raise _join_deadline(plan, watch, membership, what, last_error)
        time.sleep(POLL_S)


def _short(node: dict[str, Any]) -> dict[str, Any]:
    res = node.get("Resources") or {}
    return {"ip": node.get("NodeManagerAddress"), "alive": node.get("Alive"), "GPU": res.get("GPU", 0),
            "tags": sorted(k for k in res if k.startswith("sparkctl_node:"))}


def _join_deadline(plan: RayPlan, watch: LogWatch, membership: Membership, what: str, error: str | None) -> DeadlineExceeded:
    missing = membership.missing or [e.name for e in plan.expected]
    details: list[str] = []
    hint = None
    for name in missing:
        text = watch.logs[name].text if name in watch.logs else ""
        finding = diagnose_ray_log(text, node=name, gcs_address=plan.gcs_address,
                                   fabric_address=next((e.address for e in plan.expected if e.name == name), None))
        if finding is not None:
            details.append(f"{finding.message}: {finding.evidence}")
            hint = hint or finding.hint
        details += watch.logs[name].details("Ray log", 15) if name in watch.logs else []
    if error:
        details.append(f"Ray's API on the head: {error[:300]}")
    names = ", ".join(missing)
    return DeadlineExceeded(
        f"waited {plan.join_timeout_s:.0f}s for {what}: {names} did not join the Ray cluster at {plan.gcs_address}",
        details=details,
        hint=hint or f"check that {names} can reach {plan.gcs_address} on the fabric (firewall, wrong fabric_ip); "
        "raise ray.join_timeout_s if the nodes are slow to start",
    )


def ray_cluster_view(nodes: AgentClient, head: Node, python: str, address: str, node_ip: str) -> dict[str, Any]:
    """Ray's own view (`ray.nodes()`, `ray.cluster_resources()`) read on the head."""
    try:
        reply = nodes.call(head, ExecRequest(
            argv=(python, address, node_ip), program="sparkctl.agent.ray_view",
            env={"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"},
            command_timeout_s=VIEW_TIMEOUT_S,
        ), timeout_s=VIEW_TIMEOUT_S + 30)
    except SparkctlError as exc:
        return {"ok": False, "error": f"could not ask the head: {exc}"}
    for line in reversed(reply.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            try:
                view: dict[str, Any] = json.loads(line[len(RESULT_MARKER):])
                return view
            except ValueError:
                break
    tail = " | ".join(reply.stderr.strip().splitlines()[-3:])
    if reply.timed_out:
        return {"ok": False, "error": f"ray.init({address}) did not answer within {VIEW_TIMEOUT_S:.0f}s {tail}".strip()}
    return {"ok": False, "error": f"{python} exited {reply.rc}: {tail or 'no output'}"}


# ---------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------
def ray_view(nodes: AgentClient, inventory: Inventory) -> dict[str, Any]:
    """Ray's view for `status`, found from the head's own record of its
    `ray start` (no playbook or local state needed): address, Ray's nodes
    mapped to inventory nodes, resources, and what does not match."""
    head = inventory.head
    try:
        reply = nodes.call(head, status_request(inventory.cluster, head, ROLE), timeout_s=30)
    except SparkctlError as exc:
        return {"running": False, "error": str(exc)}
    record = reply.record(ROLE)
    if record is None or not record.alive:
        return {"running": False}
    argv = list(record.argv)
    flags = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    address = f"{flags.get('node-ip-address', head.address)}:{flags.get('port', '6379')}"
    command = argv[: argv.index("start")] if "start" in argv else argv[:1]
    python = command[0] if len(command) > 1 else None
    if python is None:
        probe = nodes.call(head, ProbeRequest(commands=(command[0],)), timeout_s=30)
        python = probe.interpreters.get(command[0])
    if python is None:
        return {"running": True, "address": address, "error": f"cannot tell which Python runs {command[0]}"}
    view = ray_cluster_view(nodes, head, python, address, flags.get("node-ip-address", head.address))
    out: dict[str, Any] = {"running": True, "address": address, "pid": record.pid}
    if not view.get("ok"):
        out["error"] = view.get("error")
        return out
    rows = map_view(view, [n.name for n in inventory.nodes])
    alive = [r for r in rows if r["alive"]]
    out.update(
        ray_version=view.get("ray_version"),
        nodes=rows,
        resources={k: v for k, v in (view.get("resources") or {}).items() if not k.startswith(("node:", "sparkctl_node:"))},
        available={k: v for k, v in (view.get("available") or {}).items() if not k.startswith(("node:", "sparkctl_node:"))},
        missing=[n.name for n in inventory.nodes if not any(r["node"] == n.name for r in alive)],
        unexpected=[r for r in alive if r["node"] is None],
    )
    return out


# ---------------------------------------------------------------------------
# teardown
# ---------------------------------------------------------------------------
def stop_ray(nodes: AgentClient, inventory: Inventory, reporter: Reporter, *, grace_s: float = 30.0) -> dict[str, RayNodeStop]:
    """vLLM first; then each node's `ray start --block` by its recorded pid
    (SIGTERM, which makes it stop its raylet, GCS and agents; SIGKILL after
    grace_s), then whatever is left in its process group, then anything still
    carrying the Ray tag (workers in sessions of their own). If a Ray process of
    this cluster survives SIGKILL, `ray stop --force` runs only on a host where
    every Ray process is this cluster's. Finally the stale ray_current_cluster
    in sparkctl's temp dirs is removed. Idempotent; works without local state."""
    results = {n.name: RayNodeStop(n.name) for n in inventory.nodes}
    records = _ray_records(nodes, inventory)
    for name, stop in stop_all(nodes, inventory, grace_s=grace_s, ports={}, reporter=reporter, role=SERVE_ROLE).items():
        results[name].vllm = stop

    def request(n: Node) -> RayGroupStopRequest:
        rec = records.get(n.name)
        rec = rec if rec is not None and rec.alive else None
        return RayGroupStopRequest(
            tag_prefix=tag_prefix(inventory.cluster, n, ROLE), temp_dir=temp_dir(inventory, n), grace_s=grace_s,
            pid=rec.pid if rec else None, pgid=(rec.pgid or rec.pid) if rec else None,
            starttime=rec.starttime if rec else None,
        )

    for name, outcome in nodes.call_all(request, timeout_s=grace_s + 90).items():
        if outcome.error is not None:
            results[name].error = str(outcome.error)
            continue
        results[name].group = group = _group_report(outcome.result())
        if group.get("leader") in ("terminated", "killed"):
            how = "stopped by SIGTERM" if group["leader"] == "terminated" else "needed SIGKILL"
            reporter.event(name, f"Ray (`ray start` pid {records[name].pid}) {how} in {group.get('elapsed_s', '?')}s")
        if group.get("killed"):
            reporter.event(name, f"killed {len(group['killed'])} leftover Ray process(es) of this node")
    for name, stop in stop_all(nodes, inventory, grace_s=min(grace_s, 10.0), ports={}, reporter=reporter, role=ROLE).items():
        results[name].ray = stop
        if stop.error and results[name].error is None:
            results[name].error = stop.error
    for node in inventory.nodes:
        result = results[node.name]
        if result.error:
            continue
        survivors = (result.ray.remaining if result.ray else []) or result.group.get("remaining") or []
        if survivors:
            command = _ray_command_of(records.get(node.name))
            _last_resort(nodes, inventory, node, command, result, reporter)
        try:
            removal = nodes.call(node, RemoveRequest(paths=(f"{temp_dir(inventory, node)}/ray_current_cluster",)),
                                 timeout_s=30)
            result.removed = list(removal.removed)
        except SparkctlError as exc:
            result.error = f"could not clean Ray's temp dir: {exc}"
    return results


def _group_report(reply: RayGroupStopReply) -> dict[str, Any]:
    """How `ray start` and its group stopped, in the shape `down --json` has always shown."""
    group: dict[str, Any] = {"leader": reply.leader, "pgid": reply.pgid, "killed": list(reply.killed),
                             "remaining": list(reply.remaining),
                             "stopped": [{"pid": p.pid, "cmdline": p.cmdline} for p in reply.stopped]}
    if reply.leader_s is not None:
        group["leader_s"] = reply.leader_s
    group["elapsed_s"] = reply.elapsed_s
    return group


def _ray_records(nodes: AgentClient, inventory: Inventory) -> dict[str, RecordStatus]:
    outcomes = nodes.call_all(lambda n: status_request(inventory.cluster, n, ROLE), timeout_s=30)
    found: dict[str, RecordStatus] = {}
    for name, outcome in outcomes.items():
        record = outcome.value.record(ROLE) if outcome.value is not None else None
        if record is not None and record.pid and record.starttime is not None:
            found[name] = record
    return found


def _ray_command_of(record: RecordStatus | None) -> list[str] | None:
    argv = list(record.argv) if record is not None else []
    return argv[: argv.index("start")] if "start" in argv else None


def ray_stop_allowed(processes: list[dict[str, Any]], cluster: str, our_groups: Iterable[int] = ()) -> tuple[bool, str]:
    """`ray stop` kills every Ray process on the host: allowed only when all of
    them are this cluster's (its tag, or, for Ray's agents whose environment
    setproctitle overwrote, no tag inside a process group sparkctl started)."""
    if not processes:
        return False, "no Ray process is left on the host"
    groups = set(our_groups)

    def ours(p: dict[str, Any]) -> bool:
        tag = p.get("tag")
        return str(tag or "").startswith(f"{cluster}/") or (tag is None and p.get("pgid") in groups)

    foreign = [p for p in processes if not ours(p)]
    if foreign:
        shown = ", ".join(f"pid {p['pid']} ({p.get('comm')})" for p in foreign[:5])
        return False, f"the host also runs Ray processes sparkctl did not start for {cluster}: {shown}"
    return True, "every Ray process on the host is this cluster's"


def _last_resort(nodes: AgentClient, inventory: Inventory, node: Node, command: list[str] | None, result: RayNodeStop,
                 reporter: Reporter) -> None:
    try:
        scan = nodes.call(node, HostScanRequest(), timeout_s=60)
        processes = [to_wire(p) for p in scan.processes]
    except SparkctlError as exc:
        result.refused = f"Ray processes survived SIGKILL and the host could not be scanned: {exc}"
        return
    pgid = result.group.get("pgid")
    groups = [pgid] if isinstance(pgid, int) else []
    allowed, why = ray_stop_allowed(processes, inventory.cluster, groups)
    if not allowed or not command:
        result.refused = f"Ray processes survived SIGKILL; not running `ray stop`: {why if not allowed else 'Ray command unknown'}"
        reporter.event(node.name, result.refused)
        return
    reporter.event(node.name, f"Ray processes survived SIGKILL; running `ray stop --force` ({why})")
    nodes.call(node, ExecRequest(argv=(*command, "stop", "--force"), command_timeout_s=90), timeout_s=120)
    result.forced = True
    again = stop_all(nodes, inventory, grace_s=5, ports={}, reporter=reporter, role=ROLE)
    if node.name in again:
        result.ray = again[node.name]

