"""The fabric every node should have, and what it takes to get there.

Rules (spark-networking.md 1.3, 1.4): every twin of the cabled cage has exactly
one IPv4 address; the twins of one node are on different subnets; twin k of
every node shares one subnet (so each twin reaches its mate); MTU 9000 on both
ends. A subnet that already satisfies this is kept; otherwise one /24 is chosen
per twin from NVIDIA's playbook ranges onward, avoiding every network already
present on any node. Node i gets host .10+i, as in the playbook."""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass

from sparkctl.errors import OperationFailed
from sparkctl.init.discover import Discovery, Port

# NVIDIA's two-Spark playbook uses 192.168.100/24 and 192.168.101/24; then onward
CANDIDATES = tuple(ipaddress.IPv4Network(f"192.168.{third}.0/24") for third in range(100, 200))
NETPLAN_FILE = "40-sparkctl-fabric.yaml"


@dataclass(frozen=True)
class TwinFix:
    netdev: str
    target: str  # "a.b.c.d/len"
    mtu: int
    old_mtu: int | None
    remove: tuple[str, ...]  # addresses to drop from this twin
    add: bool  # target is not on the twin yet
    bring_up: bool

    @property
    def changes(self) -> bool:
        return bool(self.remove or self.add or self.bring_up or self.old_mtu != self.mtu)


@dataclass(frozen=True)
class NodeFix:
    name: str
    host: str
    twins: tuple[TwinFix, ...]

    @property
    def changes(self) -> bool:
        return any(t.changes for t in self.twins)

    @property
    def fabric_ip(self) -> str:
        return self.twins[0].target.split("/")[0]


@dataclass(frozen=True)
class FabricPlan:
    nodes: tuple[NodeFix, ...]
    subnets: tuple[tuple[ipaddress.IPv4Network, str], ...]  # per twin index: (subnet, why)
    mtu: int
    problems: tuple[str, ...]  # what is wrong today, in words

    @property
    def needed(self) -> bool:
        return any(n.changes for n in self.nodes)


def plan_fabric(discovery: Discovery, mtu: int = 9000) -> FabricPlan:
    views = discovery.nodes
    _require_matching_cages(discovery)
    width = len(views[0].twins)
    used = {net for v in views for net in v.mgmt_networks}
    subnets: list[tuple[ipaddress.IPv4Network, str]] = []
    for k in range(width):
        # the other twins' current networks are off limits too: twins must never share a subnet
        taken = list(used) + [s for s, _ in subnets] + [ipaddress.ip_interface(a).network for v in views
                                                        for j, t in enumerate(v.twins) if j != k for a in t.ipv4]
        kept = _shared_subnet([v.twins[k] for v in views])
        if kept is not None and not any(kept.overlaps(t) for t in taken):
            subnets.append((kept, f"already on twin {k + 1} of every node"))
            continue
        free = next((c for c in CANDIDATES if not any(c.overlaps(t) for t in taken)), None)
        if free is None:
            raise OperationFailed("no free /24 for the fabric in 192.168.100-199 (every one is in use on a node)")
        subnets.append((free, "chosen: free on every node, and different from the other twin's"))
    nodes = []
    for i, (view, name) in enumerate(zip(views, discovery.names)):
        fixes = []
        for k, port in enumerate(view.twins):
            subnet = subnets[k][0]
            target = _address_in(port, subnet) or f"{subnet.network_address + 10 + i}/{subnet.prefixlen}"
            fixes.append(TwinFix(port.netdev, target, mtu, port.mtu,
                                 remove=tuple(a for a in port.ipv4 if a != target), add=target not in port.ipv4,
                                 bring_up=not port.up))
        nodes.append(NodeFix(name, view.host, tuple(fixes)))
    return FabricPlan(tuple(nodes), tuple(subnets), mtu, tuple(_problems(discovery, mtu)))


def _require_matching_cages(discovery: Discovery) -> None:
    missing = [v.host for v in discovery.nodes if not v.twins]
    if missing:
        raise OperationFailed(
            "no cabled ConnectX-7 port found on " + ", ".join(missing),
            hint="plug the QSFP cable into the same cage on every node; DGX OS removes an uncabled ConnectX-7 "
                 "from the PCI bus, so reboot after cabling")
    cages = {(v.cage, len(v.twins)) for v in discovery.nodes}
    if len(cages) > 1:
        raise OperationFailed(
            "the nodes are cabled on different QSFP cages",
            details=[f"{v.host}: cage {v.cage} ({', '.join(t.netdev for t in v.twins)})" for v in discovery.nodes],
            hint="use the same cage on every node (NVIDIA's playbook: port 1, the one farther from the RJ-45)")


def _shared_subnet(ports: list[Port]) -> ipaddress.IPv4Network | None:
    """The one subnet every node's twin k is on, when each has exactly one address."""
    if any(len(p.ipv4) != 1 for p in ports):
        return None
    networks = {ipaddress.ip_interface(p.ipv4[0]).network for p in ports}
    addresses = {p.ipv4[0].split("/")[0] for p in ports}
    if len(networks) != 1 or len(addresses) != len(ports):
        return None
    return networks.pop()  # type: ignore[return-value]


def _address_in(port: Port, subnet: ipaddress.IPv4Network) -> str | None:
    return next((a for a in port.ipv4 if ipaddress.ip_interface(a).network == subnet), None) if len(port.ipv4) == 1 else None


def _problems(discovery: Discovery, mtu: int) -> list[str]:
    out = []
    for view, name in zip(discovery.nodes, discovery.names):
        for port in view.twins:
            if not port.ipv4:
                out.append(f"{name}: {port.netdev} has no IPv4 address (so no IPv4 RoCE v2 GID)")
            elif len(port.ipv4) > 1:
                out.append(f"{name}: {port.netdev} has {len(port.ipv4)} IPv4 addresses ({', '.join(port.ipv4)})")
            if port.mtu != mtu:
                out.append(f"{name}: {port.netdev} MTU {port.mtu} (want {mtu})")
            if not port.up:
                out.append(f"{name}: {port.netdev} is down")
        nets = [ipaddress.ip_interface(p.ipv4[0]).network for p in view.twins if len(p.ipv4) == 1]
        if len(nets) != len(set(nets)):
            out.append(f"{name}: twins share one subnet ({nets[0]}): routing cannot tell them apart")
    return out


# ------------------------------------------------------------------ what to run
def netplan_yaml(fix: NodeFix) -> str:
    """The persistent configuration for the fabric interfaces only (never the management one)."""
    lines = [f"# {NETPLAN_FILE}: the fabric (QSFP) interfaces of {fix.name}, written by sparkctl init.",
             "# Only these interfaces; the management interface is left alone. Mode 600, as netplan wants.",
             "network:", "  version: 2", "  ethernets:"]
    for twin in fix.twins:
        lines += [f"    {twin.netdev}:", "      dhcp4: false", "      dhcp6: false", "      link-local: []",
                  f"      mtu: {twin.mtu}", f"      addresses: [{twin.target}]"]
    return "\n".join(lines) + "\n"


def ip_commands(fix: NodeFix) -> list[tuple[list[str], list[str]]]:
    """(command, its undo) for the current boot, in order; every one names a fabric interface."""
    steps: list[tuple[list[str], list[str]]] = []
    for twin in fix.twins:
        dev = twin.netdev
        if twin.old_mtu != twin.mtu:
            steps.append((["ip", "link", "set", "dev", dev, "mtu", str(twin.mtu)],
                          ["ip", "link", "set", "dev", dev, "mtu", str(twin.old_mtu or 1500)]))
        for old in twin.remove:
            steps.append((["ip", "addr", "del", old, "dev", dev], ["ip", "addr", "add", old, "dev", dev]))
        if twin.add:
            steps.append((["ip", "addr", "add", twin.target, "dev", dev], ["ip", "addr", "del", twin.target, "dev", dev]))
        if twin.bring_up:
            steps.append((["ip", "link", "set", "dev", dev, "up"], ["ip", "link", "set", "dev", dev, "down"]))
    return steps


def fix_text(plan: FabricPlan, netplan_dir: str) -> str:
    """For people: what is wrong, the subnets, and per node the netplan file and the ip commands."""
    lines = ["the fabric is not configured:"] + [f"  - {p}" for p in plan.problems]
    lines.append("subnets: " + "; ".join(f"twin {k + 1}: {net} ({why})" for k, (net, why) in enumerate(plan.subnets)))
    for fix in plan.nodes:
        if not fix.changes:
            lines.append(f"\n{fix.name} ({fix.host}): nothing to change")
            continue
        folder = netplan_dir.replace("{node}", fix.name).rstrip("/")
        lines.append(f"\n{fix.name} ({fix.host}): persistent, {folder}/{NETPLAN_FILE} (then "
                     "`sudo netplan apply`, or reboot):")
        lines += ["    " + line for line in netplan_yaml(fix).splitlines()]
        lines.append("  for the current boot:")
        lines += ["    sudo " + shlex.join(cmd) for cmd, _ in ip_commands(fix)]
    return "\n".join(lines)
