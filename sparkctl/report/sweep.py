"""`sparkctl sweep --report`: the recommendation, a table per layout with explain's
prediction beside each measured point, and every layout's Pareto chart overlaid."""

from __future__ import annotations

from sparkctl.bench.result import load_result
from sparkctl.report.model import Image, Report, Section, Table, Text, Verdict
from sparkctl.report.plots import png_of
from sparkctl.sweep.report import SweepReport

HEADER = ("step", "tok/s per user", "predicted", "output tok/s", "predicted", "tok/s per node", "TTFT p50 ms",
          "failed")


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def sweep_report(report: SweepReport, *, command: str, created: str) -> Report:
    sections: list[Section] = []
    if report.recommendation:
        sections.append(Section("Recommendation", (Text(report.recommendation),)))
    for layout in report.layouts:
        rows = tuple(
            (p.step, _num(p.tok_s_per_user), _num(p.predicted_tok_s_per_user), _num(p.output_throughput),
             _num(p.predicted_output_throughput), _num(p.output_throughput_per_node), _num(p.median_ttft_ms),
             str(p.failed))
            for p in layout.points
        )
        what = layout.status + (f" (up in {layout.up_s:.0f} s)" if layout.up_s else "")
        blocks: list[Table | Text] = [Table(HEADER, rows, numeric=(False, *([True] * 7)))] if rows else []
        if layout.error:
            blocks.append(Text((f"error: {layout.error}",)))
        sections.append(Section(f"{layout.label}: {what}", tuple(blocks) or (Text(("not measured",)),)))
    measured = [layout.result_path for layout in report.layouts if layout.result_path]
    notes = list(report.notes)
    if measured:
        from sparkctl.bench.plot import plot_results

        files = [load_result(path) for path in measured]
        png, why = png_of(lambda path: plot_results(files, path, title=f"layouts of {report.cluster}"))
        if png is not None:
            sections.append(Section("Every layout's Pareto view", (Image(
                png, "output tok/s per node against tok/s per user, one colour per layout", "overlaid Pareto plot"),)))
        elif why:
            notes.append(why)
    failed = [layout.label for layout in report.layouts if layout.status == "failed"]
    tone = "warn" if failed or not report.complete else "ok"
    headline = report.recommendation[0] if report.recommendation else "no layout was measured"
    reasons = tuple(f"{label} failed" for label in failed)
    metadata = (("cluster", report.cluster), ("results", report.output_dir),
                ("layouts", " ".join(layout.label for layout in report.layouts)))
    return Report(f"sparkctl sweep: {report.cluster}", command, created, metadata, Verdict(tone, headline, reasons),
                  tuple(sections), tuple(notes))
