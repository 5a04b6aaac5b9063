"""End to end on the built-in local pair: vLLM's own multi-node data parallel
with vLLM for CPU (`data_parallel_size: 2`): the API server and engine 0 on the
head, a `--headless` engine 1 on the worker. Requests reach both engines, as the
API server's /metrics counts them per engine."""

from __future__ import annotations

import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sparkctl.serve.endpoint import Endpoint
from tests.conftest import REPO, SessionWatch, local_pair_processes, sparkctl

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

INV = str(REPO / "inventories" / "local.yaml")
PB = str(REPO / "playbooks" / "tiny-cpu-dp.yaml")


def per_engine(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:request_success_total":
                engine = sample.labels.get("engine", "?")
                counts[engine] = counts.get(engine, 0.0) + sample.value
    return counts


def test_data_parallel_two_engines_across_the_pair():
    assert local_pair_processes() == [], "a local-pair cluster is already running; run `sparkctl down -i inventories/local.yaml`"
    watch = SessionWatch()
    try:
        first = sparkctl("up", "-i", INV, "-p", PB, "--json")
        assert first.returncode == 0, first.stderr[-4000:]
        up = json.loads(first.stdout)
        before = per_engine(up["endpoint"])
        endpoint = Endpoint(up["endpoint"])
        for i in range(8):
            reply = endpoint.complete("tiny", prompt=f"request {i}", max_tokens=4)
            assert reply.status == 200, reply.body
        after = per_engine(up["endpoint"])
        served = {e: after[e] - before.get(e, 0.0) for e in after}
        print(f"requests per DP engine (the API server's /metrics): {served}")
        assert sum(served.values()) == 8 and len([n for n in served.values() if n > 0]) == 2, served

        down = sparkctl("down", "-i", INV, "--json")
        assert down.returncode == 0 and json.loads(down.stdout)["clean"], down.stderr
        watch.assert_nothing_left()
    finally:
        sparkctl("down", "-i", INV, "-q")
        watch.assert_nothing_left()
