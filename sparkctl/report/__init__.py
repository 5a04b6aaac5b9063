"""Shareable reports: one self-contained HTML file (tables, embedded plots, the
cluster's metadata, verdicts and findings with hints, the command line) or the
same tables in Markdown for pasting into a forum post.

Commands build a `Report` (model.py) from their own results (bench.py,
check.py, probe.py) and hand it to `write_report`; a new command (e.g. a sweep)
only needs its own builder.
"""

from sparkctl.report.model import FindingRow, Image, Report, Section, Table, Text, Verdict
from sparkctl.report.write import report_format, write_report

__all__ = ["FindingRow", "Image", "Report", "Section", "Table", "Text", "Verdict", "report_format", "write_report"]
