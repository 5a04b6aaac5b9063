"""Checking the model against published measurements, and fitting one cluster's
fixed per-step overhead from its own concurrency-1 bench result."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, replace
from typing import Any

import yaml

from sparkctl.errors import InputError
from sparkctl.perf.hardware import hardware
from sparkctl.perf.model_config import load_config, parse_model
from sparkctl.perf.predict import Scenario, decode_step, predict
from sparkctl.perf.quant import kv_bytes, plan_for


@dataclass(frozen=True)
class Measurement:
    id: str
    source: str
    engine: str
    hardware: str
    model: str  # a file name (without .json) under the model-config folder
    quant: str
    tp: int
    concurrency: int
    context: int
    metric: str  # per_user | total (decode tok/s) | prefill (prompt tok/s of one request)
    measured: float
    kv_dtype: str = "bf16"
    all_linear: bool = False
    eager: bool = False
    fit: bool = False  # used to set its platform's parameters (the rest only check the model)
    prompt_len: int | None = None
    output_len: int | None = None
    note: str = ""


@dataclass(frozen=True)
class Row:
    case: Measurement
    predicted: float
    bound: str

    @property
    def error(self) -> float:
        """Signed relative error of the prediction against the measurement."""
        return (self.predicted - self.case.measured) / self.case.measured


@dataclass(frozen=True)
class Summary:
    cases: int
    median_abs_error: float
    within_25: float


_REQUIRED = ("id", "source", "engine", "hardware", "model", "quant", "concurrency", "context", "metric", "measured")


def load_measurements(path: str) -> tuple[Measurement, ...]:
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    out = []
    for i, entry in enumerate((data or {}).get("cases", [])):
        missing = [k for k in _REQUIRED if k not in entry]
        if missing:
            raise InputError(f"{path}: case {i} lacks {', '.join(missing)}")
        if entry["metric"] not in ("per_user", "total", "prefill"):
            raise InputError(f"{path}: case {entry['id']}: metric must be per_user, total or prefill")
        out.append(Measurement(
            id=str(entry["id"]), source=str(entry["source"]), engine=str(entry["engine"]),
            hardware=str(entry["hardware"]), model=str(entry["model"]), quant=str(entry["quant"]),
            tp=int(entry.get("tp", 1)), concurrency=int(entry["concurrency"]), context=int(entry["context"]),
            metric=str(entry["metric"]), measured=float(entry["measured"]), kv_dtype=str(entry.get("kv_dtype", "bf16")),
            all_linear=bool(entry.get("all_linear", False)), eager=bool(entry.get("eager", False)),
            fit=bool(entry.get("fit", False)),
            prompt_len=int(entry["prompt_len"]) if entry.get("prompt_len") else None,
            output_len=int(entry["output_len"]) if entry.get("output_len") else None,
            note=str(entry.get("note", "")),
        ))
    return tuple(out)


def scenario_for(case: Measurement, configs_dir: str) -> Scenario:
    config, source = load_config(os.path.join(configs_dir, f"{case.model}.json"))
    model = parse_model(config, source)
    return Scenario(
        model=model, plan=plan_for(model, None if case.quant == "checkpoint" else case.quant, all_linear=case.all_linear),
        hardware=hardware(case.hardware),
        tp=case.tp, concurrency=case.concurrency, context=case.context, kv_bytes=kv_bytes(case.kv_dtype),
        eager=case.eager, prompt_len=case.prompt_len, output_len=case.output_len,
    )


def evaluate(cases: tuple[Measurement, ...], configs_dir: str) -> tuple[Row, ...]:
    rows = []
    for case in cases:
        prediction = predict(scenario_for(case, configs_dir))
        value = {"per_user": prediction.decode_tok_s_per_user, "total": prediction.decode_tok_s_total,
                 "prefill": case.context / prediction.prefill.ttft_ms * 1000.0}[case.metric]
        bound = prediction.step.bound
        if case.metric == "prefill":
            bound = "compute" if prediction.prefill.compute_ms >= prediction.prefill.memory_ms else "memory"
        rows.append(Row(case, value, bound))
    return tuple(rows)


def summarize(rows: tuple[Row, ...]) -> Summary:
    errors = [abs(r.error) for r in rows]
    return Summary(len(rows), statistics.median(errors) if errors else 0.0,
                   sum(e <= 0.25 for e in errors) / len(errors) if errors else 0.0)


def decode_rows(rows: tuple[Row, ...]) -> tuple[Row, ...]:
    return tuple(r for r in rows if r.case.metric != "prefill")


def render_table(rows: tuple[Row, ...]) -> str:
    """The docs table: one line per measurement, then the summaries."""
    decode = decode_rows(rows)
    summary = summarize(decode)
    checks = summarize(tuple(r for r in decode if not r.case.fit))
    prefill = tuple(r for r in rows if r.case.metric == "prefill")
    lines = [
        "| case | hardware | model | quant | TP | conc. | context | engine | measured | predicted | error | bound | role | source |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        c = r.case
        unit = {"per_user": "tok/s/user", "total": "tok/s total", "prefill": "prefill tok/s"}[c.metric]
        quant = c.quant + (" (all linear)" if c.all_linear else "") + (", kv fp8" if c.kv_dtype == "fp8" else "")
        quant += ", eager" if c.eager else ""
        lines.append(
            f"| {c.id} | {c.hardware} | {c.model} | {quant} | {c.tp} | {c.concurrency} | {c.context} | {c.engine} | "
            f"{c.measured:g} {unit} | {r.predicted:.1f} | {r.error:+.0%} | {r.bound} | "
            f"{'fit' if c.fit else 'check'} | {c.source} |")
    lines += [
        "",
        f"Cases: {summary.cases}. Median absolute error: {summary.median_abs_error:.1%}. "
        f"Within 25%: {summary.within_25:.0%} ({round(summary.within_25 * summary.cases)} of {summary.cases}).",
        "",
        f"Decode rows not used to fit anything: {checks.cases} cases, median absolute error "
        f"{checks.median_abs_error:.1%}, within 25%: {checks.within_25:.0%}.",
    ]
    if prefill:
        p = summarize(prefill)
        lines += ["", f"Prefill rows (TTFT of one prompt, not in the decode figures): {p.cases} cases, median absolute "
                      f"error {p.median_abs_error:.1%}."]
    return "\n".join(lines)


# ---------------------------------------------------------------- a cluster's own overhead
@dataclass(frozen=True)
class OverheadFit:
    step_overhead_ms: float
    measured_tpot_ms: float
    modelled_without_overhead_ms: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"step_overhead_ms": round(self.step_overhead_ms, 3), "measured_tpot_ms": round(self.measured_tpot_ms, 3),
                "modelled_without_overhead_ms": round(self.modelled_without_overhead_ms, 3), "source": self.source}


def fit_overhead(scenario: Scenario, measured_tpot_ms: float, source: str) -> OverheadFit:
    """The fixed per-step overhead that makes the model match a concurrency-1 TPOT:
    what is left after the memory/compute and communication terms."""
    if measured_tpot_ms <= 0:
        raise InputError(f"{source}: the concurrency-1 step has no positive TPOT")
    bare = decode_step(replace(scenario, concurrency=1, step_overhead_ms=0.0, eager=False), 1)
    without = bare.total_ms
    return OverheadFit(max(0.0, measured_tpot_ms - without), measured_tpot_ms, without, source)
