"""`sparkctl bench` end to end against a real local streaming server with known
timing (tests/stream_server.py): the CLI as a user runs it, every fault path,
Ctrl-C. No root and no vLLM needed; the vLLM runs are in test_bench_vllm.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from tests.conftest import REPO, sparkctl


def _start(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.stream_server", "--port", "0", *args], cwd=REPO,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline() if proc.stdout else ""
    assert line.startswith("listening on "), line
    return proc, f"http://127.0.0.1:{line.split()[-1]}"


@pytest.fixture
def stream_server():
    started: list[subprocess.Popen] = []

    def start(*args: str) -> str:
        proc, url = _start(*args)
        started.append(proc)
        return url

    yield start
    for proc in started:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _bench_json(url: str, *args: str) -> dict:
    done = sparkctl("bench", "--url", url, "--json", "-q", *args, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_known_delays_are_measured_and_the_json_is_consistent(stream_server):
    url = stream_server("--ttft-ms", "40", "--itl-ms", "8")
    doc = _bench_json(url, "--concurrency", "1,4", "--request-rate", "8", "--input-len", "24", "--output-len", "12",
                      "--num-prompts", "16", "--percentiles", "50,90", "--warmup", "1")
    steps = doc["steps"]
    assert [s["max_concurrency"] for s in steps] == [1, 4, None]
    assert [s["request_rate"] for s in steps] == [None, None, 8.0]
    for s in steps:
        assert s["completed"] == 16 and s["failed"] == 0 and s["errors"] == {}
        assert s["request_throughput"] * s["duration"] == pytest.approx(s["completed"], rel=1e-9)
        assert s["total_output_tokens"] == 16 * 12
        assert s["total_input_tokens"] == 16 * 24  # the server's /tokenize counted the prompts
        for metric in ("ttft", "tpot", "itl", "e2el"):
            assert s[f"p50_{metric}_ms"] <= s[f"p90_{metric}_ms"] <= s[f"p99_{metric}_ms"]
        assert 40 <= s["median_ttft_ms"] < 40 * 1.25 + 5
        assert 8 * 0.95 <= s["median_tpot_ms"] < 8 * 1.25 + 2
        assert s["tok_s_per_user"] == pytest.approx(1000 / s["median_tpot_ms"])
        # nothing else uses this server: what it generated is what the client received
        assert s["server"]["generation_tokens"] == s["total_output_tokens"]
        assert s["server"]["requests_success"] == s["completed"]
        assert s["saturated"] is False
    assert doc["metadata"]["model"] == "stream" and doc["metadata"]["vllm_version"] == "stream-server"
    assert doc["metadata"]["prompt_lengths_exact"] is True


def test_chat_ttft_waits_for_text_not_the_role_chunk(stream_server):
    url = stream_server("--ttft-ms", "60", "--itl-ms", "2")
    doc = _bench_json(url, "--endpoint", "chat", "--concurrency", "1", "--input-len", "8", "--output-len", "4",
                      "--num-prompts", "4", "--warmup", "0")
    assert doc["steps"][0]["median_ttft_ms"] >= 60  # the role-only chunk comes at once


def test_old_metric_names_are_read(stream_server):
    url = stream_server("--old-metrics")
    doc = _bench_json(url, "--concurrency", "2", "--input-len", "8", "--output-len", "8", "--num-prompts", "8")
    assert doc["steps"][0]["server"]["kv_cache_usage_max"] is not None


def test_http_errors_are_counted_by_kind_and_the_run_goes_on(stream_server):
    url = stream_server("--fail-every", "3")
    doc = _bench_json(url, "--concurrency", "2", "--input-len", "8", "--output-len", "4", "--num-prompts", "12",
                      "--warmup", "0")
    step = doc["steps"][0]
    assert step["failed"] >= 3 and step["errors"] == {"http_500": step["failed"]}
    assert step["completed"] + step["failed"] == 12
    assert any("injected failure" in e for e in step["error_samples"])


def test_a_server_that_refuses_ignore_eos_is_named_in_the_report(stream_server):
    url = stream_server("--refuse-ignore-eos")
    doc = _bench_json(url, "--concurrency", "1", "--input-len", "8", "--output-len", "4", "--num-prompts", "2")
    assert doc["metadata"]["ignore_eos"] is False
    assert any("ignore_eos" in note for note in doc["notes"])


def test_api_key_comes_from_the_environment_never_argv(stream_server):
    url = stream_server("--api-key", "sekrit")
    refused = sparkctl("bench", "--url", url, "-q", "--num-prompts", "2", timeout=60)
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr and "API key" in refused.stderr
    ok = sparkctl("bench", "--url", url, "-q", "--json", "--concurrency", "1", "--input-len", "8", "--output-len", "2",
                  "--num-prompts", "2", env={"VLLM_API_KEY": "sekrit"}, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "sekrit" not in ok.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_endpoint_fails_in_seconds_naming_the_url():
    url = f"http://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    done = sparkctl("bench", "--url", url, "-q", timeout=60)
    assert done.returncode == 1
    assert url in done.stderr and "connection refused" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 15


def test_wrong_model_is_a_404_with_what_is_served(stream_server):
    url = stream_server()
    done = sparkctl("bench", "--url", url, "--model", "nope", "-q", timeout=60)
    assert done.returncode == 1
    assert "404 model not found" in done.stderr and "stream" in done.stderr


def test_not_openai_compatible_is_said_so():
    class NotOpenAI(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), NotOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        done = sparkctl("bench", "--url", f"http://127.0.0.1:{server.server_port}", "-q", timeout=60)
    finally:
        server.shutdown()
    assert done.returncode == 1 and "not OpenAI-compatible" in done.stderr


@pytest.mark.parametrize("flags, message", [
    (["--concurrency", "0"], "--concurrency"),
    (["--concurrency", "a,b"], "--concurrency"),
    (["--request-rate", "nan"], "--request-rate"),
    (["--request-rate", "-1"], "--request-rate"),
    (["--slo", "ttft=abc"], "--slo"),
    (["--slo", "latency=5"], "--slo"),
    (["--percentiles", "100"], "--percentiles"),
    (["--duration", "inf"], "--duration"),
    (["--num-prompts", "0"], "--num-prompts"),
    (["--input-len", "16", "--prefix-len", "16"], "--prefix-len"),
    (["--endpoint", "embeddings"], "--endpoint"),
])
def test_bad_flags_exit_2_without_touching_the_network(flags, message):
    done = sparkctl("bench", "--url", "http://127.0.0.1:9", *flags, timeout=60)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_prints_and_saves_what_was_measured(stream_server, tmp_path, sig):
    url = stream_server("--itl-ms", "20")
    out = tmp_path / "partial.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparkctl", "bench", "--url", url, "--concurrency", "2,4", "--input-len", "8",
         "--output-len", "16", "--num-prompts", "400", "--warmup", "0", "--save-result", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(6)  # well into the first step (400 requests at c=2 take about a minute)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "c=2" in stdout and "(cut)" in stdout
    saved = json.loads(out.read_text())
    assert saved["interrupted"] is True and len(saved["steps"]) == 1
    step = saved["steps"][0]
    assert step["interrupted"] is True and 0 < step["completed"] < 400


def test_compare_reads_sparkctl_and_vllm_results(stream_server, tmp_path):
    url = stream_server("--itl-ms", "1")
    mine = tmp_path / "mine.json"
    done = sparkctl("bench", "--url", url, "-q", "--concurrency", "1,2", "--input-len", "8", "--output-len", "8",
                    "--num-prompts", "6", "--save-result", str(mine), timeout=60)
    assert done.returncode == 0, done.stderr
    vllm_style = tmp_path / "vllm.json"
    vllm_style.write_text(json.dumps({
        "date": "20261129-120000", "backend": "vllm", "model_id": "x", "num_prompts": 10, "request_rate": "inf",
        "max_concurrency": 4, "duration": 2.0, "completed": 10, "failed": 0, "total_input_tokens": 100,
        "total_output_tokens": 200, "request_throughput": 5.0, "output_throughput": 100.0,
        "total_token_throughput": 150.0, "median_ttft_ms": 12.0, "p99_ttft_ms": 20.0, "median_tpot_ms": 4.0,
        "p99_tpot_ms": 5.0,
    }))
    plot = tmp_path / "cmp.png"
    done = sparkctl("bench", "compare", str(mine), str(vllm_style), "--json", "--plot", str(plot), timeout=60)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    assert [r["source"] for r in results] == ["sparkctl", "vllm bench serve"]
    assert len(results[0]["steps"]) == 2
    assert results[1]["steps"][0]["tok_s_per_user"] == pytest.approx(250.0)
    assert plot.stat().st_size > 10_000
    bad = tmp_path / "bad.json"
    bad.write_text("{\"hello\": 1}")
    done = sparkctl("bench", "compare", str(bad), timeout=60)
    assert done.returncode == 2 and "not a benchmark result" in done.stderr


def test_a_slo_names_the_highest_load_that_meets_it(stream_server):
    url = stream_server("--ttft-ms", "5", "--itl-ms", "3")
    doc = _bench_json(url, "--concurrency", "1,2", "--input-len", "8", "--output-len", "6", "--num-prompts", "8",
                      "--slo", "ttft=1000,tpot=1000")
    assert doc["slo"]["highest_load_meeting_slo"].startswith("c=2")
    for step in doc["steps"]:
        assert step["request_goodput"] == pytest.approx(step["request_throughput"])
    doc = _bench_json(url, "--concurrency", "1", "--input-len", "8", "--output-len", "6", "--num-prompts", "4",
                      "--slo", "ttft=1")
    assert doc["slo"]["highest_load_meeting_slo"] is None and doc["steps"][0]["request_goodput"] == 0


def test_text_report_has_a_row_per_step_and_the_server_view(stream_server, tmp_path):
    url = stream_server()
    plot = tmp_path / "bench.png"
    done = sparkctl("bench", "--url", url, "--concurrency", "1,2", "--input-len", "8", "--output-len", "4",
                    "--num-prompts", "4", "--plot", str(plot), timeout=60)
    assert done.returncode == 0, done.stderr
    table = done.stdout.splitlines()
    assert any(line.startswith("c=1 in=8 out=4") for line in table)
    assert any(line.startswith("c=2 in=8 out=4") for line in table)
    assert "the server's view" in done.stdout
    assert Path(plot).stat().st_size > 10_000
    assert "step 2/2" in done.stderr  # progress goes to stderr


def test_prompt_lengths_without_tokenize_are_named_approximate_or_use_a_local_tokenizer(stream_server):
    url = stream_server("--no-tokenize")
    doc = _bench_json(url, "--concurrency", "1", "--input-len", "20", "--output-len", "2", "--num-prompts", "3")
    assert doc["metadata"]["prompt_lengths_exact"] is False
    assert any("approximate" in note for note in doc["notes"])
    local = str(REPO / "playbooks" / "models" / "tiny-llama")
    doc = _bench_json(url, "--concurrency", "1", "--input-len", "20", "--output-len", "2", "--num-prompts", "3",
                      "--tokenizer", local)
    assert doc["metadata"]["prompt_lengths_exact"] is True and local in doc["metadata"]["tokenizer"]
    assert 3 * 19 <= doc["steps"][0]["total_input_tokens"] <= 3 * 21
    missing = sparkctl("bench", "--url", url, "--tokenizer", "/nonexistent", "-q", timeout=60)
    assert missing.returncode == 2 and "tokenizer.json" in missing.stderr


def test_duration_bound_steps_in_both_loops(stream_server):
    url = stream_server("--itl-ms", "5")
    doc = _bench_json(url, "--concurrency", "2", "--request-rate", "10", "--duration", "2", "--input-len", "8",
                      "--output-len", "8", "--warmup", "0")
    for step in doc["steps"]:
        assert step["completed"] >= 5 and step["failed"] == 0
        assert 1.5 <= step["duration"] <= 4.0  # no new request after 2 s; the last ones finish
