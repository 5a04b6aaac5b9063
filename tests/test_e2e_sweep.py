"""End to end on the built-in local pair with vLLM for CPU: a real `sparkctl
sweep` over tp2 and replicas2, interrupted (SIGINT) in the middle of the second
layout's bring-up, which must leave nothing running; `--resume` then measures only
the layout left and reports both. SPARKCTL_SWEEP_ARTIFACTS=DIR keeps the printed
report, the JSON and the plot (the README's numbers and docs/ plot come from there)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, SessionWatch, local_pair_processes, sparkctl

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1500)]

INV = str(REPO / "inventories" / "local.yaml")
PB = str(REPO / "playbooks" / "tiny-cpu.yaml")
LADDER = ["--concurrency", "1,2", "--num-prompts", "6", "--input-len", "32", "--output-len", "16"]


def interrupt_when(cmd: list[str], marker: str, timeout_s: float = 900) -> tuple[int, str]:
    """Run the CLI, send SIGINT once its stderr shows `marker`, return (exit code, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "sparkctl", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    lines = []
    deadline = time.monotonic() + timeout_s
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if marker in line:
            proc.send_signal(signal.SIGINT)
            break
        if time.monotonic() > deadline:
            break
    _, err = proc.communicate(timeout=300)
    return proc.returncode, "".join(lines) + err


@pytest.mark.skipif(not (REPO / ".venv" / "bin" / "vllm-router").exists() and not shutil.which("vllm-router"),
                    reason="vllm-router is not installed (pip install 'sparkctl[router]', or make setup)")
def test_sweep_interrupted_mid_bring_up_then_resumed(tmp_path):
    assert local_pair_processes() == [], "a local-pair cluster is already running; run `sparkctl down -i inventories/local.yaml`"
    out = tmp_path / "sweep"
    plot = tmp_path / "sweep.png"
    cmd = ["sweep", "-i", INV, "-p", PB, "--layouts", "tp2,replicas2", *LADDER, "--output-dir", str(out)]
    watch = SessionWatch()
    try:
        # the second layout's servers are starting when the router is launched
        rc, err = interrupt_when(cmd, "started router")
        assert rc == 130, err[-3000:]
        assert "[1/2] tp2: up" in err and "tp2: result saved" in err and "[2/2] replicas2: up" in err
        assert "nothing is left running" in err or "every process it started has been stopped" in err, err[-2000:]
        watch.see()
        assert local_pair_processes() == [], "the interrupted sweep left processes running"
        watch.assert_nothing_left()
        assert (out / "tp2.json").exists() and not (out / "replicas2.json").exists()

        resumed = sparkctl(*cmd, "--resume", "--plot", str(plot))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        text = resumed.stdout
        assert "[1/2] tp2: measured earlier" in resumed.stderr and "[2/2] replicas2: up" in resumed.stderr
        assert "== tp2: measured earlier" in text and "== replicas2: measured" in text and "recommendation:" in text
        assert plot.exists() and plot.stat().st_size > 10_000
        report = json.loads((out / "report.json").read_text())
        assert report["complete"] and [x["label"] for x in report["layouts"]] == ["tp2", "replicas2"]
        for layout in report["layouts"]:
            assert [s["concurrency"] for s in layout["steps"]] == [1, 2]
            assert all(s["failed"] == 0 and s["output_throughput"] > 0 for s in layout["steps"])
            assert all(s["predicted_tok_s_per_user"] for s in layout["steps"])
        assert local_pair_processes() == []
        watch.assert_nothing_left()
        keep = os.environ.get("SPARKCTL_SWEEP_ARTIFACTS")
        if keep:
            os.makedirs(keep, exist_ok=True)
            shutil.copy(plot, os.path.join(keep, "sweep-local-pair.png"))
            shutil.copy(out / "report.json", os.path.join(keep, "report.json"))
            with open(os.path.join(keep, "sweep.txt"), "w", encoding="utf-8") as handle:
                handle.write(text)
            with open(os.path.join(keep, "interrupted-stderr.txt"), "w", encoding="utf-8") as handle:
                handle.write(err)
    finally:
        sparkctl("down", "-i", INV, "-q")
        watch.assert_nothing_left()
