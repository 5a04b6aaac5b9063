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

from sparkctl.backends.common import ProcessSpec, log_path, record_dir, tag_prefix
from sparkctl.backends.ray import (
    ROLE,
    SERVE_ROLE,
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
from sparkctl.inventory import Inventory, Node
from sparkctl.netplan import HostPlan
from sparkctl.ops.launch import launch_specs, values_or_raise
from sparkctl.ops.nodes import Nodes
from sparkctl.ops.stop import NodeStop, stop_all
from sparkctl.playbook import Playbook, ray_command
from sparkctl.progress import Reporter

POLL_S = 1.0
VIEW_TIMEOUT_S = 30.0
RESULT_MARKER = "SPARKCTL-RAY-VIEW "

# Runs on the head with the cluster's own Ray Python: join as a driver, read
# Ray's view, print it as one marked JSON line. argv: address, node ip.
VIEW_SCRIPT = r"""
import json, sys
out = {"ok": False}
try:
    import ray
    out["ray_version"] = ray.__version__
    out["python"] = sys.version.split()[0]
    ray.init(address=sys.argv[1], _node_ip_address=sys.argv[2], logging_level="ERROR",
             log_to_driver=False, configure_logging=True)
    keep = ("NodeID", "Alive", "NodeManagerAddress", "NodeManagerHostname", "Resources", "DeathReasonMessage")
    out["nodes"] = [{k: n.get(k) for k in keep} for n in ray.nodes()]
    out["resources"] = ray.cluster_resources()
    out["available"] = ray.available_resources()
    out["ok"] = True
except BaseException as exc:
    out["error"] = "%s: %s" % (type(exc).__name__, str(exc)[:2000])
finally:
    try:
        ray.shutdown()
    except BaseException:
        pass
print("SPARKCTL-RAY-VIEW " + json.dumps(out, default=str), flush=True)
"""

# Runs on a node with the node's plain python3 (standard library): the Ray
# processes on this host, as `ray stop` would find them, each with its tag.
HOST_SCAN_SCRIPT = r"""
import json, os, sys
NAMES = ("raylet", "plasma_store", "gcs_server")
ARGS = ("monitor.py", "ray.util.client.server", "default_worker.py", "setup_worker.py", "ray::",
        "log_monitor.py", "dashboard/agent.py", "dashboard/dashboard.py", "runtime_env/agent/main.py",
        "ray_process_reaper.py", "io.ray.runtime.runner.worker.DefaultWorker")
found = []
for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
    if pid == os.getpid():
        continue
    try:
        comm = open("/proc/%d/comm" % pid).read().strip()
        cmd = open("/proc/%d/cmdline" % pid, "rb").read().replace(b"\0", b" ").decode("utf-8", "replace")
        fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    state, pgid = fields[0], int(fields[2])
    if state == "Z":
        continue
    if not (any(n in comm for n in NAMES) or comm.startswith("ray::") or any(a in cmd for a in ARGS)):
        continue
    tag = None
    try:
        for entry in open("/proc/%d/environ" % pid, "rb").read().split(b"\0"):
            if entry.startswith(b"SPARKCTL_TAG="):
                tag = entry[13:].decode("utf-8", "replace")
    except OSError:
        tag = "?"  # another user's process: not readable, certainly not ours
    found.append({"pid": pid, "pgid": pgid, "comm": comm, "cmdline": cmd[:200], "tag": tag})
print(json.dumps(found))
"""

# Runs on a node with its plain python3: stop the node's `ray start --block`
# by its recorded pid (SIGTERM: it stops its raylet, GCS and agents itself;
# SIGKILL after grace_s), then SIGKILL whatever is left of it. Ray titles its
# agents with setproctitle ("ray::DashboardAgent"), which overwrites their
# environment, so they no longer carry sparkctl's tag; they are recognised by
# the process group sparkctl's launch created (not reusable while it has
# members) and by their open files in this node's own Ray temp dir (unique to
# user, cluster and node). argv: JSON {pid, pgid, starttime (or nulls when no
# record is left), grace_s, tag_prefix, temp_dir}.
GROUP_STOP_SCRIPT = r"""
import json, os, signal, sys, time
req = json.loads(sys.argv[1])
temp = req["temp_dir"].rstrip("/") + "/"
skip = {os.getpid(), os.getppid()}
def stat(pid):
    try:
        raw = open("/proc/%d/stat" % pid).read()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2:].split()
    return rest[0], int(rest[2]), int(rest[19])
def tag(pid):
    try:
        for entry in open("/proc/%d/environ" % pid, "rb").read().split(b"\0"):
            if entry.startswith(b"SPARKCTL_TAG="):
                return entry[13:].decode("utf-8", "replace")
    except OSError:
        return "?"
    return None
def rayish(pid):
    try:
        comm = open("/proc/%d/comm" % pid).read().strip()
        cmd = open("/proc/%d/cmdline" % pid, "rb").read()
    except OSError:
        return False
    return comm.startswith("ray::") or comm in ("raylet", "gcs_server", "plasma_store") or b"/ray/" in cmd
def uses_temp(pid):
    if not rayish(pid):
        return False  # e.g. someone's `tail -f` on a Ray log is left alone
    try:
        if temp.encode() in open("/proc/%d/cmdline" % pid, "rb").read():
            return True
        if (os.readlink("/proc/%d/cwd" % pid) + "/").startswith(temp):
            return True
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                if os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith(temp):
                    return True
            except OSError:
                pass
    except OSError:
        pass
    return False
def leftovers():
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in skip:
            continue
        pid = int(name)
        st = stat(pid)
        if st is None or st[0] == "Z":
            continue
        t = tag(pid)
        if t is not None and t != "?" and not t.startswith(req["tag_prefix"]):
            continue  # someone else's process, whatever it touches
        in_group = req.get("pgid") is not None and st[1] == req["pgid"] and st[2] >= (req.get("starttime") or 0)
        if (in_group and t != "?") or uses_temp(pid):
            out.append(pid)
    return out
def leader_alive():
    if not req.get("pid"):
        return False
    st = stat(req["pid"])
    return st is not None and st[0] != "Z" and st[2] == req["starttime"]
started = time.time()
result = {"leader": "no record" if not req.get("pid") else "gone", "pgid": req.get("pgid"), "killed": [], "remaining": []}
def cmdline(pid):
    try:
        return open("/proc/%d/cmdline" % pid, "rb").read().replace(b"\0", b" ").decode("utf-8", "replace").strip()[:200]
    except OSError:
        return ""
found = leftovers()
if leader_alive() and req["pid"] not in found:
    found.insert(0, req["pid"])
result["stopped"] = [{"pid": pid, "cmdline": cmdline(pid)} for pid in found]
if leader_alive():
    os.kill(req["pid"], signal.SIGTERM)
    result["leader"] = "terminated"
    deadline = started + req["grace_s"]
    while time.time() < deadline and (leader_alive() or leftovers()):
        time.sleep(0.25)
    if leader_alive():
        os.kill(req["pid"], signal.SIGKILL)
        result["leader"] = "killed"
    result["leader_s"] = round(time.time() - started, 2)
for pid in leftovers():
    try:
        os.kill(pid, signal.SIGKILL)
        result["killed"].append(pid)
    except OSError:
        pass
deadline = time.time() + 10
while time.time() < deadline and leftovers():
    time.sleep(0.1)
result["remaining"] = leftovers()
result["elapsed_s"] = round(time.time() - started, 2)
print(json.dumps(result))
"""

REMOVE_SCRIPT = r"""
import json, os, sys
removed = []
for path in sys.argv[1:]:
    try:
        os.unlink(path)
        removed.append(path)
    except FileNotFoundError:
        pass
print(json.dumps(removed))
"""


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------
@dataclass
class RayCluster:
    plan: RayPlan
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> `ray start` process as launched
    membership: Membership | None = None
    view: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.plan.gcs_address,
            "plan": self.plan.to_dict(),
            "processes": {n: {"pid": p.get("pid"), "log": p.get("log")} for n, p in self.processes.items()},
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
    launched: dict[str, dict[str, Any]]  # node -> process (the head: vLLM; a worker: its `ray start`)
    serve: dict[str, Any]


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
def prepare_ray(nodes: Nodes, inventory: Inventory, playbook: Playbook, plans: dict[str, HostPlan], reporter: Reporter) -> RayPlan:
    """Probe every node for the `ray` command, its interpreter and Ray's ports,
    then plan. Ports held by this cluster's own processes count as free (a
    re-run of `up` replaces them)."""
    command = ray_command(playbook)
    candidates = port_candidates(inventory, playbook)
    outcomes = nodes.call_all("probe", lambda n: {"commands": [command[0]], "ports": candidates.get(n.name, [])}, timeout_s=60)
    values_or_raise(outcomes, "could not be asked about Ray")
    problems: list[str] = []
    busy: dict[str, list[int]] = {}
    hostnames: dict[str, str] = {}
    pythons: dict[str, str | None] = {}
    ours = f"{inventory.cluster}/"
    for node in inventory.nodes:
        facts = outcomes[node.name].value or {}
        found = (facts.get("commands") or {}).get(command[0])
        if found is None:
            problems.append(f"{node.name}: Ray command {command[0]!r} not found")
        pythons[node.name] = (facts.get("interpreters") or {}).get(command[0])
        hostnames[node.name] = facts.get("hostname") or ""
        busy[node.name] = [hit["port"] for hit in facts.get("in_use", []) if not str(hit.get("tag") or "").startswith(ours)]
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
    nodes: Nodes,
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
    watch = _LogWatch(nodes, inventory, [s.node for s in plan.ray_specs])
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
    nodes: Nodes,
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
    nodes: Nodes,
    inventory: Inventory,
    specs: list[ProcessSpec],
    secrets: dict[str, str],
    reporter: Reporter,
    files: dict[str, dict[str, str]],
) -> dict[str, dict[str, Any]]:
    return launch_specs(nodes, inventory, specs, reporter, secrets=secrets, files=files)


class _LogWatch:
    """Each node's `ray start` record and log, read incrementally."""

    def __init__(self, nodes: Nodes, inventory: Inventory, names: list[str]):
        self.nodes = nodes
        self.inventory = inventory
        self.names = names
        self.offsets = {name: 0 for name in names}
        self.text = {name: "" for name in names}
        self.alive: dict[str, bool | None] = {name: None for name in names}
        self.paths = {name: log_path(inventory.node(name), inventory.cluster, ROLE) for name in names}

    def poll(self, names: list[str]) -> None:
        cluster = self.inventory.cluster
        outcomes = self.nodes.call_all(
            "status",
            lambda n: {
                "tag_prefix": tag_prefix(cluster, n, ROLE),
                "record_dir": record_dir(n, cluster),
                "logs": [{"path": self.paths[n.name], "offset": self.offsets[n.name]}],
            },
            nodes=[self.inventory.node(name) for name in names],
            timeout_s=30,
        )
        for name, outcome in outcomes.items():
            if outcome.error is not None:
                raise OperationFailed(f"{name}: lost contact while Ray was starting: {outcome.error}",
                                      hint=getattr(outcome.error, "hint", None))
            reply = outcome.value or {}
            for log in reply.get("logs", []):
                self.text[name] = (self.text[name] + log.get("data", ""))[-256 * 1024:]
                self.offsets[name] = log.get("offset", self.offsets[name])
            record = next((r for r in reply.get("records", []) if r.get("role") == ROLE), None)
            self.alive[name] = bool(record and record.get("alive"))

    def tail(self, name: str, count: int = 15) -> list[str]:
        return [line for line in self.text[name].splitlines() if line.strip()][-count:]

    def details(self, name: str) -> list[str]:
        return [f"last lines of {name}'s Ray log ({self.paths[name]}):"] + ["  " + line[:300] for line in self.tail(name)]


def _wait_for(
    nodes: Nodes,
    inventory: Inventory,
    plan: RayPlan,
    watch: _LogWatch,
    expected: list,
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
        watch.poll(names)
        # a `ray start` that exited, or a log that says it cannot join, ends the wait
        for name in names:
            if name in membership.joined:
                continue
            finding = diagnose_ray_log(watch.text[name], node=name, gcs_address=plan.gcs_address,
                                       fabric_address=next(e.address for e in plan.expected if e.name == name))
            if watch.alive[name] is False:
                raise OperationFailed(
                    f"{name}: `ray start` exited" + (f": {finding.message.split(': ', 1)[-1]}" if finding else ""),
                    details=([f"{name} log: {finding.line}"] if finding else []) + watch.details(name),
                    hint=finding.hint if finding else "the log above says why; `sparkctl logs` shows more",
                )
            if finding is not None and finding.fatal:
                raise OperationFailed(
                    f"{finding.message}; it did not join the Ray cluster",
                    details=[f"{name} log: {finding.line}"] + watch.details(name),
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


def _join_deadline(plan: RayPlan, watch: _LogWatch, membership: Membership, what: str, error: str | None) -> DeadlineExceeded:
    missing = membership.missing or [e.name for e in plan.expected]
    details: list[str] = []
    hint = None
    for name in missing:
        finding = diagnose_ray_log(watch.text.get(name, ""), node=name, gcs_address=plan.gcs_address,
                                   fabric_address=next((e.address for e in plan.expected if e.name == name), None))
        if finding is not None:
            details.append(f"{finding.message}: {finding.line}")
            hint = hint or finding.hint
        details += watch.details(name) if name in watch.text else []
    if error:
        details.append(f"Ray's API on the head: {error[:300]}")
    names = ", ".join(missing)
    return DeadlineExceeded(
        f"waited {plan.join_timeout_s:.0f}s for {what}: {names} did not join the Ray cluster at {plan.gcs_address}",
        details=details,
        hint=hint or f"check that {names} can reach {plan.gcs_address} on the fabric (firewall, wrong fabric_ip); "
        "raise ray.join_timeout_s if the nodes are slow to start",
    )


def ray_cluster_view(nodes: Nodes, head: Node, python: str, address: str, node_ip: str) -> dict[str, Any]:
    """Ray's own view (`ray.nodes()`, `ray.cluster_resources()`) read on the head."""
    try:
        reply = nodes.call(
            head, "exec", timeout_s=VIEW_TIMEOUT_S + 30,
            argv=[python, "-c", VIEW_SCRIPT, address, node_ip],
            env={"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"},
            command_timeout_s=VIEW_TIMEOUT_S,
        )
    except SparkctlError as exc:
        return {"ok": False, "error": f"could not ask the head: {exc}"}
    for line in reversed((reply.get("stdout") or "").splitlines()):
        if line.startswith(RESULT_MARKER):
            try:
                return json.loads(line[len(RESULT_MARKER):])
            except ValueError:
                break
    tail = " | ".join((reply.get("stderr") or "").strip().splitlines()[-3:])
    if reply.get("timed_out"):
        return {"ok": False, "error": f"ray.init({address}) did not answer within {VIEW_TIMEOUT_S:.0f}s {tail}".strip()}
    return {"ok": False, "error": f"{python} exited {reply.get('rc')}: {tail or 'no output'}"}


# ---------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------
def ray_view(nodes: Nodes, inventory: Inventory) -> dict[str, Any]:
    """Ray's view for `status`, found from the head's own record of its
    `ray start` (no playbook or local state needed): address, Ray's nodes
    mapped to inventory nodes, resources, and what does not match."""
    head = inventory.head
    try:
        reply = nodes.call(head, "status", tag_prefix=tag_prefix(inventory.cluster, head, ROLE),
                           record_dir=record_dir(head, inventory.cluster), timeout_s=30)
    except SparkctlError as exc:
        return {"running": False, "error": str(exc)}
    record = next((r for r in reply.get("records", []) if r.get("role") == ROLE), None)
    if record is None or not record.get("alive"):
        return {"running": False}
    argv = [str(a) for a in record.get("argv") or []]
    flags = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    address = f"{flags.get('node-ip-address', head.address)}:{flags.get('port', '6379')}"
    command = argv[: argv.index("start")] if "start" in argv else argv[:1]
    python = command[0] if len(command) > 1 else None
    if python is None:
        probe = nodes.call(head, "probe", commands=[command[0]], timeout_s=30)
        python = (probe.get("interpreters") or {}).get(command[0])
    if python is None:
        return {"running": True, "address": address, "error": f"cannot tell which Python runs {command[0]}"}
    view = ray_cluster_view(nodes, head, python, address, flags.get("node-ip-address", head.address))
    out: dict[str, Any] = {"running": True, "address": address, "pid": record.get("pid")}
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
def stop_ray(nodes: Nodes, inventory: Inventory, reporter: Reporter, *, grace_s: float = 30.0) -> dict[str, RayNodeStop]:
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
    def request(n: Node) -> dict[str, Any]:
        rec = records.get(n.name) if (records.get(n.name) or {}).get("alive") else None
        return {
            "argv": [n.python, "-c", GROUP_STOP_SCRIPT, json.dumps({
                "pid": rec["pid"] if rec else None,
                "pgid": (rec.get("pgid") or rec["pid"]) if rec else None,
                "starttime": rec["starttime"] if rec else None,
                "grace_s": grace_s,
                "tag_prefix": tag_prefix(inventory.cluster, n, ROLE),
                "temp_dir": temp_dir(inventory, n),
            })],
            "command_timeout_s": grace_s + 60,
        }

    for name, outcome in nodes.call_all("exec", request, timeout_s=grace_s + 90).items():
        if outcome.error is not None:
            results[name].error = str(outcome.error)
            continue
        reply = outcome.value or {}
        try:
            results[name].group = json.loads(reply.get("stdout") or "{}")
        except ValueError:
            results[name].group = {"error": (reply.get("stderr") or "")[-300:]}
        group = results[name].group
        if group.get("leader") in ("terminated", "killed"):
            how = "stopped by SIGTERM" if group["leader"] == "terminated" else "needed SIGKILL"
            reporter.event(name, f"Ray (`ray start` pid {records[name]['pid']}) {how} in {group.get('elapsed_s', '?')}s")
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
            reply = nodes.call(node, "exec", argv=[node.python, "-c", REMOVE_SCRIPT, f"{temp_dir(inventory, node)}/ray_current_cluster"],
                               timeout_s=30, command_timeout_s=20)
            result.removed = json.loads(reply.get("stdout") or "[]") if reply.get("rc") == 0 else []
        except (SparkctlError, ValueError) as exc:
            result.error = f"could not clean Ray's temp dir: {exc}"
    return results


def _ray_records(nodes: Nodes, inventory: Inventory) -> dict[str, dict[str, Any]]:
    outcomes = nodes.call_all("status", lambda n: {"tag_prefix": tag_prefix(inventory.cluster, n, ROLE),
                                                    "record_dir": record_dir(n, inventory.cluster)}, timeout_s=30)
    found: dict[str, dict[str, Any]] = {}
    for name, outcome in outcomes.items():
        for record in (outcome.value or {}).get("records", []):
            if record.get("role") == ROLE and record.get("pid") and record.get("starttime") is not None:
                found[name] = record
    return found


def _ray_command_of(record: dict[str, Any] | None) -> list[str] | None:
    argv = [str(a) for a in (record or {}).get("argv") or []]
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


def _last_resort(nodes: Nodes, inventory: Inventory, node: Node, command: list[str] | None, result: RayNodeStop,
                 reporter: Reporter) -> None:
    try:
        scan = nodes.call(node, "exec", argv=[node.python, "-c", HOST_SCAN_SCRIPT], timeout_s=60, command_timeout_s=30)
        processes = json.loads(scan.get("stdout") or "[]")
    except (SparkctlError, ValueError) as exc:
        result.refused = f"Ray processes survived SIGKILL and the host could not be scanned: {exc}"
        return
    groups = [result.group.get("pgid")] if result.group.get("pgid") else []
    allowed, why = ray_stop_allowed(processes, inventory.cluster, groups)
    if not allowed or not command:
        result.refused = f"Ray processes survived SIGKILL; not running `ray stop`: {why if not allowed else 'Ray command unknown'}"
        reporter.event(node.name, result.refused)
        return
    reporter.event(node.name, f"Ray processes survived SIGKILL; running `ray stop --force` ({why})")
    nodes.call(node, "exec", argv=[*command, "stop", "--force"], timeout_s=120, command_timeout_s=90)
    result.forced = True
    again = stop_all(nodes, inventory, grace_s=5, ports={}, reporter=reporter, role=ROLE)
    if node.name in again:
        result.ray = again[node.name]

