"""Independent replicas behind vllm-router (`replicas: N`).

The nodes are cut into N groups of whole nodes, in inventory order with the head
first. Each group runs its own `vllm serve` (a multi-node mp launch when the group
has several nodes), listening on its own port (replica_port + index, so groups
that share a host never collide). `vllm-router` runs on the head, on the
playbook's port: the one endpoint clients and readiness use.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparkctl.backends.mp import vllm_env
from sparkctl.inventory import Inventory, Node
from sparkctl.layouts import first_replica_port
from sparkctl.lifecycle.spec import ProcessSpec, serve_argv
from sparkctl.netplan import HostPlan
from sparkctl.playbook import Playbook, beside_vllm
from sparkctl.serve.endpoint import Member

ROUTER_ROLE = "router"


@dataclass(frozen=True)
class ReplicaGroup:
    index: int
    nodes: tuple[str, ...]  # the group's head first
    port: int
    url: str  # where the router reaches this replica


@dataclass(frozen=True)
class ReplicasPlan:
    groups: tuple[ReplicaGroup, ...]
    servers: tuple[ProcessSpec, ...]  # one `vllm serve` per node
    router: ProcessSpec


def replica_groups(inventory: Inventory, playbook: Playbook, hosts: dict[str, HostPlan]) -> tuple[ReplicaGroup, ...]:
    groups = []
    for index, members in enumerate(_node_groups(inventory, playbook)):
        port = first_replica_port(playbook) + index
        groups.append(ReplicaGroup(index, tuple(n.name for n in members), port, _url(hosts[members[0].name].address, port)))
    return tuple(groups)


def replica_members(inventory: Inventory, playbook: Playbook) -> tuple[Member, ...]:
    """Each replica as the controller reaches it (no node facts needed): for readiness,
    `status` and `bench`, which ask the replicas behind the router themselves."""
    return tuple(Member(f"replica {index}", members[0].name,
                        _url(_client_host(playbook, members[0]), first_replica_port(playbook) + index))
                 for index, members in enumerate(_node_groups(inventory, playbook)))


def _node_groups(inventory: Inventory, playbook: Playbook) -> list[list[Node]]:
    ordered: list[Node] = [inventory.head, *inventory.workers]
    size = max(1, playbook.world_size // inventory.nodes[0].gpus)  # nodes per replica (checked by layout_fit)
    return [ordered[index * size:(index + 1) * size] for index in range(playbook.replicas)]


def _client_host(playbook: Playbook, node: Node) -> str:
    """The replica binds playbook.host: a wildcard is reached at the node's own
    inventory address (the one the controller's SSH uses), like the head's endpoint."""
    return node.host if playbook.host in {"0.0.0.0", "::", ""} else playbook.host


def _url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"


def plan_replicas(inventory: Inventory, playbook: Playbook, hosts: dict[str, HostPlan]) -> ReplicasPlan:
    groups = replica_groups(inventory, playbook, hosts)
    servers = [spec for group in groups for spec in _group_specs(inventory, playbook, hosts, group)]
    return ReplicasPlan(groups, tuple(servers), router_spec(inventory, playbook, hosts, groups))


def _group_specs(inventory: Inventory, playbook: Playbook, hosts: dict[str, HostPlan],
                 group: ReplicaGroup) -> list[ProcessSpec]:
    """One replica: `vllm serve` on its first node, `--headless` ranks on the others."""
    nnodes = len(group.nodes)
    master_port = playbook.master_port + group.index  # groups may share a host
    common = serve_argv(playbook, "mp")
    if nnodes > 1:
        common += ["--nnodes", str(nnodes), "--master-addr", hosts[group.nodes[0]].address,
                   "--master-port", str(master_port)]
    common += list(playbook.vllm_args)
    specs = []
    for rank, name in enumerate(group.nodes):
        argv = list(common)
        if nnodes > 1:
            argv += ["--node-rank", str(rank)]
        if rank == 0:
            argv += ["--host", playbook.host, "--port", str(group.port)]
            ports: tuple[int, ...] = (group.port, master_port) if nnodes > 1 else (group.port,)
        else:
            argv += ["--headless"]
            ports = ()
        specs.append(ProcessSpec(node=name, role="vllm", argv=tuple(argv),
                                 env=vllm_env(inventory, playbook, hosts[name], name),
                                 forward_env=playbook.forward_env, listen_ports=ports))
    return specs


def router_command(playbook: Playbook) -> tuple[str, ...]:
    """router.command, else the `vllm-router` beside vLLM's interpreter (the `router`
    extra installs it into the same environment), else the one on the PATH."""
    if playbook.router.command:
        return playbook.router.command
    return beside_vllm(playbook, "vllm-router")


def router_spec(inventory: Inventory, playbook: Playbook, hosts: dict[str, HostPlan],
                groups: tuple[ReplicaGroup, ...]) -> ProcessSpec:
    head = inventory.head.name
    argv = [
        *router_command(playbook),
        "--host", playbook.host,
        "--port", str(playbook.port),
        "--policy", playbook.router.policy,
        "--prometheus-host", "127.0.0.1",
        "--prometheus-port", str(playbook.router.metrics_port),
        # the router waits for every replica before it serves; poll each second, not its default 30 s
        "--worker-startup-timeout-secs", str(int(playbook.ready_timeout_s)),
        "--worker-startup-check-interval", "1",
        "--worker-urls", *[g.url for g in groups],
    ]
    return ProcessSpec(node=head, role=ROUTER_ROLE, argv=tuple(argv), env=vllm_env(inventory, playbook, hosts[head], head),
                       listen_ports=(playbook.port, playbook.router.metrics_port))
