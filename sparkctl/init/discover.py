"""What the nodes say about themselves, through the same gathering `check` uses
(sparkctl.ops.check.gather_facts), reduced to what init needs: each node's
name, GPUs, memory and the twins of its cabled QSFP cage with their addresses.

Twins come from the RDMA devices in sysfs (checks/fabric.py) when there are
any; without RDMA devices (driver not loaded, a test host) from the
ConnectX-7 interface names (`enp1s0f1np1`, `enP2p1s0f1np1`: cage = the `npN`
suffix), and the inventory says which source was used."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Mapping

from sparkctl.agent.client import connect
from sparkctl.checks import ClusterSpec
from sparkctl.checks.fabric import fabric_of, interface_for, ipv4_map, is_ip, natural_key, section
from sparkctl.errors import ConnectionFailed, OperationFailed
from sparkctl.inventory import Fabric, Inventory, Node, SshSettings
from sparkctl.ops.check import gather_facts

CX7_NETDEV = re.compile(r"^en(P\d+)?p\d+s\d+f\d+np(\d+)$")
NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class Port:
    """One twin: a netdev of the cabled cage."""

    netdev: str
    hca: str | None
    cage: str
    has_link: bool
    ipv4: tuple[str, ...]  # "a.b.c.d/len"
    mtu: int | None
    up: bool


@dataclass(frozen=True)
class NodeView:
    host: str
    hostname: str | None
    gpus: int
    gpu_names: tuple[str, ...]
    memory_total: int | None
    mgmt_interface: str | None
    mgmt_networks: tuple[ipaddress.IPv4Network, ...]  # every IPv4 network on any non-fabric interface
    twins: tuple[Port, ...]
    twins_from: str  # where the twins were found

    @property
    def cage(self) -> str | None:
        return self.twins[0].cage if self.twins else None


@dataclass(frozen=True)
class Discovery:
    nodes: tuple[NodeView, ...]
    names: tuple[str, ...]  # inventory node names, in host order
    names_from: str


@dataclass(frozen=True)
class Target:
    """How to reach the hosts, from init's flags."""

    hosts: tuple[str, ...]
    head: str
    user: str
    port: int
    identity_file: str | None
    known_hosts: str
    cluster: str


def provisional_inventory(target: Target, names: tuple[str, ...] | None = None,
                          fabric_ips: tuple[str | None, ...] | None = None) -> Inventory:
    """An in-memory inventory for the hosts (nothing derived yet unless given)."""
    names = names or tuple(f"node{i}" for i in range(len(target.hosts)))
    nodes = tuple(
        Node(name=names[i], host=host, port=target.port, user=target.user, connection="ssh",
             fabric_ip=(fabric_ips or (None,) * len(target.hosts))[i],
             role="head" if host == target.head else "worker", env={}, python="python3", workdir="~/.sparkctl",
             gpus=1, index=i)
        for i, host in enumerate(target.hosts)
    )
    ssh = SshSettings(known_hosts=target.known_hosts, host_key_policy="strict", identity_file=target.identity_file,
                      connect_timeout_s=10.0, retry_deadline_s=10.0)
    return Inventory(path="(sparkctl init)", cluster=target.cluster, nodes=nodes, ssh=ssh,
                     fabric=Fabric(None, None, None), env={})


def discover(target: Target) -> Discovery:
    inventory = provisional_inventory(target)
    spec = ClusterSpec.from_config(inventory, None)
    with connect(inventory) as nodes:
        facts = gather_facts(nodes, spec, inventory)
    if facts.unreachable:
        errors = list(facts.unreachable.values())
        raise ConnectionFailed("could not log into " + ", ".join(n.host for n in inventory.nodes
                                                                  if n.name in facts.unreachable),
                               details=[str(e) for e in errors], hint=errors[0].hint)
    failed = [f"{n.host}: {(facts.by_node[n.name] or {}).get('error')}" for n in inventory.nodes
              if not (facts.by_node[n.name] or {}).get("ok")]
    if failed:
        raise OperationFailed("facts could not be gathered", details=failed)
    views = tuple(node_view(n.host, facts.by_node[n.name] or {}) for n in inventory.nodes)
    names, names_from = node_names(views)
    return Discovery(views, names, names_from)


def node_view(host: str, facts: Mapping[str, Any]) -> NodeView:
    gpu = section(facts, "gpu") or {}
    memory = section(facts, "memory") or {}
    interfaces = ipv4_map(facts)
    twins, twins_from = _twins(facts)
    fabric_names = {t.netdev for t in twins}
    mgmt = interface_for(host, interfaces) if _is_ipv4(host) else None
    networks = tuple(ipaddress.ip_interface(c).network for name, cidrs in interfaces.items()
                     if name not in fabric_names for c in cidrs if _is_ipv4(c.split("/")[0]))
    return NodeView(
        host=host, hostname=(section(facts, "system") or {}).get("hostname"),
        gpus=int(gpu.get("count") or 0), gpu_names=tuple(sorted({str(g.get("name")) for g in gpu.get("gpus") or []})),
        memory_total=memory.get("mem_total_bytes"), mgmt_interface=mgmt, mgmt_networks=networks,  # type: ignore[arg-type]
        twins=twins, twins_from=twins_from,
    )


def _twins(facts: Mapping[str, Any]) -> tuple[tuple[Port, ...], str]:
    fab = fabric_of(facts)
    netdevs = section(facts, "netdevs") or {}
    if fab.has_devices:
        ports = tuple(Port(t.netdev or t.hca, t.hca, t.cage or "?", t.has_link, t.ipv4, t.mtu,
                           (t.operstate or "").lower() in ("up", "unknown"))
                      for t in fab.selected)
        return tuple(sorted(ports, key=lambda p: natural_key(p.netdev))), f"RDMA devices in sysfs ({fab.selected_from})"
    by_cage: dict[str, list[Port]] = {}
    for name, info in netdevs.items():
        match = CX7_NETDEV.match(name)
        if not match or not isinstance(info, dict):
            continue
        cage = str(info.get("phys_port_name") or f"p{match.group(2)}")
        link = info.get("carrier") == 1 or str(info.get("operstate") or "").lower() == "up"
        by_cage.setdefault(cage, []).append(Port(name, None, cage, link, tuple(info.get("ipv4") or ()), info.get("mtu"),
                                                 str(info.get("operstate") or "").lower() in ("up", "unknown")))
    cabled = sorted((c for c, ports in by_cage.items() if any(p.has_link for p in ports)), key=natural_key)
    ports = tuple(sorted((p for c in cabled for p in by_cage[c]), key=lambda p: natural_key(p.netdev)))
    return ports, ("ConnectX-7 interface names, cabled cage " + ", ".join(cabled) +
                   " (no RDMA devices visible: RDMA driver not loaded, or a test host)")


def node_names(views: tuple[NodeView, ...]) -> tuple[tuple[str, ...], str]:
    """The hostnames when they are unique valid names, else node0..N-1."""
    hostnames = [v.hostname or "" for v in views]
    if all(NAME_OK.match(h) for h in hostnames) and len(set(hostnames)) == len(hostnames):
        return tuple(hostnames), "the node's hostname"
    return tuple(f"node{i}" for i in range(len(views))), "numbered (hostnames not unique: " + ", ".join(hostnames) + ")"



def _is_ipv4(text: str) -> bool:
    return is_ip(text) and ":" not in text
