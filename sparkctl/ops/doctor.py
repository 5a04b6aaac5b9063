"""`sparkctl doctor`: read artefacts a user already has (an NCCL debug log, an
nccl-tests output, a vLLM server log) and say what they show. Pure parsing;
this module only reads the file."""

from __future__ import annotations

import sys
from typing import Any

from sparkctl.errors import InputError
from sparkctl.perf.rules import log_findings
from sparkctl.probes.nccl_log import parse_nccl_log
from sparkctl.probes.nccl_tests import parse_nccl_tests
from sparkctl.serve.vllm_log import read_log

MAX_BYTES = 256 * 1024 * 1024


def read_artefact(path: str) -> str:
    """The text of a file (or '-' for stdin), as pasted: any encoding errors replaced."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_BYTES + 1)
        else:
            with open(path, "rb") as handle:
                data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a log file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise InputError(f"{path}: larger than {MAX_BYTES // (1024 * 1024)} MiB; pass the relevant part")
    return data.decode("utf-8", "replace")


def nccl_log(path: str) -> dict[str, Any]:
    report = parse_nccl_log(read_artefact(path)).to_dict()
    report["problem"] = any(f["level"] == "error" for f in report["findings"])
    return report


def nccl_tests(path: str, *, expect_busbw_gbs: float) -> dict[str, Any]:
    report = parse_nccl_tests(read_artefact(path), expect_busbw_gbs=expect_busbw_gbs, source_name=path).to_dict()
    if not report["rows"]:
        raise InputError(f"{path}: no nccl-tests result rows found", hint="pass the stdout of all_reduce_perf (or another *_perf)")
    report["problem"] = report["verdict"] == "degraded" or bool(report.get("problems"))
    return report


def vllm_log(path: str) -> dict[str, Any]:
    text = read_artefact(path)
    report = read_log(text).to_dict()
    report["problem"] = bool(report["findings"])
    # performance misconfigurations are warnings: they do not make the log a problem
    report["performance_findings"] = [f.to_dict() for f in log_findings(
        text, kv_cache_tokens=report["kv_cache_tokens"], max_concurrency=report["max_concurrency"])]
    return report
