"""`down` stops only this cluster's processes: a foreign vLLM and a foreign Ray on
the same node (another user's, or another cluster's, tagged or not) survive it,
with and without the local state file. Real agent, local nodes, no vLLM needed."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.conftest import sparkctl


def _inventory(tmp_path) -> str:
    """Two local nodes of a cluster of this test's own (never the built-in pair another test may run)."""
    path = tmp_path / "inv.yaml"
    path.write_text("cluster: foreign-test\nnodes:\n"
                    "  - {name: head, connection: local, fabric_ip: 127.0.0.1, role: head}\n"
                    "  - {name: worker, connection: local, fabric_ip: 127.0.0.1}\n")
    return str(path)


def _foreign(name: str, tag: str | None) -> subprocess.Popen:
    """A long sleep whose command line says `name` (what a name-based `pkill vllm` would hit)."""
    env = {k: v for k, v in os.environ.items() if k != "SPARKCTL_TAG"}
    if tag:
        env["SPARKCTL_TAG"] = tag
    return subprocess.Popen(["bash", "-c", f'exec -a "{name}" sleep 300'], env=env, start_new_session=True)


@pytest.mark.parametrize("tagged", [False, True], ids=["untagged", "other-cluster"])
def test_down_leaves_a_foreign_vllm_and_ray_running(tagged, tmp_path):
    inv = _inventory(tmp_path)
    procs = [_foreign("vllm serve /models/other --port 8013", "other-pair/head/vllm" if tagged else None),
             _foreign("ray start --head --block", "other-pair/head/ray" if tagged else None),
             _foreign("python -m vllm.entrypoints.openai.api_server", "foreign-tests/head/vllm" if tagged else None)]
    try:
        for _ in range(2):  # down twice (there is no state file either time)
            done = sparkctl("down", "-i", inv, "--json")
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["nothing_to_stop"] is True
            status = sparkctl("status", "-i", inv, "--json", "--sample", "0")
            assert json.loads(status.stdout)["state"] == "stopped"
        assert all(p.poll() is None for p in procs), "a foreign process was stopped"
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
