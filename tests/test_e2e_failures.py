"""`up` when things go wrong, on the local pair with real vLLM for CPU: the
failing node and its log are shown, the exit code says what happened, and
nothing that was started is left running."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sparkctl.agent import node_agent
from tests.conftest import REPO, SessionWatch, local_pair_processes, sparkctl

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

INV = str(REPO / "inventories" / "local.yaml")


def playbook(tmp_path: Path, **changes) -> str:
    """The demo playbook with absolute paths, plus changes."""
    data = yaml.safe_load((REPO / "playbooks" / "tiny-cpu.yaml").read_text())
    data["model"] = str(REPO / "playbooks" / "models" / "tiny-llama")
    data["vllm"] = {"command": [str(REPO / ".venv" / "bin" / "python"), str(REPO / "playbooks" / "support" / "vllm_cpu.py")]}
    extra_args = changes.pop("extra_args", [])
    data["vllm_args"] = data["vllm_args"] + extra_args
    data.update(changes)
    path = tmp_path / "pb.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def nothing_left():
    assert local_pair_processes() == []
    assert node_agent.ports_in_use([8013, 29511]) == []


@pytest.fixture(autouse=True)
def _clean():
    assert local_pair_processes() == [], "a local-pair cluster is already running"
    yield
    sparkctl("down", "-i", INV, "-q")


def test_vllm_exiting_during_startup_names_node_log_and_cleans_up(tmp_path):
    result = sparkctl("up", "-i", INV, "-p", playbook(tmp_path, extra_args=["--dtype", "not-a-dtype"]))
    assert result.returncode == 1, result.stderr
    err = result.stderr
    assert "vLLM exited during start-up" in err
    assert "last lines of" in err and "vllm.log" in err
    assert "not-a-dtype" in err  # vLLM's own complaint, from the log tail
    assert "stopping what this run started" in err
    nothing_left()


def test_deadline_is_exit_4_and_cleans_up(tmp_path):
    started = time.monotonic()
    result = sparkctl("up", "-i", INV, "-p", playbook(tmp_path, ready_timeout_s=8))
    assert result.returncode == 4, result.stderr
    assert "was not ready after" in result.stderr and "ready_timeout_s" in result.stderr
    assert time.monotonic() - started < 120
    nothing_left()


def test_busy_port_is_refused_before_starting_anything(tmp_path):
    blocker = socket.create_server(("0.0.0.0", 8013))
    try:
        result = sparkctl("up", "-i", INV, "-p", playbook(tmp_path), "--json")
        assert result.returncode == 1
        error = json.loads(result.stdout)
        assert error["message"] == "preflight checks failed; nothing was started"
        assert any(d.startswith(f"head: ports.free: port 8013 in use by pid {os.getpid()}") for d in error["details"])
        assert local_pair_processes() == []
    finally:
        blocker.close()


def _default_sigint() -> None:
    # A background job of a non-interactive shell (CI) starts with SIGINT ignored,
    # and Python then never raises KeyboardInterrupt; a terminal's Ctrl-C is SIG_DFL.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_during_wait_stops_everything(tmp_path, sig):
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparkctl", "up", "-i", INV, "-p", playbook(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        preexec_fn=_default_sigint,
    )
    watch = SessionWatch()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(watch.see()) < 2:
            time.sleep(0.5)
        assert len(watch.see()) >= 2, "vLLM never started"
        time.sleep(2)
        watch.see()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "every process this run started has been stopped" in err
    nothing_left()
    watch.assert_nothing_left()
    assert not (Path(os.environ["SPARKCTL_STATE_DIR"]) / "local-pair.json").exists()


def test_missing_forwarded_secret_is_bad_input(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SPARKCTL_TEST_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "sparkctl", "up", "-i", INV, "-p", playbook(tmp_path, forward_env=["SPARKCTL_TEST_TOKEN"])],
        capture_output=True, text=True, env=env, cwd=REPO,
    )
    assert result.returncode == 2
    assert "SPARKCTL_TEST_TOKEN" in result.stderr and "not set in this shell" in result.stderr
