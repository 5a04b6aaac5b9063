"""`sparkctl run` end to end over real SSH: offline SPMD jobs with vLLM's
external_launcher in a torchrun group across two namespaced nodes (TP=2 over
the fabric, vLLM for CPU, the tiny demo model with dummy weights): `generate`
gives identical outputs for identical prompts across runs, `throughput` gives
a row per batch size, and nothing is left on any node. The vllm_args table
and the result rendering are tested without nodes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from sparkctl.agent import node_agent
from sparkctl.errors import InputError
from sparkctl.inventory import load_inventory
from sparkctl.jobs.offline_worker import UnsupportedArgs, percentile, read_prompts, translate_vllm_args
from sparkctl.lifecycle.spec import log_path
from sparkctl.ops.run import RunOptions, RunResult, render_throughput, run_offline
from sparkctl.playbook import load_playbook
from sparkctl.progress import RecordingReporter
from tests.conftest import REPO

PROMPTS = ["The capital of France is", "Once upon a time", "The capital of France is", "1, 2, 3,"]


def demo_playbook(tmp_path: Path) -> str:
    """playbooks/tiny-cpu.yaml with absolute paths and one OpenMP thread per
    rank: the namespaced nodes share this host's few cores, and two ranks that
    each spin an OpenMP thread per core run ~40x slower (measured: 3.8 vs 162
    output tokens/s at batch 1)."""
    data = yaml.safe_load((REPO / "playbooks" / "tiny-cpu.yaml").read_text())
    data["env"]["OMP_NUM_THREADS"] = "1"
    data["model"] = str(REPO / "playbooks" / "models" / "tiny-llama")
    data["vllm"] = {"command": [str(REPO / ".venv" / "bin" / "python"), str(REPO / "playbooks" / "support" / "vllm_cpu.py")]}
    path = tmp_path / "pb.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


# ---------------------------------------------------------------------------
# without nodes
# ---------------------------------------------------------------------------
def test_demo_vllm_args_translate_to_llm_keywords():
    pb = load_playbook(str(REPO / "playbooks" / "tiny-cpu.yaml"))
    kwargs, ignored = translate_vllm_args(pb.vllm_args)
    assert kwargs == {"load_format": "dummy", "dtype": "float32", "max_model_len": 512, "optimization_level": 0}
    assert ignored == []


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--enforce-eager", "--gpu-memory-utilization=0.8", "-O", "3"], {"enforce_eager": True, "gpu_memory_utilization": 0.8, "optimization_level": 3}),
        (["-O=1", "--max-num-seqs", "16", "--no-enable-prefix-caching"], {"optimization_level": 1, "max_num_seqs": 16, "enable_prefix_caching": False}),
        (["--enable-expert-parallel", "--kv-cache-dtype", "fp8", "-q", "gptq"], {"enable_expert_parallel": True, "kv_cache_dtype": "fp8", "quantization": "gptq"}),
    ],
)
def test_vllm_args_table(args, expected):
    assert translate_vllm_args(args)[0] == expected


def test_server_only_flags_are_ignored_and_unknown_ones_refused():
    kwargs, ignored = translate_vllm_args(["--tool-call-parser", "hermes", "--enable-auto-tool-choice", "--dtype", "bfloat16"])
    assert kwargs == {"dtype": "bfloat16"} and ignored == ["--tool-call-parser", "--enable-auto-tool-choice"]
    with pytest.raises(UnsupportedArgs) as caught:
        translate_vllm_args(["--speculative-config", "{}", "--max-model-len", "x", "--enforce-eager=1"])
    message = str(caught.value)
    assert "--speculative-config" in message and "--max-model-len x (expected int)" in message
    assert "--enforce-eager=1 (takes no value)" in message and "Supported:" in message


def test_playbook_with_unsupported_args_is_refused_before_anything_starts(tmp_path):
    data = yaml.safe_load(Path(demo_playbook(tmp_path)).read_text())
    data["vllm_args"] = data["vllm_args"] + ["--speculative-config", "{}"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    inv = tmp_path / "inv.yaml"
    inv.write_text("cluster: x\nnodes:\n  - {name: a, host: 192.0.2.250}\n  - {name: b, host: 192.0.2.251}\n")
    with pytest.raises(InputError) as caught:
        run_offline(load_inventory(str(inv)), load_playbook(str(tmp_path / "bad.yaml")), "throughput", RunOptions(),
                    RecordingReporter())
    assert "--speculative-config" in caught.value.message


def test_generate_needs_input_and_output(tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text("cluster: x\nnodes:\n  - {name: a, host: 192.0.2.250}\n  - {name: b, host: 192.0.2.251}\n")
    with pytest.raises(InputError) as caught:
        run_offline(load_inventory(str(inv)), load_playbook(demo_playbook(tmp_path)), "generate", RunOptions(), RecordingReporter())
    assert "generate needs an input file and an output path" in caught.value.message
    with pytest.raises(InputError):
        run_offline(load_inventory(str(inv)), load_playbook(demo_playbook(tmp_path)), "bench", RunOptions(), RecordingReporter())


def test_prompts_from_jsonl_or_text(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a b"}\n\n{"prompt": "c"}\n')
    (tmp_path / "p.txt").write_text("first prompt\nsecond\n")
    assert read_prompts(str(tmp_path / "p.jsonl")) == ["a b", "c"]
    assert read_prompts(str(tmp_path / "p.txt")) == ["first prompt", "second"]
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5


def test_render_throughput():
    rows = [
        {"batch_size": b, "batches": 3, "requests": 3 * b, "prompt_tokens": 32, "max_tokens": 64, "output_tokens": 192 * b,
         "output_tokens_per_s": 30.0 * b, "requests_per_s": 0.47 * b, "mean_latency_s": 2.1, "p50_latency_s": 2.1,
         "p95_latency_s": 2.2}
        for b in (1, 2, 4)
    ]
    result = RunResult("throughput", "c", "/m", 2, 1, ["a", "b"], 40.0, 20.0, 29541, rows=rows)
    text = render_throughput(result)
    assert "BATCH" in text and "OUT TOK/S" in text and "      4     12       120.0" in text
    assert "best: batch 4 at 120.0 output tokens/s (4.0x batch 1)" in text
    assert "rows" in result.to_dict() and "outputs" not in result.to_dict()


# ---------------------------------------------------------------------------
# end to end across two namespaced nodes
# ---------------------------------------------------------------------------
def assert_nothing_left(cluster, inventory):
    for node in cluster.nodes:
        assert cluster.processes_besides_sshd(node) == [], node.name
    assert node_agent.tagged_processes(f"{inventory.cluster}/") == []


@pytest.mark.root
@pytest.mark.vllm
@pytest.mark.timeout(1200)
def test_run_generate_and_throughput_across_two_nodes(make_vcluster, tmp_path):
    cluster = make_vcluster(2)
    inventory = load_inventory(str(cluster.write_inventory(tmp_path / "inv.yaml")))
    playbook = load_playbook(demo_playbook(tmp_path))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))

    outputs = []
    for attempt in (1, 2):
        reporter = RecordingReporter()
        out = tmp_path / f"out{attempt}.jsonl"
        result = run_offline(inventory, playbook, "generate",
                             RunOptions(input_path=str(prompts), output_path=str(out), max_tokens=12), reporter)
        assert result.group["ok"] and set(result.group["nodes"]) == {"node0", "node1"}
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["prompt"] for r in rows] == PROMPTS
        assert all(len(r["token_ids"]) == 12 or r["finish_reason"] == "stop" for r in rows)
        assert all(r["token_ids"] for r in rows)
        assert rows[0]["token_ids"] == rows[2]["token_ids"]  # the same prompt, the same greedy output
        outputs.append([(r["text"], r["token_ids"], r["finish_reason"]) for r in rows])
        # one rank per node, meeting at the head's fabric address
        assert result.rendezvous == f"{cluster.nodes[0].fabric_ip}:{result.master_port}"
        # the nodes share this host's filesystem: read node1's own log of the job
        worker_log = Path(os.path.expanduser(log_path(inventory.node("node1"), inventory.cluster, "job"))).read_text()
        assert "[sparkctl-job rank 1] LLM ready" in worker_log and "(world size 2)" in worker_log
        assert result.startup_s and result.startup_s > 0 and result.summary["output_tokens"] == sum(len(r["token_ids"]) for r in rows)
        assert_nothing_left(cluster, inventory)
    assert outputs[0] == outputs[1]  # identical outputs for identical prompts across runs

    reporter = RecordingReporter()
    result = run_offline(inventory, playbook, "throughput",
                         RunOptions(batch_sizes=(1, 2, 4), prompt_tokens=32, max_tokens=32, repeats=3), reporter)
    assert [r["batch_size"] for r in result.rows] == [1, 2, 4]
    for row in result.rows:
        assert row["output_tokens"] == row["batch_size"] * 32 * 3  # ignore_eos: exactly max_tokens each
        assert row["output_tokens_per_s"] > 0 and row["requests_per_s"] > 0 and row["mean_latency_s"] > 0
        assert len(row["latencies_s"]) == 3
    print("\n" + render_throughput(result))
    assert_nothing_left(cluster, inventory)
