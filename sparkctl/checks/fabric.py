"""Typed views over one node's facts (see sparkctl/agent/node_facts.py): the
RDMA "twins", the cabled cage, addresses. Shared by the checks and the plan.

On a DGX Spark one ConnectX-7 exposes four RDMA devices, two per QSFP cage:
each cage is reached through two "twins" on different PCIe x4 links
(rocep1s0f1/enp1s0f1np1 and roceP2p1s0f1/enP2p1s0f1np1 for cage p1). A cable
brings up both twins of its cage; using both is what gives ~200 Gb/s. Device
names are never hard-coded: the twin <-> netdev map comes from
class/infiniband/<dev>/device/net and the cage from class/net/<if>/phys_port_name.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Mapping

Facts = Mapping[str, Any]


def section(facts: Facts | None, name: str) -> dict | None:
    """A gathered section, or None when it was not gathered or its reader failed."""
    if not facts:
        return None
    value = facts.get(name)
    if not isinstance(value, dict) or (set(value) == {"error"}):
        return None
    return value


def natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class Gid:
    index: int
    gid: str
    type: str | None
    ndev: str | None
    ipv4: str | None

    @property
    def is_roce_v2(self) -> bool:
        return (self.type or "").strip().lower() == "roce v2"

    @property
    def is_link_local(self) -> bool:
        return self.gid.lower().startswith("fe80")


@dataclass(frozen=True)
class Twin:
    """One RDMA device port and the netdev behind it."""

    hca: str
    port: str
    netdev: str | None
    cage: str | None
    state: str | None
    phys_state: str | None
    link_layer: str | None
    rate: str | None
    rate_gbps: float | None
    operstate: str | None
    carrier: int | None
    speed_mbps: int | None
    mtu: int | None
    ipv4: tuple[str, ...]  # "a.b.c.d/len"
    gids: tuple[Gid, ...]
    fw_ver: str | None = None

    @property
    def active(self) -> bool:
        return (self.state or "").upper() == "ACTIVE" and (self.phys_state or "").lower() == "linkup"

    @property
    def has_link(self) -> bool:
        """A cable is plugged into this twin's cage (some sign of link)."""
        return self.active or (self.phys_state or "").lower() == "linkup" or self.carrier == 1

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(cidr.split("/")[0] for cidr in self.ipv4)

    @property
    def name(self) -> str:
        return f"{self.hca}/{self.netdev}" if self.netdev else self.hca

    def roce_v2_ipv4_gid(self) -> Gid | None:
        """The GID NCCL's auto-selection wants: RoCE v2, IPv4-mapped, this twin's address, this netdev."""
        for gid in self.gids:
            if gid.is_roce_v2 and gid.ipv4 and gid.ipv4 in self.addresses and gid.ndev in (None, self.netdev):
                return gid
        return None

    def gid(self, index: int) -> Gid | None:
        return next((g for g in self.gids if g.index == index), None)

    def state_text(self) -> str:
        return f"{self.state or '?'}/{self.phys_state or '?'}"


@dataclass(frozen=True)
class Fabric:
    rdma_gathered: bool
    twins: tuple[Twin, ...]  # every RDMA device port
    cages: dict[str, tuple[Twin, ...]]
    cabled: tuple[str, ...]  # cages with link
    selected: tuple[Twin, ...]  # the twins NCCL should use
    selected_from: str  # "inventory fabric.hcas" | "cabled cage p1" | ""

    @property
    def has_devices(self) -> bool:
        return bool(self.twins)

    @property
    def hcas(self) -> tuple[str, ...]:
        return tuple(t.hca for t in self.selected)


def twins(facts: Facts) -> list[Twin]:
    rdma = section(facts, "rdma") or {}
    netdevs = section(facts, "netdevs") or {}
    ipv4 = ipv4_map(facts)
    out = []
    for hca, dev in (rdma.get("devices") or {}).items():
        names = list(dev.get("netdevs") or [])
        for port_name, port in sorted((dev.get("ports") or {}).items(), key=lambda item: natural_key(item[0])):
            gids = tuple(Gid(int(g["index"]), str(g.get("gid") or ""), g.get("type"), g.get("ndev"), g.get("ipv4"))
                         for g in port.get("gids") or [] if "index" in g)
            netdev = _port_netdev(names, port_name, gids)
            info = netdevs.get(netdev, {}) if netdev else {}
            out.append(Twin(
                hca=hca, port=str(port_name), netdev=netdev, cage=_cage(netdev, info),
                state=port.get("state"), phys_state=port.get("phys_state"), link_layer=port.get("link_layer"),
                rate=port.get("rate"), rate_gbps=port.get("rate_gbps"),
                operstate=info.get("operstate"), carrier=info.get("carrier"), speed_mbps=info.get("speed_mbps"),
                mtu=info.get("mtu"), ipv4=tuple(ipv4.get(netdev, ())) if netdev else (), gids=gids,
                fw_ver=dev.get("fw_ver"),
            ))
    return sorted(out, key=lambda t: (natural_key(t.hca), natural_key(t.port)))


def _port_netdev(names: list[str], port: str, gids: tuple[Gid, ...]) -> str | None:
    if len(names) == 1:
        return names[0]
    from_gids = next((g.ndev for g in gids if g.ndev), None)
    if from_gids:
        return from_gids
    return names[0] if names else None


def _cage(netdev: str | None, info: Mapping[str, Any]) -> str | None:
    if info.get("phys_port_name"):
        return str(info["phys_port_name"])
    match = re.search(r"np(\d+)$", netdev or "")  # mlx5 names end in np<port>
    return f"p{match.group(1)}" if match else None


def fabric_of(facts: Facts, hcas: tuple[str, ...] | None = None) -> Fabric:
    all_twins = twins(facts)
    cages: dict[str, list[Twin]] = {}
    for twin in all_twins:
        cages.setdefault(twin.cage or "?", []).append(twin)
    cabled = tuple(sorted((c for c, ts in cages.items() if any(t.has_link for t in ts)), key=natural_key))
    if hcas:
        selected = tuple(t for t in all_twins if t.hca in hcas)
        selected_from = "inventory fabric.hcas"
    else:
        selected = tuple(t for c in cabled for t in cages[c])
        selected_from = "cabled cage " + ", ".join(cabled) if cabled else ""
    return Fabric(
        rdma_gathered=section(facts, "rdma") is not None,
        twins=tuple(all_twins),
        cages={c: tuple(ts) for c, ts in cages.items()},
        cabled=cabled,
        selected=selected,
        selected_from=selected_from,
    )


def rdma_split(fabrics: Mapping[str, Fabric]) -> tuple[list[str], list[str]]:
    """(nodes with RDMA devices, nodes without) among those whose RDMA facts were read;
    both non-empty means NCCL can only use TCP sockets between the two groups."""
    read = {n: f for n, f in fabrics.items() if f.rdma_gathered}
    return [n for n, f in read.items() if f.has_devices], [n for n, f in read.items() if not f.has_devices]


def ipv4_map(facts: Facts) -> dict[str, list[str]]:
    """{ifname: ["a.b.c.d/len"]} from the facts (or a probe reply's "interfaces")."""
    interfaces = facts.get("interfaces") if facts else None
    if isinstance(interfaces, dict) and interfaces:
        return {k: list(v) for k, v in interfaces.items()}
    netdevs = section(facts, "netdevs") or {}
    return {name: list(info.get("ipv4") or []) for name, info in netdevs.items() if info.get("ipv4")}


def interface_for(address: str, interfaces: Mapping[str, list[str]]) -> str | None:
    """The interface that holds `address` (loopback addresses map to lo)."""
    for name, cidrs in interfaces.items():
        for cidr in cidrs:
            if cidr.split("/")[0] == address:
                return name
    try:
        if ipaddress.ip_address(address).is_loopback and "lo" in interfaces:
            return "lo"
    except ValueError:
        pass
    return None


def network(cidr: str) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.ip_interface(cidr).network  # type: ignore[return-value]
    except ValueError:
        return None


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def netdev_mtu(facts: Facts, name: str | None) -> int | None:
    if not name:
        return None
    info = (section(facts, "netdevs") or {}).get(name) or {}
    mtu = info.get("mtu")
    return int(mtu) if isinstance(mtu, int) else None


def effective_env(facts: Facts | None, config: Mapping[str, str]) -> dict[str, str]:
    """The environment vLLM will see for the relevant variables: the node's own
    (ambient) values, then sparkctl's configured env on top."""
    env = section(facts, "env") or {}
    out = dict(env.get("ambient") or {})
    out.update(config)
    return out


def gib(value: float | int | None) -> str:
    """Bytes for people: '18.8 GiB', '8.0 MiB'."""
    if value is None:
        return "?"
    if abs(value) < 2**30:
        return f"{value / 2**20:.1f} MiB"
    return f"{value / 2**30:.1f} GiB"
