"""Check findings and the catalogue of every check `sparkctl check` runs.

A check id is stable (`area.name`): scripts, `--json` consumers and the README
(generated from CATALOGUE) rely on it. Adding a check means adding it here first;
`finding()` refuses ids that are not in the catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparkctl.findings import Finding, Severity, check_status


@dataclass(frozen=True)
class CheckInfo:
    id: str
    scope: str  # "node": one finding per node | "cluster": compares nodes (node set when one is to blame)
    summary: str


_CHECKS: tuple[tuple[str, str, str], ...] = (
    # id, scope, one-line description
    ("facts.gathered", "node", "the node answered the facts request (reachable over SSH, agent ran)"),
    ("gpu.present", "node", "the GPUs are visible (NVML or nvidia-smi), as many as nodes[].gpus"),
    ("rdma.devices", "node", "RDMA devices exist; none on a GPU node means the ConnectX-7 was not cabled at boot"),
    ("rdma.cabled-cage", "node", "exactly one QSFP cage has link, found from the twins' phys_port_name"),
    ("rdma.twins-active", "node", "both twins of the cabled cage are ACTIVE / LinkUp (one twin = half the bandwidth)"),
    ("rdma.link-layer", "node", "the twins' link layer is Ethernet (RoCE)"),
    ("rdma.rate", "node", "the twins run at 200 Gb/s (sysfs rate and netdev speed)"),
    ("net.twin-ipv4", "node", "each twin has exactly one IPv4 address (none means no IPv4 RoCE v2 GID)"),
    ("net.twin-subnets", "node", "the two twins are on different IPv4 subnets"),
    ("rdma.roce-v2-gid", "node", "every HCA has a RoCE v2 GID for its twin's IPv4 address (its index is reported)"),
    ("rdma.gid-index-pin", "node", "a pinned NCCL_IB_GID_INDEX is the RoCE v2 IPv4 GID on every HCA (unset is best)"),
    ("env.nccl-transport", "node", "NCCL is not forced onto sockets (NCCL_IB_DISABLE, NCCL_NET) while RDMA is cabled"),
    ("net.fabric-address", "node", "the node's fabric address and interface exist on the node"),
    ("net.mtu", "node", "the fabric interfaces use MTU 9000 (or inventory fabric.mtu)"),
    ("limits.memlock", "node", "the locked-memory limit (ulimit -l) is unlimited, as RDMA registration needs"),
    ("memory.available", "node", "enough memory is free for the playbook (weights share, KV cache, GPU memory utilization)"),
    ("disk.free", "node", "the model's filesystem (or home) has free space"),
    ("model.complete", "node", "the model directory exists with a valid config.json and complete weight files"),
    ("ports.free", "node", "the ports sparkctl will listen on are free (or held by this cluster's own processes)"),
    ("net.peer-reach", "node", "the node reaches every peer's fabric addresses (ping)"),
    ("net.peer-mtu", "node", "don't-fragment pings at the full MTU reach every peer (MTU equal along the path)"),
    ("rdma.same-cage", "cluster", "the same QSFP cage (and the same HCA names) is cabled on every node"),
    ("rdma.symmetric", "cluster", "no node has RDMA devices while another has none (NCCL would fall back to sockets)"),
    ("net.mtu-match", "cluster", "the MTU is equal on both ends of the fabric link"),
    ("net.fabric-subnets", "cluster", "each twin shares an IPv4 subnet with the matching twin on every other node"),
    ("versions.driver", "cluster", "the NVIDIA driver version is equal on every node"),
    ("versions.cuda", "cluster", "the CUDA version (torch's runtime and the driver's) is equal on every node"),
    ("versions.nccl", "cluster", "the NCCL version is equal on every node"),
    ("versions.torch", "cluster", "the torch version is equal on every node"),
    ("versions.vllm", "cluster", "vLLM is installed, with the same version, on every node"),
    ("versions.ray", "cluster", "the Ray version is equal on every node (required for backend ray)"),
    ("versions.python", "cluster", "the Python version running vLLM is equal on every node"),
    ("model.same", "cluster", "the model's files (names and sizes) are identical on every node"),
    ("time.clock-offset", "cluster", "the nodes' clocks agree within a second"),
)

CATALOGUE: dict[str, CheckInfo] = {cid: CheckInfo(cid, scope, summary) for cid, scope, summary in _CHECKS}


def finding(check: str, severity: Severity, node: str | None, evidence: str, hint: str | None = None) -> Finding:
    """A check's finding: its catalogue id is the code and what it verifies the message; the
    evidence says what was seen. A passed check needs no hint."""
    if check not in CATALOGUE:
        raise KeyError(f"unknown check id {check!r}: add it to sparkctl.checks.findings.CATALOGUE")
    return Finding(code=check, severity=severity, message=CATALOGUE[check].summary, evidence=evidence,
                   hint=hint if severity is not Severity.OK else None, node=node)


def finding_dict(f: Finding) -> dict[str, Any]:
    """A check's finding in `check --json` (the contract scripts read)."""
    return {"check": f.code, "status": check_status(f.severity), "node": f.node, "evidence": f.evidence, "hint": f.hint}


def catalogue_markdown() -> str:
    """The README's check table."""
    lines = ["| check | scope | what it verifies |", "| --- | --- | --- |"]
    lines += [f"| `{c.id}` | {c.scope} | {c.summary} |" for c in CATALOGUE.values()]
    return "\n".join(lines)
