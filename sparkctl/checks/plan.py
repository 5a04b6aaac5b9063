"""The per-host network plan, derived from each host's own facts.

For every node (never the head's values copied to workers):

    VLLM_HOST_IP        nodes[].fabric_ip; else the IPv4 of fabric.interface; else the
                        IPv4 of the first twin of the cabled cage; else nodes[].host
    NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME, TP_SOCKET_IFNAME, UCX_NET_DEVICES
                        inventory fabric.interface; else the interface holding fabric_ip;
                        else that first twin; else the interface holding nodes[].host
    NCCL_IB_HCA         inventory fabric.hcas; else both twins of the cabled cage, in NCCL's
                        exact-match form ("=rocep1s0f1,roceP2p1s0f1"); unset without RDMA
    MASTER_ADDR         the head's VLLM_HOST_IP (HostPlan.master_addr: mp's --master-addr)
    NCCL_IB_GID_INDEX   never derived (NCCL's auto-selection picks the RoCE v2 IPv4 GID per
                        HCA, and indexes drift); kept only when the user pins it in env

Precedence, lowest first: the derived value, inventory `fabric:` (which changes
the derivation), then playbook env, inventory env, nodes[].env (which replace
the value, as backends.mp.vllm_env merges them). Every variable has a `why`.

Nodes without RDMA (CPU test hosts, the local pair) get their plan from
fabric_ip / host alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from sparkctl.checks.fabric import Facts, fabric_of, interface_for, ipv4_map, is_ip, rdma_split, section
from sparkctl.checks.spec import ClusterSpec, NodeSpec
from sparkctl.errors import OperationFailed
from sparkctl.netplan import HostPlan

SOCKET_VARS = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "UCX_NET_DEVICES")
PLAN_VARS = ("VLLM_HOST_IP", *SOCKET_VARS, "NCCL_IB_HCA", "NCCL_IB_GID_INDEX", "MASTER_ADDR")


@dataclass(frozen=True)
class NetworkPlan:
    hosts: dict[str, HostPlan]
    problems: tuple[str, ...] = ()

    def require(self) -> dict[str, HostPlan]:
        """The plans, or OperationFailed naming every problem (what `up` wants)."""
        if self.problems:
            raise OperationFailed(
                "the network plan cannot be derived: " + "; ".join(self.problems),
                hint="set nodes[].fabric_ip to an IPv4 address the node really has (ip -4 addr on the node), "
                "or fabric.interface to name the interface",
            )
        return self.hosts

    def to_dict(self) -> dict[str, Any]:
        return {
            "hosts": {name: {"address": p.address, "interface": p.interface, "master_addr": p.master_addr,
                             "env": dict(p.env), "why": dict(p.why)} for name, p in self.hosts.items()},
            "problems": list(self.problems),
        }


@dataclass
class _Draft:
    interface: str | None
    env: dict[str, str]
    why: dict[str, str]


def derive_plan(spec: ClusterSpec, facts: Mapping[str, Facts | None]) -> NetworkPlan:
    """facts: node name -> that node's facts (gather() reply; None when it could not be reached)."""
    problems: list[str] = []
    drafts = {node.name: _draft(spec, node, facts.get(node.name), problems) for node in spec.nodes}
    head = spec.head
    head_config = spec.config_env(head.name)
    if "MASTER_ADDR" in head_config:
        master, master_why = head_config["MASTER_ADDR"][0], f"set by {head_config['MASTER_ADDR'][1]} on the head"
    else:
        master, master_why = drafts[head.name].env["VLLM_HOST_IP"], f"the head's ({head.name}) VLLM_HOST_IP"
    _no_one_sided_hca(spec, facts, drafts)
    hosts = {}
    for node in spec.nodes:
        draft = drafts[node.name]
        draft.env["MASTER_ADDR"], draft.why["MASTER_ADDR"] = master, master_why
        _apply_overrides(spec, node, draft)
        hosts[node.name] = HostPlan(node=node.name, address=draft.env["VLLM_HOST_IP"], interface=draft.interface,
                                    master_addr=master, env=draft.env, why=draft.why)
    return NetworkPlan(hosts=hosts, problems=tuple(problems))


def _draft(spec: ClusterSpec, node: NodeSpec, facts: Facts | None, problems: list[str]) -> _Draft:
    why: dict[str, str] = {}
    if facts is None:
        problems.append(f"{node.name}: no facts (the node could not be asked)")
    ifaces = ipv4_map(facts) if facts else {}
    fab = fabric_of(facts, spec.fabric_hcas) if facts else None
    twin = next((t for t in fab.selected if t.ipv4 and t.netdev), None) if fab else None

    interface: str | None = None
    if spec.fabric_interface:
        interface, why["interface"] = spec.fabric_interface, "inventory fabric.interface"
        known = set(ifaces) | set(section(facts, "netdevs") or {})
        if facts is not None and interface not in known:
            problems.append(f"{node.name}: fabric.interface {interface} does not exist on the node")
    elif node.fabric_ip:
        interface = interface_for(node.fabric_ip, ifaces)
        if interface is not None:
            why["interface"] = f"the interface holding fabric_ip {node.fabric_ip}"
        elif facts is not None:
            have = ", ".join(f"{n} {' '.join(c)}" for n, c in sorted(ifaces.items()) if c) or "none"
            problems.append(f"{node.name}: no interface holds fabric_ip {node.fabric_ip} (IPv4 on the node: {have})")
    elif twin is not None:
        interface, why["interface"] = twin.netdev, f"the first twin of {fab.selected_from} ({twin.hca})"  # type: ignore[union-attr]
    elif is_ip(node.host):
        interface = interface_for(node.host, ifaces)
        if interface is not None:
            why["interface"] = f"the interface holding host {node.host} (no fabric_ip, no RDMA twin with IPv4)"

    if node.fabric_ip:
        address, why["VLLM_HOST_IP"] = node.fabric_ip, "nodes[].fabric_ip"
    elif spec.fabric_interface and ifaces.get(spec.fabric_interface):
        address = ifaces[spec.fabric_interface][0].split("/")[0]
        why["VLLM_HOST_IP"] = f"the IPv4 of fabric.interface {spec.fabric_interface}"
    elif twin is not None and interface == twin.netdev:
        address, why["VLLM_HOST_IP"] = twin.addresses[0], f"the IPv4 of twin {twin.netdev} (cage {twin.cage})"
    else:
        address, why["VLLM_HOST_IP"] = node.host, "nodes[].host (no fabric_ip set, no RDMA twin with IPv4)"

    env = {"VLLM_HOST_IP": address}
    if interface is not None:
        for var in SOCKET_VARS:
            env[var], why[var] = interface, why["interface"]
    if spec.fabric_hcas:
        env["NCCL_IB_HCA"], why["NCCL_IB_HCA"] = "=" + ",".join(spec.fabric_hcas), "inventory fabric.hcas"
    elif fab is not None and fab.selected:
        env["NCCL_IB_HCA"] = "=" + ",".join(fab.hcas)
        why["NCCL_IB_HCA"] = (f"both twins of {fab.selected_from} ({', '.join(t.name for t in fab.selected)}), "
                              "exact-match form")
    return _Draft(interface=interface, env=env, why=why)


def _no_one_sided_hca(spec: ClusterSpec, facts: Mapping[str, Facts | None], drafts: dict[str, _Draft]) -> None:
    """When some nodes have RDMA devices and others none, NCCL between them runs on
    sockets; NCCL_IB_HCA on one side only would make the two sides disagree about the
    transport, so no node gets it (check rdma.symmetric FAILs and says why)."""
    if spec.fabric_hcas:
        return  # named by the user for every node; rdma.devices FAILs where they are missing
    have, lack = rdma_split({n: fabric_of(f) for n, f in facts.items() if f is not None})
    if not have or not lack:
        return
    for draft in drafts.values():
        draft.env.pop("NCCL_IB_HCA", None)
        draft.why["NCCL_IB_HCA"] = (f"not set: {', '.join(lack)} {'has' if len(lack) == 1 else 'have'} no "
                                    "RDMA devices, so NCCL uses sockets between the nodes")


def _apply_overrides(spec: ClusterSpec, node: NodeSpec, draft: _Draft) -> None:
    for var, (value, source) in spec.config_env(node.name).items():
        if var == "NCCL_IB_GID_INDEX":
            draft.env[var] = value
            draft.why[var] = f"pinned by {source} (sparkctl never sets it: NCCL picks the RoCE v2 IPv4 GID per HCA)"
        elif var in PLAN_VARS:
            before = draft.env.get(var)
            draft.env[var] = value
            draft.why[var] = f"set by {source}" + (f" (the plan had {before})" if before not in (None, value) else "")
