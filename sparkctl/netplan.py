"""The per-host network plan: which address and interface each node uses for
vLLM's control plane, gloo/NCCL bootstrap and the rendezvous.

Derived for every host from that host's own facts (never the head's values
copied to workers). Inventory `fabric:` settings override what is derived;
per-node `env:` overrides the resulting variables when processes start.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from sparkctl.errors import OperationFailed
from sparkctl.inventory import Inventory, Node


@dataclass(frozen=True)
class HostPlan:
    node: str
    address: str
    interface: str | None
    master_addr: str
    env: dict[str, str]
    why: dict[str, str] = field(default_factory=dict)


def interface_for(address: str, interfaces: dict[str, list[str]]) -> str | None:
    """The interface that holds `address` (interfaces: name -> ['a.b.c.d/len', ...])."""
    for name, cidrs in interfaces.items():
        for cidr in cidrs:
            if cidr.split("/")[0] == address:
                return name
    if ipaddress.ip_address(address).is_loopback and "lo" in interfaces:
        return "lo"
    return None


def plan_network(inventory: Inventory, interfaces: dict[str, dict[str, list[str]]]) -> dict[str, HostPlan]:
    """interfaces: node name -> that node's {ifname: [cidr...]}, as its agent reported."""
    head = inventory.head
    plans: dict[str, HostPlan] = {}
    problems: list[str] = []
    for node in inventory.nodes:
        plans[node.name] = _host_plan(node, head, inventory, interfaces.get(node.name, {}), problems)
    if problems:
        raise OperationFailed(
            "the network plan cannot be derived: " + "; ".join(problems),
            hint="set nodes[].fabric_ip to an IPv4 address the node really has (ip -4 addr on the node), "
            "or fabric.interface to name the interface",
        )
    return plans


def _host_plan(node: Node, head: Node, inventory: Inventory, ifaces: dict[str, list[str]], problems: list[str]) -> HostPlan:
    address = node.address
    why = {"VLLM_HOST_IP": "nodes[].fabric_ip" if node.fabric_ip else "nodes[].host (no fabric_ip set)"}
    interface = inventory.fabric.interface
    if interface is not None:
        why["interface"] = "inventory fabric.interface"
    else:
        interface = interface_for(address, ifaces)
        if interface is not None:
            why["interface"] = f"the interface holding {address} on {node.name}"
        elif node.fabric_ip is not None:
            have = ", ".join(f"{name} {' '.join(c)}" for name, c in sorted(ifaces.items()) if c) or "none"
            problems.append(f"{node.name}: no interface holds fabric_ip {address} (IPv4 on the node: {have})")
    env = {"VLLM_HOST_IP": address, "MASTER_ADDR": head.address}
    if interface is not None:
        for var in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME"):
            env[var] = interface
    return HostPlan(node=node.name, address=address, interface=interface, master_addr=head.address, env=env, why=why)
