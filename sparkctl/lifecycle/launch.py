"""Start planned processes on nodes: the one place a launch request is built.

Every launch is detached (own session), logged, recorded on the node and
tagged SPARKCTL_TAG=<cluster>/<node>/<role>/<launch id>; environment values,
secrets included, travel on stdin to the node agent, never in argv."""

from __future__ import annotations

import hashlib
import json
import secrets as pysecrets
import time
from typing import TypeVar

from sparkctl.agent.client import AgentClient
from sparkctl.agent.protocol import LaunchRequest, ProcessRecord
from sparkctl.errors import OperationFailed, SparkctlError
from sparkctl.inventory import Inventory, Node
from sparkctl.lifecycle.spec import ProcessSpec, log_path, node_dir, record_dir, tag_prefix
from sparkctl.progress import Reporter
from sparkctl.remote.session import Outcome

R = TypeVar("R")


def new_launch_id() -> str:
    return f"{int(time.time())}-{pysecrets.token_hex(3)}"


def plan_digest(spec: ProcessSpec) -> str:
    """Identity of what a node runs: argv and (non-secret) environment."""
    blob = json.dumps({"argv": spec.argv, "env": sorted(spec.env.items()), "forward": spec.forward_env})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def launch_request(
    inventory: Inventory,
    node: Node,
    spec: ProcessSpec,
    launch_id: str,
    *,
    secrets: dict[str, str] | None = None,
    files: dict[str, str] | None = None,
    exit_status: bool = False,
) -> LaunchRequest:
    """The agent's `launch` request for one process (see node_agent.op_launch)."""
    cluster = inventory.cluster
    return LaunchRequest(
        argv=tuple(spec.argv),
        env={**spec.env, **{k: v for k, v in (secrets or {}).items() if k in spec.forward_env}},
        log=log_path(node, cluster, spec.role),
        record=f"{record_dir(node, cluster)}/{spec.role}.json",
        tag=f"{tag_prefix(cluster, node, spec.role)}{launch_id}",
        role=spec.role,
        plan_digest=plan_digest(spec),
        files=files or {},
        private_dirs=spec.private_dirs,
        # groups that run to completion: a waiter records the exit status
        exit_file=f"{node_dir(node, cluster)}/{spec.role}.exit" if exit_status else None,
        cwd=node_dir(node, cluster) if exit_status else None,
    )


def launch_specs(
    nodes: AgentClient,
    inventory: Inventory,
    specs: list[ProcessSpec],
    reporter: Reporter,
    *,
    secrets: dict[str, str] | None = None,
    files: dict[str, dict[str, str]] | None = None,
    exit_status: bool = False,
) -> dict[str, ProcessRecord]:
    """Launch every spec (one per node) in parallel; {node: the process as the node
    reports it}. Raises OperationFailed naming the nodes that failed; the caller
    stops what did start (it knows how: Ray, a group, a cluster)."""
    launch_id = new_launch_id()
    by_node = {spec.node: spec for spec in specs}
    outcomes = nodes.call_all(
        lambda n: launch_request(inventory, n, by_node[n.name], launch_id, secrets=secrets,
                                 files=(files or {}).get(n.name), exit_status=exit_status),
        nodes=[inventory.node(s.node) for s in specs],
    )
    launched = {name: o.value.process for name, o in outcomes.items() if o.value}
    for name, process in launched.items():
        reporter.event(name, f"started {by_node[name].role} pid {process.pid} (log {process.log})")
    failures = {name: o.error for name, o in outcomes.items() if o.error is not None}
    if failures:
        roles = ", ".join(sorted({by_node[n].role for n in failures}))
        raise OperationFailed(
            f"{roles} could not be started on {', '.join(failures)}",
            details=[str(error) for error in failures.values()],
            hint=getattr(next(iter(failures.values())), "hint", None),
        )
    return launched


def values_or_raise(outcomes: dict[str, Outcome[R]], what: str = "could not be reached") -> dict[str, R]:
    """Every node's reply, or one error naming every node that failed."""
    failed = [o.error for o in outcomes.values() if o.error is not None]
    if failed:
        if len(failed) == 1 and isinstance(failed[0], SparkctlError):
            raise failed[0]
        raise OperationFailed(f"{len(failed)} node(s) {what}", details=[str(e) for e in failed],
                              hint=getattr(failed[0], "hint", None))
    return {name: o.value for name, o in outcomes.items() if o.value is not None}
