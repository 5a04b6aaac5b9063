"""The facts requests the controller sends (pure builders; the caller does the I/O).

Two rounds, one SSH round trip per node each, both in parallel over the nodes:

    1. AgentClient.call(node, from_wire(FactsRequest, facts_request(spec, node)))
       -> facts per node; derive_plan(spec, facts) -> the plan
    2. AgentClient.call(node, from_wire(FactsRequest, reach_request(spec, facts, plan, node)))
       -> merge: facts[node]["reach"] = reply["reach"]

Round 2 needs round 1 (the peers' twin addresses and MTUs are facts). Give the
agent call a timeout above probe_timeout_s (the vLLM-Python probe imports torch).
"""

from __future__ import annotations

from typing import Any, Mapping

from sparkctl.checks.fabric import Facts, fabric_of, netdev_mtu, network
from sparkctl.checks.plan import NetworkPlan
from sparkctl.checks.spec import ClusterSpec

DEFAULT_PROBE_TIMEOUT_S = 120.0
ROUND1_SECTIONS = ("system", "gpu", "rdma", "netdevs", "versions", "memory", "disk", "limits", "model", "ports",
                   "env")


def facts_request(spec: ClusterSpec, node: str, *, probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Round 1: everything except reachability."""
    req: dict[str, Any] = {
        "sections": list(ROUND1_SECTIONS),
        "ports": list(spec.node(node).ports),
        "env": spec.env_values(node),
        "probe_timeout_s": probe_timeout_s,
    }
    if spec.model_path:
        req["model_path"] = spec.model_path
    if spec.vllm_python:
        req["vllm_python"] = spec.vllm_python
    elif spec.vllm_command:
        req["vllm_command"] = list(spec.vllm_command)
    return req


def reach_request(spec: ClusterSpec, facts: Mapping[str, Facts | None], plan: NetworkPlan, node: str, *,
                  twins: bool = True) -> dict[str, Any]:
    """Round 2: ping every peer (the request's only section is "reach")."""
    return {"sections": ["reach"], "peers": peers_for(spec, facts, plan, node, twins=twins)}


def peers_for(spec: ClusterSpec, facts: Mapping[str, Facts | None], plan: NetworkPlan, node: str, *,
              twins: bool = True) -> list[dict[str, Any]]:
    """What `node` should ping: each peer's VLLM_HOST_IP ("fabric") and, with twins=True, each
    peer twin's IPv4 that shares a subnet with one of this node's twins ("twin", pinged through
    that local twin). MTU: inventory fabric.mtu, else the local interface's MTU.

    twins=False suits test clusters whose RDMA is a fixture tree (the twin addresses do not exist)."""
    mine = plan.hosts.get(node)
    local = facts.get(node) or {}
    local_fabric = fabric_of(local, spec.fabric_hcas) if local else None
    peers: list[dict[str, Any]] = []
    for peer in spec.nodes:
        if peer.name == node or peer.name not in plan.hosts:
            continue
        target = plan.hosts[peer.name]
        iface = mine.interface if mine else None
        peers.append({"node": peer.name, "kind": "fabric", "address": target.address, "interface": iface,
                      "mtu": spec.fabric_mtu or netdev_mtu(local, iface) or 1500})
        peer_facts = facts.get(peer.name)
        if not twins or not local_fabric or not peer_facts:
            continue
        for remote in fabric_of(peer_facts, spec.fabric_hcas).selected:
            for cidr in remote.ipv4:
                mate = next((t for t in local_fabric.selected
                             if t.ipv4 and t.netdev and network(t.ipv4[0]) == network(cidr)), None)
                if mate is None or cidr.split("/")[0] == target.address:
                    continue
                peers.append({"node": peer.name, "kind": "twin", "address": cidr.split("/")[0],
                              "interface": mate.netdev, "via": mate.hca, "mtu": spec.fabric_mtu or mate.mtu or 1500})
    return peers
