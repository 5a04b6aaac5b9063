"""`sparkctl check`: gather every node's facts in parallel (one SSH round trip
per node), derive the per-host network plan, ping every peer on the fabric
(a second round trip), and judge it all with the checks in sparkctl.checks.

`up` runs the same steps before it starts anything and refuses on a FAIL."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sparkctl.agent.client import AgentClient, connect
from sparkctl.agent.protocol import FactsRequest, from_wire
from sparkctl.checks import CheckReport, ClusterSpec, NetworkPlan, check_cluster, derive_plan
from sparkctl.checks.requests import DEFAULT_PROBE_TIMEOUT_S, facts_request, reach_request
from sparkctl.errors import ConnectionFailed, InputError, OperationFailed, SparkctlError
from sparkctl.findings import Severity
from sparkctl.inventory import Inventory, Node
from sparkctl.netplan import HostPlan
from sparkctl.playbook import Playbook
from sparkctl.progress import Reporter
from sparkctl.remote.result import NodeUnavailable
from sparkctl.remote.session import fan_out


@dataclass
class Facts:
    """Round-1 facts of every node, when they were taken, and who did not answer."""

    by_node: dict[str, dict[str, Any] | None]
    timing: dict[str, tuple[float, float]]
    unreachable: dict[str, NodeUnavailable]


def gather_facts(nodes: AgentClient, spec: ClusterSpec, inventory: Inventory) -> Facts:
    def ask(node: Node) -> tuple[dict[str, Any], tuple[float, float]]:
        sent = time.time()
        cache_dir = f"{node.workdir.rstrip('/')}/facts-cache"
        request = from_wire(FactsRequest, {**facts_request(spec, node.name), "cache_dir": cache_dir})
        reply = nodes.call(node, request, timeout_s=DEFAULT_PROBE_TIMEOUT_S + 60)
        return reply.facts, (sent, time.time())

    outcomes = fan_out(inventory.nodes, ask)
    facts: dict[str, dict[str, Any] | None] = {}
    timing: dict[str, tuple[float, float]] = {}
    unreachable: dict[str, NodeUnavailable] = {}
    for name, outcome in outcomes.items():
        if outcome.error is not None:
            if isinstance(outcome.error, NodeUnavailable):
                unreachable[name] = outcome.error
            elif not isinstance(outcome.error, SparkctlError):
                raise outcome.error  # a bug, not a node problem
            facts[name] = {"ok": False, "error": str(outcome.error)}
            continue
        facts[name], timing[name] = outcome.value  # type: ignore[misc]
    return Facts(facts, timing, unreachable)


def reachable_facts(nodes: AgentClient, spec: ClusterSpec, inventory: Inventory) -> Facts:
    """Every node's facts; commands that start processes cannot go on without all of them."""
    facts = gather_facts(nodes, spec, inventory)
    if facts.unreachable:
        errors = list(facts.unreachable.values())
        if len(errors) == 1:
            raise errors[0]
        raise ConnectionFailed(
            f"{len(errors)} node(s) could not be reached", details=[str(e) for e in errors], hint=errors[0].hint
        )
    failed = [f"{name}: {(f or {}).get('error')}" for name, f in facts.by_node.items() if not (f or {}).get("ok")]
    if failed:
        raise OperationFailed("facts could not be gathered on every node", details=failed)
    return facts


def host_plans(spec: ClusterSpec, facts: Facts) -> dict[str, HostPlan]:
    """The per-host network plan every launcher uses (raises when it cannot be derived)."""
    return derive_plan(spec, facts.by_node).require()


def network_plan(nodes: AgentClient, inventory: Inventory, playbook: Playbook | None) -> dict[str, HostPlan]:
    """Facts from every node, then the per-host plan: for probes and jobs that need no checks."""
    spec = ClusterSpec.from_config(inventory, playbook)
    return host_plans(spec, reachable_facts(nodes, spec, inventory))


def probe_reach(nodes: AgentClient, spec: ClusterSpec, inventory: Inventory, facts: Facts, plan: NetworkPlan) -> None:
    """Round 2: every node pings every peer on the fabric (jumbo, don't fragment); merged into the facts."""
    askable = [n for n in inventory.nodes if (facts.by_node.get(n.name) or {}).get("ok")]
    if len(inventory.nodes) < 2 or not askable:
        return
    outcomes = nodes.call_all(
        lambda n: from_wire(FactsRequest, reach_request(spec, facts.by_node, plan, n.name,
                                                        twins=_twins_exist(facts.by_node.get(n.name)))),
        nodes=askable,
        timeout_s=120,
    )
    for name, outcome in outcomes.items():
        if outcome.error is None and outcome.value is not None:
            facts.by_node[name]["reach"] = outcome.value.facts.get("reach")  # type: ignore[index]


def _twins_exist(node_facts: dict[str, Any] | None) -> bool:
    # A node pointed at a captured sysfs tree (SPARKCTL_SYSFS_ROOT) has twin
    # addresses that do not exist on it: ping only the fabric address there.
    return not bool((node_facts or {}).get("sysfs_overridden"))


def run_check(inventory: Inventory, playbook: Playbook | None, reporter: Reporter) -> tuple[CheckReport, Facts]:
    spec = ClusterSpec.from_config(inventory, playbook)
    with connect(inventory) as nodes:
        reporter.event(None, f"gathering facts from {len(inventory.nodes)} node(s)")
        facts = gather_facts(nodes, spec, inventory)
        plan = derive_plan(spec, {n: f if (f or {}).get("ok") else None for n, f in facts.by_node.items()})
        reporter.event(None, "probing the fabric between the nodes")
        probe_reach(nodes, spec, inventory, facts, plan)
    return check_cluster(spec, facts.by_node, timing=facts.timing), facts


def refusals(report: CheckReport, ignored: set[str]) -> list[str]:
    """The FAILs that stop `up`, minus those the user chose to ignore (`--ignore-check ID|all`)."""
    if "all" in ignored:
        return []
    known = {f.code for f in report.findings}
    unknown = ignored - known - {"all"}
    if unknown:
        raise InputError(f"--ignore-check names checks that did not run: {', '.join(sorted(unknown))}",
                         hint="`sparkctl check --json` lists the check ids")
    return [
        f"{f.node or '(cluster)'}: {f.code}: {f.evidence}" + (f" (hint: {f.hint})" if f.hint else "")
        for f in report.findings
        if f.severity is Severity.ERROR and f.code not in ignored
    ]
