"""`sparkctl explain` through the real CLI: the JSON contract, bad input, the
playbook mode, bench comparison, calibration and the saved probe."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from sparkctl.perf import store
from sparkctl.probes.allreduce import ProbeRow
from tests.conftest import REPO, sparkctl

FIX = Path(__file__).parent / "fixtures"
CFG = FIX / "model-configs"
INV, PB = str(REPO / "inventories" / "local.yaml"), str(REPO / "playbooks" / "tiny-cpu.yaml")


def explain(*args):
    result = sparkctl("explain", *args, "--json")
    return result.returncode, (json.loads(result.stdout) if result.stdout.strip() else None), result.stderr


def test_json_contract():
    rc, r, err = explain("--model-config", str(CFG / "llama-3.3-70b.json"), "--tp", "2", "--concurrency", "4")
    assert rc == 0, err
    for key in ("decode_tok_s_per_user", "decode_tok_s_total", "ceiling_tok_s_per_user", "bytes_per_token", "bound",
                "ttft_ms", "breakdown", "layouts", "findings", "allreduce", "calibration"):
        assert key in r, key
    assert r["bound"] in {"memory", "compute", "network", "overhead"}
    assert set(r["breakdown"]) >= {"weights_ms", "kv_cache_ms", "compute_ms", "communication_ms", "overhead_ms", "step_ms"}
    assert r["decode_tok_s_total"] == pytest.approx(4 * r["decode_tok_s_per_user"], rel=1e-3)
    assert r["ceiling_tok_s_per_user"] > r["decode_tok_s_per_user"]
    assert r["allreduce"]["source"].startswith("default for a Spark pair")
    assert [lay["layout"] for lay in r["layouts"]] == ["TP=2", "2 x TP=1 replicas"]
    assert r["layout_winner"] == "TP=2"  # 141 GB of BF16 does not fit on one Spark


def test_model_dir_and_text_output():
    result = sparkctl("explain", "--model-config", str(REPO / "playbooks" / "models" / "tiny-llama"))
    assert result.returncode == 0, result.stderr
    assert "decode:" in result.stdout and "bound:" in result.stdout


@pytest.mark.parametrize("args,needle", [
    (["--model-config", "/nonexistent/config.json"], "not found"),
    (["--model-config", str(CFG / "llama-3.1-8b.json"), "--hardware", "b300"], "unknown hardware"),
    (["--model-config", str(CFG / "llama-3.1-8b.json"), "--tp", "0"], "--tp must be at least 1"),
    (["--model-config", str(CFG / "llama-3.1-8b.json"), "--quant", "fp3"], "invalid choice"),
    (["--model-config", str(CFG / "llama-3.1-8b.json"), "--concurrency", "many"], "invalid int"),
    ([], "no model given"),
])
def test_bad_input_exits_2(args, needle):
    result = sparkctl("explain", *args)
    assert result.returncode == 2
    assert needle in result.stderr and "Traceback" not in result.stderr


def test_missing_key_exits_2_naming_it(tmp_path):
    config = json.loads((CFG / "gpt-oss-120b.json").read_text())
    del config["num_key_value_heads"], config["num_attention_heads"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    result = sparkctl("explain", "--model-config", str(path), "--json")
    assert result.returncode == 2
    assert "num_attention_heads" in json.loads(result.stdout)["message"]


def test_playbook_mode_reads_the_model_and_tp():
    rc, r, err = explain("-i", INV, "-p", PB)
    assert rc == 0, err
    assert r["setup"]["tp"] == 2 and r["model"]["layers"] == 2
    assert r["weights"].startswith("fp32")
    assert any("not running" in n for n in r["model"]["notes"])


def test_bench_side_by_side_for_both_formats():
    rc, r, err = explain("--model-config", str(CFG / "llama-3.1-8b.json"), "--quant", "fp8",
                         "--bench", str(FIX / "bench" / "vllm-bench-serve.json"))
    assert rc == 0, err
    (step,) = r["bench"]
    assert step["concurrency"] == 1 and step["context"] == 1024 + 64
    assert step["measured_tok_s_per_user"] == pytest.approx(1000 / 48.8, rel=1e-3)
    assert 0.3 < step["mbu"] < 1.0
    rc, r, err = explain("--model-config", str(CFG / "llama-3.1-8b.json"), "--quant", "fp8", "--bench",
                         str(FIX / "bench" / "sparkctl-bench-c1-c8.json"))
    assert rc == 0, err
    assert [s["concurrency"] for s in r["bench"]] == [1, 8]
    assert any("ran 3.9 requests" in c for c in r["bench"][1]["likely_causes"])
    assert "batching-underused" in {f["code"] for f in r["findings"]}


def test_bad_bench_file_exits_2(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"steps": [{"completed": 3}]}))
    result = sparkctl("explain", "--model-config", str(CFG / "llama-3.1-8b.json"), "--bench", str(path))
    assert result.returncode == 2 and "output_throughput" in result.stderr


def test_calibrate_stores_the_overhead_and_later_predictions_use_it():
    rc, r, err = explain("-i", INV, "-p", PB, "--model-config", str(CFG / "llama-3.1-8b.json"),
                         "--calibrate", str(FIX / "bench" / "sparkctl-bench-c1-c8.json"))
    assert rc == 0, err
    fitted = r["calibrated"]["step_overhead_ms"]
    assert fitted > 0 and os.path.exists(r["calibrated"]["saved_to"])
    rc, again, err = explain("-i", INV, "-p", PB, "--model-config", str(CFG / "llama-3.1-8b.json"))
    assert rc == 0, err
    assert again["calibration"]["step_overhead_ms"] == pytest.approx(fitted, abs=1e-3)
    assert "explain --calibrate" in again["calibration"]["overhead_source"]


def test_calibrate_needs_the_cluster():
    result = sparkctl("explain", "--model-config", str(CFG / "llama-3.1-8b.json"), "--calibrate",
                      str(FIX / "bench" / "vllm-bench-serve.json"))
    assert result.returncode == 2


def probe_report(transport="ib"):
    rows = [ProbeRow(size, mode, 100, us, us * 1.5, us * 0.9, us, None, None)
            for mode, base in (("eager", 40.0), ("graph", 25.0)) for size, us in ((4096, base), (16384, base + 5))]
    return SimpleNamespace(rows=rows, world_size=2, backend="nccl",
                           transport={"head": {"transport": transport, "findings": []}, "worker": {"transport": "ib"}})


def test_probe_latency_is_saved_and_used():
    store.save_probe("local-pair", probe_report())
    record = store.load_probe("local-pair")
    assert record.latency_at(8192) == (30.0, "graph mode at 16384 B")
    rc, r, err = explain("-i", INV, "-p", PB)
    assert rc == 0, err
    assert r["allreduce"]["us"] == 25.0  # tiny-llama: 256 x 2 bytes, the 4096-byte row
    assert "last sparkctl nccl-probe of local-pair" in r["allreduce"]["source"]
    rc, r, _ = explain("-i", INV, "-p", PB, "--allreduce-us", "12")
    assert r["allreduce"] == {"us": 12.0, "source": "--allreduce-us"}


def test_socket_probe_becomes_a_finding():
    store.save_probe("local-pair", probe_report("socket"))
    rc, r, err = explain("-i", INV, "-p", PB)
    assert rc == 0, err
    assert "nccl-transport" in {f["code"] for f in r["findings"]}


def test_doctor_vllm_log_reports_performance_findings(tmp_path):
    log = tmp_path / "vllm.log"
    log.write_text("INFO non-default args: {'model': '/m', 'enforce_eager': True, 'gpu_memory_utilization': 0.97}\n"
                   "INFO Using device NVIDIA GB10\n")
    result = sparkctl("doctor", "vllm-log", str(log), "--json")
    assert result.returncode == 0
    codes = {f["code"] for f in json.loads(result.stdout)["performance_findings"]}
    assert codes == {"enforce-eager", "gpu-memory-utilization"}


def test_running_cluster_log_and_metrics_are_used(monkeypatch):
    from sparkctl.bench.metrics import MetricsSample
    from sparkctl.inventory import load_inventory
    from sparkctl.ops import explain as op
    from sparkctl.playbook import load_playbook

    log = "INFO non-default args: {'model': '/m', 'enforce_eager': True, 'max_num_seqs': 2}\nKV cache size: 50,000 tokens\n"
    monkeypatch.setattr(op, "_running_log", lambda inventory: (log, None))
    monkeypatch.setattr(op, "_live_metrics", lambda inventory, playbook: MetricsSample(at=0.0, running=2.0, waiting=6.0, kv_cache_usage=0.05))
    report = op.explain(op.ExplainOptions(model_config=str(CFG / "llama-3.1-8b.json"), concurrency=8),
                        inventory=load_inventory(INV), playbook=load_playbook(PB))
    codes = {f["code"] for f in report["findings"]}
    assert {"enforce-eager", "batching-underused"} <= codes
    assert report["setup"]["enforce_eager"] is True
    assert report["sources"]["vllm_log"].startswith("head")


def test_model_path_missing_everywhere_exits_2(tmp_path):
    pb = tmp_path / "pb.yaml"
    pb.write_text("model: /nonexistent/model\ntensor_parallel_size: 2\n")
    result = sparkctl("explain", "-i", INV, "-p", str(pb))
    assert result.returncode == 2
    assert "not found" in result.stderr and "--model-config" in result.stderr
