"""`sparkctl doctor` through the real CLI: the JSON contract of each artefact kind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, sparkctl

FIX = Path(__file__).parent / "fixtures"


def doctor(*args):
    result = sparkctl("doctor", *args, "--json")
    return result.returncode, (json.loads(result.stdout) if result.stdout.strip() else None), result.stderr


@pytest.mark.parametrize("log", sorted(p.name for p in (FIX / "nccl-debug").glob("*.log")))
def test_nccl_log_contract_on_every_fixture(log):
    rc, report, err = doctor("nccl-log", str(FIX / "nccl-debug" / log))
    assert rc in (0, 1), err
    assert report["transport"] in {"ib", "socket", "unknown", "p2p", "shm", "nvls"}
    assert report["net_plugin"] is None or isinstance(report["net_plugin"], str)
    assert isinstance(report["devices"], list) and all(isinstance(d, str) for d in report["devices"])
    assert report["nccl_version"] is None or report["nccl_version"][0].isdigit()
    for finding in report["findings"]:
        assert {"code", "level", "message"} <= set(finding) and finding["level"] in {"error", "warning", "info"}
    assert rc == (1 if any(f["level"] == "error" for f in report["findings"]) else 0)


def test_nccl_log_real_two_spark_capture():
    rc, report, _ = doctor("nccl-log", str(FIX / "nccl-debug" / "two-sparks-ib-gid0-mtu1024.log"))
    assert rc == 1
    assert (report["transport"], report["net_plugin"], report["nccl_version"]) == ("ib", "IB", "2.28.9+cuda13.0")
    assert report["devices"] == ["rocep1s0f1", "roceP2p1s0f1"]
    assert {f["code"] for f in report["findings"]} >= {"link-local-gid", "low-mtu"}


def test_nccl_log_socket_fallback():
    rc, report, _ = doctor("nccl-log", str(FIX / "nccl-debug" / "dgx-a100-forced-socket.log"))
    assert rc == 1 and report["transport"] == "socket"
    assert "socket-fallback" in {f["code"] for f in report["findings"]}


def test_nccl_tests_contract_and_expected_busbw():
    path = str(FIX / "nccl-tests" / "all_gather-16G-mtu1500-2.17.6.txt")
    rc, report, _ = doctor("nccl-tests", path)
    assert report["collective"] == "all_gather" and report["verdict"] == "ok"
    (row,) = report["rows"]
    assert row["size_bytes"] == 17179869184 and row["busbw_gbs"] == 18.94
    assert {"time_us", "algbw_gbs", "busbw_gbs"} <= set(row["inplace"])
    rc, stricter, _ = doctor("nccl-tests", path, "--expect-busbw", "24")
    assert stricter["verdict"] == "degraded" and rc == 1


def test_vllm_log_and_stdin():
    log = (FIX / "vllm" / "cpu-0.32.0-mp-head.log").read_text()
    result = subprocess.run([sys.executable, "-m", "sparkctl", "doctor", "vllm-log", "-", "--json"],
                            input=log, capture_output=True, text=True, cwd=REPO)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["stage"] == "api up" and report["kv_cache_tokens"] == 1048576


def test_bad_inputs_exit_2(tmp_path):
    rc, _, err = doctor("nccl-log", str(tmp_path / "missing.log"))
    assert rc == 2 and "file not found" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("no table here\n")
    rc, _, err = doctor("nccl-tests", str(empty))
    assert rc == 2 and "no nccl-tests result rows" in err


def test_single_rank_h100_log_is_not_a_socket_fallback():
    """Captured by sparkctl's probe on an H100 (world size 1): NCCL picks the
    Socket net plugin because no HCA exists, but no traffic crosses it."""
    rc, report, _ = doctor("nccl-log", str(FIX / "nccl-debug" / "h100-single-rank-2.28.9.log"))
    assert report["nranks"] == 1 and report["nccl_version"] == "2.28.9+cuda13.0"
    assert report["transport"] == "unknown" and report["network"] == "socket"
    assert "socket-fallback" not in {f["code"] for f in report["findings"]} and rc == 0
