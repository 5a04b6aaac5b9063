"""torchrun groups through sparkctl's launcher, on the local pair (real torch,
gloo): results collected, a failing rank stops the group, a killed rank is
noticed, and nothing is left afterwards."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from sparkctl.agent import node_agent
from sparkctl.agent.client import AgentClient
from sparkctl.backends.torchrun import TorchrunJob, plan_torchrun
from sparkctl.errors import OperationFailed
from sparkctl.inventory import load_inventory
from sparkctl.lifecycle.group import run_group
from sparkctl.progress import RecordingReporter
from sparkctl.remote.session import NodeSession
from tests.conftest import REPO, local_pair_processes, network_plans

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]  # needs torch from the vLLM venv

PYTHON = str(REPO / ".venv" / "bin" / "python")

SCRIPT = """
import os, sys, time, torch, torch.distributed as dist
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
t = torch.ones(4) * (rank + 1)
dist.all_reduce(t)
print(f"rank {rank}/{world} sum {t[0].item():.0f}", flush=True)
mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
if mode == "fail" and rank == 1:
    sys.exit(5)
if mode == "hang":
    time.sleep(120)
dist.barrier()
dist.destroy_process_group()
"""


@pytest.fixture
def local_pair():
    inventory = load_inventory(str(REPO / "inventories" / "local.yaml"))
    with NodeSession(inventory) as session:
        yield inventory, AgentClient(inventory, session)
    assert local_pair_processes() == []


def run(inventory, nodes, tmp_path, mode, timeout_s=120):
    script = str(tmp_path / "job.py")
    plans = network_plans(inventory, {n.name: {"lo": ["127.0.0.1/8"]} for n in inventory.nodes})
    job = TorchrunJob(role="job", python=PYTHON, program=(script, mode), master_port=29620,
                      env={"OMP_NUM_THREADS": "1"})
    specs = plan_torchrun(inventory, plans, job)
    files = {n.name: {script: SCRIPT} for n in inventory.nodes}
    return run_group(nodes, inventory, specs, timeout_s=timeout_s, reporter=RecordingReporter(), files=files, grace_s=3)


def test_group_runs_to_completion(local_pair, tmp_path):
    inventory, nodes = local_pair
    result = run(inventory, nodes, tmp_path, "ok")
    assert result.ok
    assert "rank 0/2 sum 3" in result.nodes["head"].log
    assert "rank 1/2 sum 3" in result.nodes["worker"].log
    assert {r.returncode for r in result.nodes.values()} == {0}


def test_failing_rank_stops_the_group(local_pair, tmp_path):
    inventory, nodes = local_pair
    with pytest.raises(OperationFailed) as caught:
        run(inventory, nodes, tmp_path, "fail")
    assert "worker: the job exited with status" in caught.value.message or "head: the job exited" in caught.value.message
    assert any("last lines of" in d for d in caught.value.details)
    assert local_pair_processes() == []


def test_killed_rank_is_noticed_and_the_rest_stopped(local_pair, tmp_path):
    inventory, nodes = local_pair

    def kill_worker_torchrun():
        deadline = time.time() + 60
        while time.time() < deadline:
            procs = [p for p in node_agent.tagged_processes("local-pair/worker/job/") if "sum" not in p["cmdline"]]
            leaders = [p for p in procs if p["pid"] == p["pgid"]]
            if leaders and len(procs) >= 3:  # waiter, torchrun, the rank
                time.sleep(1)
                os.killpg(leaders[0]["pgid"], signal.SIGKILL)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_worker_torchrun)
    killer.start()
    started = time.monotonic()
    with pytest.raises(OperationFailed) as caught:
        run(inventory, nodes, tmp_path, "hang")
    killer.join()
    assert "worker: the job process died without an exit status" in caught.value.message
    assert time.monotonic() - started < 60  # noticed, not waited out
    assert local_pair_processes() == []
