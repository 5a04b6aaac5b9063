"""A report as one self-contained HTML page: inline CSS, plots as base64 PNG,
no scripts and no external resources, so it reads offline and attaches to a post."""

from __future__ import annotations

import base64
from html import escape
from importlib import resources

from sparkctl import __version__
from sparkctl.report.model import FindingRow, Image, Report, Section, Table, Text, Verdict


def _style() -> str:
    return resources.files("sparkctl.report").joinpath("style.css").read_text(encoding="utf-8")


def render_html(report: Report) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(report.title)}</title>",
        f"<style>{_style()}</style>",
        "</head><body>",
        f"<h1>{escape(report.title)}</h1>",
        f'<div class="created">{escape(report.created)} &middot; sparkctl {escape(__version__)}</div>',
        f'<div class="command">$ {escape(report.command)}</div>',
    ]
    if report.verdict is not None:
        parts.append(_verdict(report.verdict))
    if report.metadata:
        parts.append("<h2>Cluster and run</h2>")
        rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in report.metadata)
        parts.append(f'<table class="meta"><tbody>{rows}</tbody></table>')
    for section in report.sections:
        parts.append(_section(section))
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul>")
    parts.append(f"<footer>Written by sparkctl {escape(__version__)}; this page loads nothing from the network.</footer>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _verdict(verdict: Verdict) -> str:
    reasons = "".join(f"<li>{escape(r)}</li>" for r in verdict.reasons)
    return (f'<div class="verdict tone-{escape(verdict.tone)}"><strong>{escape(verdict.headline)}</strong>'
            + (f"<ul>{reasons}</ul>" if reasons else "") + "</div>")


def _section(section: Section) -> str:
    out = [f"<h2>{escape(section.title)}</h2>"]
    for block in section.blocks:
        if isinstance(block, Table):
            out.append(_table(block))
        elif isinstance(block, Image):
            data = base64.b64encode(block.png).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{escape(block.alt)}">'
                       f"<figcaption>{escape(block.caption)}</figcaption></figure>")
        elif isinstance(block, Text):
            out.append("<pre>" + escape("\n".join(block.lines)) + "</pre>")
        else:
            out.append(_findings(block))
    return "\n".join(out)


def _table(table: Table) -> str:
    numeric = table.numeric or tuple(False for _ in table.header)
    head = "".join(f"<th>{escape(h)}</th>" for h in table.header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{escape(c)}</td>' if numeric[i] else f"<td>{escape(c)}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in table.rows
    )
    caption = f"<caption>{escape(table.caption)}</caption>" if table.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _findings(findings: tuple[FindingRow, ...]) -> str:
    rows = []
    for f in findings:
        hint = f'<div class="hint">hint: {escape(f.hint)}</div>' if f.hint else ""
        rows.append(f'<tr><td><span class="badge tone-{escape(f.tone)}">{escape(f.label)}</span></td>'
                    f"<td>{escape(f.subject)}</td><td>{escape(f.check)}</td><td>{escape(f.evidence)}{hint}</td></tr>")
    return ("<table class=\"findings\"><thead><tr><th>status</th><th>node</th><th>check</th><th>evidence</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")
