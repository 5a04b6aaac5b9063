"""Preflight checks (`sparkctl check`) and the per-host network plan.

Pure functions over the facts each node reports (sparkctl/agent/node_facts.py);
no I/O here. Typical use on the controller:

    spec = ClusterSpec.from_config(inventory, playbook)
    facts = {node: AgentClient.call(node, from_wire(FactsRequest, facts_request(spec, node))).facts}
    plan = derive_plan(spec, facts)
    # second round: facts[node]["reach"] = AgentClient.call(node, from_wire(FactsRequest, reach_request(...))).facts["reach"]
    report = check_cluster(spec, facts, timing={node: (sent_at, received_at)})
    print(render_text(report)); exit(report.exit_code)

`up` can use `derive_plan(spec, facts).require()`: it returns
{node: sparkctl.netplan.HostPlan}.
"""

from sparkctl.checks.cluster import clock_offset
from sparkctl.checks.findings import CATALOGUE, CheckInfo, catalogue_markdown, finding
from sparkctl.checks.node import rdma_requirement
from sparkctl.checks.plan import PLAN_VARS, NetworkPlan, derive_plan
from sparkctl.checks.preflight import check_cluster, infer_cpu_only, run_checks
from sparkctl.checks.report import CheckReport, render_plan, render_text, summarize_facts
from sparkctl.checks.requests import facts_request, peers_for, reach_request
from sparkctl.checks.spec import ClusterSpec, NodeSpec

__all__ = [
    "CATALOGUE",
    "CheckInfo",
    "CheckReport",
    "ClusterSpec",
    "NetworkPlan",
    "NodeSpec",
    "PLAN_VARS",
    "catalogue_markdown",
    "check_cluster",
    "clock_offset",
    "derive_plan",
    "facts_request",
    "finding",
    "infer_cpu_only",
    "peers_for",
    "rdma_requirement",
    "reach_request",
    "render_plan",
    "render_text",
    "run_checks",
    "summarize_facts",
]
