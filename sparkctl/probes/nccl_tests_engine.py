"""nccl-tests (`all_reduce_perf`) as the probe's engine: where it is, the mpirun
command that runs it across the nodes, and its output read into the same rows
the torch probe produces. Pure: `sparkctl.ops.probe` runs the command on the
head through the agent's `exec` op.

mpirun starts the remote ranks over SSH from the head, so the head must reach
every worker by SSH without a prompt; the errors say so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sparkctl.errors import DeadlineExceeded, OperationFailed
from sparkctl.inventory import Inventory
from sparkctl.netplan import HostPlan
from sparkctl.probes.allreduce import ProbeOptions, ProbeResult, ProbeRow
from sparkctl.probes.nccl_tests import NcclTestsReport, parse_nccl_tests

# Per-host values: exporting the head's to every rank (-x) would be wrong on the workers.
NOT_EXPORTED = frozenset({"SPARKCTL_TAG", "VLLM_HOST_IP", "MASTER_ADDR"})
NCCL_TESTS_DTYPE = {"float32": "float", "bfloat16": "bfloat16", "float16": "half"}
_SSH_TROUBLE = re.compile(
    r"Permission denied|Host key verification failed|ssh: |Could not resolve hostname|Connection refused"
    r"|ORTE was unable to reliably start|PRTE has lost communication|unable to reliably start one or more daemons"
    r"|No route to host"
)
_DAEMON_MISSING = re.compile(r"(?:orted|prted): (?:command )?not found|No such file or directory.*(?:orted|prted)")


@dataclass(frozen=True)
class NcclTestsRun:
    """One all_reduce_perf invocation, to run on `node` (the head) through the agent."""

    node: str
    mode: str
    argv: tuple[str, ...]
    env: dict[str, str]
    timeout_s: float


def locate(replies: dict[str, dict[str, Any]], inventory: Inventory, binary: str) -> tuple[str, str]:
    """(mpirun on the head, all_reduce_perf path) from every node's agent `probe` reply
    (asked with commands=[binary, "mpirun"]); mpirun starts the same path everywhere."""
    head = inventory.head.name
    problems = []
    mpirun = (replies.get(head, {}).get("commands") or {}).get("mpirun")
    if not mpirun:
        problems.append(f"{head}: mpirun not found on PATH (Open MPI launches nccl-tests across nodes)")
    paths = {n.name: (replies.get(n.name, {}).get("commands") or {}).get(binary) for n in inventory.nodes}
    problems += [f"{name}: {binary} not found" for name, path in paths.items() if not path]
    found = {path for path in paths.values() if path}
    if len(found) > 1:
        where = ", ".join(f"{name}: {path}" for name, path in paths.items() if path)
        problems.append(f"{binary} is at different paths ({where}); mpirun starts the head's path on every node")
    if problems:
        raise OperationFailed(
            "nccl-tests cannot run on these nodes",
            details=problems,
            hint="build nccl-tests with MPI=1 at the same path on every node and pass that path "
            "(e.g. --nccl-tests /opt/nccl-tests/build/all_reduce_perf), or use --engine torch",
        )
    return str(mpirun), str(paths[head])


def build_argv(
    inventory: Inventory,
    plans: dict[str, HostPlan],
    options: ProbeOptions,
    mode: str,
    *,
    mpirun: str,
    binary: str,
    exported: list[str],
) -> list[str]:
    """mpirun -np N -H a:g,b:g ... all_reduce_perf -b MIN -e MAX -f F -g 1 ..."""
    ordered = [inventory.head, *inventory.workers]
    sizes = options.size_list()
    interface = plans[inventory.head.name].interface
    argv = [mpirun]
    if inventory.head.user == "root":
        argv.append("--allow-run-as-root")
    argv += [
        "-np", str(sum(n.gpus for n in ordered)),
        "-H", ",".join(f"{n.address}:{n.gpus}" for n in ordered),
        "--bind-to", "none",
        # A password or host-key prompt would hang the run: fail instead.
        "--mca", "plm_rsh_args", "-o BatchMode=yes",
    ]
    if interface:
        # Pinning the wire-up interface avoids the docker0 deadlock (reference §5 #12).
        argv += ["--mca", "btl_tcp_if_include", interface, "--mca", "oob_tcp_if_include", interface]
    for name in exported:
        argv += ["-x", name]
    argv += [
        binary,
        "-b", str(sizes[0]), "-e", str(sizes[-1]), "-f", str(options.factor),
        "-g", "1",
        "-w", str(options.warmup), "-n", str(options.nccl_tests_iters),
        "-d", NCCL_TESTS_DTYPE[options.dtype],
        "-c", "1",
    ]
    if mode == "graph":
        argv += ["-G", str(options.graph_batch)]
    return argv


def plan_runs(
    inventory: Inventory,
    plans: dict[str, HostPlan],
    options: ProbeOptions,
    *,
    mpirun: str,
    binary: str,
    env: dict[str, str] | None = None,
    tag: str,
) -> list[NcclTestsRun]:
    """One run per mode, on the head; env is the head's plan, then the caller's,
    then the inventory's (NCCL_DEBUG=INFO so the transport can be read)."""
    head = inventory.head
    run_env = {
        "NCCL_DEBUG": "INFO",
        "NCCL_DEBUG_SUBSYS": "INIT,NET",
        **plans[head.name].env,
        **(env or {}),
        **inventory.env,
        **head.env,
        "SPARKCTL_TAG": tag,  # lets the probe's cleanup find mpirun on the head
    }
    exported = sorted(name for name in run_env if name not in NOT_EXPORTED)
    return [
        NcclTestsRun(
            node=head.name,
            mode=mode,
            argv=tuple(build_argv(inventory, plans, options, mode, mpirun=mpirun, binary=binary, exported=exported)),
            env=run_env,
            timeout_s=options.deadline_s(),
        )
        for mode in options.modes
    ]


def notes_for(inventory: Inventory, plans: dict[str, HostPlan], options: ProbeOptions) -> list[str]:
    notes = ["nccl-tests prints the mean time per size: latency columns show the mean, not p50/p99"]
    interfaces = {p.interface for p in plans.values()}
    if len(interfaces) > 1:
        notes.append("the nodes use different interface names; mpirun exports the head's NCCL_SOCKET_IFNAME "
                     "to every rank, which may be wrong on the workers")
    if options.sizes:
        notes.append("nccl-tests takes a geometric sweep: the explicit size list was run as its min..max range")
    return notes


def rows_from(report: NcclTestsReport, mode: str) -> list[ProbeRow]:
    rows = []
    iters = report.params.get("iters")
    for r in report.rows:
        per = r.out.per_iter or {}
        rows.append(ProbeRow(
            size_bytes=r.size_bytes, mode=mode, iterations=iters,
            p50_us=None, p99_us=per.get("i_p99_us"), min_us=per.get("i_min_us"), mean_us=r.out.time_us,
            algbw_gbs=r.out.algbw_gbs, busbw_gbs=r.out.busbw_gbs,
            correct=None if r.out.wrong is None else r.out.wrong == 0,
        ))
    return rows


def to_result(reports: dict[str, NcclTestsReport]) -> ProbeResult:
    """The per-mode nccl-tests reports as one ProbeResult (engine nccl-tests)."""
    rows = [row for mode, rep in reports.items() for row in rows_from(rep, mode)]
    first = next(iter(reports.values()))
    checks = [row.correct for row in rows if row.correct is not None]
    world = first.nranks or len(first.devices) or 0
    versions = {"nccl": first.version.get("nccl") or first.version.get("nccl_runtime"),
                "nccl_tests": first.version.get("nccl_tests")}
    return ProbeResult(
        world_size=world, backend="nccl", rows=rows, modes=list(reports), dtype=None,
        ranks_agree=all(checks) if checks else None,
        ranks=[{"rank": d["rank"], "host": d["host"], "pid": d["pid"], "device": d["name"]} for d in first.devices],
        versions={k: v for k, v in versions.items() if v},
        settings={"warmup": first.params.get("warmup_iters"), "iters": first.params.get("iters"),
                  "graph": {m: r.params.get("graph") for m, r in reports.items()}},
        engine="nccl-tests",
    )


def parse_run(run: NcclTestsRun, reply: dict[str, Any], options: ProbeOptions, workers: list[str]) -> NcclTestsReport:
    """Read one run's `exec` reply; raise with an actionable hint when it produced no rows."""
    stdout, stderr = reply.get("stdout", ""), reply.get("stderr", "")
    report = parse_nccl_tests(stdout, expect_busbw_gbs=options.expect_busbw_gbs, source_name="all_reduce_perf")
    if reply.get("timed_out"):
        raise DeadlineExceeded(
            f"all_reduce_perf ({run.mode}) did not finish within {run.timeout_s:.0f}s on {run.node}",
            details=_tail(stdout + stderr),
            hint="a rank may be stuck in a collective or in SSH wire-up: check `sparkctl check` and the output above",
        )
    if report.rows:
        return report
    raise failure(run, reply.get("rc"), stdout + "\n" + stderr, workers)


def failure(run: NcclTestsRun, rc: Any, output: str, workers: list[str]) -> OperationFailed:
    targets = ", ".join(workers) or "the workers"
    ssh_hint = (f"mpirun starts the remote ranks over SSH from {run.node}: `ssh <worker address> hostname` must "
                f"work from {run.node} to {targets} without a password or host-key prompt (same user, key in "
                "authorized_keys, host key in known_hosts)")
    if _DAEMON_MISSING.search(output):
        hint = ("Open MPI's daemon is not found by non-interactive SSH shells on a worker: install Open MPI at the "
                "same path on every node and put it on PATH for non-interactive shells; " + ssh_hint)
    elif _SSH_TROUBLE.search(output):
        hint = ssh_hint
    else:
        hint = "read the output above; " + ssh_hint
    return OperationFailed(
        f"all_reduce_perf ({run.mode}) produced no results on {run.node} (exit status {rc})",
        details=_tail(output),
        hint=hint,
    )


def _tail(text: str, count: int = 20) -> list[str]:
    return [line[:300] for line in text.splitlines() if line.strip()][-count:]
