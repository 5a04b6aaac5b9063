"""The Ray backend (`backend: ray`): plan Ray on every node, then `vllm serve
--distributed-executor-backend ray` on the head. Pure: argv/env builders and
checks over data; nothing here talks to a node (see sparkctl.backends.ray_cluster).

Per node, `ray start --block` runs under sparkctl's tag (so `down` stops it by
its pid and process group), with

* `--node-ip-address` = that node's fabric address (VLLM_HOST_IP of its own
  network plan), so Ray, vLLM's message queues and NCCL agree on one address;
* the node's own network plan exported in the `ray start` environment: vLLM's
  Ray workers are actors that inherit the raylet's environment, and the driver
  only fills in (setdefault) what a worker lacks;
* `RAY_memory_monitor_refresh_ms=0`: Ray's memory monitor would otherwise kill
  workers while a large model streams through the Spark's unified memory;
* a custom resource `sparkctl_node:<name>`, so Ray's view maps back to
  inventory nodes even when two nodes share one host (the local pair);
* a per-node `--temp-dir` of sparkctl's own, short enough for Ray's Unix
  sockets (<= 107 bytes), derived from user, cluster and node.

`vllm serve` on the head gets RAY_ADDRESS (never a guess through
/tmp/ray/ray_current_cluster) and VLLM_CONFIG_ROOT pointing at a folder with
`ray_non_carry_over_env_vars.json`, which lists every per-host variable so the
driver's values are not copied onto other nodes (sparkrun#135).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from sparkctl.backends.mp import vllm_env
from sparkctl.errors import InputError
from sparkctl.findings import Finding, Severity
from sparkctl.inventory import Inventory, Node
from sparkctl.lifecycle.spec import ProcessSpec, node_dir, serve_argv
from sparkctl.netplan import HostPlan
from sparkctl.playbook import Playbook, ray_command

ROLE = "ray"
SERVE_ROLE = "vllm"
NODE_RESOURCE_PREFIX = "sparkctl_node:"

# Exported in every `ray start` (lowest precedence: a playbook may still set them).
RAY_BASE_ENV = {
    "PYTHONUNBUFFERED": "1",
    "RAY_memory_monitor_refresh_ms": "0",  # no OOM-killing of workers while weights stream through unified memory
    "RAY_USAGE_STATS_ENABLED": "0",
}

# Variables that are per host by nature. They are always listed in the
# non-carry-over file, together with every variable of each node's network plan
# and every nodes[].env key, so Ray never copies the head's value onto a worker.
PER_HOST_VARS = (
    "VLLM_HOST_IP",
    "VLLM_HOST_PORT",
    "NCCL_SOCKET_IFNAME",
    "GLOO_SOCKET_IFNAME",
    "TP_SOCKET_IFNAME",
    "UCX_NET_DEVICES",
    "NCCL_IB_HCA",
    "NCCL_IB_GID_INDEX",
    "OMPI_MCA_btl_tcp_if_include",
    "MN_IF_NAME",
    "MASTER_ADDR",
    "VLLM_CONFIG_ROOT",  # the head's folder does not exist on the workers
)
NON_CARRY_OVER_FILE = "ray_non_carry_over_env_vars.json"

DEFAULT_CLIENT_SERVER_PORT = 10001
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_DASHBOARD_AGENT_PORT = 52365
WORKER_PORTS = (10002, 19999)  # Ray's default worker port range, split between raylets that share a host
PORT_SEARCH_SPAN = 32  # when a wanted port is busy, the next free one within this many is chosen

TEMP_ROOT = "/tmp/sparkctl-ray-"
UNIX_SOCKET_MAX = 107
# The deepest socket Ray creates below --temp-dir:
# /session_<YYYY-MM-DD_HH-MM-SS_ffffff>_<pid up to 7 digits>/sockets/plasma_store.<n>
DEEPEST_SOCKET_SUFFIX = "/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store.999"


# ---------------------------------------------------------------------------
# names and places
# ---------------------------------------------------------------------------
def node_resource(node: str) -> str:
    return f"{NODE_RESOURCE_PREFIX}{node}"


def temp_dir(inventory: Inventory, node: Node) -> str:
    """sparkctl's own Ray temp dir on `node`: deterministic (down finds it without
    state) and short (Ray's Unix socket paths must fit in 107 bytes)."""
    digest = hashlib.sha256(f"{node.user}@{inventory.cluster}/{node.name}".encode()).hexdigest()[:12]
    return f"{TEMP_ROOT}{digest}"


def deepest_socket_path(temp: str) -> str:
    return temp.rstrip("/") + DEEPEST_SOCKET_SUFFIX


def config_root(inventory: Inventory) -> str:
    """VLLM_CONFIG_ROOT for `vllm serve` on the head (holds the non-carry-over file)."""
    return f"{node_dir(inventory.head, inventory.cluster)}/vllm-config"


def host_groups(inventory: Inventory) -> dict[str, list[str]]:
    """Nodes that run on one machine (connection: local, or the same host):
    their raylets need distinct ports."""
    groups: dict[str, list[str]] = {}
    for node in inventory.nodes:
        key = "local" if node.connection == "local" else node.host.lower()
        groups.setdefault(key, []).append(node.name)
    return groups


def shares_host(inventory: Inventory, name: str) -> bool:
    return any(name in members and len(members) > 1 for members in host_groups(inventory).values())


def gpus_per_node(inventory: Inventory, playbook: Playbook) -> int:
    return playbook.ray.num_gpus_per_node or inventory.nodes[0].gpus


# ---------------------------------------------------------------------------
# ports
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RayPorts:
    gcs: int
    client_server: int = DEFAULT_CLIENT_SERVER_PORT
    dashboard: int = DEFAULT_DASHBOARD_PORT
    dashboard_agent: dict[str, int] = field(default_factory=dict)  # pinned per node (shared hosts only)
    worker_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)  # pinned per node (shared hosts only)
    notes: tuple[str, ...] = ()  # what was moved and why, for the progress report


def in_worker_range(port: int) -> bool:
    return WORKER_PORTS[0] <= port <= WORKER_PORTS[1]


def _candidates(wanted: int, *, downward: bool = False, span: int = PORT_SEARCH_SPAN) -> list[int]:
    step = -1 if downward else 1
    ports = [wanted + step * i for i in range(span)]
    # Ray refuses a pinned port inside its worker port range
    return [p for p in ports if 1024 <= p <= 65535 and not in_worker_range(p)]


def choose_port(wanted: int, busy: Iterable[int], *, span: int = PORT_SEARCH_SPAN, taken: Iterable[int] = (),
                downward: bool = False) -> int | None:
    """`wanted` when it is free, else the next free port within `span` (outside
    Ray's worker port range), else None."""
    blocked = set(busy) | set(taken)
    for port in _candidates(wanted, downward=downward, span=span):
        if port not in blocked:
            return port
    return None


def port_candidates(inventory: Inventory, playbook: Playbook) -> dict[str, list[int]]:
    """Ports to probe per node before choosing: the head's GCS/client/dashboard
    ranges, and the dashboard agent's on nodes that share a host."""
    wanted: dict[str, list[int]] = {n.name: [] for n in inventory.nodes}
    head = inventory.head.name
    wanted[head] += _candidates(playbook.ray.gcs_port) + _candidates(DEFAULT_CLIENT_SERVER_PORT, downward=True)
    if playbook.ray.dashboard:
        wanted[head] += _candidates(DEFAULT_DASHBOARD_PORT)
    for node in inventory.nodes:
        if shares_host(inventory, node.name):
            wanted[node.name] += _candidates(DEFAULT_DASHBOARD_AGENT_PORT)
    return {name: sorted(set(ports)) for name, ports in wanted.items() if ports}


def choose_ports(inventory: Inventory, playbook: Playbook, busy: dict[str, Iterable[int]]) -> RayPorts:
    """Pick Ray's ports from what each node reported in use (`busy`: node -> ports,
    already without the ports this cluster's own processes hold).

    Raises InputError when no free port is near the wanted one."""
    head = inventory.head.name
    head_busy = set(busy.get(head, ()))
    notes: list[str] = []

    def pick(what: str, wanted: int, taken: Iterable[int] = (), downward: bool = False) -> int:
        port = choose_port(wanted, head_busy, taken=taken, downward=downward)
        if port is None:
            raise InputError(
                f"{head}: no free port for Ray's {what} near {wanted}",
                hint="stop what listens there (ss -ltnp on the head) or choose another ray.gcs_port",
            )
        if port != wanted:
            notes.append(f"{head}: port {wanted} for Ray's {what} is in use; using {port}")
        return port

    gcs = pick("GCS", playbook.ray.gcs_port)
    client = pick("client server", DEFAULT_CLIENT_SERVER_PORT, taken=[gcs], downward=True)
    dashboard = pick("dashboard", DEFAULT_DASHBOARD_PORT, taken=[gcs, client]) if playbook.ray.dashboard else DEFAULT_DASHBOARD_PORT
    agents: dict[str, int] = {}
    ranges: dict[str, tuple[int, int]] = {}
    for members in host_groups(inventory).values():
        if len(members) < 2:
            continue
        span = (WORKER_PORTS[1] - WORKER_PORTS[0] + 1) // len(members)
        used: set[int] = {gcs, client, dashboard}
        for i, name in enumerate(members):
            port = choose_port(DEFAULT_DASHBOARD_AGENT_PORT + i, busy.get(name, ()), taken=used)
            if port is None:
                raise InputError(f"{name}: no free port for Ray's dashboard agent near {DEFAULT_DASHBOARD_AGENT_PORT}")
            used.add(port)
            agents[name] = port
            low = WORKER_PORTS[0] + i * span
            ranges[name] = (low, low + span - 1)
    return RayPorts(gcs=gcs, client_server=client, dashboard=dashboard, dashboard_agent=agents,
                    worker_ranges=ranges, notes=tuple(notes))


# ---------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpectedNode:
    """What Ray's view must show for one inventory node."""

    name: str
    address: str  # its fabric address: Ray's NodeManagerAddress
    gpus: int
    resource: str
    hostname: str | None = None  # as the node's agent reported it (compared only when all differ)
    loopback: bool = False  # Ray rewrites loopback to a routable address: the address is not compared
    shares_host: bool = False


@dataclass(frozen=True)
class RayPlan:
    gcs_address: str  # head fabric address:port, RAY_ADDRESS for drivers
    gcs_port: int
    ray_command: tuple[str, ...]
    ray_python: str | None  # interpreter of the `ray` script (for membership checks), when known
    ray_specs: tuple[ProcessSpec, ...]  # role "ray", head first
    serve: ProcessSpec  # role "vllm", on the head
    files: dict[str, dict[str, str]]  # node -> {path: content} written before the launch
    temp_dirs: dict[str, str]
    expected: tuple[ExpectedNode, ...]
    world_size: int
    gpus_per_node: int
    non_carry_over: tuple[str, ...]
    join_timeout_s: float
    ports: RayPorts

    @property
    def head(self) -> str:
        return self.ray_specs[0].node

    @property
    def specs(self) -> list[ProcessSpec]:
        """Everything the backend runs (for `up`'s "already serving" comparison)."""
        return [*self.ray_specs, self.serve]

    @property
    def watch_specs(self) -> list[ProcessSpec]:
        """What `wait_until_ready` watches: vLLM on the head, Ray on every worker
        (one spec per node: the readiness watch is keyed by node)."""
        return [self.serve, *self.ray_specs[1:]]

    def spec(self, node: str) -> ProcessSpec:
        return next(s for s in self.ray_specs if s.node == node)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gcs_address": self.gcs_address,
            "ray_command": list(self.ray_command),
            "ray_python": self.ray_python,
            "temp_dirs": dict(self.temp_dirs),
            "gpus_per_node": self.gpus_per_node,
            "world_size": self.world_size,
            "non_carry_over": list(self.non_carry_over),
            "ports": {"gcs": self.ports.gcs, "client_server": self.ports.client_server,
                      "dashboard_agent": dict(self.ports.dashboard_agent),
                      "worker_ranges": {k: list(v) for k, v in self.ports.worker_ranges.items()}},
        }


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def non_carry_over_vars(inventory: Inventory, plans: dict[str, HostPlan]) -> tuple[str, ...]:
    names = set(PER_HOST_VARS)
    for plan in plans.values():
        names.update(plan.env)
    for node in inventory.nodes:
        names.update(node.env)
    return tuple(sorted(names))


def ray_start_env(inventory: Inventory, playbook: Playbook, plan: HostPlan, node_name: str) -> dict[str, str]:
    """The `ray start` process's environment: Ray's base, then (like mp) the
    node's own network plan, the playbook, the inventory and the node's env."""
    return {**RAY_BASE_ENV, **vllm_env(inventory, playbook, plan, node_name)}


def plan_ray(
    inventory: Inventory,
    playbook: Playbook,
    plans: dict[str, HostPlan],
    *,
    ports: RayPorts | None = None,
    ray_python: str | None = None,
    hostnames: dict[str, str] | None = None,
) -> RayPlan:
    """Every node's `ray start` and the head's `vllm serve`, fully planned."""
    head = inventory.head
    ports = ports or RayPorts(gcs=playbook.ray.gcs_port)
    command = ray_command(playbook)
    gpus = gpus_per_node(inventory, playbook)
    head_address = plans[head.name].address
    gcs_address = f"{head_address}:{ports.gcs}"
    temps = {node.name: temp_dir(inventory, node) for node in inventory.nodes}
    for name, temp in temps.items():
        deepest = deepest_socket_path(temp)
        if len(deepest.encode()) > UNIX_SOCKET_MAX:  # pragma: no cover - guarded by the constants above
            raise InputError(f"{name}: Ray temp dir {temp} is too long for Unix sockets ({deepest})")
    ordered = [head, *inventory.workers]
    specs: list[ProcessSpec] = []
    for node in ordered:
        argv, listen = _ray_start_argv(playbook, node, plans[node.name].address, ports, gcs_address, gpus,
                                       temps[node.name], command)
        env = ray_start_env(inventory, playbook, plans[node.name], node.name)
        # Ray makes its temp dir 0777 and reuses one another user made first: the agent makes it ours first
        specs.append(ProcessSpec(node=node.name, role=ROLE, argv=argv, env=env, forward_env=playbook.forward_env,
                                 listen_ports=listen, private_dirs=(temps[node.name],)))
    carry = non_carry_over_vars(inventory, plans)
    root = config_root(inventory)
    serve = plan_serve(inventory, playbook, plans, gcs_address=gcs_address, config_root_path=root)
    names = hostnames or {}
    expected = tuple(
        ExpectedNode(
            name=node.name,
            address=plans[node.name].address,
            gpus=gpus,
            resource=node_resource(node.name),
            hostname=names.get(node.name),
            loopback=is_loopback(plans[node.name].address),
            shares_host=shares_host(inventory, node.name),
        )
        for node in ordered
    )
    return RayPlan(
        gcs_address=gcs_address,
        gcs_port=ports.gcs,
        ray_command=command,
        ray_python=ray_python,
        ray_specs=tuple(specs),
        serve=serve,
        files={head.name: {f"{root}/{NON_CARRY_OVER_FILE}": json.dumps(list(carry), indent=1) + "\n"}},
        temp_dirs=temps,
        expected=expected,
        world_size=playbook.world_size,
        gpus_per_node=gpus,
        non_carry_over=carry,
        join_timeout_s=playbook.ray.join_timeout_s,
        ports=ports,
    )


def _ray_start_argv(playbook: Playbook, node: Node, address: str, ports: RayPorts, gcs_address: str, gpus: int,
                    temp: str, command: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """One node's `ray start --block` argv, and the ports it will listen on."""
    extra = list(playbook.ray.extra_args)
    given = {arg.split("=", 1)[0] for arg in extra}
    argv = [*command, "start"]
    listen: tuple[int, ...] = ()
    if node.is_head:
        argv += ["--head", f"--port={ports.gcs}", f"--ray-client-server-port={ports.client_server}"]
        if playbook.ray.dashboard:
            argv += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={ports.dashboard}"]
        else:
            argv += ["--include-dashboard=false"]
        listen = (ports.gcs, ports.client_server) + ((ports.dashboard,) if playbook.ray.dashboard else ())
    else:
        argv += [f"--address={gcs_address}"]
    argv += [
        "--block",
        f"--node-ip-address={address}",
        f"--num-gpus={gpus}",
        "--resources=" + json.dumps({node_resource(node.name): 1}, separators=(",", ":")),
        f"--temp-dir={temp}",
        "--disable-usage-stats",
    ]
    if playbook.ray.object_store_memory_mb is not None:
        argv.append(f"--object-store-memory={playbook.ray.object_store_memory_mb * 1024 * 1024}")
    if node.name in ports.dashboard_agent and "--dashboard-agent-listen-port" not in given:
        argv.append(f"--dashboard-agent-listen-port={ports.dashboard_agent[node.name]}")
        listen += (ports.dashboard_agent[node.name],)
    if node.name in ports.worker_ranges and not given & {"--min-worker-port", "--max-worker-port", "--worker-port-list"}:
        low, high = ports.worker_ranges[node.name]
        argv += [f"--min-worker-port={low}", f"--max-worker-port={high}"]
    return tuple(argv + extra), listen


def plan_serve(
    inventory: Inventory,
    playbook: Playbook,
    plans: dict[str, HostPlan],
    *,
    gcs_address: str,
    config_root_path: str,
) -> ProcessSpec:
    """`vllm serve ... --distributed-executor-backend ray` on the head. vLLM's
    own Ray driver places one worker actor per GPU bundle across the nodes."""
    head = inventory.head
    argv = [
        *serve_argv(playbook, "ray"),
        *playbook.vllm_args,
        "--host",
        playbook.host,
        "--port",
        str(playbook.port),
    ]
    env = {
        "RAY_USAGE_STATS_ENABLED": "0",
        **vllm_env(inventory, playbook, plans[head.name], head.name),
        # sparkctl's own, set last: the driver must join this cluster (not start
        # a one-node Ray of its own) and read this cluster's non-carry-over list.
        "RAY_ADDRESS": gcs_address,
        "VLLM_CONFIG_ROOT": config_root_path,
    }
    return ProcessSpec(
        node=head.name,
        role=SERVE_ROLE,
        argv=tuple(argv),
        env=env,
        forward_env=playbook.forward_env,
        listen_ports=(playbook.port,),
    )


# ---------------------------------------------------------------------------
# Ray's view, checked against the inventory
# ---------------------------------------------------------------------------
@dataclass
class Membership:
    ok: bool
    joined: dict[str, dict[str, Any]] = field(default_factory=dict)  # inventory node -> Ray node
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # hard problems: waiting longer will not fix them
    unexpected: list[dict[str, Any]] = field(default_factory=list)
    gpus: float = 0.0
    expected_gpus: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "joined": {name: _public_node(n) for name, n in self.joined.items()},
            "missing": list(self.missing),
            "problems": list(self.problems),
            "unexpected": [_public_node(n) for n in self.unexpected],
            "gpus": self.gpus,
            "expected_gpus": self.expected_gpus,
        }


def _public_node(node: dict[str, Any]) -> dict[str, Any]:
    resources = node.get("Resources") or {}
    return {
        "ip": node.get("NodeManagerAddress"),
        "hostname": node.get("NodeManagerHostname"),
        "alive": bool(node.get("Alive")),
        "node_id": str(node.get("NodeID", ""))[:12],
        "gpus": resources.get("GPU", 0.0),
        "cpus": resources.get("CPU", 0.0),
        "tags": sorted(k[len(NODE_RESOURCE_PREFIX):] for k in resources if k.startswith(NODE_RESOURCE_PREFIX)),
    }


def verify_membership(view: dict[str, Any], expected: Iterable[ExpectedNode], world_size: int) -> Membership:
    """Compare Ray's view (`{"nodes": ray.nodes(), "resources": ...}`) with the
    inventory: every node alive once, at its fabric address, on its own host,
    with its GPUs; nothing else; GPU total == TP x PP."""
    expected = list(expected)
    by_resource = {e.resource: e for e in expected}
    alive = [n for n in view.get("nodes", []) if n.get("Alive")]
    result = Membership(ok=False, expected_gpus=world_size)
    claims: dict[str, list[dict[str, Any]]] = {e.name: [] for e in expected}
    for node in alive:
        resources = node.get("Resources") or {}
        owners = [by_resource[k] for k in resources if k in by_resource]
        if not owners:
            result.unexpected.append(node)
            result.problems.append(
                f"an unexpected node joined the Ray cluster: {node.get('NodeManagerAddress')} "
                f"(host {node.get('NodeManagerHostname')}); it is none of the inventory's nodes "
                "(another `ray start --address` points at this head?)"
            )
            continue
        for owner in owners:
            claims[owner.name].append(node)
    for e in expected:
        nodes = claims[e.name]
        if not nodes:
            result.missing.append(e.name)
            continue
        if len(nodes) > 1:
            ips = ", ".join(str(n.get("NodeManagerAddress")) for n in nodes)
            result.problems.append(f"{e.name} joined the Ray cluster {len(nodes)} times ({ips}): a stale raylet is still running")
        node = nodes[0]
        result.joined[e.name] = node
        ip = node.get("NodeManagerAddress")
        if not e.loopback and ip != e.address:
            result.problems.append(
                f"{e.name} joined the Ray cluster as {ip}, not at its fabric address {e.address} "
                "(Ray, vLLM and NCCL would disagree on the node's address)"
            )
        gpus = float((node.get("Resources") or {}).get("GPU", 0.0))
        if gpus != e.gpus:
            result.problems.append(f"{e.name} offers {gpus:g} GPU(s) to Ray, expected {e.gpus}")
    # a worker that "joined itself": two inventory nodes on one address or one machine
    by_ip: dict[str, list[str]] = {}
    for name, node in result.joined.items():
        by_ip.setdefault(str(node.get("NodeManagerAddress")), []).append(name)
    shared = {e.name for e in expected if e.shares_host}
    for ip, names in by_ip.items():
        if len(names) > 1 and not set(names) <= shared:
            result.problems.append(
                f"{' and '.join(names)} joined the Ray cluster from the same address {ip}: a worker's Ray runs on "
                "the head (it joined itself), so both ranks would share one machine"
            )
    hostnames = [e.hostname for e in expected]
    if all(hostnames) and len(set(hostnames)) == len(hostnames):
        for e in expected:
            node = result.joined.get(e.name)
            if node is None:
                continue
            seen = node.get("NodeManagerHostname")
            if seen and seen != e.hostname:
                result.problems.append(
                    f"{e.name}'s raylet runs on host {seen!r}, but {e.name} is {e.hostname!r}: its `ray start` ran "
                    "on another machine (a worker that joined itself?)"
                )
    result.gpus = float(sum((n.get("Resources") or {}).get("GPU", 0.0) for n in alive))
    if not result.missing and result.gpus != world_size and not any("GPU(s)" in p for p in result.problems):
        result.problems.append(
            f"Ray sees {result.gpus:g} GPU(s) in total; tensor_parallel_size x pipeline_parallel_size = {world_size} "
            "needs exactly that many"
        )
    result.ok = not result.missing and not result.problems
    return result


def map_view(view: dict[str, Any], inventory_nodes: Iterable[str]) -> list[dict[str, Any]]:
    """Ray's nodes for `status`, each with the inventory node it belongs to."""
    names = set(inventory_nodes)
    rows = []
    for node in view.get("nodes", []):
        row = _public_node(node)
        owners = [t for t in row.pop("tags") if t in names]
        row["node"] = owners[0] if owners else None
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# what a node's `ray start` log says
# ---------------------------------------------------------------------------
def diagnose_ray_log(text: str, *, node: str, gcs_address: str, fabric_address: str | None = None) -> Finding | None:
    """The most telling line of a `ray start` log (the evidence), with what to do about it.
    ERROR: the node will not join by waiting longer; WARNING: it may still (the head may be starting)."""
    port = gcs_address.rsplit(":", 1)[-1]
    rules: list[tuple[str, tuple[str, ...], str, str, bool]] = [
        ("version-mismatch", ("Version mismatch",),
         f"{node}: Ray or Python differ between {node} and the head",
         "install the same Ray version and the same Python minor version on every node "
         "(one venv or image everywhere; `sparkctl check` compares versions)", True),
        ("gcs-unreachable", ("Failed to get cluster ID from GCS server", "Unable to connect to GCS",
                             "Failed to connect to GCS at address", "Timed out while waiting for GCS"),
         f"{node}: cannot reach the head's Ray GCS at {gcs_address}",
         f"check the fabric between {node}{f' ({fabric_address})' if fabric_address else ''} and the head "
         f"(`sparkctl check`, ping {gcs_address.rsplit(':', 1)[0]}), that nodes[].fabric_ip names addresses the "
         f"nodes really have on one link, and that no firewall blocks TCP {port} and Ray's node ports between them", False),
        ("port-in-use", ("Address already in use", "is already in use", "Failed to bind"),
         f"{node}: a port Ray needs is taken",
         "find the listener with `ss -ltnp` on that node (another Ray?); sparkctl picks a free GCS port, "
         "other ports can be set with ray.extra_args", True),
        ("ray-missing", ("No module named 'ray'", "No module named ray", "command not found"),
         f"{node}: Ray is not installed for this interpreter",
         "install ray[default] into the vLLM environment on every node, or set ray.command", True),
        ("socket-path", ("AF_UNIX path too long", "path too long"),
         f"{node}: Ray's socket path is too long",
         "report this: sparkctl's Ray temp dir should be short enough", True),
    ]
    lines = [line for line in text.splitlines() if line.strip()]
    for code, needles, message, hint, fatal in rules:
        for line in reversed(lines):
            if any(needle in line for needle in needles):
                definite = fatal or "Failed to get cluster ID from GCS server" in text
                return Finding(code, Severity.ERROR if definite else Severity.WARNING, message,
                               evidence=line.strip()[:300], hint=hint, node=node)
    return None
