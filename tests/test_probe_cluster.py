"""The all-reduce probe over real SSH across namespaced nodes (gloo on CPU):
results sane across 2 and 4 nodes, and nothing left on any node afterwards,
also when the worker's probe is killed mid-run."""

from __future__ import annotations

import math
import os
import signal
import threading
import time

import pytest

from sparkctl.agent import node_agent
from sparkctl.errors import OperationFailed
from sparkctl.inventory import load_inventory
from sparkctl.ops.probe import nccl_probe
from sparkctl.playbook import load_playbook
from sparkctl.probes.allreduce import ProbeOptions
from sparkctl.progress import RecordingReporter
from tests.conftest import REPO

pytestmark = [pytest.mark.root, pytest.mark.vllm, pytest.mark.timeout(300)]  # torch lives in the vLLM venv

PYTHON = str(REPO / ".venv" / "bin" / "python")
SIZES = (8, 64, 1024, 16 * 1024, 128 * 1024, 1 << 20)


def small_sweep(**overrides) -> ProbeOptions:
    settings = dict(sizes=SIZES, modes=("eager", "graph"), time_budget_s=0.05, min_iters=10, max_iters=200,
                    warmup=3, timeout_s=120)
    settings.update(overrides)
    return ProbeOptions(**settings)


def leftovers(cluster, settle_s: float = 10.0) -> dict[str, list[str]]:
    """Every process in each node's namespace except its listening sshd, and anything
    still tagged; waits briefly for the closed SSH sessions' sshd children to exit."""
    deadline = time.monotonic() + settle_s
    while True:
        found = {}
        for node in cluster.nodes:
            others = [pid for pid in cluster.pids(node) if pid != node.sshd_pid]
            tagged = node_agent.tagged_processes(f"{cluster.name}/{node.name}/")
            if others or tagged:
                found[node.name] = [node_agent.proc_cmdline(pid) for pid in others] + [p["cmdline"] for p in tagged]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@pytest.mark.parametrize("n_nodes", [2, 4])
def test_gloo_probe_across_namespaced_nodes(make_vcluster, tmp_path, n_nodes):
    cluster = make_vcluster(n_nodes)
    inventory = load_inventory(str(cluster.write_inventory(tmp_path / "inv.yaml")))
    started = time.monotonic()
    report = nccl_probe(inventory, None, small_sweep(), RecordingReporter(), python=PYTHON)
    elapsed = time.monotonic() - started

    assert report.world_size == n_nodes
    assert report.backend == "gloo"
    assert report.modes == ["eager"]  # graphs need GPUs
    assert "graph" in report.skipped_modes
    assert sorted(r.size_bytes for r in report.rows) == list(SIZES)
    assert report.ranks_agree is True and all(r.correct for r in report.rows)
    assert {r["host"] for r in report.ranks} and len(report.ranks) == n_nodes
    for row in report.rows:
        assert row.iterations is not None and 10 <= row.iterations <= 200
        assert row.busbw_gbs is not None and math.isfinite(row.busbw_gbs) and row.busbw_gbs > 0
        assert row.min_us <= row.p50_us <= row.p99_us
        expected = row.algbw_gbs * 2 * (n_nodes - 1) / n_nodes
        assert row.busbw_gbs == pytest.approx(expected)
    smallest = min(report.rows, key=lambda r: r.size_bytes)
    largest = max(report.rows, key=lambda r: r.size_bytes)
    assert largest.p50_us > smallest.p50_us  # 1 MiB takes longer than 8 B
    assert largest.busbw_gbs > smallest.busbw_gbs

    # gloo: thresholds do not apply, and the transport is TCP on the fabric interface, not IB
    assert report.verdict == "inconclusive"
    assert any("do not apply" in reason for reason in report.verdict_reasons)
    assert set(report.transport) == {n.name for n in cluster.nodes}
    for transport in report.transport.values():
        assert transport["transport"] == "tcp" and transport["interface"] == "enp1s0f1np1"
    assert report.network["node1"]["master_addr"] == cluster.nodes[0].fabric_ip

    assert leftovers(cluster) == {}
    assert elapsed < 90


def test_playbook_gives_the_python_and_the_model_for_the_token_cost(make_vcluster, tmp_path):
    """No --python: the playbook's vLLM interpreter runs the probe, and the worker
    reads the model's config.json on the head for the cost per token."""
    cluster = make_vcluster(2)
    inventory = load_inventory(str(cluster.write_inventory(tmp_path / "inv.yaml")))
    playbook = load_playbook(str(REPO / "playbooks" / "tiny-cpu.yaml"))
    report = nccl_probe(inventory, playbook, small_sweep(modes=("eager",)), RecordingReporter())
    assert {v["python"] for v in report.versions["nodes"].values()} == {PYTHON}
    cost = report.token_cost
    assert cost["applies"] and cost["tensor_parallel_size"] == 2
    assert cost["all_reduces_per_token"] == 2 * 2 and cost["message_bytes"] == 256 * 4  # tiny-llama, float32
    eager = cost["modes"]["eager"]
    assert eager["latency_basis"] == {"method": "measured", "sizes": [1024]}
    assert eager["ms_per_token"] == pytest.approx(4 * eager["latency_us"] / 1000, rel=1e-3)
    assert leftovers(cluster) == {}


def test_killed_worker_probe_fails_fast_and_leaves_nothing(make_vcluster, tmp_path):
    cluster = make_vcluster(2)
    inventory = load_inventory(str(cluster.write_inventory(tmp_path / "inv.yaml")))
    prefix = f"{cluster.name}/node1/probe/"
    killed: list[int] = []

    def kill_worker_probe():
        deadline = time.time() + 90
        while time.time() < deadline:
            procs = node_agent.tagged_processes(prefix)
            leaders = [p for p in procs if p["pid"] == p["pgid"]]
            ranks = [p for p in procs if "allreduce_worker.py" in p["cmdline"] and "torch.distributed.run" not in p["cmdline"]]
            if leaders and ranks and ranks[0]["age_s"] >= 2:  # the rank is inside the sweep
                os.killpg(leaders[0]["pgid"], signal.SIGKILL)
                killed.append(leaders[0]["pgid"])
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_worker_probe)
    killer.start()
    # A long sweep: still running when the worker is killed.
    options = small_sweep(time_budget_s=2.0, min_iters=50, max_iters=100000, timeout_s=200)
    started = time.monotonic()
    try:
        with pytest.raises(OperationFailed) as caught:
            nccl_probe(inventory, None, options, RecordingReporter(), python=PYTHON)
    finally:
        killer.join()
    assert killed, "the worker's probe was never seen running"
    assert "node1" in caught.value.message
    assert time.monotonic() - started < 60
    assert leftovers(cluster) == {}
