"""The sweep's report: a table per layout (measured beside predicted), and which
layout to run at which load, in plain words with the numbers behind it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sparkctl.layouts import Layout
from sparkctl.sweep.predict import Predictor


@dataclass(frozen=True)
class Point:
    """One measured step of one layout, with explain's prediction for it."""

    step: str
    concurrency: int | None
    tok_s_per_user: float | None
    output_throughput: float
    output_throughput_per_node: float
    median_ttft_ms: float | None
    failed: int
    predicted_tok_s_per_user: float | None = None
    predicted_output_throughput: float | None = None


@dataclass(frozen=True)
class LayoutReport:
    label: str
    status: str  # "measured" | "measured earlier" | "failed" | "not run"
    points: tuple[Point, ...] = ()
    result_path: str | None = None
    error: str | None = None
    up_s: float | None = None


@dataclass(frozen=True)
class SweepReport:
    cluster: str
    output_dir: str
    layouts: tuple[LayoutReport, ...]
    recommendation: tuple[str, ...]
    notes: tuple[str, ...] = ()
    plot: str | None = None
    complete: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster, "output_dir": self.output_dir, "complete": self.complete, "plot": self.plot,
            "recommendation": list(self.recommendation), "notes": list(self.notes),
            "layouts": [{"label": r.label, "status": r.status, "result": r.result_path, "error": r.error,
                         "up_s": r.up_s, "steps": [p.__dict__ for p in r.points]} for r in self.layouts],
        }


def _num(step: dict[str, Any], key: str) -> float | None:
    value = step.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def points_of(document: dict[str, Any], layout: Layout, predictor: Predictor | None) -> tuple[Point, ...]:
    """The result document's steps as Points, each with its prediction (closed-loop steps only)."""
    out = []
    for i, step in enumerate(s for s in document.get("steps", []) if isinstance(s, dict)):
        conc = _num(step, "max_concurrency")
        guess = None
        if predictor is not None and conc is not None:
            input_len, output_len = _num(step, "input_len"), _num(step, "output_len")
            guess = predictor.at(layout, int(conc), int(input_len) if input_len else None,
                                 int(output_len) if output_len else None)
        out.append(Point(
            step=str(step.get("label") or f"step {i + 1}"),
            concurrency=int(conc) if conc is not None else None,
            tok_s_per_user=_num(step, "tok_s_per_user"),
            output_throughput=_num(step, "output_throughput") or 0.0,
            output_throughput_per_node=_num(step, "output_throughput_per_node") or 0.0,
            median_ttft_ms=_num(step, "median_ttft_ms"),
            failed=int(_num(step, "failed") or 0),
            predicted_tok_s_per_user=round(guess.tok_s_per_user, 2) if guess else None,
            predicted_output_throughput=round(guess.output_throughput, 2) if guess else None,
        ))
    return tuple(out)


@dataclass
class _Run:
    """Consecutive steps won by the same layout, with the winning values."""

    winner: str
    steps: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def _runs(by: dict[str, dict[str, Point]], steps: list[str], key: str) -> list[_Run]:
    runs: list[_Run] = []
    for step in steps:
        # a burst's per-user rate measures nothing (see burst_notes): it cannot win
        values = {label: 0.0 if key == "tok_s_per_user" and is_burst(points[step]) else getattr(points[step], key) or 0.0
                  for label, points in by.items()}
        winner = max(values, key=lambda label: values[label])
        others = ", ".join(f"{label} {v:.1f}" if v else f"{label} (bursts)" for label, v in values.items()
                           if label != winner)
        if not runs or runs[-1].winner != winner:
            runs.append(_Run(winner))
        runs[-1].steps.append(step)
        runs[-1].values.append(values[winner])
        runs[-1].lines.append(f"{step}: {values[winner]:.1f} against {others}")
    return runs


def recommend(layouts: tuple[LayoutReport, ...]) -> tuple[str, ...]:
    """A headline (the fastest replies at light load, the most throughput at heavy
    load), then per metric which layout wins which steps, with the numbers."""
    measured = [r for r in layouts if r.points]
    if len(measured) < 2:
        return ("measure at least two layouts to compare them",)
    steps = [p.step for p in measured[0].points if all(any(q.step == p.step for q in r.points) for r in measured)]
    if not steps:
        return ("the layouts share no step to compare (were they measured with the same bench flags?)",)
    by = {r.label: {p.step: p for p in r.points} for r in measured}
    user = _runs(by, steps, "tok_s_per_user")
    total = _runs(by, steps, "output_throughput")
    light, heavy = user[0], total[-1]
    if len(user) == 1 and len(total) == 1 and light.winner == heavy.winner:
        headline = (f"{light.winner} is best at every load measured, per user and in total "
                    f"({light.values[0]:.1f} tok/s per user at {steps[0]}, {heavy.values[-1]:.1f} tok/s in total at {steps[-1]})")
    else:
        headline = (f"up to {light.steps[-1]} {light.winner} gives the most tok/s per user ({light.values[-1]:.1f}); "
                    f"from {heavy.steps[0]} {heavy.winner} gives the most output tok/s in total ({heavy.values[0]:.1f}"
                    + (f", {heavy.values[-1]:.1f} at {heavy.steps[-1]})" if len(heavy.steps) > 1 else ")"))
    sentences = [headline]
    for what, unit, runs in (("speed per user", "tok/s per user", user), ("total throughput", "output tok/s in total", total)):
        for run in runs:
            span = run.steps[0] if len(run.steps) == 1 else f"{run.steps[0]} to {run.steps[-1]}"
            sentences.append(f"for {what}, at {span} {run.winner} is best ({'; '.join(run.lines)} {unit})")
    return tuple(sentences)


def is_burst(p: Point) -> bool:
    return bool(p.tok_s_per_user and p.concurrency and p.tok_s_per_user * p.concurrency > 20 * max(p.output_throughput, 1e-9))


def burst_notes(layouts: tuple[LayoutReport, ...]) -> list[str]:
    """Steps whose tok/s per user the total throughput cannot have produced: the
    tokens reached the client in bursts (TPOT near 0), so per-user speed was not
    measured there; their totals still compare."""
    notes = []
    for r in layouts:
        odd = [p.step for p in r.points if is_burst(p)]
        if odd:
            notes.append(f"{r.label}: at {', '.join(odd)} the tokens reached the client in bursts (median TPOT near 0), "
                         "so its tok/s per user there says nothing about speed; compare output tok/s in total")
    return notes


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_text(report: SweepReport) -> str:
    lines = [f"sweep of {report.cluster} ({len(report.layouts)} layout(s)), results in {report.output_dir}", ""]
    header = ("step", "tok/s/user", "predicted", "out tok/s", "predicted", "tok/s/node", "TTFT p50 ms", "failed")
    for r in report.layouts:
        extra = f", up in {r.up_s:.0f}s" if r.up_s is not None else ""
        lines.append(f"== {r.label}: {r.status}{extra}" + (f": {r.error}" if r.error else ""))
        if r.points:
            rows = [header] + [(p.step, _f(p.tok_s_per_user), _f(p.predicted_tok_s_per_user), _f(p.output_throughput),
                                _f(p.predicted_output_throughput), _f(p.output_throughput_per_node),
                                _f(p.median_ttft_ms), str(p.failed)) for p in r.points]
            widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
            lines += ["  " + "  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
        lines.append("")
    lines.append("recommendation:")
    lines += [f"  - {s}" for s in report.recommendation]
    if report.notes:
        lines.append("notes:")
        lines += [f"  - {n}" for n in report.notes]
    if report.plot:
        lines.append(f"plot: {report.plot}")
    return "\n".join(lines)
