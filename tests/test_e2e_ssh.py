"""End to end over real SSH: vLLM for CPU with TP=2 across two namespaced
nodes, the rendezvous on the fabric link, a completion in between, and
nothing sparkctl started left on any node afterwards."""

from __future__ import annotations

import json

import pytest

from sparkctl.serve.endpoint import Endpoint
from tests.conftest import REPO, sparkctl

pytestmark = [pytest.mark.root, pytest.mark.vllm, pytest.mark.timeout(900)]

PB = str(REPO / "playbooks" / "tiny-cpu.yaml")


def test_up_over_ssh_tp2_across_namespaced_nodes(make_vcluster, tmp_path):
    cluster = make_vcluster(2)
    inventory = tmp_path / "inv.yaml"
    cluster.write_inventory(inventory)
    inv = str(inventory)
    head, worker = cluster.nodes
    try:
        result = sparkctl("up", "-i", inv, "-p", PB, "--json")
        assert result.returncode == 0, result.stderr
        up = json.loads(result.stdout)
        assert up["outcome"] == "started"
        assert up["endpoint"] == f"http://{head.mgmt_ip}:8013"
        plan = up["network_plan"]
        assert plan["node0"]["master_addr"] == head.fabric_ip == "192.168.100.10"
        assert plan["node1"]["env"]["VLLM_HOST_IP"] == worker.fabric_ip
        assert plan["node1"]["env"]["GLOO_SOCKET_IFNAME"] == "enp1s0f1np1"

        # the worker really joined through the fabric address
        logs = json.loads(sparkctl("logs", "-i", inv, "--node", "node1", "-n", "400", "--json").stdout)
        worker_log = "\n".join(logs["nodes"]["node1"]["lines"])
        assert "distributed_init_method=tcp://192.168.100.10:29511" in worker_log
        assert "rank=1" in worker_log

        reply = Endpoint(up["endpoint"]).chat("tiny", "hello over the fabric", max_tokens=6)
        assert reply.status == 200, reply.body
        assert json.loads(reply.body)["usage"]["completion_tokens"] == 6

        status = json.loads(sparkctl("status", "-i", inv, "--json").stdout)
        assert status["state"] == "serving" and all(n["alive"] for n in status["nodes"].values())
        assert cluster.processes_besides_sshd(head, settle_s=0) and cluster.processes_besides_sshd(worker, settle_s=0)

        down = sparkctl("down", "-i", inv, "--json")
        assert down.returncode == 0, down.stderr
        assert json.loads(down.stdout)["clean"]
        assert cluster.processes_besides_sshd(head) == [] and cluster.processes_besides_sshd(worker) == []
    finally:
        sparkctl("down", "-i", inv, "-q")


def test_killed_worker_is_reported_and_down_cleans_up(make_vcluster, tmp_path):
    """The head's /health stays 200 when a remote headless node dies (vLLM only
    watches local workers); status must say degraded from the pid watch."""
    import os
    import signal

    cluster = make_vcluster(2)
    inventory = tmp_path / "inv.yaml"
    cluster.write_inventory(inventory)
    inv = str(inventory)
    head, worker = cluster.nodes
    try:
        result = sparkctl("up", "-i", inv, "-p", PB, "--json")
        assert result.returncode == 0, result.stderr
        worker_pid = json.loads(result.stdout)["nodes"]["node1"]["pid"]
        os.killpg(worker_pid, signal.SIGKILL)
        status = sparkctl("status", "-i", inv, "--json")
        st = json.loads(status.stdout)
        assert status.returncode == 1 and st["state"] == "degraded"
        assert st["nodes"]["node1"]["alive"] is False and st["nodes"]["node0"]["alive"] is True
        # up converges: the half-dead cluster is replaced by a healthy one
        again = sparkctl("up", "-i", inv, "-p", PB, "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["outcome"] == "started"
        assert "do not match this plan" in again.stderr or "stopping them" in again.stderr
        down = sparkctl("down", "-i", inv, "--json")
        assert down.returncode == 0 and json.loads(down.stdout)["clean"]
        assert cluster.processes_besides_sshd(head) == [] and cluster.processes_besides_sshd(worker) == []
    finally:
        sparkctl("down", "-i", inv, "-q")
