"""One Finding and one Severity: the ranking, and the words each command's --json shows."""

from __future__ import annotations

import ast
from pathlib import Path

from sparkctl.findings import (
    CHECK_STATUSES,
    Finding,
    Severity,
    check_status,
    level,
    most_severe_first,
    probe_status,
    worst,
)

SOURCE = Path(__file__).resolve().parent.parent / "sparkctl" / "findings.py"


def test_severities_are_ranked():
    assert [s.rank for s in (Severity.OK, Severity.INFO, Severity.WARNING, Severity.ERROR)] == [0, 1, 2, 3]
    assert worst([]) is Severity.OK
    found = [Finding("a", Severity.INFO, "a"), Finding("b", Severity.ERROR, "b"), Finding("c", Severity.INFO, "c")]
    assert worst(found) is Severity.ERROR
    assert [f.code for f in most_severe_first(found)] == ["b", "a", "c"]  # stable within a severity


def test_each_output_keeps_its_words():
    assert [check_status(s) for s in Severity] == ["PASS", "PASS", "WARN", "FAIL"]
    assert set(CHECK_STATUSES) == {check_status(s) for s in Severity}
    assert [level(s) for s in Severity] == ["ok", "info", "warning", "error"]
    assert [probe_status(s) for s in Severity] == ["ok", "not-judged", "warning", "degraded"]


def test_findings_module_imports_nothing_from_sparkctl():
    # the bottom layer: every package may import it, so it may import none of them
    tree = ast.parse(SOURCE.read_text())
    imported = ["." * n.level + (n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith(("sparkctl", "."))]
