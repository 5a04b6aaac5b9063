"""`sparkctl bench` against real vLLM for CPU, TP=2 across the built-in local
pair, brought up once for the module: a concurrency ladder and a Poisson step
with consistent JSON, the server's token count equal to the client's, and the
side-by-side with `vllm bench serve` (scripts/bench_vs_vllm.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, SessionWatch, local_pair_processes, sparkctl

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1500)]

INV = str(REPO / "inventories" / "local.yaml")
PB = str(REPO / "playbooks" / "tiny-cpu.yaml")
URL = "http://127.0.0.1:8013"


@pytest.fixture(scope="module")
def serving_pair(tmp_path_factory):
    """The local pair serving tiny, shared by this module's tests; its state dir is theirs too."""
    assert local_pair_processes() == [], "a local-pair cluster is already running; run `sparkctl down -i inventories/local.yaml`"
    env = {"SPARKCTL_STATE_DIR": str(tmp_path_factory.mktemp("bench-state"))}
    watch = SessionWatch()
    try:
        up = sparkctl("up", "-i", INV, "-p", PB, "-q", env=env)
        assert up.returncode == 0, up.stderr
        watch.see()
        yield env
    finally:
        sparkctl("down", "-i", INV, "-q", env=env)
        watch.assert_nothing_left()


def test_ladder_and_poisson_step_on_the_local_pair(serving_pair, tmp_path):
    out = tmp_path / "result.json"
    done = sparkctl("bench", "-i", INV, "--concurrency", "1,3", "--request-rate", "2", "--input-len", "48",
                    "--output-len", "16", "--num-prompts", "12", "--percentiles", "50,90", "--json",
                    "--save-result", str(out), env=serving_pair)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert json.loads(out.read_text()) == doc
    meta = doc["metadata"]
    # the playbook came from the state `up` saved, the cluster is described
    assert meta["cluster"] == "local-pair" and meta["node_names"] == ["head", "worker"] and meta["nodes"] == 2
    assert meta["tensor_parallel_size"] == 2 and meta["backend"] == "mp" and meta["vllm_version"] == "0.32.0"
    assert "--load-format" in meta["vllm_args"] and meta["kv_cache"]["tokens"] > 0
    assert meta["prompt_lengths_exact"] is True and meta["tokenizer"].startswith("the server's /tokenize")
    assert [s["max_concurrency"] for s in doc["steps"]] == [1, 3, None]
    for s in doc["steps"]:
        assert s["failed"] == 0 and s["completed"] == 12
        assert s["request_throughput"] * s["duration"] == pytest.approx(12)
        assert s["total_output_tokens"] == 12 * 16  # ignore_eos: exactly --output-len each
        assert s["short_outputs"] == 0
        # vLLM holds back a token whose text is not yet a whole character and sends it with the
        # next one, so the chunk count can be below the usage count: reported, not an error
        assert 0 <= s["token_count_mismatches"] <= s["completed"]
        assert 12 * 47 <= s["total_input_tokens"] <= 12 * 49
        for metric in ("ttft", "tpot", "itl", "e2el"):
            assert 0 < s[f"p50_{metric}_ms"] <= s[f"p90_{metric}_ms"] <= s[f"p99_{metric}_ms"]
        assert s["median_ttft_ms"] < s["median_e2el_ms"]
        assert s["output_throughput_per_node"] == pytest.approx(s["output_throughput"] / 2)
        server = s["server"]
        # nothing else uses the server: its generation-token delta is what the client received
        assert server["generation_tokens"] == s["total_output_tokens"]
        assert server["requests_success"] == 12
        assert server["running_max"] >= 1 and 0 < server["kv_cache_usage_max"] <= 1


def test_side_by_side_with_vllm_bench_serve(serving_pair):
    """Same server, same shapes, alternating tools: request throughput, median TTFT
    and median TPOT agree within 10%."""
    done = subprocess.run(
        [sys.executable, "scripts/bench_vs_vllm.py", "--url", URL, "--model", "tiny",
         "--tokenizer", "playbooks/models/tiny-llama", "--concurrency", "1,4", "--rounds", "3",
         "--input-len", "64", "--output-len", "32", "--num-prompts", "24", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout)
    print(json.dumps(rows, indent=1))
    assert {(r["concurrency"], r["metric"]) for r in rows} == {
        (c, m) for c in (1, 4) for m in ("request_throughput", "median_ttft_ms", "median_tpot_ms")}
    off = [r for r in rows if not 0.9 <= r["ratio"] <= 1.1]
    assert off == [], off
