"""A report as Markdown: the same tables and findings, for pasting into a post
(plots stay in the HTML report: Markdown cannot carry them in one file)."""

from __future__ import annotations

from sparkctl import __version__
from sparkctl.report.model import FindingRow, Image, Report, Table, Text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: tuple[tuple[str, ...], ...], numeric: tuple[bool, ...] = ()) -> list[str]:
    align = [("---:" if numeric and numeric[i] else "---") for i in range(len(header))]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(report: Report) -> str:
    out = [f"# {report.title}", "", f"{report.created}, sparkctl {__version__}", "", "```", f"$ {report.command}", "```"]
    if report.verdict is not None:
        out += ["", f"**{report.verdict.headline}**"]
        out += [f"- {r}" for r in report.verdict.reasons]
    if report.metadata:
        out += ["", "## Cluster and run", ""]
        out += _table(("", ""), tuple((k, v) for k, v in report.metadata))
    for section in report.sections:
        out += ["", f"## {section.title}"]
        for block in section.blocks:
            out.append("")
            if isinstance(block, Table):
                if block.caption:
                    out += [f"*{block.caption}*", ""]
                out += _table(block.header, block.rows, block.numeric)
            elif isinstance(block, Image):
                out.append(f"*plot: {block.caption} (embedded in the HTML report)*")
            elif isinstance(block, Text):
                out += ["```", *block.lines, "```"]
            else:
                out += _findings(block)
    if report.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(out) + "\n"


def _findings(findings: tuple[FindingRow, ...]) -> list[str]:
    rows = tuple((f.label, f.subject, f.check, f.evidence + (f" (hint: {f.hint})" if f.hint else "")) for f in findings)
    return _table(("status", "node", "check", "evidence"), rows)
