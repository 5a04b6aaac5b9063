"""End to end on the built-in local pair: two real vLLM for CPU servers (one per
"node", ports 8014 and 8015) behind a real vllm-router on 8013. Requests sent to
the router reach both replicas, as each server's own /metrics counts them;
status covers the router; down stops all three processes."""

from __future__ import annotations

import json
import shutil
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sparkctl.agent import node_agent
from sparkctl.serve.endpoint import Endpoint
from tests.conftest import REPO, SessionWatch, local_pair_processes, sparkctl

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

INV = str(REPO / "inventories" / "local.yaml")
PB = str(REPO / "playbooks" / "tiny-cpu-replicas.yaml")
ROUTER = REPO / ".venv" / "bin" / "vllm-router"


def successes(url: str) -> float:
    """vllm:request_success_total summed over finish reasons, from the server itself."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "vllm:request_success_total")


@pytest.mark.skipif(not ROUTER.exists() and not shutil.which("vllm-router"),
                    reason="vllm-router is not installed (pip install 'sparkctl[router]', or make setup)")
def test_two_replicas_behind_vllm_router():
    assert local_pair_processes() == [], "a local-pair cluster is already running; run `sparkctl down -i inventories/local.yaml`"
    watch = SessionWatch()
    try:
        first = sparkctl("up", "-i", INV, "-p", PB, "--json")
        assert first.returncode == 0, first.stderr
        up = json.loads(first.stdout)
        assert up["outcome"] == "started" and up["endpoint"].endswith(":8013")
        assert "replica 1 on worker at http://127.0.0.1:8015" in first.stderr
        watch.see()  # the router renames itself (setproctitle): status's records name it below

        replicas = ["http://127.0.0.1:8014", "http://127.0.0.1:8015"]
        # vllm-router goes ready once one replica is healthy; `up` asks each replica itself,
        # so both serve the moment it returns
        for index, url in enumerate(replicas):
            assert f"replica {index} ({url}) /v1/models lists 'tiny'; completion ok" in first.stderr
            assert Endpoint(url).health().status == 200, url
        before = [successes(url) for url in replicas]
        router = Endpoint(up["endpoint"])
        for i in range(6):
            reply = router.complete("tiny", prompt=f"request {i}", max_tokens=4)
            assert reply.status == 200, reply.body
        after = [successes(url) for url in replicas]
        served = [a - b for a, b in zip(after, before)]
        print(f"requests through the router per replica (from each server's /metrics): {served}")
        assert sum(served) == 6 and all(n >= 2 for n in served), served  # round robin: both replicas serve

        # bench through the router: the server's view is both replicas' /metrics, summed
        done = sparkctl("bench", "-i", INV, "--concurrency", "2", "--input-len", "16", "--output-len", "8",
                        "--num-prompts", "4", "--json")
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        step = doc["steps"][0]
        assert step["failed"] == 0 and step["server"]["requests_success"] == 4
        assert step["server"]["generation_tokens"] == step["total_output_tokens"] == 4 * 8
        assert any("sum of 2 servers' /metrics" in note for note in doc["notes"]), doc["notes"]

        status = sparkctl("status", "-i", INV, "--json")
        assert status.returncode == 0, status.stderr
        st = json.loads(status.stdout)
        assert st["state"] == "serving" and st["models"] == ["tiny"]
        assert [(m["url"], m["health"]) for m in st["members"]] == [(url, 200) for url in replicas]
        assert st["metrics"]["generation_tokens_total"] >= 6 * 4 + 4 * 8  # both replicas' counters
        head_roles = {r["role"] for r in st["nodes"]["head"]["records"]}
        assert head_roles == {"vllm", "router"}

        logs = sparkctl("logs", "-i", INV, "--node", "head", "--role", "router", "-n", "5")
        assert logs.returncode == 0, logs.stderr

        down = sparkctl("down", "-i", INV, "--json")
        assert down.returncode == 0, down.stderr
        result = json.loads(down.stdout)
        assert result["clean"] and len(result["nodes"]["head"]["stopped"]) >= 2
        watch.assert_nothing_left()
        assert node_agent.ports_in_use([8013, 8014, 8015]) == []
    finally:
        sparkctl("down", "-i", INV, "-q")
        watch.assert_nothing_left()
