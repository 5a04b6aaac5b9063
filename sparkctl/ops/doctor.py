"""`sparkctl doctor`: read artefacts a user already has (an NCCL debug log, an
nccl-tests output, a vLLM server log) and say what they show. Pure parsing;
this module only opens the file (sparkctl.artefact streams it)."""

from __future__ import annotations

from typing import Any

from sparkctl.artefact import open_artefact
from sparkctl.errors import InputError
from sparkctl.perf.rules import EVIDENCE_LINE, log_findings
from sparkctl.probes.nccl_log import parse_nccl_log_lines
from sparkctl.probes.nccl_tests import parse_nccl_tests_lines
from sparkctl.serve.vllm_log import LogReader

# the performance rules read only a few kinds of line: keep those, bounded, while the log streams by
MAX_EVIDENCE_LINES = 1000


def nccl_log(path: str) -> dict[str, Any]:
    with open_artefact(path) as artefact:
        report = parse_nccl_log_lines(artefact.lines).to_dict()
    report["problem"] = any(f["level"] == "error" for f in report["findings"])
    return report


def nccl_tests(path: str, *, expect_busbw_gbs: float) -> dict[str, Any]:
    with open_artefact(path) as artefact:
        report = parse_nccl_tests_lines(artefact.lines(), open_tail=artefact.ends_open,
                                        expect_busbw_gbs=expect_busbw_gbs, source_name=path).to_dict()
    if not report["rows"]:
        raise InputError(f"{path}: no nccl-tests result rows found", hint="pass the stdout of all_reduce_perf (or another *_perf)")
    report["problem"] = report["verdict"] == "degraded" or bool(report.get("problems"))
    return report


def vllm_log(path: str) -> dict[str, Any]:
    reader = LogReader()
    evidence: list[str] = []
    with open_artefact(path) as artefact:
        for line in artefact.lines():
            reader.feed(line + "\n")
            if len(evidence) < MAX_EVIDENCE_LINES and EVIDENCE_LINE.search(line):
                evidence.append(line)
    report = reader.close().to_dict()
    report["problem"] = bool(report["findings"])
    # performance misconfigurations are warnings: they do not make the log a problem
    report["performance_findings"] = [f.to_dict() for f in log_findings(
        "\n".join(evidence), kv_cache_tokens=report["kv_cache_tokens"], max_concurrency=report["max_concurrency"])]
    return report
