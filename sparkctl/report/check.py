"""`sparkctl check --report`: verdict, findings with hints, each node's facts, the network plan."""

from __future__ import annotations

from typing import Any

from sparkctl.checks import CheckReport
from sparkctl.findings import Severity, check_status, most_severe_first
from sparkctl.report.model import FindingRow, Report, Section, Table, Verdict, tone


def check_report(report: CheckReport, *, command: str, created: str, unreachable: tuple[str, ...] = ()) -> Report:
    counts = report.counts()
    headline = (f"{check_status(report.worst)}: {counts['PASS']} PASS, {counts['WARN']} WARN, {counts['FAIL']} FAIL"
                f" on {len(report.facts)} node(s)")
    problems = tuple(f"{f.node or '(cluster)'}: {f.code}: {f.evidence}" for f in report.findings
                     if f.severity is Severity.ERROR)
    problems += tuple(f"{name}: could not be reached over SSH" for name in unreachable)
    verdict = Verdict(tone(report.worst) if not unreachable else "fail", headline, problems)
    findings = tuple(FindingRow.of(f, check_status(f.severity)) for f in most_severe_first(report.findings))
    sections = [Section("Findings", (findings,)), Section("Nodes", (_nodes_table(report.facts),))]
    if report.plan.hosts:
        sections.append(Section("Network plan (the environment vLLM starts with, per host)", (_plan_table(report),)))
    metadata = (("cluster", report.cluster), ("nodes", ", ".join(report.facts) or "-"))
    return Report(f"sparkctl check: {report.cluster}", command, created, metadata, verdict, tuple(sections),
                  tuple(f"plan problem: {p}" for p in report.plan.problems))


def _nodes_table(facts: dict[str, dict[str, Any]]) -> Table:
    rows = []
    for name, f in facts.items():
        if not f.get("ok"):
            rows.append((name, f"no facts: {f.get('error') or 'not reachable'}", "", "", "", ""))
            continue
        gpu = f.get("gpu") or {}
        versions = f.get("versions") or {}
        twins = "; ".join(f"{t['netdev']} ({t['cage']}, {t['state']}, {', '.join(t['ipv4']) or 'no IPv4'}, MTU {t['mtu']})"
                          for t in (f.get("fabric") or {}).get("twins") or [])
        rows.append((
            name, str(f.get("hostname") or "-"),
            f"{gpu.get('count') or 0} x {', '.join(gpu.get('names') or []) or '-'} (driver {gpu.get('driver') or '-'})",
            ", ".join(f"{k} {v}" for k, v in versions.items() if v and k in ("vllm", "torch", "nccl", "cuda", "python")),
            twins or "-",
            f"{(f.get('memory') or {}).get('available')} free of {(f.get('memory') or {}).get('total')}",
        ))
    return Table(("node", "hostname", "GPU", "versions", "fabric twins", "memory"), tuple(rows))


def _plan_table(report: CheckReport) -> Table:
    rows = tuple((node, key, value, host.why.get(key, ""))
                 for node, host in report.plan.hosts.items() for key, value in host.env.items())
    return Table(("node", "variable", "value", "why"), rows)
