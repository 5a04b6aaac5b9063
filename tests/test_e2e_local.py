"""End to end on the built-in local pair: real vLLM for CPU, TP=2 across two
"nodes" on this machine. up -> completion -> status -> up again -> down -> down again."""

from __future__ import annotations

import json

import pytest

from sparkctl.agent import node_agent
from sparkctl.serve.endpoint import Endpoint
from tests.conftest import REPO, SessionWatch, local_pair_processes, sparkctl

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

INV = str(REPO / "inventories" / "local.yaml")
PB = str(REPO / "playbooks" / "tiny-cpu.yaml")


def test_local_pair_lifecycle():
    assert local_pair_processes() == [], "a local-pair cluster is already running; run `sparkctl down -i inventories/local.yaml`"
    watch = SessionWatch()
    try:
        first = sparkctl("up", "-i", INV, "-p", PB, "--json")
        assert first.returncode == 0, first.stderr
        up = json.loads(first.stdout)
        assert up["outcome"] == "started" and up["served_model_name"] == "tiny"
        assert up["kv_cache"]["tokens"] > 0 and up["kv_cache"]["max_concurrency"] > 0
        assert 0 < up["timings"]["vllm_startup_s"] <= up["timings"]["total_s"]
        assert "stage: api up" in first.stderr and "/health 200" in first.stderr  # progress per node and stage
        pids = {name: node["pid"] for name, node in up["nodes"].items()}
        assert set(pids.values()) <= {p["sid"] for p in watch.see()}  # each node's launch leads its own session
        assert set(pids) == {"head", "worker"}
        assert up["network_plan"]["worker"]["env"]["GLOO_SOCKET_IFNAME"] == "lo"

        reply = Endpoint(up["endpoint"]).complete("tiny", prompt="The Spark pair", max_tokens=8)
        assert reply.status == 200, reply.body
        assert json.loads(reply.body)["usage"]["completion_tokens"] == 8

        status = sparkctl("status", "-i", INV, "--json")
        assert status.returncode == 0, status.stderr
        st = json.loads(status.stdout)
        assert st["state"] == "serving" and st["health"] == 200 and st["models"] == ["tiny"]
        assert {n: s["records"][0]["pid"] for n, s in st["nodes"].items()} == pids
        assert all(s["alive"] for s in st["nodes"].values())

        again = sparkctl("up", "-i", INV, "-p", PB, "--json")
        assert again.returncode == 0, again.stderr
        second = json.loads(again.stdout)
        assert second["outcome"] == "already-up"
        assert {name: node["pid"] for name, node in second["nodes"].items()} == pids  # nothing new started

        down = sparkctl("down", "-i", INV, "--json")
        assert down.returncode == 0, down.stderr
        result = json.loads(down.stdout)
        assert result["clean"] and not result["nothing_to_stop"]
        assert all(node["stopped"] for node in result["nodes"].values())
        watch.assert_nothing_left()
        in_use = node_agent.ports_in_use([8013, 29511])
        assert in_use == [], in_use

        again_down = sparkctl("down", "-i", INV, "--json")
        assert again_down.returncode == 0
        assert json.loads(again_down.stdout)["nothing_to_stop"] is True

        stopped = sparkctl("status", "-i", INV, "--json")
        assert json.loads(stopped.stdout)["state"] == "stopped" and stopped.returncode == 0
    finally:
        sparkctl("down", "-i", INV, "-q")
        watch.assert_nothing_left()
