"""`sparkctl run`: an offline SPMD vLLM job across the nodes, in a torchrun
group with vLLM's `external_launcher` backend.

One torchrun per node (`plan_torchrun`, role "job"), each with its own host's
network plan (the same as `up`'s, from every node's facts), the playbook's env and VLLM_ENABLE_V1_MULTIPROCESSING=0 (which
external_launcher needs). The worker program (sparkctl/jobs/offline_worker.py),
its config and the input file are shipped to every node with the launch, so
every rank reads byte-identical inputs (the worker checks their digest). The
group runs to completion (`run_group`: every rank's exit code and log, and
everything stopped on failure, Ctrl-C or the deadline); rank 0's result file
is then read back with the agent's `read` op.

Jobs: `generate` (prompts from a file, outputs to a file, greedy) and
`throughput` (seed 002's offline benchmark: batch sizes 1..N, output tokens/s,
requests/s and latency per batch size), whose rows have the same meaning as a
serving benchmark's (output tokens/s, requests/s at a concurrency equal to the
batch size), so a serving benchmark of the same model shows what serving costs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Mapping

from sparkctl.agent.client import AgentClient, connect
from sparkctl.agent.protocol import ProbeRequest, ReadRequest, RemoveRequest
from sparkctl.backends.ray import choose_port
from sparkctl.backends.torchrun import TorchrunJob, plan_torchrun
from sparkctl.errors import InputError, OperationFailed
from sparkctl.inventory import Inventory
from sparkctl.jobs.offline_worker import UnsupportedArgs, read_prompts, translate_vllm_args
from sparkctl.lifecycle.group import GroupResult, run_group
from sparkctl.lifecycle.launch import values_or_raise
from sparkctl.lifecycle.spec import node_dir
from sparkctl.ops.check import network_plan
from sparkctl.playbook import Playbook, check_against_inventory
from sparkctl.progress import Reporter

JOBS = ("generate", "throughput")
ROLE = "job"
JOB_DIR = "job"  # below each node's sparkctl folder (the group's working directory)
DEFAULT_MASTER_PORT = 29541
MAX_INPUT_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class RunOptions:
    input_path: str | None = None  # generate: prompts on the controller (JSONL {"prompt": ...} or one per line)
    output_path: str | None = None  # generate: where the outputs (JSONL) go on the controller
    max_tokens: int = 64
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)  # throughput
    prompt_tokens: int = 32  # throughput: every prompt has exactly this many tokens
    repeats: int = 3  # throughput: batches per batch size
    seed: int = 0
    master_port: int = DEFAULT_MASTER_PORT  # torchrun rendezvous; the next free port is used if busy
    timeout_s: float = 3600.0  # the whole job, model load included
    grace_s: float = 15.0


@dataclass
class RunResult:
    job: str
    cluster: str
    model: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    nodes: list[str]
    elapsed_s: float
    startup_s: float | None
    master_port: int
    rendezvous: str = ""  # torchrun's endpoint: the head's fabric address and the port used
    output_path: str | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)  # generate
    summary: dict[str, Any] = field(default_factory=dict)  # generate: prompts, tokens, tokens/s
    rows: list[dict[str, Any]] = field(default_factory=list)  # throughput, one per batch size
    group: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        if self.job == "generate":
            data.pop("rows")
        else:
            data.pop("outputs")
            data.pop("output_path")
        return data


def validate_options(job: str, options: RunOptions) -> None:
    if job not in JOBS:
        raise InputError(f"unknown job {job!r}", hint=f"jobs: {', '.join(JOBS)}")
    if options.max_tokens < 1:
        raise InputError("max_tokens must be at least 1")
    if job == "generate":
        if not options.input_path or not options.output_path:
            raise InputError("generate needs an input file and an output path",
                             hint="sparkctl run -i INV -p PLAYBOOK generate --input prompts.jsonl --output outputs.jsonl")
    else:
        if not options.batch_sizes or any(b < 1 for b in options.batch_sizes):
            raise InputError(f"batch sizes must be positive, got {list(options.batch_sizes)}")
        if options.prompt_tokens < 1 or options.repeats < 1:
            raise InputError("prompt_tokens and repeats must be at least 1")


def run_offline(
    inventory: Inventory,
    playbook: Playbook,
    job: str,
    options: RunOptions,
    reporter: Reporter,
    *,
    environ: Mapping[str, str] | None = None,
) -> RunResult:
    validate_options(job, options)
    problems = check_against_inventory(playbook, inventory)
    if problems:
        raise InputError("the playbook does not fit the inventory", details=problems)
    try:
        translate_vllm_args(playbook.vllm_args)
    except UnsupportedArgs as exc:
        raise InputError(f"{playbook.path}: {exc}", hint="remove them from vllm_args, or use a playbook for offline jobs") from None
    from sparkctl.ops.up import forwarded_secrets  # local: up imports much that run does not need

    secrets = forwarded_secrets(playbook, os.environ if environ is None else environ)
    input_text = _read_input(options) if job == "generate" else None
    head = inventory.head
    with connect(inventory) as nodes:
        python, port = _probe(nodes, inventory, playbook, options, reporter)
        plans = network_plan(nodes, inventory, playbook)  # the same per-host plan as `up` (NCCL_IB_HCA included)
        files = _job_files(inventory, playbook, job, options, input_text)
        spec = TorchrunJob(
            role=ROLE,
            python=python,
            program=(f"{JOB_DIR}/offline_worker.py", f"{JOB_DIR}/config.json"),
            master_port=port,
            nproc_per_node=inventory.nodes[0].gpus,
            env={**playbook.env, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
            forward_env=playbook.forward_env,
        )
        specs = plan_torchrun(inventory, plans, spec)
        reporter.event(None, f"{job}: {playbook.model} with TP={playbook.tensor_parallel_size} x PP={playbook.pipeline_parallel_size} "
                             f"across {len(inventory.nodes)} node(s) (torchrun rendezvous {plans[head.name].master_addr}:{port})")
        # a stale result must never pass for this run's
        nodes.call_all(lambda n: RemoveRequest(paths=(f"{node_dir(n, inventory.cluster)}/{JOB_DIR}/result.json",)),
                       timeout_s=40)
        group = run_group(nodes, inventory, specs, timeout_s=options.timeout_s, reporter=reporter,
                          secrets=secrets, files=files, grace_s=options.grace_s)
        reply = nodes.call(head, ReadRequest(path=f"{node_dir(head, inventory.cluster)}/{JOB_DIR}/result.json"),
                           timeout_s=120)
    if not reply.exists:
        raise OperationFailed(f"{head.name}: the job ended without writing its result ({reply.error})",
                              details=[f"{n}: exit {r['returncode']}" for n, r in group.to_dict()["nodes"].items()])
    return _result(job, inventory, playbook, options, json.loads(reply.data), group, port,
                   f"{plans[head.name].master_addr}:{port}", reporter)


def _job_files(inventory: Inventory, playbook: Playbook, job: str, options: RunOptions,
               input_text: str | None) -> dict[str, dict[str, str]]:
    """What every node's job folder holds: the worker, its config and (generate) the prompts."""
    config: dict[str, Any] = {
        "mode": job,
        "model": playbook.model,
        "tensor_parallel_size": playbook.tensor_parallel_size,
        "pipeline_parallel_size": playbook.pipeline_parallel_size,
        "vllm_args": list(playbook.vllm_args),
        "seed": options.seed,
        "max_tokens": options.max_tokens,
        "result": f"{JOB_DIR}/result.json",
    }
    if input_text is not None:
        config.update(input=f"{JOB_DIR}/input.txt", input_sha256=hashlib.sha256(input_text.encode()).hexdigest())
    else:
        config.update(batch_sizes=list(options.batch_sizes), prompt_tokens=options.prompt_tokens, repeats=options.repeats)
    worker = resources.files("sparkctl.jobs").joinpath("offline_worker.py").read_text(encoding="utf-8")
    files = {}
    for node in inventory.nodes:
        folder = f"{node_dir(node, inventory.cluster)}/{JOB_DIR}"
        files[node.name] = {f"{folder}/offline_worker.py": worker, f"{folder}/config.json": json.dumps(config, indent=1)}
        if input_text is not None:
            files[node.name][f"{folder}/input.txt"] = input_text
    return files


def _result(job: str, inventory: Inventory, playbook: Playbook, options: RunOptions, data: dict[str, Any],
            group: GroupResult, port: int, rendezvous: str, reporter: Reporter) -> RunResult:
    """The run's result from the head's result.json (generate: outputs written to a file)."""
    result = RunResult(
        job=job,
        cluster=inventory.cluster,
        model=playbook.model,
        tensor_parallel_size=playbook.tensor_parallel_size,
        pipeline_parallel_size=playbook.pipeline_parallel_size,
        nodes=[n.name for n in inventory.nodes],
        elapsed_s=round(group.elapsed_s, 2),
        startup_s=round(data["startup_s"], 2) if data.get("startup_s") is not None else None,
        master_port=port,
        rendezvous=rendezvous,
        group=group.to_dict(),
    )
    if job == "generate":
        result.outputs = data["outputs"]
        result.output_path = os.path.abspath(options.output_path or "")
        result.summary = {k: data.get(k) for k in ("prompts", "output_tokens", "elapsed_s", "output_tokens_per_s")}
        _write_outputs(result.output_path, result.outputs)
        reporter.event(None, f"{len(result.outputs)} output(s) written to {result.output_path}")
    else:
        result.rows = data["rows"]
        result.summary = {"warmup_s": data.get("warmup_s")}
    return result




def _read_input(options: RunOptions) -> str:
    path = options.input_path or ""
    try:
        size = os.path.getsize(path)
        if size > MAX_INPUT_BYTES:
            raise InputError(f"{path}: {size} bytes; the limit for a run's input is {MAX_INPUT_BYTES} bytes")
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise InputError(f"cannot read the input file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    try:
        prompts = read_prompts(path)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    if not prompts:
        raise InputError(f"{path}: no prompts (JSONL with {{\"prompt\": ...}} per line, or one prompt per line)")
    return text


def _probe(nodes: AgentClient, inventory: Inventory, playbook: Playbook, options: RunOptions, reporter: Reporter) -> tuple[str, int]:
    """vLLM's Python on the nodes, and a free rendezvous port on the head."""
    command = playbook.vllm_command[0]
    head = inventory.head.name
    wanted = list(range(options.master_port, options.master_port + 32))
    outcomes = nodes.call_all(
        lambda n: ProbeRequest(commands=(command,), ports=tuple(wanted if n.name == head else [])), timeout_s=60)
    replies = values_or_raise(outcomes)
    pythons: dict[str, str | None] = {}
    for name, facts in replies.items():
        pythons[name] = facts.interpreters.get(command) if facts.commands.get(command) else None
    missing = [name for name, python in pythons.items() if python is None]
    if missing:
        raise OperationFailed(
            f"vLLM's Python not found on {', '.join(missing)} (from the playbook's vllm command {command!r})",
            hint="every node needs vLLM at the same path (playbook vllm.command / vllm.python)",
        )
    if len(set(pythons.values())) > 1:
        raise OperationFailed("the nodes resolve vLLM's Python differently",
                              details=[f"{name}: {python}" for name, python in pythons.items()],
                              hint="install vLLM at the same path everywhere")
    busy = [hit.port for hit in replies[head].in_use]
    port = choose_port(options.master_port, busy)
    if port is None:
        raise OperationFailed(f"{head}: no free port for the torchrun rendezvous near {options.master_port}")
    if port != options.master_port:
        reporter.event(head, f"port {options.master_port} is in use; the rendezvous uses {port}")
    return pythons[head] or "python3", port


def _write_outputs(path: str, outputs: list[dict[str, Any]]) -> None:
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in outputs:
            handle.write(json.dumps({k: row[k] for k in ("index", "prompt", "text", "token_ids", "finish_reason",
                                                         "prompt_tokens") if k in row}) + "\n")
    os.replace(tmp, path)


def render_throughput(result: RunResult) -> str:
    """The throughput rows as a table (what `sparkctl run ... throughput` prints)."""
    first = result.rows[0] if result.rows else {}
    lines = [
        f"offline throughput: {result.model} (TP={result.tensor_parallel_size} x PP={result.pipeline_parallel_size} "
        f"across {len(result.nodes)} node(s), external_launcher)",
        f"  {first.get('prompt_tokens', '?')} prompt tokens and {first.get('max_tokens', '?')} output tokens per request, "
        f"{first.get('batches', '?')} batch(es) per size; model start-up {result.startup_s or 0:.1f}s, job {result.elapsed_s:.1f}s",
        f"  {'BATCH':>5}  {'REQS':>5}  {'OUT TOK/S':>10}  {'REQ/S':>7}  {'MEAN LAT':>9}  {'P50 LAT':>8}  {'P95 LAT':>8}",
    ]
    for row in result.rows:
        lines.append(
            f"  {row['batch_size']:>5}  {row['requests']:>5}  {row['output_tokens_per_s']:>10.1f}  {row['requests_per_s']:>7.2f}"
            f"  {row['mean_latency_s']:>8.3f}s  {row['p50_latency_s']:>7.3f}s  {row['p95_latency_s']:>7.3f}s"
        )
    if len(result.rows) > 1 and result.rows[0]["output_tokens_per_s"]:
        best = max(result.rows, key=lambda r: r["output_tokens_per_s"] or 0)
        gain = best["output_tokens_per_s"] / result.rows[0]["output_tokens_per_s"]
        lines.append(f"  best: batch {best['batch_size']} at {best['output_tokens_per_s']:.1f} output tokens/s "
                     f"({gain:.1f}x batch {result.rows[0]['batch_size']}); compare with a serving benchmark of the same "
                     "model (e.g. `vllm bench serve` at the same concurrency) to see what serving costs")
    return "\n".join(lines)


def render_generate(result: RunResult) -> str:
    s = result.summary
    rate = f", {s['output_tokens_per_s']:.1f} output tokens/s" if s.get("output_tokens_per_s") else ""
    return (f"generated {s.get('prompts')} output(s), {s.get('output_tokens')} tokens in {s.get('elapsed_s') or 0:.2f}s{rate} "
            f"(model start-up {result.startup_s or 0:.1f}s) -> {result.output_path}")
