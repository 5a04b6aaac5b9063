"""`sparkctl explain`: gather the inputs (config.json, playbook, the cluster's
saved probe and calibration, its log while it runs), predict, compare with a
bench result, apply the rules. Returns the report as a JSON-ready dict."""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field, replace
from typing import Any

from sparkctl.bench.metrics import MetricsSample, parse_metrics
from sparkctl.errors import InputError, SparkctlError
from sparkctl.inventory import Inventory
from sparkctl.perf import store
from sparkctl.perf.bench import BenchStep, read_bench
from sparkctl.perf.calibration import fit_overhead
from sparkctl.perf.hardware import hardware
from sparkctl.perf.model_config import ConfigError, ModelShape, load_config, parse_model
from sparkctl.perf.predict import ACTIVATION_BYTES, Scenario, predict
from sparkctl.perf.quant import kv_bytes, plan_for
from sparkctl.perf.report import StepComparison, compare, to_dict
from sparkctl.perf.rules import ServingConfig, apply_all, config_from_args, config_from_log
from sparkctl.perf.store import ProbeRecord
from sparkctl.playbook import Playbook


@dataclass(frozen=True)
class ExplainOptions:
    model_config: str | None = None
    quant: str | None = None
    all_linear: bool = False
    kv_dtype: str | None = None
    tp: int | None = None
    pp: int | None = None
    concurrency: int = 1
    context: int = 1024
    output_len: int | None = None
    hardware: str = "gb10"
    mem_bw_gbs: float | None = None
    tflops: float | None = None
    allreduce_us: float | None = None
    bench: str | None = None
    calibrate: str | None = None


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def _config_from_playbook(inventory: Inventory | None, playbook: Playbook) -> tuple[dict[str, Any], str]:
    """The model's config.json: read here when the path exists on this machine
    (the controller is usually the head), else through the head's agent."""
    if not playbook.model_is_path:
        raise InputError(f"the playbook's model {playbook.model!r} is a Hugging Face id, not a path",
                         hint="pass --model-config with the model's config.json")
    local = os.path.join(playbook.model, "config.json")
    if os.path.exists(local):
        return load_config(local)
    if inventory is None:
        raise InputError(f"{local} is not on this machine", hint="pass --model-config, or -i INVENTORY to read it on the head")
    from sparkctl.agent.client import connect
    from sparkctl.agent.protocol import ReadRequest

    with connect(inventory) as nodes:
        reply = nodes.call(inventory.head, ReadRequest(path=local, limit=4 << 20), timeout_s=60)
    if not reply.exists:
        raise InputError(f"{inventory.head.name}:{local} not found ({reply.error or 'missing'})",
                         hint="pass --model-config with the model's config.json")
    try:
        data = json.loads(reply.data or "")
    except ValueError as exc:
        raise ConfigError(f"{inventory.head.name}:{local}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{inventory.head.name}:{local}: expected a JSON object")
    return data, f"{inventory.head.name}:{local}"


def _running_log(inventory: Inventory) -> tuple[str | None, str | None]:
    """The head's vLLM log while sparkctl has something running, else (None, why)."""
    from sparkctl.state import StateStore

    if not StateStore.for_cluster(inventory.cluster).load():
        return None, "the cluster is not running (no state file): log rules not applied"
    from sparkctl.ops.logs import read_logs

    try:
        logs = read_logs(inventory, node=inventory.head.name, lines=20000)
    except SparkctlError as exc:
        return None, f"head log not read: {exc.message}"
    entry = logs.get(inventory.head.name, {})
    if entry.get("error") or not entry.get("exists"):
        return None, f"head log not read: {entry.get('error') or 'no log'}"
    return "\n".join(entry.get("lines", [])), None


def _live_metrics(inventory: Inventory, playbook: Playbook) -> MetricsSample | None:
    """The endpoint's /metrics right now (None when it does not answer)."""
    from sparkctl.serve.endpoint import Endpoint, endpoint_url

    reply = Endpoint(endpoint_url(inventory, playbook), timeout_s=3.0).request("GET", "/metrics")
    if reply.status != 200:
        return None
    try:
        sample = parse_metrics(reply.body.decode("utf-8", "replace"))
    except ValueError:
        return None
    return sample if sample.running is not None else None  # not a vLLM server


@dataclass
class _Observed:
    """What the playbook and the running cluster say about how vLLM serves."""

    serving: ServingConfig | None = None
    kv_cache_tokens: int | None = None
    metrics: MetricsSample | None = None
    notes: list[str] = field(default_factory=list)


def explain(options: ExplainOptions, *, inventory: Inventory | None = None,
            playbook: Playbook | None = None) -> dict[str, Any]:
    sources: dict[str, str] = {}
    model = _model(options, inventory, playbook, sources)
    observed = _observe(inventory, playbook, sources)
    scenario = _scenario(options, model, observed.serving, playbook)
    cluster = inventory.cluster if inventory is not None else None
    probe = store.load_probe(cluster) if cluster else None
    scenario = _with_allreduce(scenario, options, probe, cluster)
    scenario = _with_overhead(scenario, cluster)
    calibration = None
    if options.calibrate:
        scenario, calibration = _calibrate(scenario, options.calibrate, cluster)

    prediction = predict(scenario)
    comparisons: tuple[StepComparison, ...] = ()
    bench_steps: tuple[BenchStep, ...] = ()
    if options.bench:
        result = read_bench(options.bench)
        comparisons = compare(prediction, result)
        bench_steps = result.steps
        sources["bench"] = options.bench
    findings = apply_all(prediction, observed.serving, probe=probe, kv_cache_tokens=observed.kv_cache_tokens,
                         bench_steps=bench_steps, metrics=observed.metrics)
    data = to_dict(prediction, findings, sources=sources, comparisons=comparisons)
    if calibration:
        data["calibrated"] = calibration
    data["model"]["notes"] += observed.notes
    return data


def _model(options: ExplainOptions, inventory: Inventory | None, playbook: Playbook | None,
           sources: dict[str, str]) -> ModelShape:
    if options.model_config:
        config, where = load_config(options.model_config)
    elif playbook is not None:
        config, where = _config_from_playbook(inventory, playbook)
    else:
        raise InputError("no model given", hint="pass --model-config CONFIG.json|MODEL_DIR, or -i INVENTORY -p PLAYBOOK")
    sources["model_config"] = where
    return parse_model(config, where)


def _observe(inventory: Inventory | None, playbook: Playbook | None, sources: dict[str, str]) -> _Observed:
    """The playbook's vLLM arguments; while the cluster runs, its log (which wins: it is what
    vLLM really used) and its /metrics."""
    observed = _Observed()
    if playbook is not None:
        observed.serving = config_from_args(playbook.vllm_args, f"playbook {playbook.path} vllm_args")
    if inventory is None or playbook is None:
        return observed
    text, why = _running_log(inventory)
    if why:
        observed.notes.append(why)
    if text:
        observed.metrics = _live_metrics(inventory, playbook)
        if observed.metrics is not None:
            sources["metrics"] = "the endpoint's /metrics"
        from sparkctl.serve.vllm_log import read_log

        observed.serving = config_from_log(text) or observed.serving
        observed.kv_cache_tokens = read_log(text).kv_cache_tokens
        sources["vllm_log"] = f"{inventory.head.name} vLLM log"
    return observed


def _scenario(options: ExplainOptions, model: ModelShape, serving: ServingConfig | None,
              playbook: Playbook | None) -> Scenario:
    kv_name = options.kv_dtype or (serving.kv_cache_dtype if serving and serving.kv_cache_dtype else "bf16")
    hw = hardware(options.hardware, mem_bw_gbs=options.mem_bw_gbs, tflops=options.tflops)
    tp = options.tp if options.tp is not None else (playbook.tensor_parallel_size if playbook else 1)
    pp = options.pp if options.pp is not None else (playbook.pipeline_parallel_size if playbook else 1)
    for name, value in (("--tp", tp), ("--pp", pp), ("--concurrency", options.concurrency), ("--context", options.context),
                        ("--output-len", options.output_len or 1)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    return Scenario(model=model, plan=plan_for(model, options.quant, all_linear=options.all_linear), hardware=hw,
                    tp=tp, pp=pp, concurrency=options.concurrency, context=options.context,
                    kv_bytes=kv_bytes(kv_name), eager=bool(serving and serving.enforce_eager and serving.cuda),
                    output_len=options.output_len,
                    prompt_len=max(1, options.context - options.output_len // 2) if options.output_len else None)


def _with_allreduce(scenario: Scenario, options: ExplainOptions, probe: ProbeRecord | None,
                    cluster: str | None) -> Scenario:
    """The all-reduce latency: the flag, else the cluster's last nccl-probe, else a default."""
    if options.allreduce_us is not None:  # 0 or more: checked by the parser
        return replace(scenario, allreduce_us=options.allreduce_us, allreduce_source="--allreduce-us")
    size = scenario.model.hidden_size * ACTIVATION_BYTES
    if probe is not None and probe.backend == "nccl" and (found := probe.latency_at(size)):
        # the probe measured a pair; the model adds ring hops for more ranks itself
        return replace(scenario, allreduce_us=found[0],
                       allreduce_source=f"last sparkctl nccl-probe of {cluster} ({_when(probe.saved_at)}, {found[1]})")
    if scenario.hardware.tp_across_nodes:
        return replace(scenario, allreduce_source="default for a Spark pair over RoCE (no nccl-probe saved)")
    return replace(scenario, allreduce_source=f"{scenario.hardware.name} preset default")


def _with_overhead(scenario: Scenario, cluster: str | None) -> Scenario:
    overhead = store.load_overhead(cluster) if cluster else None
    if overhead is None:
        return scenario
    return replace(scenario, step_overhead_ms=overhead.step_overhead_ms,
                   overhead_source=f"fitted for {cluster} by explain --calibrate ({_when(overhead.fitted_at)}, {overhead.source})")


def _calibrate(scenario: Scenario, bench_path: str, cluster: str | None) -> tuple[Scenario, dict[str, Any]]:
    """Fit the per-step overhead to a bench result's concurrency-1 TPOT and save it for the cluster."""
    if cluster is None:
        raise InputError("--calibrate needs the cluster: pass -i INVENTORY -p PLAYBOOK")
    result = read_bench(bench_path)
    ones = [s for s in result.steps if s.concurrency == 1 and s.median_tpot_ms]
    if not ones:
        raise InputError(f"{bench_path}: no concurrency-1 step with a TPOT to calibrate on",
                         hint="run sparkctl bench with concurrency 1 first")
    step = ones[0]
    context = int(step.input_len + (step.output_len or 0) / 2) if step.input_len is not None else scenario.context
    fit = fit_overhead(replace(scenario, context=max(context, 1)), step.median_tpot_ms or 0.0, bench_path)
    path = store.save_overhead(cluster, fit.step_overhead_ms, os.path.basename(bench_path))
    scenario = replace(scenario, step_overhead_ms=fit.step_overhead_ms,
                       overhead_source=f"fitted for {cluster} by explain --calibrate just now ({bench_path})")
    return scenario, dict(fit.to_dict(), saved_to=str(path))
