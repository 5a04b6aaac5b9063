"""Files that are not files, and logs too big to hold (issue #13, defect 8)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, sparkctl

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize(
    "argv",
    [
        ["validate", "-i", "{fifo}"],
        ["validate", "-i", str(REPO / "inventories" / "local.yaml"), "-p", "{fifo}"],
        ["doctor", "nccl-log", "{fifo}"],
        ["doctor", "nccl-tests", "{fifo}"],
        ["doctor", "vllm-log", "{fifo}"],
        ["doctor", "vllm-log", "/dev/zero"],
    ],
)
def test_a_fifo_or_device_is_refused_at_once(fifo, argv):
    """Before: open() on a FIFO waits for a writer that never comes."""
    result = sparkctl(*[a.replace("{fifo}", fifo) for a in argv], timeout=20)
    assert result.returncode == 2, result.stderr
    assert "not a regular file" in result.stderr


def test_doctor_still_reads_a_pipe_through_dash():
    data = (FIX / "nccl-debug" / "spark-single-hca-mtu9000.log").read_bytes()
    result = subprocess.run([sys.executable, "-m", "sparkctl", "doctor", "nccl-log", "-", "--json"],
                            input=data, capture_output=True, cwd=REPO, timeout=60)
    assert result.returncode == 0 and b'"transport": "ib"' in result.stdout


def _doctor_peak(kind: str, path: str) -> int:
    """In a fresh process: the peak memory growth (MiB) of doctor reading one file."""
    import resource

    from sparkctl.ops import doctor

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    getattr(doctor, kind.replace("-", "_"))(path, **({"expect_busbw_gbs": 22.0} if kind == "nccl-tests" else {}))
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind, fixtures, pattern", [
    ("nccl-log", "nccl-debug", "*.log"),
    ("vllm-log", "vllm", "*.log"),
    ("nccl-tests", "nccl-tests", "*.txt"),
])
def test_doctor_streams_a_big_log(tmp_path, kind, fixtures, pattern):
    """A 24 MiB log costs the reader a few MiB, not several times its size (before: 1.55 GB for 200 MB)."""
    text = "".join(p.read_text(errors="replace") for p in sorted((FIX / fixtures).glob(pattern)))
    big = tmp_path / "big.log"
    with open(big, "w") as handle:
        for _ in range((24 << 20) // len(text) + 1):
            handle.write(text)
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        grown_mib = pool.apply(_doctor_peak, (kind, str(big)))
    assert grown_mib < 24, f"peak memory grew by {grown_mib} MiB reading a 24 MiB log"
