"""`sparkctl bench --report`: the step tables, the server's view, the Pareto plot and the run's metadata."""

from __future__ import annotations

from sparkctl.bench.report import client_table, server_table, step_remarks
from sparkctl.bench.result import BenchResult, result_file
from sparkctl.report.model import Image, Report, Section, Table, Text, Verdict
from sparkctl.report.plots import png_of


def bench_report(result: BenchResult, *, command: str, created: str) -> Report:
    document = result.to_dict()
    header, rows = client_table(result)
    sections = [Section("Steps (the client's figures)",
                        (Table(tuple(header), tuple(tuple(r) for r in rows), numeric=_numeric(header)),))]
    server_header, server_rows = server_table(result)
    if server_rows:
        sections.append(Section("The server's view (/metrics deltas per step; gauges mean / max)",
                                (Table(tuple(server_header), tuple(tuple(r) for r in server_rows),
                                       numeric=_numeric(server_header)),)))
    notes = list(result.notes)
    if result.steps:
        from sparkctl.bench.plot import plot_results

        png, why = png_of(lambda path: plot_results([result_file(document, "this run")], path,
                                                    title=f"{result.metadata.model}"))
        if png is not None:
            sections.append(Section("Pareto view and latency against load", (Image(
                png, "output tok/s per node against tok/s per user (one point per step, frontier drawn); "
                     "median TTFT and TPOT against load", "Pareto plot of the benchmark"),)))
        elif why:
            notes.append(why)
    remarks = step_remarks(result)
    if remarks:
        sections.append(Section("Remarks", (Text(tuple(remarks)),)))
    best = max(result.steps, key=lambda s: s.output_throughput, default=None)
    headline = (f"best output throughput {best.output_throughput:,.1f} tok/s ({best.output_throughput_per_node:,.1f} "
                f"per node) at {best.step.label}" if best else "no step was measured")
    reasons = tuple(r for r in remarks if r.startswith("SLO"))
    failed = sum(s.failed for s in result.steps)
    tone = "warn" if (failed or result.interrupted) else "ok" if best else "info"
    if failed:
        reasons += (f"{failed} request(s) failed",)
    if result.interrupted:
        reasons += ("interrupted: the tables hold what was measured before the interruption",)
    metadata = tuple((key, _text(value)) for key, value in document["metadata"].items() if value not in (None, [], ""))
    return Report(f"sparkctl bench: {result.metadata.model}", command, created, metadata,
                  Verdict(tone, headline, reasons), tuple(sections), tuple(notes))


def _numeric(header: list[str]) -> tuple[bool, ...]:
    return tuple(i > 0 and h not in ("SATURATED",) for i, h in enumerate(header))


def _text(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)
