"""The result of `sparkctl check`: findings, the network plan and a summary of
the facts; serialisable (to_dict) and renderable as a fixed-width table."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any, Mapping

from sparkctl.checks.fabric import Facts, fabric_of, gib, section
from sparkctl.checks.findings import finding_dict
from sparkctl.checks.plan import NetworkPlan
from sparkctl.errors import ExitCode
from sparkctl.findings import CHECK_STATUSES, Finding, Severity, check_status, worst

CLUSTER_LABEL = "(cluster)"


@dataclass(frozen=True)
class CheckReport:
    cluster: str
    findings: tuple[Finding, ...]
    plan: NetworkPlan
    facts: dict[str, dict[str, Any]]  # node -> summarize_facts()
    node_order: tuple[str, ...] = field(default=())

    @property
    def worst(self) -> Severity:
        return worst(self.findings)

    @property
    def exit_code(self) -> int:
        """0 when nothing FAILs (WARN included), 1 (ExitCode.FAILED) otherwise."""
        return int(ExitCode.FAILED if self.worst is Severity.ERROR else ExitCode.OK)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(CHECK_STATUSES, 0)
        for f in self.findings:
            counts[check_status(f.severity)] += 1
        return counts

    def failed(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.ERROR]

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "status": check_status(self.worst),
            "exit_code": self.exit_code,
            "counts": self.counts(),
            "findings": [finding_dict(f) for f in self.findings],
            "plan": self.plan.to_dict(),
            "facts": self.facts,
        }


def summarize_facts(facts: Facts | None, hcas: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The few facts a person wants next to the findings (the full facts are in --json/--debug)."""
    if not isinstance(facts, Mapping) or not facts.get("ok"):
        return {"ok": False, "error": (facts or {}).get("error") if isinstance(facts, Mapping) else None}
    gpu = section(facts, "gpu") or {}
    versions = section(facts, "versions") or {}
    memory = section(facts, "memory") or {}
    fab = fabric_of(facts, hcas)
    return {
        "ok": True,
        "hostname": (section(facts, "system") or {}).get("hostname"),
        "sysfs_root": facts.get("sysfs_root"),
        "gpu": {"count": gpu.get("count"), "names": sorted({str(g.get("name")) for g in gpu.get("gpus") or []}),
                "driver": gpu.get("driver_version"), "cuda_driver": gpu.get("cuda_driver_version"),
                "source": gpu.get("source")},
        "versions": {k: versions.get(k) for k in ("python", "vllm", "vllm_dist", "torch", "ray", "nccl", "cuda",
                                                  "driver")},
        "fabric": {
            "cabled": list(fab.cabled),
            "twins": [{"hca": t.hca, "netdev": t.netdev, "cage": t.cage, "state": t.state_text(),
                       "ipv4": list(t.ipv4), "mtu": t.mtu,
                       "roce_v2_gid_index": (g.index if (g := t.roce_v2_ipv4_gid()) else None)}
                      for t in fab.selected],
        },
        "memory": {"total": gib(memory.get("mem_total_bytes")), "available": gib(memory.get("mem_available_bytes"))},
    }


def render_text(report: CheckReport, *, width: int = 120, show_pass: bool = True, show_plan: bool = True) -> str:
    """A fixed-width table: NODE, CHECK, STATUS, EVIDENCE; WARN/FAIL rows get their hint
    on the next line. Then the counts and (optionally) the per-host network plan."""
    rows = [f for f in report.findings if show_pass or f.severity is not Severity.OK]
    node_w = max([len("NODE"), len(CLUSTER_LABEL)] + [len(f.node or "") for f in rows])
    check_w = max([len("CHECK")] + [len(f.code) for f in rows])
    status_w = len("STATUS")
    prefix_w = node_w + check_w + status_w + 6
    text_w = max(30, width - prefix_w)
    pad = " " * prefix_w
    lines = [f"{'NODE':<{node_w}}  {'CHECK':<{check_w}}  {'STATUS':<{status_w}}  EVIDENCE",
             "-" * min(width, prefix_w + text_w)]
    for f in rows:
        wrapped = textwrap.wrap(f.evidence or "", text_w) or [""]
        node = f.node or CLUSTER_LABEL
        lines.append(f"{node:<{node_w}}  {f.code:<{check_w}}  {check_status(f.severity):<{status_w}}  {wrapped[0]}")
        lines += [pad + more for more in wrapped[1:]]
        if f.hint and f.severity is not Severity.OK:
            hint = textwrap.wrap("hint: " + f.hint, text_w, subsequent_indent="      ")
            lines += [pad + h for h in hint]
    counts = report.counts()
    lines.append("")
    lines.append(f"{report.cluster}: {counts['PASS']} PASS, {counts['WARN']} WARN, {counts['FAIL']} FAIL"
                 f" -> {check_status(report.worst)}")
    if show_plan and report.plan.hosts:
        lines.append("")
        lines.append(render_plan(report.plan, width=width))
    return "\n".join(lines)


def render_plan(plan: NetworkPlan, *, width: int = 120) -> str:
    """The per-host environment sparkctl will start vLLM with, and why."""
    lines = ["NETWORK PLAN"]
    for name, host in plan.hosts.items():
        lines.append(f"  {name}:")
        key_w = max((len(k) for k in host.env), default=0)
        for key, value in host.env.items():
            why = host.why.get(key)
            entry = f"    {key:<{key_w}} = {value}"
            lines.append(entry + (f"   ({why})" if why and len(entry) + len(why) + 5 <= width else ""))
            if why and len(entry) + len(why) + 5 > width:
                lines += ["      " + w for w in textwrap.wrap(f"({why})", width - 6)]
    for problem in plan.problems:
        lines.append(f"  problem: {problem}")
    return "\n".join(lines)
