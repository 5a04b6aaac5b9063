"""A real Ray cluster across namespaced nodes over SSH (CPU; GPUs declared as
logical resources so the membership check runs): bring-up verified through
Ray's API, Ray's view for `status`, a worker that cannot reach the head, the
`up` path with vLLM for CPU (which has no Ray support) up to vLLM's own error,
and a teardown that leaves no Ray process and no stale ray_current_cluster."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from sparkctl.agent import node_agent
from sparkctl.agent.client import AgentClient
from sparkctl.agent.protocol import ReadRequest
from sparkctl.backends.ray import temp_dir
from sparkctl.backends.ray_cluster import launch_ray_backend, prepare_ray, ray_view, start_ray_cluster, stop_ray
from sparkctl.errors import SparkctlError
from sparkctl.inventory import load_inventory
from sparkctl.lifecycle.spec import log_path
from sparkctl.ops.check import network_plan
from sparkctl.playbook import check_against_inventory, load_playbook
from sparkctl.progress import RecordingReporter
from sparkctl.remote.session import NodeSession
from sparkctl.serve.endpoint import Endpoint
from sparkctl.serve.readiness import NotReady, wait_until_ready
from tests.conftest import REPO

pytestmark = [pytest.mark.root, pytest.mark.vllm, pytest.mark.timeout(900)]

RAY = str(REPO / ".venv" / "bin" / "ray")
TIMINGS: dict[str, float] = {}


def write_playbook(tmp_path: Path, world: int, **ray) -> str:
    data = yaml.safe_load((REPO / "playbooks" / "tiny-cpu.yaml").read_text())
    data["model"] = str(REPO / "playbooks" / "models" / "tiny-llama")
    data["vllm"] = {"command": [str(REPO / ".venv" / "bin" / "python"), str(REPO / "playbooks" / "support" / "vllm_cpu.py")]}
    data["backend"] = "ray"
    data["tensor_parallel_size"] = world
    data["ready_timeout_s"] = 300
    data["ray"] = {"command": [RAY], "num_gpus_per_node": 1, "object_store_memory_mb": 100, "join_timeout_s": 120, **ray}
    path = tmp_path / "pb-ray.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture(autouse=True)
def _remove_ray_temp_dirs():
    """Each virtual cluster has a new name, hence new Ray temp dirs (kept by
    stop_ray for their logs): remove this test's."""
    made: list = []
    yield made
    for inventory in made:
        for node in inventory.nodes:
            shutil.rmtree(temp_dir(inventory, node), ignore_errors=True)


def setup(make_vcluster, tmp_path: Path, n: int, made: list, **ray):
    cluster = make_vcluster(n)
    inv_path = cluster.write_inventory(tmp_path / "inv.yaml")
    inventory = load_inventory(str(inv_path))
    made.append(inventory)
    playbook = load_playbook(write_playbook(tmp_path, n, **ray))
    assert check_against_inventory(playbook, inventory) == []
    return cluster, inventory, playbook


def network_plans(nodes: AgentClient, inventory, playbook):
    """The per-host plan exactly as `up` derives it (every node's facts)."""
    return network_plan(nodes, inventory, playbook)


def assert_nothing_left(cluster, inventory):
    for node in cluster.nodes:
        assert cluster.processes_besides_sshd(node) == [], node.name
    assert node_agent.tagged_processes(f"{inventory.cluster}/") == []
    for node in inventory.nodes:
        assert not os.path.exists(f"{temp_dir(inventory, node)}/ray_current_cluster")


@pytest.mark.parametrize("n", [2, 3])
def test_ray_cluster_joins_every_node_and_stops_cleanly(make_vcluster, tmp_path, n, _remove_ray_temp_dirs):
    cluster, inventory, playbook = setup(make_vcluster, tmp_path, n, _remove_ray_temp_dirs)
    reporter = RecordingReporter()
    try:
        with NodeSession(inventory) as session:
            nodes = AgentClient(inventory, session)
            plans = network_plans(nodes, inventory, playbook)
            started = time.monotonic()
            ray = start_ray_cluster(nodes, inventory, playbook, plans, reporter)
            TIMINGS[f"ray_bringup_{n}_nodes_s"] = round(time.monotonic() - started, 2)
            membership = ray.membership
            assert membership is not None and membership.ok, membership
            assert sorted(membership.joined) == [f"node{i}" for i in range(n)]
            for vnode in cluster.nodes:
                assert membership.joined[vnode.name]["NodeManagerAddress"] == vnode.fabric_ip
            assert membership.gpus == n
            assert ray.plan.gcs_address == f"{cluster.nodes[0].fabric_ip}:6379"

            # Ray's own processes really run in each node's namespace, under sparkctl's tag
            for vnode in cluster.nodes:
                cmdlines = cluster.processes_besides_sshd(vnode, settle_s=0)
                assert any("raylet" in c for c in cmdlines), (vnode.name, cmdlines)
                assert node_agent.tagged_processes(f"{inventory.cluster}/{vnode.name}/ray/")

            # status: Ray's view beside sparkctl's
            view = ray_view(nodes, inventory)
            assert view["running"] and view["address"] == ray.plan.gcs_address
            assert sorted(r["node"] for r in view["nodes"] if r["alive"]) == [f"node{i}" for i in range(n)]
            assert view["resources"]["GPU"] == n and view["missing"] == [] and view["unexpected"] == []

            stop_started = time.monotonic()
            stopped = stop_ray(nodes, inventory, reporter, grace_s=20)
            TIMINGS[f"ray_stop_{n}_nodes_s"] = round(time.monotonic() - stop_started, 2)
            assert all(s.clean for s in stopped.values()), {k: v.to_dict() for k, v in stopped.items()}
            # each node's `ray start --block` stopped by its recorded pid, taking its raylet (and the GCS) along
            assert all(s.group.get("leader") in ("terminated", "killed") for s in stopped.values()), stopped
            for name, s in stopped.items():  # what `down` reports per node
                assert any(" start " in p["cmdline"] and "--block" in p["cmdline"] for p in s.stopped), (name, s.stopped)
            assert stopped["node0"].removed == [f"{temp_dir(inventory, inventory.head)}/ray_current_cluster"]
            assert ray_view(nodes, inventory) == {"running": False}
        assert_nothing_left(cluster, inventory)
    finally:
        with NodeSession(inventory) as session:
            stop_ray(AgentClient(inventory, session), inventory, reporter, grace_s=5)
    print(f"\nRay bring-up across {n} nodes: {TIMINGS[f'ray_bringup_{n}_nodes_s']}s "
          f"(head {ray.timings.get('head_s')}s, all joined {ray.timings.get('join_s')}s); "
          f"stop {TIMINGS[f'ray_stop_{n}_nodes_s']}s")


def test_busy_gcs_port_moves_to_a_free_one(make_vcluster, tmp_path, _remove_ray_temp_dirs):
    cluster, inventory, playbook = setup(make_vcluster, tmp_path, 2, _remove_ray_temp_dirs)
    blocker = cluster.nodes[0]
    # something else listens on 6379 in the head's namespace
    import subprocess

    proc = subprocess.Popen(["ip", "netns", "exec", blocker.netns, str(REPO / ".venv" / "bin" / "python"), "-c",
                             "import socket,time;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
                             "s.bind(('0.0.0.0',6379));s.listen();time.sleep(120)"])
    try:
        time.sleep(1.5)
        reporter = RecordingReporter()
        with NodeSession(inventory) as session:
            nodes = AgentClient(inventory, session)
            plan = prepare_ray(nodes, inventory, playbook, network_plans(nodes, inventory, playbook), reporter)
        assert plan.gcs_port == 6380 and plan.gcs_address.endswith(":6380")
        assert any("port 6379 for Ray's GCS is in use; using 6380" in m for _, _, m in reporter.events)
        assert "--port=6380" in plan.ray_specs[0].argv
        assert f"--address={cluster.nodes[0].fabric_ip}:6380" in plan.ray_specs[1].argv
    finally:
        proc.kill()
        proc.wait()


def test_worker_that_cannot_reach_the_head_is_named_with_a_hint(make_vcluster, tmp_path, _remove_ray_temp_dirs):
    cluster, inventory, playbook = setup(make_vcluster, tmp_path, 2, _remove_ray_temp_dirs, join_timeout_s=90)
    reporter = RecordingReporter()
    try:
        with NodeSession(inventory) as session:
            nodes = AgentClient(inventory, session)
            plans = network_plans(nodes, inventory, playbook)
            cluster.set_fabric_link("node1", False)
            with pytest.raises(SparkctlError) as caught:
                start_ray_cluster(nodes, inventory, playbook, plans, reporter)
        error = caught.value
        text = "\n".join([error.message, *error.details, error.hint or ""])
        assert error.message.startswith("node1: cannot reach the head's Ray GCS at 192.168.100.10:6379"), text
        assert "Failed to" in text and "GCS" in text  # Ray's own words, from node1's log
        assert "firewall" in (error.hint or "") and "192.168.100.11" in (error.hint or "")
        assert any("stopping the Ray this run started" in m for _, _, m in reporter.events)
        assert_nothing_left(cluster, inventory)
    finally:
        cluster.set_fabric_link("node1", True)
        with NodeSession(inventory) as session:
            stop_ray(AgentClient(inventory, session), inventory, reporter, grace_s=5)


def test_up_path_on_cpu_reaches_vllms_own_ray_error_then_everything_stops(make_vcluster, tmp_path, _remove_ray_temp_dirs):
    """What `up` does for backend ray (launch_ray_backend, then the shared
    wait_until_ready): vLLM for CPU joins the Ray cluster through RAY_ADDRESS and
    then refuses, as it must; afterwards neither vLLM nor Ray is left."""
    cluster, inventory, playbook = setup(make_vcluster, tmp_path, 2, _remove_ray_temp_dirs)
    reporter = RecordingReporter()
    try:
        with NodeSession(inventory) as session:
            nodes = AgentClient(inventory, session)
            plans = network_plans(nodes, inventory, playbook)
            launch = launch_ray_backend(nodes, inventory, playbook, plans, {}, reporter)
            assert [s.role for s in launch.specs] == ["vllm", "ray"]
            assert list(launch.launched["node0"].argv)[-4:] == ["--host", "0.0.0.0", "--port", "8013"]
            endpoint = Endpoint(f"http://{cluster.nodes[0].mgmt_ip}:8013", timeout_s=5)
            with pytest.raises(NotReady) as caught:
                wait_until_ready(nodes, inventory, launch.specs, endpoint, playbook.served_model_name,
                                 deadline=time.monotonic() + 300, reporter=reporter, started_at=time.monotonic())
            assert caught.value.node == "node0" and "vLLM exited during start-up" in caught.value.message
            log = nodes.call(inventory.head, ReadRequest(path=log_path(inventory.head, inventory.cluster, "vllm"))).data
            # vLLM really joined this Ray cluster (RAY_ADDRESS), not a Ray of its own, then refused on CPU
            assert f"Connecting to existing Ray cluster at address: {launch.plan.gcs_address}" in log, log[-3000:]
            assert "ValueError: current platform cpu does not support ray." in log
            stopped = stop_ray(nodes, inventory, reporter, grace_s=20)
            assert all(s.clean for s in stopped.values())
        assert_nothing_left(cluster, inventory)
    finally:
        with NodeSession(inventory) as session:
            stop_ray(AgentClient(inventory, session), inventory, reporter, grace_s=5)


def test_ray_left_behind_by_a_tag_only_stop_is_found_and_stopped(make_vcluster, tmp_path, _remove_ray_temp_dirs):
    """Ray's agents rename themselves with setproctitle, which wipes their
    environment and so sparkctl's tag: a plain stop by tag (what `down` did
    before the Ray backend) can leave them running. stop_ray finds them by the
    node's own Ray temp dir even when no record is left."""
    from sparkctl.lifecycle.stop import stop_all

    cluster, inventory, playbook = setup(make_vcluster, tmp_path, 2, _remove_ray_temp_dirs)
    reporter = RecordingReporter()
    try:
        with NodeSession(inventory) as session:
            nodes = AgentClient(inventory, session)
            start_ray_cluster(nodes, inventory, playbook, network_plans(nodes, inventory, playbook), reporter)
            stop_all(nodes, inventory, grace_s=3, ports={}, reporter=reporter)  # by tag only; removes the records
            leftovers = {n.name: [c.strip() for c in cluster.processes_besides_sshd(n, settle_s=0) if not c.startswith("sshd")] for n in cluster.nodes}
            print(f"\nleft behind by the stop by tag: {leftovers}")
            stopped = stop_ray(nodes, inventory, reporter, grace_s=10)
            assert all(s.clean for s in stopped.values()), {k: v.to_dict() for k, v in stopped.items()}
            assert all(s.group.get("leader") == "no record" for s in stopped.values())
            for name, left in leftovers.items():
                assert len(stopped[name].group["killed"]) >= len([c for c in left if c.startswith("ray::")])
        assert_nothing_left(cluster, inventory)
    finally:
        with NodeSession(inventory) as session:
            stop_ray(AgentClient(inventory, session), inventory, reporter, grace_s=5)


def test_sparkctl_up_with_ray_on_cpu_fails_with_the_cause_and_leaves_nothing(make_vcluster, tmp_path, _remove_ray_temp_dirs):
    """The real CLI: checks, Ray on both nodes, membership, `vllm serve` on Ray,
    vLLM for CPU's own refusal shown with its hint, everything stopped."""
    import json as jsonlib

    from tests.conftest import sparkctl

    cluster, inventory, _ = setup(make_vcluster, tmp_path, 2, _remove_ray_temp_dirs)
    inv, pb = str(tmp_path / "inv.yaml"), str(tmp_path / "pb-ray.yaml")
    result = sparkctl("up", "-i", inv, "-p", pb, "--json")
    assert result.returncode == 1, result.stderr
    error = jsonlib.loads(result.stdout)
    assert "vLLM exited during start-up" in error["message"]
    assert "use backend: mp on CPU" in (error["hint"] or "")
    assert "every inventory node joined" in result.stderr or "joined" in result.stderr
    assert_nothing_left(cluster, inventory)
    down = sparkctl("down", "-i", inv, "--json")
    assert down.returncode == 0 and jsonlib.loads(down.stdout)["nothing_to_stop"]


def test_down_without_state_stops_a_ray_cluster(make_vcluster, tmp_path, _remove_ray_temp_dirs):
    import json as jsonlib

    from tests.conftest import sparkctl

    cluster, inventory, playbook = setup(make_vcluster, tmp_path, 2, _remove_ray_temp_dirs)
    inv = str(tmp_path / "inv.yaml")
    with NodeSession(inventory) as session:
        nodes = AgentClient(inventory, session)
        start_ray_cluster(nodes, inventory, playbook, network_plans(nodes, inventory, playbook), RecordingReporter())
    status = sparkctl("status", "-i", inv, "--json")
    view = jsonlib.loads(status.stdout)["ray"]
    assert view["running"] and not view.get("missing"), view
    down = sparkctl("down", "-i", inv, "--json")  # no state file: this process never ran `up`
    assert down.returncode == 0, down.stderr
    report = jsonlib.loads(down.stdout)
    assert report["clean"] and not report["nothing_to_stop"] and not report["had_state"]
    assert_nothing_left(cluster, inventory)
