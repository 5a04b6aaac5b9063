"""Cross-node checks: pure functions over every node's facts.

Only nodes whose facts were gathered take part (an unreachable node is
reported by facts.gathered). A comparison needs at least two nodes with the
value; missing values are reported on the node that lacks them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from sparkctl.checks.fabric import gib, natural_key, network, rdma_split, section
from sparkctl.checks.findings import finding
from sparkctl.checks.node import NodeContext, fabric_mtus
from sparkctl.checks.spec import ClusterSpec
from sparkctl.findings import Finding, Severity

OK, WARNING, ERROR = Severity.OK, Severity.WARNING, Severity.ERROR
MAX_CLOCK_SKEW_S = 1.0


@dataclass(frozen=True)
class ClusterContext:
    spec: ClusterSpec
    nodes: dict[str, NodeContext]  # gathered nodes only, in inventory order
    timing: Mapping[str, tuple[float, float]] | None  # node -> (request sent, reply received), controller clock


def check_same_cage(cc: ClusterContext) -> list[Finding]:
    rdma = {n: c for n, c in cc.nodes.items() if c.uses_rdma}
    if len(rdma) < 2:
        return []
    cages = {n: tuple(c.fabric.cabled) for n, c in rdma.items()}
    listed = ", ".join(f"{n}: {'+'.join(v) or 'none'}" for n, v in cages.items())
    if not cc.spec.fabric_hcas and len(set(cages.values())) > 1:
        return [finding("rdma.same-cage", ERROR, None, f"different cages cabled ({listed})",
                        "use the same QSFP port on every node (the official playbook: 'use the same physical port "
                        "on each device'): move the cable, then reboot both nodes with it attached")]
    hcas = {n: tuple(sorted(c.fabric.hcas, key=natural_key)) for n, c in rdma.items()}
    if len(set(hcas.values())) > 1:
        text = ", ".join(f"{n}: {','.join(v)}" for n, v in hcas.items())
        return [finding("rdma.same-cage", WARNING, None, f"the HCA names differ between nodes ({text})",
                        "NCCL can hang silently when NCCL_IB_HCA differs between nodes (NVIDIA/nccl#2428): use "
                        "the same cage and the same device naming (roce* vs mlx5_*) on every node")]
    return [finding("rdma.same-cage", OK, None, f"{listed}; HCAs {','.join(next(iter(hcas.values())))}")]


def check_rdma_symmetric(cc: ClusterContext) -> list[Finding]:
    """Whatever the GPUs: a CPU-only node without RDMA gets only a WARN of its own, yet
    it drags every collective with the RDMA nodes down to sockets."""
    have, lack = rdma_split({n: c.fabric for n, c in cc.nodes.items()})
    if not have or not lack:
        return []
    hcas = "; ".join(f"{n}: {','.join(t.hca for t in cc.nodes[n].fabric.twins)}" for n in have)
    return [finding("rdma.symmetric", ERROR, None,
                    f"{', '.join(have)} {'has' if len(have) == 1 else 'have'} RDMA devices ({hcas}), "
                    f"{', '.join(lack)} {'has' if len(lack) == 1 else 'have'} none: between them NCCL can only use "
                    "TCP sockets",
                    f"bring up the ConnectX-7 on {', '.join(lack)} (cable attached at boot, `ibdev2netdev` shows "
                    "the twins), or leave RDMA out everywhere (NCCL_IB_DISABLE=1 on every node)")]


def check_mtu_match(cc: ClusterContext) -> list[Finding]:
    nodes = {n: c for n, c in cc.nodes.items() if section(c.facts, "netdevs") is not None}
    if any(c.uses_rdma for c in nodes.values()):
        nodes = {n: c for n, c in nodes.items() if c.uses_rdma}  # a node without RDMA is reported by rdma.*
    mtus = {n: m for n, m in ((n, fabric_mtus(c)) for n, c in nodes.items()) if m}
    if len(mtus) < 2:
        return []
    values = {v for m in mtus.values() for v in m.values()}
    listed = "; ".join(f"{n}: " + ", ".join(f"{i} {v}" for i, v in m.items()) for n, m in mtus.items())
    if len(values) > 1:
        return [finding("net.mtu-match", ERROR, None, f"MTU differs across the fabric ({listed})",
                        "set the same MTU (9000) on both ends of the link: a mismatch passes small pings and then "
                        "deadlocks under a real collective")]
    return [finding("net.mtu-match", OK, None, f"MTU {values.pop()} everywhere ({listed})")]


def check_fabric_subnets(cc: ClusterContext) -> list[Finding]:
    rdma = {n: c for n, c in cc.nodes.items() if c.uses_rdma}
    if len(rdma) < 2:
        return []
    by_net: dict[str, dict[str, str]] = {}
    lonely = []
    for n, c in rdma.items():
        for t in c.fabric.selected:
            if t.ipv4 and t.netdev:
                by_net.setdefault(str(network(t.ipv4[0])), {})[n] = f"{t.netdev} {t.ipv4[0]}"
    for net, members in sorted(by_net.items()):
        missing = [n for n in rdma if n not in members]
        if missing:
            lonely.append(f"{net} ({', '.join(f'{n} {v}' for n, v in members.items())}) has no twin on "
                          f"{', '.join(missing)}")
    if lonely:
        return [finding("net.fabric-subnets", ERROR, None, "; ".join(lonely),
                        "address the twins pairwise: the first twin of every node on one subnet (e.g. "
                        "192.168.100.0/24), the second twin on another (192.168.101.0/24)")]
    if not by_net:
        return []
    return [finding("net.fabric-subnets", OK, None,
                    "; ".join(f"{net}: {', '.join(f'{n} {v}' for n, v in m.items())}" for net, m in sorted(by_net.items())))]


# --------------------------------------------------------------------------
# versions
# --------------------------------------------------------------------------
def _versions(c: NodeContext) -> dict | None:
    return section(c.facts, "versions")


def _compare(cc: ClusterContext, check: str, label: str, values: dict[str, str | None], *,
             missing: Severity | None, mismatch: Severity = ERROR, hint: str) -> list[Finding]:
    """Equal everywhere -> PASS; differing -> `mismatch` (cluster-wide); absent on a node ->
    `missing` on that node (None: absence is fine, e.g. Ray with the mp backend)."""
    present = {n: v for n, v in values.items() if v is not None}
    absent = [n for n, v in values.items() if v is None]
    listed = ", ".join(f"{n}: {v or 'missing'}" for n, v in values.items())
    if not present:
        return [finding(check, ERROR, None, f"{label} not found on any node", hint)] if missing == ERROR else []
    out = []
    if absent and missing is not None:
        out += [finding(check, missing, n, f"{label} not found on {n} ({listed})", hint) for n in absent]
    distinct = set(present.values())
    if len(distinct) > 1:
        out.append(finding(check, mismatch, None, f"{label} differs: {listed}", hint))
    elif not out:
        where = f"({listed})" if absent else "on " + ", ".join(present)
        out.append(finding(check, OK, None, f"{label} {distinct.pop()} {where}"))
    return out


def check_versions(cc: ClusterContext) -> list[Finding]:
    nodes = {n: c for n, c in cc.nodes.items() if _versions(c) is not None}
    if len(nodes) < 2:
        return []
    v = {n: _versions(c) or {} for n, c in nodes.items()}
    gpu_nodes = {n for n, c in nodes.items() if ((section(c.facts, "gpu") or {}).get("count") or 0) > 0}
    same = "install the same version on every node (the same container image or the same wheel set)"
    out = []
    out += _compare(cc, "versions.driver", "NVIDIA driver", {n: v[n].get("driver") for n in nodes},
                    missing=ERROR if gpu_nodes else None, hint="upgrade every node to the same driver (`sudo apt full-upgrade` "
                    "on DGX OS, then reboot)")
    cuda = {}
    for n in nodes:
        runtime, driver = v[n].get("cuda"), v[n].get("cuda_driver")
        cuda[n] = None if runtime is None and driver is None else f"torch {runtime or '-'} / driver {driver or '-'}"
    out += _compare(cc, "versions.cuda", "CUDA", cuda, missing=WARNING, hint=same)
    out += _compare(cc, "versions.nccl", "NCCL", {n: v[n].get("nccl") for n in nodes}, missing=ERROR if gpu_nodes else None,
                    hint="use one NCCL build on every node (different versions fail with 'receiving N bytes "
                    "instead of M' or hang; GB10 needs NCCL >= 2.28.9)")
    out += _compare(cc, "versions.torch", "torch", {n: v[n].get("torch") for n in nodes}, missing=ERROR, hint=same)
    vllm = {n: (f"{v[n].get('vllm')} ({v[n].get('vllm_dist')})" if v[n].get("vllm") else None) for n in nodes}
    out += _compare(cc, "versions.vllm", "vLLM", vllm, missing=ERROR,
                    hint="install vLLM at the same version on every node, at the path the playbook names "
                    "(vllm.command / vllm.python)")
    ray_needed = cc.spec.backend == "ray"
    out += _compare(cc, "versions.ray", "Ray", {n: v[n].get("ray") for n in nodes}, missing=ERROR if ray_needed else None,
                    mismatch=ERROR if ray_needed else WARNING, hint=same)
    out += _compare_python(cc, {n: v[n].get("python") for n in nodes})
    return out


def _compare_python(cc: ClusterContext, values: dict[str, str | None]) -> list[Finding]:
    minor = {n: ".".join(p.split(".")[:2]) if p else None for n, p in values.items()}
    if len({m for m in minor.values() if m}) > 1:
        listed = ", ".join(f"{n}: {p or 'missing'}" for n, p in values.items())
        return [finding("versions.python", ERROR, None, f"Python differs: {listed}",
                        "run vLLM with the same Python version on every node (the same venv recipe or image)")]
    return _compare(cc, "versions.python", "Python", values, missing=WARNING, mismatch=WARNING,
                    hint="patch versions differ: harmless for most builds, but identical environments are safer")


# --------------------------------------------------------------------------
# model, clocks, reachability coverage
# --------------------------------------------------------------------------
def check_model_same(cc: ClusterContext) -> list[Finding]:
    if not cc.spec.model_path or cc.spec.load_format == "dummy":
        return []
    files: dict[str, tuple[tuple[str, int], ...]] = {}
    for n, c in cc.nodes.items():
        model = section(c.facts, "model")
        if model and model.get("exists") and model.get("weights"):
            files[n] = tuple(sorted((w["name"], int(w["bytes"])) for w in model["weights"]))
    if len(files) < 2 or len(set(files.values())) == 1:
        if len(files) >= 2:
            sample = next(iter(files.values()))
            return [finding("model.same", OK, None,
                            f"{len(sample)} weight file(s), {gib(sum(b for _, b in sample))}, identical on "
                            f"{', '.join(files)}")]
        return []
    reference_node = max(files, key=lambda n: sum(b for _, b in files[n]))
    reference = dict(files[reference_node])
    parts = []
    for n, entries in files.items():
        if n == reference_node:
            continue
        have = dict(entries)
        lacking = sorted(set(reference) - set(have))
        extra = sorted(set(have) - set(reference))
        sizes = sorted(k for k in set(have) & set(reference) if have[k] != reference[k])
        diff = []
        if lacking:
            diff.append(f"lacks {', '.join(lacking[:3])}" + (" ..." if len(lacking) > 3 else ""))
        if extra:
            diff.append(f"has extra {', '.join(extra[:3])}")
        if sizes:
            diff.append(f"sizes differ for {', '.join(sizes[:3])}")
        if diff:
            parts.append(f"{n} vs {reference_node}: " + "; ".join(diff))
    return [finding("model.same", ERROR, None, "; ".join(parts),
                    f"copy the complete model from {reference_node} to the other nodes at the same path")]


def clock_offset(facts_time: Mapping[str, float], sent_at: float, received_at: float) -> tuple[float, float]:
    """(offset, uncertainty) of a node's clock against the controller's, in seconds.

    facts["time"]["start"/"end"] were read on the node after the request was sent
    and before the reply arrived, so the true offset lies in
    [end - received_at, start - sent_at]; the estimate is that interval's middle."""
    low = float(facts_time["end"]) - received_at
    high = float(facts_time["start"]) - sent_at
    return (low + high) / 2.0, abs(high - low) / 2.0


def check_clocks(cc: ClusterContext) -> list[Finding]:
    if not cc.timing:
        return []
    offsets = {}
    for n, c in cc.nodes.items():
        t = section(c.facts, "time")
        if t and n in cc.timing and t.get("start") is not None and t.get("end") is not None:
            offsets[n] = clock_offset(t, *cc.timing[n])
    if len(offsets) < 2:
        return []
    estimates = {n: o for n, (o, _) in offsets.items()}
    skew = max(estimates.values()) - min(estimates.values())
    slack = max(u for _, u in offsets.values()) * 2
    listed = ", ".join(f"{n} {o:+.3f}s ±{u:.3f}" for n, (o, u) in offsets.items())
    if skew - slack > MAX_CLOCK_SKEW_S:
        return [finding("time.clock-offset", WARNING, None,
                        f"clocks differ by about {skew:.1f}s (offsets vs the controller: {listed})",
                        "enable time sync on every node (`timedatectl set-ntp true`; chrony/systemd-timesyncd)")]
    return [finding("time.clock-offset", OK, None, f"offsets vs the controller: {listed}")]


def check_reach_coverage(cc: ClusterContext) -> list[Finding]:
    if not cc.spec.multi_node or not cc.nodes:
        return []
    if any(section(c.facts, "reach") is not None and (section(c.facts, "reach") or {}).get("results")
           for c in cc.nodes.values()):
        return []
    return [finding("net.peer-reach", WARNING, None, "peer reachability was not probed (no peers given to the facts "
                    "request)", "pass peers (checks.reach_request) in a second facts round")]


CLUSTER_CHECKS: tuple[Callable[[ClusterContext], list[Finding]], ...] = (
    check_same_cage,
    check_rdma_symmetric,
    check_mtu_match,
    check_fabric_subnets,
    check_versions,
    check_model_same,
    check_clocks,
    check_reach_coverage,
)


def cluster_findings(cc: ClusterContext) -> list[Finding]:
    out: list[Finding] = []
    for check in CLUSTER_CHECKS:
        out += check(cc)
    return out
