"""The all-reduce probe without a cluster: sizes, the job, the worker's maths,
its result line, verdicts, token cost, the nccl-tests engine and rendering."""

from __future__ import annotations

import ast
import json
import math
import random
import sys
from pathlib import Path

import pytest

from sparkctl.backends.torchrun import plan_torchrun
from sparkctl.errors import DeadlineExceeded, InputError, OperationFailed
from sparkctl.findings import Finding, Severity, probe_status
from sparkctl.inventory import load_inventory
from sparkctl.lifecycle.spec import node_dir
from sparkctl.probes import allreduce_worker as worker
from sparkctl.probes import nccl_tests_engine as engine
from sparkctl.probes.allreduce import (
    GIB,
    KIB,
    MIB,
    ProbeOptions,
    ProbeResult,
    ProbeRow,
    analyse,
    build_job,
    check_dict,
    judge,
    latency_at,
    parse_result,
    parse_size,
    render_summary,
    render_table,
    size_sweep,
    token_cost,
    transport_summary,
)
from sparkctl.probes.nccl_tests import parse_nccl_tests
from tests.conftest import network_plans

FIXTURES = Path(__file__).parent / "fixtures"

# A real result line, captured from `torchrun --nproc-per-node 2 allreduce_worker.py --sizes
# 8,1024,65536 --time-budget 0.05 --min-iters 10 --max-iters 100 --model-config .../tiny-llama/config.json`
# (gloo on CPU; torchrun's own warnings around it as in a node's log).
CAPTURED_LOG = """\
W0515 18:20:01.123000 1240 torch/distributed/run.py:852] Setting OMP_NUM_THREADS environment variable for each process to be 1
SPARKCTL-PROBE-PROGRESS 8 B eager: p50 353.6 us, busbw 0.000 GB/s (100 iterations)
SPARKCTL-PROBE-PROGRESS 1024 B eager: p50 617.8 us, busbw 0.002 GB/s (12 iterations)
SPARKCTL-PROBE-PROGRESS 65536 B eager: p50 684.0 us, busbw 0.096 GB/s (60 iterations)
SPARKCTL-PROBE-RESULT {"world_size":2,"backend":"gloo","dtype":"float32","modes":["eager"],"skipped_modes":{"graph":"CUDA graphs need GPUs; this run used gloo on CPU"},"ranks_agree":true,"rows":[{"size_bytes":8,"mode":"eager","iterations":100,"correct":true,"p50_us":353.5854998517607,"p99_us":4170.844299992496,"min_us":206.4059999611345,"mean_us":664.3126699782442,"algbw_gbs":2.2625362192041158e-05,"busbw_gbs":2.2625362192041158e-05},{"size_bytes":1024,"mode":"eager","iterations":12,"correct":true,"p50_us":617.7580000894523,"p99_us":3534.7874300305207,"min_us":432.72199991406524,"mean_us":987.9115834034262,"algbw_gbs":0.0016576070238697408,"busbw_gbs":0.0016576070238697408},{"size_bytes":65536,"mode":"eager","iterations":60,"correct":true,"p50_us":684.0164999175613,"p99_us":8231.747749896384,"min_us":435.2260002633557,"mean_us":1915.8013333632578,"algbw_gbs":0.09581055428911218,"busbw_gbs":0.09581055428911218}],"wall_s":0.229,"settings":{"warmup":5,"min_iters":10,"max_iters":100,"time_budget_s":0.05,"graph_batch":10},"ranks":[{"rank":0,"local_rank":0,"host":"vm","pid":1249,"device":"cpu"},{"rank":1,"local_rank":1,"host":"vm","pid":1250,"device":"cpu"}],"versions":{"torch":"2.13.0+cpu","python":"3.11.7"},"model_config":{"model_type":"llama","num_hidden_layers":2,"hidden_size":256,"torch_dtype":"float32","architectures":["LlamaForCausalLM"],"path":"/work/main/playbooks/models/tiny-llama/config.json"}}
"""

GPT_OSS_120B = {"model_type": "gpt_oss", "num_hidden_layers": 36, "hidden_size": 2880, "torch_dtype": "bfloat16",
                "num_local_experts": 128, "num_experts_per_tok": 4}


@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "inv.yaml"
    path.write_text(
        "cluster: pair\n"
        "ssh: {user: root}\n"
        "nodes:\n"
        "  - {name: spark-a, host: 10.0.0.1, fabric_ip: 192.168.100.10, role: head}\n"
        "  - {name: spark-b, host: 10.0.0.2, fabric_ip: 192.168.100.11}\n"
    )
    return load_inventory(str(path))


@pytest.fixture
def plans(inventory):
    return network_plans(inventory, {"spark-a": {"enp1s0f1np1": ["192.168.100.10/24"]},
                                    "spark-b": {"enp1s0f1np1": ["192.168.100.11/24"]}})


def row(size, p50, busbw=None, mode="eager", world=2, **kw):
    algbw = size / (p50 * 1e-6) / 1e9
    return ProbeRow(size_bytes=size, mode=mode, iterations=100, p50_us=p50, p99_us=p50 * 1.5, min_us=p50 * 0.9,
                    mean_us=p50 * 1.1, algbw_gbs=algbw,
                    busbw_gbs=busbw if busbw is not None else algbw * 2 * (world - 1) / world, **kw)


def gpu_result(rows, **kw):
    ranks = [{"rank": 0, "host": "spark-a", "device": "NVIDIA GB10"}, {"rank": 1, "host": "spark-b", "device": "NVIDIA GB10"}]
    return ProbeResult(world_size=2, backend="nccl", rows=rows, modes=sorted({r.mode for r in rows}),
                       ranks_agree=kw.pop("ranks_agree", True), ranks=ranks, **kw)


HEALTHY_ROWS = [row(8, 18.0), row(4 * KIB, 26.0), row(8 * KIB, 27.8), row(16 * KIB, 31.9),
                row(256 * MIB, 12538.0, busbw=21.41), row(GIB, 45459.0, busbw=23.62)]
IB_LOG = (FIXTURES / "nccl-debug" / "two-sparks-2.30.7-ib-confirm.log").read_text()


# ---------------------------------------------------------------- sizes and options
@pytest.mark.parametrize("text,expected", [
    ("8", 8), ("8B", 8), ("4K", 4096), ("4k", 4096), ("4KiB", 4096), ("4KB", 4096), ("16M", 16 * MIB),
    ("1G", GIB), ("1.5K", 1536), (" 2g ", 2 * GIB), (64, 64),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1.3", "4X", "-8", "0", "1e3"])
def test_parse_size_rejects(text):
    with pytest.raises(InputError):
        parse_size(text)


def test_default_sweep_is_8B_to_1GiB_doubling():
    sizes = ProbeOptions().size_list()
    assert sizes[0] == 8 and sizes[-1] == GIB and len(sizes) == 28
    assert all(b == 2 * a for a, b in zip(sizes, sizes[1:]))


def test_sweep_keeps_an_off_grid_maximum_and_explicit_lists_win():
    assert size_sweep(8, 100, 4) == (8, 32, 100)
    assert ProbeOptions(sizes=(64, 8, 64, 1024)).size_list() == (8, 64, 1024)
    with pytest.raises(InputError):
        size_sweep(1024, 8)
    with pytest.raises(InputError):
        size_sweep(8, 1024, 1)


@pytest.mark.parametrize("kwargs,needle", [
    ({"modes": ("eager", "fast")}, "modes"),
    ({"min_bytes": 2}, "less than one float32 element"),
    ({"max_bytes": 16 * GIB}, "above 8 GiB"),
    ({"min_iters": 50, "max_iters": 10}, "min_iters"),
    ({"dtype": "int8"}, "dtype"),
    ({"engine": "mpi"}, "engine"),
])
def test_bad_options_are_input_errors(kwargs, needle):
    with pytest.raises(InputError) as caught:
        ProbeOptions(**kwargs)
    assert needle in caught.value.message + " ".join(caught.value.details)


def test_deadline_grows_with_the_sweep_and_can_be_fixed():
    small = ProbeOptions(max_bytes=MIB).deadline_s()
    big = ProbeOptions().deadline_s()
    assert 300 < small < big < 1800
    assert ProbeOptions(timeout_s=42).deadline_s() == 42


# ---------------------------------------------------------------- the job
def test_build_job_ships_the_worker_and_round_trips_its_arguments(inventory, plans):
    options = ProbeOptions(max_bytes=MIB, modes=("eager", "graph"), dtype="bfloat16", time_budget_s=0.5)
    job, files = build_job(inventory, options, python="/venv/bin/python", master_port=29507,
                           model_config_path="/models/m/config.json", env={"NCCL_IB_HCA": "=rocep1s0f1,roceP2p1s0f1"})
    assert job.role == "probe" and job.master_port == 29507 and job.nproc_per_node == 1
    assert job.env["NCCL_DEBUG"] == "INFO" and job.env["NCCL_DEBUG_SUBSYS"] == "INIT,NET"
    assert job.env["NCCL_IB_HCA"] == "=rocep1s0f1,roceP2p1s0f1"
    assert job.program[0] == "allreduce_worker.py"
    args = worker.parse_args(list(job.program[1:]))
    assert tuple(args.sizes) == options.size_list()
    assert args.modes == ["eager", "graph"] and args.dtype == "bfloat16" and args.time_budget == 0.5
    assert args.model_config == "/models/m/config.json"
    # the file lands in each node's sparkctl directory, run_group's cwd for the launch
    for node in inventory.nodes:
        (path, source), = files[node.name].items()
        assert path == f"{node_dir(node, inventory.cluster)}/allreduce_worker.py"
        assert "SPARKCTL-PROBE-RESULT" in source
    specs = plan_torchrun(inventory, plans, job)
    head = specs[0]
    assert head.argv[:3] == ("/venv/bin/python", "-m", "torch.distributed.run")
    assert "--rdzv-endpoint" in head.argv and "192.168.100.10:29507" in head.argv
    assert specs[1].env["GLOO_SOCKET_IFNAME"] == "enp1s0f1np1" and specs[1].env["NCCL_DEBUG"] == "INFO"
    assert head.listen_ports == (29507,)


def test_worker_imports_only_torch_and_the_standard_library():
    tree = ast.parse(Path(worker.__file__).read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module.split(".")[0])
    assert "sparkctl" not in modules
    assert modules - {"torch", "__future__"} <= set(sys.stdlib_module_names)


def test_worker_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        worker.parse_args(["--sizes", "2", "--dtype", "float32"])
    with pytest.raises(SystemExit):
        worker.parse_args(["--sizes", "8", "--modes", "eager,turbo"])


# ---------------------------------------------------------------- the worker's maths
def test_busbw_factor_is_2_n_minus_1_over_n():
    assert worker.busbw_factor(2) == 1.0
    assert worker.busbw_factor(4) == 1.5
    assert worker.busbw_factor(8) == 1.75


def test_summarize_percentiles_in_microseconds():
    times = [10e-6] * 51 + [20e-6] * 48 + [1e-3]  # one outlier
    stats = worker.summarize(times)
    assert stats["p50_us"] == pytest.approx(10.0)
    assert stats["min_us"] == pytest.approx(10.0)
    assert stats["p99_us"] == pytest.approx(20 + (1000 - 20) * 0.01)  # between the 99th and 100th value
    assert stats["mean_us"] == pytest.approx((51 * 10 + 48 * 20 + 1000) / 100)


def test_bandwidth_from_the_p50():
    bw = worker.bandwidth(1_000_000, 10.0, 4)
    assert bw["algbw_gbs"] == pytest.approx(100.0)  # 1 MB in 10 us
    assert bw["busbw_gbs"] == pytest.approx(150.0)  # x 2(4-1)/4
    assert worker.bandwidth(GIB, 45459.0, 2)["busbw_gbs"] == pytest.approx(23.62, abs=0.01)  # JP-NCCL's 1 GiB row


def test_percentile_matches_numpy_linear():
    numpy = pytest.importorskip("numpy")
    rng = random.Random(7)
    for n in (1, 2, 3, 10, 101, 1000):
        values = sorted(rng.uniform(1, 100) for _ in range(n))
        for pct in (0, 1, 50, 90, 99, 100):
            assert worker.percentile(values, pct) == pytest.approx(float(numpy.percentile(values, pct)))
    assert worker.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    with pytest.raises(ValueError):
        worker.percentile([], 50)


def test_iterations_fit_the_budget_within_bounds():
    assert worker.choose_iterations(1e-3, 0.25, 20, 1000) == 250
    assert worker.choose_iterations(1e-6, 0.25, 20, 1000) == 1000
    assert worker.choose_iterations(0.05, 0.25, 20, 1000) == 20
    assert worker.choose_iterations(0.0, 0.25, 20, 1000) == 1000


def test_never_more_bytes_than_asked():
    assert worker.element_count(10, "float32") == 2  # 8 bytes, not 12
    assert worker.element_count(8, "bfloat16") == 4
    assert worker.element_count(GIB, "float32") * 4 == GIB


def test_model_summary_reads_text_config_and_moe_hints(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llava", "text_config": {
        "num_hidden_layers": 48, "hidden_size": 2048, "torch_dtype": "bfloat16", "num_experts": 128,
        "num_experts_per_tok": 8}, "quantization_config": {"quant_method": "fp8"}}))
    summary = worker.model_summary(str(path))
    assert summary["num_hidden_layers"] == 48 and summary["hidden_size"] == 2048
    assert summary["num_experts"] == 128 and summary["quantization"] == "fp8"
    assert summary["path"] == str(path)


# ---------------------------------------------------------------- the result line
def test_parse_result_reads_a_captured_line():
    result = parse_result(CAPTURED_LOG)
    assert result.world_size == 2 and result.backend == "gloo" and result.ranks_agree is True
    assert [r.size_bytes for r in result.rows] == [8, 1024, 65536]
    assert result.rows[0].iterations == 100 and result.rows[0].p50_us == pytest.approx(353.585, abs=1e-3)
    assert result.skipped_modes == {"graph": "CUDA graphs need GPUs; this run used gloo on CPU"}
    assert result.model_config["hidden_size"] == 256
    assert [r["host"] for r in result.ranks] == ["vm", "vm"]


def test_parse_result_without_a_line_names_the_rank_error():
    log = "W0515 something\nSPARKCTL-PROBE-ERROR rank 1: RuntimeError: Connection reset by peer\nTraceback ...\n"
    with pytest.raises(OperationFailed) as caught:
        parse_result(log)
    assert caught.value.details == ["SPARKCTL-PROBE-ERROR rank 1: RuntimeError: Connection reset by peer"]
    with pytest.raises(OperationFailed, match="cannot be read"):
        parse_result('SPARKCTL-PROBE-RESULT {"world_size": 2}\n')


# ---------------------------------------------------------------- verdicts
def ib_transports():
    return {"spark-a": transport_summary(IB_LOG), "spark-b": transport_summary(IB_LOG)}


def test_gpu_verdict_ok():
    verdict, checks = judge(gpu_result(HEALTHY_ROWS), ib_transports(), ProbeOptions())
    assert verdict == "ok", checks
    statuses = {c.code: probe_status(c.severity) for c in checks}
    assert statuses["busbw"] == "ok" and statuses["small-latency"] == "ok" and statuses["transport"] == "ok"


def test_gpu_verdict_degraded_on_low_busbw():
    rows = HEALTHY_ROWS[:-1] + [row(GIB, 383000.0, busbw=2.8)]
    verdict, checks = judge(gpu_result(rows), ib_transports(), ProbeOptions())
    assert verdict == "degraded"
    bad = [c for c in checks if probe_status(c.severity) == "degraded"]
    assert [c.code for c in bad] == ["busbw"] and "2.80 GB/s" in bad[0].message and "13%" in bad[0].message


def test_busbw_threshold_is_overridable():
    rows = HEALTHY_ROWS[:-1] + [row(GIB, 80000.0, busbw=13.4)]  # one twin only
    assert judge(gpu_result(rows), ib_transports(), ProbeOptions())[0] == "degraded"
    assert judge(gpu_result(rows), ib_transports(), ProbeOptions(expect_busbw_gbs=14.0))[0] == "ok"


def test_gpu_verdict_degraded_on_small_message_latency():
    rows = [r if r.size_bytes != 8 * KIB else row(8 * KIB, 80.0) for r in HEALTHY_ROWS]
    verdict, checks = judge(gpu_result(rows), ib_transports(), ProbeOptions())
    assert verdict == "degraded"
    assert any(c.code == "small-latency" and probe_status(c.severity) == "degraded" and "80.0 us" in c.message for c in checks)
    assert judge(gpu_result(rows), ib_transports(), ProbeOptions(max_small_latency_us=100))[0] == "ok"


def test_latency_at_the_small_size_is_interpolated_when_not_measured():
    rows = [row(4 * KIB, 20.0), row(16 * KIB, 40.0), row(256 * MIB, 12538.0, busbw=21.4)]
    verdict, checks = judge(gpu_result(rows), ib_transports(), ProbeOptions())
    latency = next(c for c in checks if c.code == "small-latency")
    assert "28.3 us (interpolated)" in latency.message  # geometric mean of 20 and 40
    assert verdict == "ok"


def test_gpu_verdict_degraded_on_socket_fallback_and_bad_gid():
    socket_log = (FIXTURES / "nccl-debug" / "ec2-socket-no-ib-device.log").read_text()
    gid_log = (FIXTURES / "nccl-debug" / "spark-link-local-gid-mtu9000.log").read_text()
    transports = {"spark-a": transport_summary(socket_log), "spark-b": transport_summary(gid_log)}
    verdict, checks = judge(gpu_result(HEALTHY_ROWS), transports, ProbeOptions())
    assert verdict == "degraded"
    reasons = {c.code: c.message for c in checks if probe_status(c.severity) == "degraded"}
    assert "spark-a" in reasons["transport"] and "TCP sockets" in reasons["transport"]
    assert "nccl:link-local-gid" in reasons


def test_gpu_verdict_inconclusive_without_a_large_size():
    rows = [r for r in HEALTHY_ROWS if r.size_bytes <= MIB]
    verdict, checks = judge(gpu_result(rows), ib_transports(), ProbeOptions())
    assert verdict == "inconclusive"
    assert any(c.code == "busbw" and probe_status(c.severity) == "not-judged" and "1G" in c.message for c in checks)


def test_cpu_gloo_is_inconclusive_not_degraded():
    rows = [row(8, 300.0), row(8 * KIB, 500.0), row(GIB, 9e6, busbw=0.1)]  # far below every threshold
    result = ProbeResult(world_size=2, backend="gloo", rows=rows, modes=["eager"], ranks_agree=True)
    verdict, checks = judge(result, {}, ProbeOptions())
    assert verdict == "inconclusive"
    assert [probe_status(c.severity) for c in checks] == ["not-judged"] and "do not apply" in checks[0].message


def test_wrong_sums_are_degraded_even_on_cpu():
    result = ProbeResult(world_size=2, backend="gloo", rows=[row(8, 300.0)], modes=["eager"], ranks_agree=False)
    verdict, checks = judge(result, {}, ProbeOptions())
    assert verdict == "degraded" and checks[0].code == "correctness"


def test_all_ranks_on_one_host_is_not_a_link_measurement():
    result = gpu_result(HEALTHY_ROWS)
    result.ranks = [{"rank": 0, "host": "spark-a"}, {"rank": 1, "host": "spark-a"}]
    assert judge(result, ib_transports(), ProbeOptions())[0] == "inconclusive"


def test_analyse_reads_transport_per_node_from_nccl_logs():
    log = (FIXTURES / "nccl-debug" / "two-sparks-ib-gid0-mtu1024.log").read_text()
    report = analyse(gpu_result(HEALTHY_ROWS), {"spark-a": log, "spark-b": log}, ProbeOptions())
    t = report.transport["spark-a"]
    assert t["transport"] == "ib" and "rocep1s0f1" in t["devices"] and "roceP2p1s0f1" in t["devices"]
    assert {q["gid_index"] for q in t["qps"]} == {0, 3} and {q["mtu_bytes"] for q in t["qps"]} == {1024}
    assert report.verdict == "degraded" and any("GID" in r for r in report.verdict_reasons)
    assert report.verdict_reasons[0].startswith("spark-a:")  # degraded reasons first
    d = report.to_dict()
    assert set(d) >= {"rows", "transport", "verdict", "verdict_reasons", "checks", "thresholds", "token_cost",
                      "ranks_agree", "world_size", "backend", "modes"}
    assert [r["size_bytes"] for r in d["rows"]["eager"]] == [r.size_bytes for r in HEALTHY_ROWS]
    json.dumps(d)  # serialisable as is


def test_analyse_names_the_gloo_interface():
    result = parse_result(CAPTURED_LOG)
    report = analyse(result, {"node0": "", "node1": ""}, ProbeOptions(), interfaces={"node0": "eth1", "node1": "eth1"})
    assert report.transport["node0"]["transport"] == "tcp" and report.transport["node0"]["interface"] == "eth1"
    assert report.verdict == "inconclusive"


# ---------------------------------------------------------------- token cost
def test_token_cost_for_gpt_oss_120b_under_tp2():
    rows = [row(4 * KIB, 27.10), row(8 * KIB, 27.82), row(4 * KIB, 40.0, mode="graph"), row(8 * KIB, 46.0, mode="graph")]
    cost = token_cost(rows, GPT_OSS_120B, tensor_parallel_size=2)
    assert cost["applies"] and cost["moe"]
    assert cost["all_reduces_per_token"] == 72
    assert cost["message_bytes"] == 2880 * 2  # 5.6 KiB of bf16 per token at batch 1
    eager = cost["modes"]["eager"]
    w = math.log(5760 / 4096) / math.log(2)
    expected = math.exp(math.log(27.10) + w * (math.log(27.82) - math.log(27.10)))
    assert eager["latency_us"] == pytest.approx(expected, abs=1e-3)
    assert eager["latency_basis"] == {"method": "interpolated", "sizes": [4096, 8192]}
    assert eager["ms_per_token"] == pytest.approx(72 * expected / 1000, abs=1e-4)
    assert eager["max_tokens_per_s"] == pytest.approx(1000 / (72 * expected / 1000), abs=0.1)
    assert cost["modes"]["graph"]["latency_us"] > eager["latency_us"]


def test_token_cost_uses_a_measured_size_exactly_and_the_nearest_outside_the_sweep():
    dense = {"num_hidden_layers": 80, "hidden_size": 8192, "torch_dtype": "bfloat16"}  # 70B: 16 KiB messages
    cost = token_cost([row(16 * KIB, 31.9), row(GIB, 45459.0)], dense, tensor_parallel_size=2)
    assert cost["modes"]["eager"]["latency_basis"] == {"method": "measured", "sizes": [16 * KIB]}
    assert cost["modes"]["eager"]["ms_per_token"] == pytest.approx(160 * 31.9 / 1000)
    far = token_cost([row(MIB, 200.0)], dense, tensor_parallel_size=2)
    assert far["modes"]["eager"]["latency_basis"] == {"method": "nearest", "sizes": [MIB]}


def test_token_cost_does_not_apply_without_config_or_tp():
    assert not token_cost(HEALTHY_ROWS, None, tensor_parallel_size=2)["applies"]
    assert "tensor_parallel_size is 1" in token_cost(HEALTHY_ROWS, GPT_OSS_120B, tensor_parallel_size=1)["reason"]
    assert not token_cost(HEALTHY_ROWS, {"hidden_size": 1}, tensor_parallel_size=2)["applies"]
    fp32 = token_cost(HEALTHY_ROWS, {"num_hidden_layers": 2, "hidden_size": 256, "torch_dtype": "float32"},
                      tensor_parallel_size=2)
    assert fp32["message_bytes"] == 1024


def test_latency_at_edges():
    assert latency_at([], 8) is None
    rows = [row(8, 10.0), row(32, 40.0)]
    value, basis = latency_at(rows, 16)
    assert value == pytest.approx(20.0) and basis["method"] == "interpolated"


# ---------------------------------------------------------------- nccl-tests engine
def probe_reply(commands):
    return {"commands": commands, "interpreters": {}, "interfaces": {}}


def test_locate_nccl_tests(inventory):
    replies = {"spark-a": probe_reply({"all_reduce_perf": "/opt/nt/all_reduce_perf", "mpirun": "/usr/bin/mpirun"}),
               "spark-b": probe_reply({"all_reduce_perf": "/opt/nt/all_reduce_perf", "mpirun": None})}
    assert engine.locate(replies, inventory, "all_reduce_perf") == ("/usr/bin/mpirun", "/opt/nt/all_reduce_perf")
    replies["spark-b"] = probe_reply({"all_reduce_perf": "/usr/local/bin/all_reduce_perf"})
    replies["spark-a"]["commands"]["mpirun"] = None
    with pytest.raises(OperationFailed) as caught:
        engine.locate(replies, inventory, "all_reduce_perf")
    details = " ".join(caught.value.details)
    assert "spark-a: mpirun not found" in details and "different paths" in details
    assert "--engine torch" in caught.value.hint


def test_mpirun_argv(inventory, plans):
    options = ProbeOptions(max_bytes=GIB, modes=("eager", "graph"), graph_batch=8, nccl_tests_iters=40)
    runs = engine.plan_runs(inventory, plans, options, mpirun="/usr/bin/mpirun", binary="/opt/nt/all_reduce_perf",
                            env={"NCCL_IB_HCA": "=rocep1s0f1,roceP2p1s0f1"}, tag="pair/spark-a/probe/1")
    assert [r.mode for r in runs] == ["eager", "graph"] and all(r.node == "spark-a" for r in runs)
    argv = list(runs[0].argv)
    assert argv[:2] == ["/usr/bin/mpirun", "--allow-run-as-root"]
    assert argv[argv.index("-np") + 1] == "2"
    assert argv[argv.index("-H") + 1] == "192.168.100.10:1,192.168.100.11:1"
    assert ["--mca", "btl_tcp_if_include", "enp1s0f1np1"] == argv[argv.index("btl_tcp_if_include") - 1:][:3]
    assert ["--mca", "oob_tcp_if_include", "enp1s0f1np1"] == argv[argv.index("oob_tcp_if_include") - 1:][:3]
    assert argv[argv.index("plm_rsh_args") + 1] == "-o BatchMode=yes"
    exported = [argv[i + 1] for i, a in enumerate(argv) if a == "-x"]
    assert {"NCCL_DEBUG", "NCCL_DEBUG_SUBSYS", "NCCL_SOCKET_IFNAME", "NCCL_IB_HCA"} <= set(exported)
    assert not {"SPARKCTL_TAG", "VLLM_HOST_IP", "MASTER_ADDR"} & set(exported)
    tail = argv[argv.index("/opt/nt/all_reduce_perf"):]
    assert tail == ["/opt/nt/all_reduce_perf", "-b", "8", "-e", str(GIB), "-f", "2", "-g", "1", "-w", "5",
                    "-n", "40", "-d", "float", "-c", "1"]
    assert list(runs[1].argv)[-2:] == ["-G", "8"]
    assert runs[0].env["NCCL_DEBUG"] == "INFO" and runs[0].env["SPARKCTL_TAG"] == "pair/spark-a/probe/1"
    assert all(isinstance(a, str) for a in argv)


def test_nccl_tests_output_becomes_probe_rows_with_transport(inventory, plans):
    text = (FIXTURES / "nccl-tests" / "all_reduce-8B-16M-latency-noise-2.20.0.txt").read_text()
    run = engine.plan_runs(inventory, plans, ProbeOptions(modes=("eager",)), mpirun="mpirun",
                           binary="all_reduce_perf", tag="t")[0]
    rep = engine.parse_run(run, {"rc": 0, "stdout": text, "stderr": ""}, ProbeOptions(), ["spark-b"])
    result = engine.to_result({"eager": rep})
    assert result.engine == "nccl-tests" and result.world_size == 2 and result.ranks_agree is True
    assert len(result.rows) == 22 and result.rows[0].size_bytes == 8
    eight_k = next(r for r in result.rows if r.size_bytes == 8 * KIB)
    assert eight_k.p50_us is None and eight_k.latency_us == pytest.approx(27.82) and eight_k.iterations == 100
    report = analyse(result, {"mpirun (all ranks)": text}, ProbeOptions())
    assert report.transport["mpirun (all ranks)"]["transport"] == "ib"
    assert report.verdict == "inconclusive"  # 16 MiB at most: bandwidth not judged
    latency = next(c for c in report.checks if c.code == "small-latency")
    assert probe_status(latency.severity) == "ok" and "mean latency at 8 KiB is 27.8 us" in latency.message


def test_nccl_tests_large_sizes_judge_bandwidth():
    text = (FIXTURES / "nccl-tests" / "all_reduce-256M-4G-jp-nccl-rebuilt.txt").read_text()
    result = engine.to_result({"eager": parse_nccl_tests(text)})
    result.world_size = result.world_size or 2
    bw = next(c for c in judge(result, {}, ProbeOptions())[1] if c.code == "busbw")
    assert probe_status(bw.severity) == "ok" and "busbw at 4 GiB is 24.11 GB/s" in bw.message


def test_nccl_tests_failures_explain_ssh(inventory, plans):
    run = engine.plan_runs(inventory, plans, ProbeOptions(modes=("eager",)), mpirun="mpirun",
                           binary="all_reduce_perf", tag="t")[0]
    out = ("Host key verification failed.\n--------\nORTE was unable to reliably start one or more daemons.\n")
    with pytest.raises(OperationFailed) as caught:
        engine.parse_run(run, {"rc": 1, "stdout": "", "stderr": out}, ProbeOptions(), ["spark-b (192.168.100.11)"])
    assert "exit status 1" in caught.value.message
    assert "SSH from spark-a" in caught.value.hint and "spark-b (192.168.100.11)" in caught.value.hint
    assert "Host key verification failed." in caught.value.details
    with pytest.raises(OperationFailed) as caught:
        engine.parse_run(run, {"rc": 1, "stdout": "", "stderr": "bash: orted: command not found\n"}, ProbeOptions(), [])
    assert "non-interactive" in caught.value.hint
    with pytest.raises(DeadlineExceeded):
        engine.parse_run(run, {"rc": 124, "timed_out": True, "stdout": "", "stderr": ""}, ProbeOptions(), [])


# ---------------------------------------------------------------- rendering and plot
def test_render_table_is_fixed_width_per_mode():
    rows = HEALTHY_ROWS + [row(8, 46.0, mode="graph"), row(GIB, 45000.0, busbw=23.9, mode="graph")]
    report = analyse(gpu_result(rows), {"spark-a": IB_LOG, "spark-b": IB_LOG}, ProbeOptions(),
                     model_config=GPT_OSS_120B)
    table = render_table(report)
    blocks = table.split("\n\n")
    assert [b.splitlines()[0].split()[0] for b in blocks] == ["eager", "graph"]
    for block in blocks:
        widths = {len(line) for line in block.splitlines()[1:]}
        assert len(widths) == 1, block
    assert "  1 GiB " in table and "    8 B " in table and "p50 µs" in table and "busbw GB/s" in table
    assert "23.620" in table
    summary = render_summary(report)
    assert summary.startswith("verdict: ok")
    assert "spark-a: RDMA (NET/IB)" in summary
    assert "36 layers x 2 = 72 all-reduces per token of 5.6 KiB" in summary
    assert "tok/s" in summary and "graph:" in summary


def test_render_summary_without_token_cost_says_why():
    report = analyse(parse_result(CAPTURED_LOG), {"node0": ""}, ProbeOptions(), tensor_parallel_size=1)
    assert "not computed (tensor_parallel_size is 1" in render_summary(report)
    assert "graph mode skipped" in render_summary(report)


def test_plot_without_matplotlib_is_an_input_error(monkeypatch, tmp_path):
    from sparkctl.probes import plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    report = analyse(gpu_result(HEALTHY_ROWS), {}, ProbeOptions())
    with pytest.raises(InputError) as caught:
        plot.plot(report, str(tmp_path / "p.png"))
    assert "pip install matplotlib" in caught.value.hint
    with pytest.raises(InputError):
        plot.require_matplotlib()
    assert not (tmp_path / "p.png").exists()


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from sparkctl.probes import plot

    rows = HEALTHY_ROWS + [row(8, 46.0, mode="graph"), row(GIB, 45000.0, busbw=23.9, mode="graph")]
    report = analyse(gpu_result(rows), {}, ProbeOptions())
    path = plot.plot(report, str(tmp_path / "probe.png"))
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checks_serialise():
    assert check_dict(Finding("busbw", Severity.OK, "fine")) == {"name": "busbw", "status": "ok", "reason": "fine"}


# ---------------------------------------------------------------- ops helpers (pure parts)
def typed_probe_reply(**fields):
    """An agent `probe` reply with only the given fields filled in."""
    from sparkctl.agent.protocol import ProbeReply, from_wire

    empty = {"hostname": "h", "python": "3.12", "paths": {}, "commands": {}, "interpreters": {}, "in_use": [],
             "interfaces": {}, "boot_id": "b"}
    return from_wire(ProbeReply, {**empty, **fields})


def test_interpreter_discovery(inventory, tmp_path):
    from sparkctl.ops.probe import _pythons
    from sparkctl.playbook import load_playbook

    pb_path = tmp_path / "pb.yaml"
    pb_path.write_text("model: /models/m\ntensor_parallel_size: 2\n")  # vllm command: `vllm`
    playbook = load_playbook(str(pb_path))
    facts = {"spark-a": typed_probe_reply(interpreters={"vllm": "/opt/venv/bin/python3"}),
             "spark-b": typed_probe_reply(interpreters={"vllm": "/usr/bin/python3.12"})}
    assert _pythons(inventory, playbook, facts, None) == {"spark-a": "/opt/venv/bin/python3",
                                                           "spark-b": "/usr/bin/python3.12"}
    assert _pythons(inventory, playbook, facts, "/x/python") == {"spark-a": "/x/python", "spark-b": "/x/python"}
    assert _pythons(inventory, None, {}, None) == {"spark-a": "python3", "spark-b": "python3"}
    facts["spark-b"] = typed_probe_reply(interpreters={"vllm": None})
    with pytest.raises(OperationFailed, match="spark-b") as caught:
        _pythons(inventory, playbook, facts, None)
    assert "--python" in caught.value.hint
    pb_path.write_text("model: /models/m\nvllm: {python: /venv/bin/python}\n")
    assert set(_pythons(inventory, load_playbook(str(pb_path)), {}, None).values()) == {"/venv/bin/python"}


def test_rendezvous_port_choice():
    from sparkctl.ops.probe import _master_port

    busy = typed_probe_reply(in_use=[{"port": 29500, "pid": 7, "tag": None, "cmdline": "ray"},
                               {"port": 29501, "pid": 8, "tag": None, "cmdline": "x"}])
    assert _master_port(busy, ProbeOptions()) == 29502
    assert _master_port(busy, ProbeOptions(master_port=29600)) == 29600
    with pytest.raises(InputError, match="29500 is in use"):
        _master_port(busy, ProbeOptions(master_port=29500))


def test_nccl_tests_table_says_mean(inventory, plans):
    text = (FIXTURES / "nccl-tests" / "all_reduce-8B-16M-latency-noise-2.20.0.txt").read_text()
    report = analyse(engine.to_result({"eager": parse_nccl_tests(text)}), {"mpirun (all ranks)": text}, ProbeOptions())
    table = render_table(report)
    assert table.splitlines()[0] == "eager (nccl-tests, nccl, 2 ranks)"
    assert "mean µs" in table and "p50 µs" not in table
    assert "   8 KiB     100        27.8           -           -       0.290       0.290" in table


def test_choose_stride_bounds_timing_overhead():
    from sparkctl.probes.allreduce_worker import MAX_STRIDE, MAX_TIMING_OVERHEAD, choose_stride

    # an H100 in eager mode: ~15 us per event record, ~20 us per all-reduce
    stride = choose_stride(15e-6, 20e-6)
    assert 15e-6 / (stride * 20e-6) <= MAX_TIMING_OVERHEAD and choose_stride(15e-6, 20e-6) > 1
    assert choose_stride(1e-6, 10e-3) == 1  # big messages: per-call events cost nothing
    assert choose_stride(1e-3, 1e-9) == MAX_STRIDE
    assert choose_stride(0.0, 20e-6) == 1 and choose_stride(1e-6, 0.0) == 1


def test_single_rank_transport_is_not_judged_with_the_right_reason():
    from sparkctl.probes.allreduce import _transport_checks, transport_summary

    single = "vm:626:626 [0] NCCL INFO NCCL version 2.28.9+cuda13.0\n" \
             "vm:626:626 [0] NCCL INFO comm 0x36dc5230 rank 0 nRanks 1 nNodes 1 localRanks 1 localRank 0 MNNVL 0\n"
    (check,) = [c for c in _transport_checks({"h100": transport_summary(single)}) if c.code == "transport"]
    assert probe_status(check.severity) == "not-judged" and "single rank" in check.message
    (empty,) = [c for c in _transport_checks({"n": transport_summary("no nccl here\n")}) if c.code == "transport"]
    assert "no NCCL INFO lines" in empty.message
