"""Misconfiguration rules: each fires on its evidence and stays quiet without it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sparkctl.perf.bench import read_bench
from sparkctl.perf.hardware import hardware
from sparkctl.perf.model_config import load_config, parse_model
from sparkctl.perf.predict import Scenario, predict
from sparkctl.perf.quant import plan_for
from sparkctl.perf.rules import (
    ServingConfig,
    apply_all,
    config_from_args,
    config_from_log,
    enforce_eager,
    gpu_memory_utilization,
    kv_underused,
    log_findings,
    max_num_seqs,
    nccl_transport,
    tp_latency_bound,
    tp_vs_replicas,
)
from sparkctl.perf.store import ProbeRecord

FIX = Path(__file__).parent / "fixtures"


def scenario(name="llama-3.1-8b", **kw):
    config, src = load_config(str(FIX / "model-configs" / f"{name}.json"))
    m = parse_model(config, src)
    return Scenario(model=m, plan=plan_for(m, kw.pop("quant", None)), hardware=hardware(kw.pop("hw", "gb10")), **kw)


def test_args_are_read_in_both_spellings():
    c = config_from_args(("--enforce-eager", "--gpu-memory-utilization=0.95", "--max-num-seqs", "8",
                          "--kv-cache-dtype", "fp8"), "pb")
    assert (c.enforce_eager, c.gpu_memory_utilization, c.max_num_seqs, c.kv_cache_dtype) == (True, 0.95, 8, "fp8")
    assert config_from_args((), "pb") == ServingConfig("pb")


def test_enforce_eager_predicts_a_gain():
    f = enforce_eager(ServingConfig("pb", enforce_eager=True), scenario())
    assert f is not None and "+" in f.predicted_gain and "remove --enforce-eager" in f.hint
    assert enforce_eager(ServingConfig("pb"), scenario()) is None
    assert enforce_eager(ServingConfig("log", enforce_eager=True, cuda=False), scenario()) is None


def test_gpu_memory_utilization_only_on_gb10():
    high = ServingConfig("pb", gpu_memory_utilization=0.95)
    assert gpu_memory_utilization(high, True).code == "gpu-memory-utilization"
    assert gpu_memory_utilization(high, False) is None
    assert gpu_memory_utilization(ServingConfig("pb", gpu_memory_utilization=0.85), True) is None


def test_tp_vs_replicas_fires_when_replicas_win():
    slow_link = predict(scenario("llama-3.2-1b", tp=2, concurrency=64, allreduce_us=400.0))
    f = tp_vs_replicas(slow_link)
    assert f is not None and "replicas" in f.message and "tok/s total" in f.predicted_gain
    assert tp_vs_replicas(predict(scenario("llama-3.3-70b", tp=2))) is None  # does not fit on one node


def test_tp_latency_bound_for_a_small_model():
    f = tp_latency_bound(predict(scenario("llama-3.2-1b", tp=2, allreduce_us=150.0)))
    assert f is not None and "all-reduces" in f.evidence
    assert tp_latency_bound(predict(scenario("llama-3.3-70b", tp=2, quant="fp8"))) is None


def test_max_num_seqs_far_below_kv_capacity():
    p = predict(scenario(concurrency=64, context=2048))
    f = max_num_seqs(ServingConfig("pb", max_num_seqs=4), p, None)
    assert f is not None and "raise --max-num-seqs" in f.hint
    assert max_num_seqs(ServingConfig("pb", max_num_seqs=128), p, None) is None


def test_batching_underused_from_a_bench_result():
    steps = read_bench(str(FIX / "bench" / "sparkctl-bench-c1-c8.json")).steps
    p = predict(scenario())
    assert kv_underused(steps[0], p) is None
    f = kv_underused(steps[1], p)
    assert f is not None and "running 3.9" in f.evidence


def test_nccl_on_sockets_or_one_twin():
    s = scenario("llama-3.3-70b", tp=2, allreduce_us=400.0)
    sockets = ProbeRecord(0.0, 2, "nccl", {}, {"a": "socket", "b": "ib"}, ())
    f = nccl_transport(sockets, predict(s))
    assert f is not None and "sockets on a" in f.message and "+" in f.predicted_gain
    twin = ProbeRecord(0.0, 2, "nccl", {}, {"a": "ib", "b": "ib"}, ("single-hca",))
    assert nccl_transport(twin, None).code == "nccl-transport"
    assert nccl_transport(ProbeRecord(0.0, 2, "nccl", {}, {"a": "ib"}, ()), None) is None


def test_log_rules_from_non_default_args():
    log = ("INFO [api_utils.py:286] non-default args: {'model': '/m', 'enforce_eager': True, "
           "'gpu_memory_utilization': 0.95, 'max_num_seqs': 4}\nNVIDIA GB10\n")
    codes = {f.code for f in log_findings(log, max_concurrency=40.0)}
    assert codes == {"enforce-eager", "gpu-memory-utilization", "max-num-seqs"}
    assert config_from_log("no args here") is None
    assert log_findings("non-default args: {'model': '/m'} CPU KV cache size: 10 tokens") == []


def test_apply_all_collects_playbook_rules():
    p = predict(replace(scenario(), eager=True))
    found = apply_all(p, ServingConfig("pb", enforce_eager=True, gpu_memory_utilization=0.97))
    assert {f.code for f in found} == {"enforce-eager", "gpu-memory-utilization"}


METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
vllm:num_requests_running{engine="0",model_name="m"} 4.0
vllm:num_requests_waiting{engine="0",model_name="m"} 12.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.08
vllm:prompt_tokens_total{engine="0",model_name="m"} 1234.0
"""


def test_metrics_snapshot_and_queue_rule():
    from sparkctl.bench.metrics import parse_metrics
    from sparkctl.perf.rules import queue_with_free_kv

    snap = parse_metrics(METRICS)
    assert (snap.running, snap.waiting, snap.kv_cache_usage) == (4.0, 12.0, 0.08)
    f = queue_with_free_kv(snap, ServingConfig("pb", max_num_seqs=4))
    assert f is not None and "12 waiting" in f.evidence and "--max-num-seqs 4" in f.hint
    assert queue_with_free_kv(parse_metrics(METRICS.replace(" 0.08", " 0.9")), None) is None
    assert parse_metrics("# nothing of vLLM here\n").running is None
    old_name = parse_metrics(METRICS.replace("kv_cache_usage_perc", "gpu_cache_usage_perc"))
    assert old_name.kv_cache_usage == 0.08


def test_rate_driven_bench_uses_requests_in_flight():
    from sparkctl.perf.bench import parse_bench

    result = parse_bench({"max_concurrency": None, "request_rate": 2.0, "output_throughput": 100.0, "completed": 10,
                          "request_throughput": 2.0, "mean_e2el_ms": 3000.0, "median_tpot_ms": 30.0}, "r.json")
    (step,) = result.steps
    assert result.kind == "vllm" and step.concurrency == 6 and step.tok_s_per_user == pytest.approx(1000 / 30)


def test_the_args_reader_is_linear_on_hostile_lines():
    """A 1 MiB line of braces took 17 s of CPU through the old regular expression."""
    import time

    from sparkctl.perf.rules import config_from_log

    for line in ("non-default args: {" + "{" * (1 << 20), "non-default args: " + "}" * (1 << 20),
                 "non-default args: {'a': " + "x" * (1 << 20)):
        started = time.process_time()
        assert config_from_log(line) is None
        assert time.process_time() - started < 1.0
    config = config_from_log("INFO non-default args: {'enforce_eager': True, 'max_num_seqs': 8} tail")
    assert config is not None and config.enforce_eager and config.max_num_seqs == 8
