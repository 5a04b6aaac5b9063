"""Choose the format from the file name and write the report atomically."""

from __future__ import annotations

import os

from sparkctl.errors import InputError, OperationFailed
from sparkctl.report.model import Report

FORMATS = {".html": "html", ".htm": "html", ".md": "markdown", ".markdown": "markdown"}


def report_format(path: str) -> str:
    """'html' or 'markdown'; checked before a command measures anything."""
    fmt = FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise InputError(f"--report {path}: the file name must end in .html or .md",
                         hint="--report run.html (one self-contained page) or --report run.md (tables to paste)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"--report {path}: the folder {folder} does not exist")
    return fmt


def write_report(report: Report, path: str) -> str:
    from sparkctl.report.html import render_html
    from sparkctl.report.markdown import render_markdown

    text = render_html(report) if report_format(path) == "html" else render_markdown(report)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise OperationFailed(f"cannot write the report to {path}: {exc.strerror or exc}") from None
    return path
