"""A benchmark's result document, and reading result files back for `bench
compare` (sparkctl's own, and `vllm bench serve --save-result` files).

Document: {"metadata": {...}, "steps": [...], "notes": [...], "interrupted": bool,
"slo": {...} | null}. Step keys are vLLM's (`vllm bench serve --save-result`)
plus sparkctl's own (README, "sparkctl bench").
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from sparkctl import jsontext
from sparkctl.bench.options import Slo
from sparkctl.bench.stats import StepResult
from sparkctl.errors import InputError, OperationFailed

# a step meets an SLO when at least this share of its requests met every limit
SLO_ATTAINMENT = 0.9


@dataclass(frozen=True)
class ClusterInfo:
    """What `up` runs, from the inventory, the playbook and the state."""

    cluster: str
    node_names: tuple[str, ...]
    tensor_parallel_size: int
    pipeline_parallel_size: int
    backend: str
    model_path: str
    vllm_args: tuple[str, ...]
    kv_cache: dict[str, Any] | None = None


@dataclass(frozen=True)
class BenchMetadata:
    date: str
    sparkctl_version: str
    endpoint: str
    model: str
    endpoint_type: str
    vllm_version: str | None
    served_models: tuple[str, ...]
    tokenizer: str
    prompt_lengths_exact: bool
    ignore_eos: bool
    seed: int
    num_prompts: int
    duration_s: float | None
    warmup: int
    prefix_len: int
    request_timeout_s: float
    percentiles: tuple[float, ...]
    nodes: int
    cluster: ClusterInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        cluster = data.pop("cluster")
        data["served_models"] = list(self.served_models)
        data["percentiles"] = list(self.percentiles)
        if cluster is not None:
            data.update(
                cluster=cluster["cluster"],
                node_names=list(cluster["node_names"]),
                tensor_parallel_size=cluster["tensor_parallel_size"],
                pipeline_parallel_size=cluster["pipeline_parallel_size"],
                backend=cluster["backend"],
                model_path=cluster["model_path"],
                vllm_args=list(cluster["vllm_args"]),
                kv_cache=cluster["kv_cache"],
            )
        return data


@dataclass(frozen=True)
class SloSummary:
    slo: Slo
    attainment: float
    best_step: str | None  # the highest load that met it
    best_output_throughput: float | None

    def to_dict(self) -> dict[str, Any]:
        return {**self.slo.to_dict(), "attainment": self.attainment, "highest_load_meeting_slo": self.best_step,
                "output_throughput_at_that_load": self.best_output_throughput}


def slo_summary(steps: list[StepResult], slo: Slo) -> SloSummary | None:
    if not slo.given:
        return None
    meeting = [
        s for s in steps
        if s.completed and s.request_goodput is not None
        and s.request_goodput * s.duration >= SLO_ATTAINMENT * s.completed
    ]
    # closed- and open-loop steps compare by the load they carried: completed requests per second
    best = max(meeting, key=lambda s: s.request_throughput, default=None)
    return SloSummary(slo, SLO_ATTAINMENT, best.step.label if best else None, best.output_throughput if best else None)


@dataclass
class BenchResult:
    metadata: BenchMetadata
    steps: list[StepResult]
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False
    slo: SloSummary | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "metadata": self.metadata.to_dict(),
            "steps": [s.to_dict() for s in self.steps],
            "notes": list(self.notes),
            "interrupted": self.interrupted,
            "slo": self.slo.to_dict() if self.slo else None,
        }


def save_result(document: dict[str, Any], path: str) -> None:
    """Write atomically, so an interrupted save never leaves half a file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(jsontext.dumps(document) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise OperationFailed(f"cannot write {path}: {exc.strerror or exc}") from None


# ----------------------------------------------------------------------------
# reading results back
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ResultPoint:
    """One step of a result file, in the terms `bench compare` shows."""

    label: str
    max_concurrency: int | None
    request_rate: float | None
    completed: int
    failed: int
    request_throughput: float
    output_throughput: float
    output_throughput_per_node: float
    tok_s_per_user: float | None
    median_ttft_ms: float | None
    p99_ttft_ms: float | None
    median_tpot_ms: float | None
    p99_tpot_ms: float | None


@dataclass(frozen=True)
class ResultFile:
    path: str
    name: str  # what plots and tables call it
    source: str  # "sparkctl" | "vllm bench serve"
    points: tuple[ResultPoint, ...]


def _num(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _point(data: dict[str, Any], label: str, nodes: int) -> ResultPoint:
    output = _num(data, "output_throughput") or 0.0
    tpot = _num(data, "median_tpot_ms")
    conc = _num(data, "max_concurrency")
    rate = _num(data, "request_rate")  # vLLM writes "inf" for closed loop: not a number, so None
    return ResultPoint(
        label=label,
        max_concurrency=int(conc) if conc is not None else None,
        request_rate=rate,
        completed=int(_num(data, "completed") or 0),
        failed=int(_num(data, "failed") or 0),
        request_throughput=_num(data, "request_throughput") or 0.0,
        output_throughput=output,
        output_throughput_per_node=output / max(nodes, 1),
        tok_s_per_user=_num(data, "tok_s_per_user") or (1000.0 / tpot if tpot else None),
        median_ttft_ms=_num(data, "median_ttft_ms"),
        p99_ttft_ms=_num(data, "p99_ttft_ms"),
        median_tpot_ms=tpot,
        p99_tpot_ms=_num(data, "p99_tpot_ms"),
    )


def result_file(data: Any, path: str) -> ResultFile:
    """A result document (sparkctl's or vLLM's) as the points `bench compare` shows."""
    name = os.path.splitext(os.path.basename(path))[0]
    if isinstance(data, dict) and isinstance(data.get("steps"), list) and isinstance(data.get("metadata"), dict):
        nodes = data["metadata"].get("nodes")
        nodes = nodes if isinstance(nodes, int) and not isinstance(nodes, bool) and nodes > 0 else 1
        points = tuple(
            _point(step, str(step.get("label") or f"step {i + 1}"), nodes)
            for i, step in enumerate(data["steps"]) if isinstance(step, dict)
        )
        return ResultFile(path, name, "sparkctl", points)
    if isinstance(data, dict) and "output_throughput" in data and "completed" in data:
        conc = data.get("max_concurrency")
        label = f"c={conc}" if conc else f"rate={data.get('request_rate')}"
        return ResultFile(path, name, "vllm bench serve", (_point(data, label, 1),))
    raise InputError(f"{path}: not a benchmark result",
                     hint="expected `sparkctl bench --save-result` or `vllm bench serve --save-result` output")


def load_result(path: str) -> ResultFile:
    """A sparkctl bench result or a `vllm bench serve --save-result` file."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{path}: not JSON: {exc}") from None
    return result_file(data, path)
