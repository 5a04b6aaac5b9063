"""`sparkctl doctor`: read artefacts a user already has (an NCCL debug log, an
nccl-tests output, a vLLM server log) and say what they show. Pure parsing;
this module only opens the file (sparkctl.artefact streams it)."""

from __future__ import annotations

from typing import Any

from sparkctl.artefact import open_artefact
from sparkctl.errors import InputError
from sparkctl.findings import Severity, worst
from sparkctl.perf.rules import LOG_EVIDENCE, finding_dict, log_findings
from sparkctl.probes.nccl_log import parse_nccl_log_lines
from sparkctl.probes.nccl_tests import parse_nccl_tests_lines
from sparkctl.serve.vllm_log import LogReader


def nccl_log(path: str) -> dict[str, Any]:
    with open_artefact(path) as artefact:
        parsed = parse_nccl_log_lines(artefact.lines)
    report = parsed.to_dict()
    report["problem"] = worst(parsed.findings) is Severity.ERROR
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
    evidence: dict[str, str] = {}  # the performance rules read a few kinds of line: the last of each
    with open_artefact(path) as artefact:
        for line in artefact.lines():
            reader.feed(line + "\n")
            for kind, pattern in LOG_EVIDENCE.items():
                if pattern.search(line):
                    evidence[kind] = line
    report = reader.close().to_dict()
    report["problem"] = bool(report["findings"])
    # performance misconfigurations are warnings: they do not make the log a problem
    report["performance_findings"] = [finding_dict(f) for f in log_findings(
        "\n".join(evidence.values()), kv_cache_tokens=report["kv_cache_tokens"], max_concurrency=report["max_concurrency"])]
    return report
