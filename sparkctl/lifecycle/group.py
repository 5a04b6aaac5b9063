"""Run a group of processes (one per node) to completion: launch, watch,
collect exit codes and logs, and always stop what is left.

A rank that fails or dies leaves its peers blocked in a collective, so the
first failure stops the whole group; Ctrl-C and deadlines do the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sparkctl.agent.client import AgentClient
from sparkctl.errors import DeadlineExceeded, Interrupted, OperationFailed
from sparkctl.inventory import Inventory
from sparkctl.lifecycle.launch import launch_specs
from sparkctl.lifecycle.spec import ProcessSpec, log_path
from sparkctl.lifecycle.stop import stop_all
from sparkctl.lifecycle.watch import LogWatch
from sparkctl.progress import Reporter

POLL_S = 0.5
MAX_LOG_CHARS = 16 * 1024 * 1024


@dataclass
class NodeRun:
    node: str
    log_path: str
    returncode: int | None = None
    log: str = ""
    log_offset: int = 0
    ended: bool = False
    lost: str | None = None  # why the process is gone without an exit status

    def tail(self, count: int = 20) -> list[str]:
        return [line for line in self.log.splitlines() if line.strip()][-count:]


@dataclass
class GroupResult:
    role: str
    nodes: dict[str, NodeRun] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(run.ended and run.returncode == 0 for run in self.nodes.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "ok": self.ok,
            "elapsed_s": round(self.elapsed_s, 2),
            "nodes": {
                name: {"returncode": r.returncode, "log": r.log_path, "lost": r.lost, "tail": r.tail(10)}
                for name, r in self.nodes.items()
            },
        }


def run_group(
    nodes: AgentClient,
    inventory: Inventory,
    specs: list[ProcessSpec],
    *,
    timeout_s: float,
    reporter: Reporter,
    secrets: dict[str, str] | None = None,
    files: dict[str, dict[str, str]] | None = None,
    grace_s: float = 10.0,
) -> GroupResult:
    """Launch every spec, wait until all exit, return exit codes and logs.

    Raises OperationFailed (a rank failed or died, with its log tail),
    DeadlineExceeded or Interrupted; in every case the group is stopped first."""
    role = specs[0].role
    result = GroupResult(role)
    started = time.monotonic()
    for spec in specs:
        node = inventory.node(spec.node)
        result.nodes[spec.node] = NodeRun(spec.node, log_path(node, inventory.cluster, role))

    try:
        launch_specs(nodes, inventory, specs, reporter, secrets=secrets, files=files, exit_status=True)
        _wait(nodes, inventory, result, deadline=started + timeout_s, reporter=reporter)
    except KeyboardInterrupt:
        _stop(nodes, inventory, role, grace_s, reporter)
        raise Interrupted(f"interrupted; the {role} has been stopped on every node") from None
    finally:
        result.elapsed_s = time.monotonic() - started
        leftovers = _stop(nodes, inventory, role, grace_s, reporter)
        if leftovers:
            raise OperationFailed(f"the {role} left processes that could not be stopped", details=leftovers)
    return result


def _wait(nodes: AgentClient, inventory: Inventory, result: GroupResult, *, deadline: float, reporter: Reporter) -> None:
    role = result.role
    watch = LogWatch.of(nodes, inventory, {name: role for name in result.nodes}, scope=role, max_chars=MAX_LOG_CHARS)
    while True:
        for log in watch.poll([name for name, run in result.nodes.items() if not run.ended]):
            name, run = log.node, result.nodes[log.node]
            if log.error is not None:
                run.lost = f"lost contact: {log.error}"
                raise _failed(result, name, f"{name}: lost contact during the {role}: {log.error}")
            run.log, run.log_offset = log.text, log.offset
            record = log.record
            exit_info = record.exit if record is not None else None
            if exit_info is not None:
                run.ended = True
                run.returncode = exit_info.returncode
                reporter.event(name, f"{role} exited with {run.returncode}")
                if run.returncode != 0:
                    raise _failed(result, name, f"{name}: the {role} exited with status {run.returncode}")
            elif record is None or not record.alive:
                run.lost = "the process is gone and left no exit status (killed?)"
                raise _failed(result, name, f"{name}: the {role} process died without an exit status (killed?)")
        if all(run.ended for run in result.nodes.values()):
            return
        if time.monotonic() > deadline:
            waiting = [name for name, run in result.nodes.items() if not run.ended]
            raise DeadlineExceeded(
                f"the {role} did not finish in time (still running on {', '.join(waiting)})",
                hint="a rank may be stuck in a collective: check the fabric (sparkctl check) and the logs",
                details=_tails(result, waiting),
            )
        time.sleep(POLL_S)


def _failed(result: GroupResult, node: str, message: str) -> OperationFailed:
    return OperationFailed(
        message,
        details=_tails(result, [node]),
        hint="the other ranks were stopped; the log above usually names the cause",
    )


def _tails(result: GroupResult, names: list[str]) -> list[str]:
    details: list[str] = []
    for name in names:
        run = result.nodes[name]
        details.append(f"last lines of {name}'s log ({run.log_path}):")
        details.extend("  " + line[:300] for line in run.tail(20))
    return details


def _stop(nodes: AgentClient, inventory: Inventory, role: str, grace_s: float, reporter: Reporter) -> list[str]:
    results = stop_all(nodes, inventory, grace_s=grace_s, ports={}, reporter=reporter, role=role)
    problems = []
    for name, node in results.items():
        if node.error:
            problems.append(f"{name}: {node.error}")
        for proc in node.remaining:
            problems.append(f"{name}: pid {proc['pid']} ({proc['cmdline'][:80]}) survived SIGKILL")
    return problems
