"""`sparkctl nccl-probe`: measure the link the way NCCL uses it.

Stages: reach every node (interfaces, the Python that has torch, a free
rendezvous port) -> network plan -> a torchrun group running the all-reduce
worker on every node, with NCCL_DEBUG=INFO -> the head's result line and every
node's NCCL log -> report. run_group stops the whole group on a failed rank,
a deadline or Ctrl-C, so nothing is left behind. With engine "nccl-tests",
mpirun runs all_reduce_perf from the head instead.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import replace
from typing import Any

from sparkctl.agent.client import AgentClient, connect
from sparkctl.agent.protocol import ExecRequest, ProbeReply, ProbeRequest, ReadRequest, to_wire
from sparkctl.backends.torchrun import plan_torchrun
from sparkctl.errors import InputError, Interrupted, OperationFailed
from sparkctl.inventory import Inventory
from sparkctl.lifecycle.group import run_group
from sparkctl.lifecycle.launch import values_or_raise
from sparkctl.lifecycle.spec import ProcessSpec, tag_prefix
from sparkctl.lifecycle.stop import stop_all
from sparkctl.netplan import HostPlan
from sparkctl.ops.check import network_plan
from sparkctl.perf.store import save_probe
from sparkctl.playbook import Playbook
from sparkctl.probes import nccl_tests_engine as engine
from sparkctl.probes.allreduce import ProbeOptions, ProbeReport, analyse, build_job, parse_result
from sparkctl.probes.allreduce_worker import summarize_config
from sparkctl.probes.nccl_tests import human_bytes
from sparkctl.progress import Reporter

PORT_CANDIDATES = tuple(range(29500, 29532))
# Run with the probe's interpreter on every node before anything starts: a missing
# torch is then one clear error per node, not a rank dying inside torchrun.
def nccl_probe(
    inventory: Inventory,
    playbook: Playbook | None,
    options: ProbeOptions,
    reporter: Reporter,
    *,
    python: str | None = None,
) -> ProbeReport:
    """Run the all-reduce probe across the inventory's nodes and return its report.

    python: the interpreter with torch on the nodes; default: the playbook's vLLM
    Python, else python3. Raises OperationFailed (a node failed, with its log),
    DeadlineExceeded, Interrupted (after stopping everything) or InputError."""
    with connect(inventory) as nodes:
        facts = _discover(nodes, inventory, playbook, options, python)
        plans = network_plan(nodes, inventory, playbook)
        if options.engine == "nccl-tests":
            report = _run_nccl_tests(nodes, inventory, playbook, options, plans, facts, reporter)
        else:
            report = _run_torch(nodes, inventory, playbook, options, plans, facts, reporter, python)
    report.network = {
        name: {"address": p.address, "interface": p.interface, "master_addr": p.master_addr}
        for name, p in plans.items()
    }
    try:  # `sparkctl explain` uses the measured latency for this cluster's TP predictions
        report.notes.append(f"latencies saved for sparkctl explain: {save_probe(inventory.cluster, report)}")
    except OSError as exc:
        report.notes.append(f"latencies not saved for sparkctl explain: {exc}")
    return report


# ---------------------------------------------------------------- discovery
def _discover(
    nodes: AgentClient, inventory: Inventory, playbook: Playbook | None, options: ProbeOptions, python: str | None
) -> dict[str, ProbeReply]:
    """The agent's `probe` on every node: interfaces, commands, the model path, ports on the head."""
    commands: list[str] = []
    if options.engine == "nccl-tests":
        commands = [options.nccl_tests_binary, "mpirun"]
    elif python is None and playbook is not None and not _is_python(playbook.vllm_command[0]):
        commands = [playbook.vllm_command[0]]
    paths = [playbook.model] if playbook is not None and playbook.model_is_path else []
    ports = [options.master_port] if options.master_port else list(PORT_CANDIDATES)
    outcomes = nodes.call_all(
        lambda n: ProbeRequest(commands=tuple(commands), paths=tuple(paths), ports=tuple(ports if n.is_head else [])),
        timeout_s=60,
    )
    return values_or_raise(outcomes)


def _is_python(command: str) -> bool:
    return os.path.basename(command).startswith("python")


def _pythons(inventory: Inventory, playbook: Playbook | None, facts: dict[str, ProbeReply],
             python: str | None) -> dict[str, str]:
    """The interpreter per node: explicit, else the playbook's vLLM Python, else python3."""
    if python is not None:
        return {n.name: python for n in inventory.nodes}
    if playbook is None:
        return {n.name: "python3" for n in inventory.nodes}
    command = playbook.vllm_command[0]
    if _is_python(command):
        return {n.name: command for n in inventory.nodes}
    found = {n.name: facts[n.name].interpreters.get(command) for n in inventory.nodes}
    missing = [name for name, interp in found.items() if not interp]
    if missing:
        raise OperationFailed(
            f"cannot tell which Python runs {command!r} on {', '.join(missing)}",
            hint="pass --python with the interpreter that has torch on the nodes",
        )
    return {name: str(interp) for name, interp in found.items()}


def _check_torch(nodes: AgentClient, pythons: dict[str, str], options: ProbeOptions) -> dict[str, Any]:
    outcomes = nodes.call_all(
        lambda n: ExecRequest(argv=(pythons[n.name],), program="sparkctl.agent.torch_check", command_timeout_s=120),
        timeout_s=150,
    )
    problems: list[str] = []
    found: dict[str, dict[str, Any]] = {}
    for name, outcome in outcomes.items():
        if outcome.error is not None:
            problems.append(f"{name}: {outcome.error}")
            continue
        reply = outcome.result()
        lines = reply.stdout.strip().splitlines()
        try:
            info = json.loads(lines[-1]) if reply.rc == 0 and lines else None
        except ValueError:
            info = None
        if isinstance(info, dict):
            found[name] = info
        else:
            why = (reply.stderr.strip().splitlines() or ["no output"])[-1]
            problems.append(f"{name}: {pythons[name]} cannot import torch ({why})")
    if problems:
        raise OperationFailed("torch is not usable on every node", details=problems,
                              hint="pass --python with the interpreter that has torch (the one vLLM runs with)")
    cuda = {name: bool(info["cuda"]) for name, info in found.items()}
    if options.backend == "auto" and len(set(cuda.values())) > 1:
        with_gpu = ", ".join(sorted(n for n, c in cuda.items() if c))
        raise OperationFailed(f"only some nodes see a GPU through torch ({with_gpu}); the ranks would pick "
                              "different backends", hint="fix the GPU nodes, or force --backend gloo")
    if options.backend == "nccl" and not all(cuda.values()):
        raise OperationFailed("--backend nccl needs a CUDA device on every node",
                              details=[f"{n}: torch sees no CUDA device" for n, c in cuda.items() if not c])
    return found


def _master_port(head_facts: ProbeReply, options: ProbeOptions) -> int:
    busy = {entry.port: entry for entry in head_facts.in_use}
    if options.master_port:
        if options.master_port in busy:
            entry = busy[options.master_port]
            raise InputError(f"rendezvous port {options.master_port} is in use on the head "
                             f"(pid {entry.pid}: {entry.cmdline[:80]})",
                             hint="pick another --port, or leave it out to use a free one from 29500")
        return options.master_port
    for port in PORT_CANDIDATES:
        if port not in busy:
            return port
    raise OperationFailed(f"no free rendezvous port on the head in {PORT_CANDIDATES[0]}..{PORT_CANDIDATES[-1]}",
                          hint="pass --port with a free port")


# ---------------------------------------------------------------- torch engine
def _run_torch(
    nodes: AgentClient,
    inventory: Inventory,
    playbook: Playbook | None,
    options: ProbeOptions,
    plans: dict[str, HostPlan],
    facts: dict[str, ProbeReply],
    reporter: Reporter,
    python: str | None,
) -> ProbeReport:
    head = inventory.head
    pythons = _pythons(inventory, playbook, facts, python)
    torch_by_node = _check_torch(nodes, pythons, options)
    port = _master_port(facts[head.name], options)
    job, files = build_job(
        inventory, options, python=pythons[head.name], master_port=port,
        model_config_path=_model_config_path(playbook, facts[head.name]),
        env=dict(playbook.env) if playbook is not None else None,
    )
    specs = [_with_python(spec, pythons[spec.node]) for spec in plan_torchrun(inventory, plans, job)]
    sizes = options.size_list()
    backend = "nccl" if all(v["cuda"] for v in torch_by_node.values()) and options.backend != "gloo" else "gloo"
    reporter.event(None, f"probe: all-reduce {human_bytes(sizes[0])}..{human_bytes(sizes[-1])} ({len(sizes)} sizes), "
                         f"{backend}, {len(inventory.nodes)} node(s), rendezvous {plans[head.name].master_addr}:{port}")
    group = run_group(nodes, inventory, specs, timeout_s=options.deadline_s(), reporter=reporter, files=files,
                      grace_s=5.0)
    result = parse_result(group.nodes[head.name].log)
    report = analyse(
        result,
        {name: run.log for name, run in group.nodes.items()},
        options,
        tensor_parallel_size=playbook.tensor_parallel_size if playbook is not None else None,
        interfaces={name: plan.interface for name, plan in plans.items()},
    )
    report.versions["nodes"] = {name: {"python": pythons[name], **info} for name, info in torch_by_node.items()}
    if len({info["torch"] for info in torch_by_node.values()}) > 1:
        report.notes.append("torch differs between nodes (" + ", ".join(
            f"{n}: {i['torch']}" for n, i in sorted(torch_by_node.items())) + "); vLLM needs the same build everywhere")
    return report


def _with_python(spec: ProcessSpec, python: str) -> ProcessSpec:
    """plan_torchrun uses one interpreter; nodes may name theirs differently."""
    return replace(spec, argv=(python, *spec.argv[1:]))


def _model_config_path(playbook: Playbook | None, head_facts: ProbeReply) -> str | None:
    if playbook is None or not playbook.model_is_path:
        return None
    info = head_facts.paths.get(playbook.model)
    return f"{playbook.model.rstrip('/')}/config.json" if info is not None and info.has_config else None


def _read_model_config(nodes: AgentClient, inventory: Inventory, playbook: Playbook | None,
                       head_facts: ProbeReply) -> dict[str, Any] | None:
    """The model's config.json, read on the head (the torch engine's worker does this itself)."""
    path = _model_config_path(playbook, head_facts)
    if path is None:
        return None
    reply = nodes.call(inventory.head, ReadRequest(path=path, limit=4 << 20))
    try:
        config = json.loads(reply.data)
    except ValueError:
        return None
    return dict(summarize_config(config), path=path) if isinstance(config, dict) else None


# ---------------------------------------------------------------- nccl-tests engine
def _run_nccl_tests(
    nodes: AgentClient,
    inventory: Inventory,
    playbook: Playbook | None,
    options: ProbeOptions,
    plans: dict[str, HostPlan],
    facts: dict[str, ProbeReply],
    reporter: Reporter,
) -> ProbeReport:
    head = inventory.head
    mpirun, binary = engine.locate({name: to_wire(f) for name, f in facts.items()}, inventory, options.nccl_tests_binary)
    tag = f"{tag_prefix(inventory.cluster, head, 'probe')}{int(time.time() * 1000)}"
    runs = engine.plan_runs(inventory, plans, options, mpirun=mpirun, binary=binary,
                            env=dict(playbook.env) if playbook is not None else None, tag=tag)
    workers = [f"{w.name} ({w.address})" for w in inventory.workers]
    reports, output = {}, []
    try:
        for run in runs:
            reporter.event(head.name, f"nccl-tests {run.mode}: {shlex.join(run.argv)}")
            reply = nodes.call(head, ExecRequest(argv=tuple(run.argv), env=run.env, command_timeout_s=run.timeout_s),
                               timeout_s=run.timeout_s + 60)
            reports[run.mode] = engine.parse_run(run, to_wire(reply), options, workers)
            output.append(reply.stdout + "\n" + reply.stderr)
    except KeyboardInterrupt:
        raise Interrupted("interrupted; the nccl-tests run has been stopped") from None
    finally:
        # mpirun and its local ranks carry the probe's tag; remote ranks end with mpirun.
        stop_all(nodes, inventory, grace_s=5.0, ports={}, reporter=reporter, role="probe")
    report = analyse(
        engine.to_result(reports),
        {"mpirun (all ranks)": "\n".join(output)},
        options,
        model_config=_read_model_config(nodes, inventory, playbook, facts[head.name]),
        tensor_parallel_size=playbook.tensor_parallel_size if playbook is not None else None,
    )
    report.notes += engine.notes_for(inventory, plans, options)
    return report
