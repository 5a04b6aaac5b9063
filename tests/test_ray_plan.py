"""The Ray backend's plan (pure): the playbook's `ray:` keys and their errors,
the exact `ray start` and `vllm serve --distributed-executor-backend ray` argv
and environment per node, the non-carry-over list, port choice, Ray's view
checked against the inventory, what a `ray start` log says, and the example
playbooks validating against a two-node inventory."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from sparkctl.backends.ray import (
    DEFAULT_DASHBOARD_AGENT_PORT,
    NON_CARRY_OVER_FILE,
    UNIX_SOCKET_MAX,
    ExpectedNode,
    RayPorts,
    choose_port,
    choose_ports,
    config_root,
    deepest_socket_path,
    diagnose_ray_log,
    in_worker_range,
    map_view,
    plan_ray,
    port_candidates,
    temp_dir,
    verify_membership,
)
from sparkctl.backends.ray_cluster import ray_stop_allowed
from sparkctl.errors import InputError
from sparkctl.findings import Severity
from sparkctl.inventory import load_inventory
from sparkctl.netplan import HostPlan
from sparkctl.playbook import check_against_inventory, load_playbook, ray_command
from tests.conftest import REPO, sparkctl

PAIR = """\
cluster: pair
nodes:
  - {name: spark-a, host: 10.0.0.10, fabric_ip: 192.168.177.11, env: {NCCL_DEBUG: WARN}}
  - {name: spark-b, host: 10.0.0.11, fabric_ip: 192.168.177.12}
env:
  NCCL_DEBUG: INFO
"""

PLAYBOOK = """\
model: /models/qwen
served_model_name: qwen
backend: ray
tensor_parallel_size: 2
port: 8000
vllm: {command: [/opt/venv/bin/vllm]}
vllm_args: ["--max-model-len", "4096", "--enable-expert-parallel"]
env:
  VLLM_ENGINE_READY_TIMEOUT_S: "1800"
  NCCL_IB_DISABLE: "0"
forward_env: [HF_TOKEN]
ray:
  object_store_memory_mb: 1024
"""


def write(tmp_path: Path, text: str, name: str = "pb.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(InputError) as caught:
        load_playbook(write(tmp_path, text))
    return caught.value.details


def cross_cabled_plans() -> dict[str, HostPlan]:
    """Per-host plans that differ between the nodes, as on a cross-cabled pair
    (head port 1 to worker port 0, sparkrun#135): different interfaces and HCAs."""
    a = {"VLLM_HOST_IP": "192.168.177.11", "MASTER_ADDR": "192.168.177.11", "NCCL_IB_HCA": "=rocep1s0f1,roceP2p1s0f1"}
    b = {"VLLM_HOST_IP": "192.168.177.12", "MASTER_ADDR": "192.168.177.11", "NCCL_IB_HCA": "=rocep1s0f0,roceP2p1s0f0"}
    for var in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "UCX_NET_DEVICES"):
        a[var], b[var] = "enp1s0f1np1", "enp1s0f0np0"
    return {
        "spark-a": HostPlan("spark-a", "192.168.177.11", "enp1s0f1np1", "192.168.177.11", a),
        "spark-b": HostPlan("spark-b", "192.168.177.12", "enp1s0f0np0", "192.168.177.11", b),
    }


@pytest.fixture
def pair(tmp_path):
    inv = load_inventory(write(tmp_path, PAIR, "inv.yaml"))
    pb = load_playbook(write(tmp_path, PLAYBOOK))
    return inv, pb


# ---------------------------------------------------------------------------
# the ray: section
# ---------------------------------------------------------------------------
def test_ray_section_defaults_and_values(tmp_path):
    pb = load_playbook(write(tmp_path, "model: /m\n"))
    assert pb.ray.gcs_port == 6379 and pb.ray.num_gpus_per_node is None and pb.ray.object_store_memory_mb is None
    assert pb.ray.dashboard is False and pb.ray.extra_args == () and pb.ray.join_timeout_s == 180.0
    pb = load_playbook(write(tmp_path, """\
        model: /m
        backend: ray
        ray:
          command: [./venv/bin/ray]
          gcs_port: 6380
          num_gpus_per_node: 1
          object_store_memory_mb: 256
          dashboard: true
          extra_args: ["--num-cpus=4"]
          join_timeout_s: 30
        """))
    assert pb.ray.command == (str(tmp_path / "venv" / "bin" / "ray"),)  # relative to the playbook
    assert (pb.ray.gcs_port, pb.ray.num_gpus_per_node, pb.ray.object_store_memory_mb) == (6380, 1, 256)
    assert pb.ray.dashboard is True and pb.ray.extra_args == ("--num-cpus=4",) and pb.ray.join_timeout_s == 30


@pytest.mark.parametrize(
    "text, expected",
    [
        ("model: m\nray: {gcs_prot: 1}\n", ":2: ray.gcs_prot: unknown key 'gcs_prot' (did you mean 'gcs_port'?)"),
        ("model: m\nray: {num_gpus: 1}\n", "ray.num_gpus: unknown key 'num_gpus' (did you mean 'num_gpus_per_node'?)"),
        ("model: m\nray: {gcs_port: 70000}\n", "ray.gcs_port: input should be less than or equal to 65535"),
        ("model: m\nray: {gcs_port: 15000}\n", "ray.gcs_port: 15000 is inside Ray's worker port range 10002-19999"),
        ("model: m\nray: {num_gpus_per_node: 0}\n", "ray.num_gpus_per_node: input should be greater than or equal to 1"),
        ("model: m\nray: {object_store_memory_mb: 10}\n", "ray.object_store_memory_mb: input should be greater than or equal to 80"),
        ("model: m\nray: {dashboard: maybe}\n", "ray.dashboard: expected true or false, got 'maybe'"),
        ("model: m\nray: {join_timeout_s: 0}\n", "ray.join_timeout_s: input should be greater than 0"),
        ("model: m\nray: {extra_args: '--num-cpus 4'}\n", "ray.extra_args: expected a list"),
        ("model: m\nray: {command: []}\n", "ray.command: List should have at least 1 item"),
        ("model: m\nray: [gcs_port]\n", ":2: ray: expected a mapping"),
        ("model: m\nray:\n  extra_args: ['--num-gpus=2']\n", ":3: ray.extra_args[0]: --num-gpus is set by sparkctl; use ray.num_gpus_per_node"),
        ("model: m\nray:\n  extra_args: ['--temp-dir', '/x']\n", "ray.extra_args[0]: --temp-dir is set by sparkctl"),
        ("model: m\nray:\n  extra_args: ['--node-ip-address=1.2.3.4']\n", "--node-ip-address is set by sparkctl; use nodes[].fabric_ip"),
        ("model: m\nray:\n  extra_args: ['--address=1.2.3.4:6379']\n", "--address is set by sparkctl"),
    ],
)
def test_bad_ray_section(tmp_path, text, expected):
    found = problems(tmp_path, text)
    assert any(expected in line for line in found), found


def test_declared_gpus_must_give_exactly_tp_times_pp(tmp_path):
    inv = load_inventory(write(tmp_path, PAIR, "inv.yaml"))
    pb = load_playbook(write(tmp_path, "model: /m\nbackend: ray\ntensor_parallel_size: 2\nray: {num_gpus_per_node: 2}\n"))
    (problem,) = check_against_inventory(pb, inv)
    assert "ray.num_gpus_per_node = 2 gives Ray 2 node(s) x 2 = 4 GPU(s)" in problem
    ok = load_playbook(write(tmp_path, "model: /m\nbackend: ray\ntensor_parallel_size: 2\nray: {num_gpus_per_node: 1}\n", "ok.yaml"))
    assert check_against_inventory(ok, inv) == []


def test_ray_command_defaults_next_to_vllms_python(tmp_path):
    demo = load_playbook(str(REPO / "playbooks" / "tiny-cpu.yaml"))
    assert ray_command(demo) == (str(REPO / ".venv" / "bin" / "ray"),)
    assert ray_command(load_playbook(write(tmp_path, "model: m\nvllm: {command: [/opt/v/bin/vllm]}\n"))) == ("/opt/v/bin/ray",)
    assert ray_command(load_playbook(write(tmp_path, "model: m\n"))) == ("ray",)
    assert ray_command(load_playbook(write(tmp_path, "model: m\nray: {command: [/x/ray]}\n"))) == ("/x/ray",)


# ---------------------------------------------------------------------------
# the plan: ray start on every node, vllm serve on the head
# ---------------------------------------------------------------------------
def test_ray_start_argv_per_node(pair):
    inv, pb = pair
    plan = plan_ray(inv, pb, cross_cabled_plans(), ray_python="/opt/venv/bin/python3")
    head, worker = plan.ray_specs
    assert (head.node, head.role, worker.node, worker.role) == ("spark-a", "ray", "spark-b", "ray")
    head_temp, worker_temp = temp_dir(inv, inv.node("spark-a")), temp_dir(inv, inv.node("spark-b"))
    assert list(head.argv) == [
        "/opt/venv/bin/ray", "start", "--head", "--port=6379", "--ray-client-server-port=10001",
        "--include-dashboard=false", "--block", "--node-ip-address=192.168.177.11", "--num-gpus=1",
        '--resources={"sparkctl_node:spark-a":1}', f"--temp-dir={head_temp}", "--disable-usage-stats",
        "--object-store-memory=1073741824",
    ]
    assert list(worker.argv) == [
        "/opt/venv/bin/ray", "start", "--address=192.168.177.11:6379", "--block",
        "--node-ip-address=192.168.177.12", "--num-gpus=1", '--resources={"sparkctl_node:spark-b":1}',
        f"--temp-dir={worker_temp}", "--disable-usage-stats", "--object-store-memory=1073741824",
    ]
    assert head.listen_ports == (6379, 10001) and worker.listen_ports == ()
    assert plan.gcs_address == "192.168.177.11:6379" and plan.ray_python == "/opt/venv/bin/python3"


def test_each_ray_start_exports_its_own_hosts_plan(pair):
    inv, pb = pair
    plans = cross_cabled_plans()
    head, worker = plan_ray(inv, pb, plans).ray_specs
    for spec, own in ((head, plans["spark-a"]), (worker, plans["spark-b"])):
        for var, value in own.env.items():
            assert spec.env[var] == value, (spec.node, var)
        assert spec.env["RAY_memory_monitor_refresh_ms"] == "0"
        assert spec.env["RAY_USAGE_STATS_ENABLED"] == "0"
        assert spec.env["VLLM_ENGINE_READY_TIMEOUT_S"] == "1800" and spec.env["NCCL_IB_DISABLE"] == "0"
        assert "RAY_ADDRESS" not in spec.env
    # the worker keeps its own interface and HCAs, not the head's
    assert worker.env["VLLM_HOST_IP"] == "192.168.177.12"
    assert worker.env["NCCL_SOCKET_IFNAME"] == worker.env["GLOO_SOCKET_IFNAME"] == "enp1s0f0np0"
    assert worker.env["NCCL_IB_HCA"] == "=rocep1s0f0,roceP2p1s0f0" != head.env["NCCL_IB_HCA"]
    # precedence as for mp: playbook < inventory < node
    assert head.env["NCCL_DEBUG"] == "WARN" and worker.env["NCCL_DEBUG"] == "INFO"
    assert head.forward_env == ("HF_TOKEN",) and "HF_TOKEN" not in head.env


def test_vllm_serve_on_the_head_joins_this_ray_cluster(pair):
    inv, pb = pair
    plan = plan_ray(inv, pb, cross_cabled_plans())
    serve = plan.serve
    assert serve.node == "spark-a" and serve.role == "vllm"
    assert list(serve.argv) == [
        "/opt/venv/bin/vllm", "serve", "/models/qwen", "--served-model-name", "qwen",
        "--tensor-parallel-size", "2", "--pipeline-parallel-size", "1",
        "--distributed-executor-backend", "ray",
        "--max-model-len", "4096", "--enable-expert-parallel",
        "--host", "0.0.0.0", "--port", "8000",
    ]
    assert "--nnodes" not in serve.argv and "--headless" not in serve.argv
    assert serve.env["RAY_ADDRESS"] == "192.168.177.11:6379"
    assert serve.env["VLLM_CONFIG_ROOT"] == config_root(inv) == "~/.sparkctl/pair/spark-a/vllm-config"
    assert serve.env["VLLM_HOST_IP"] == "192.168.177.11" and serve.env["NCCL_IB_HCA"] == "=rocep1s0f1,roceP2p1s0f1"
    assert serve.listen_ports == (8000,) and serve.forward_env == ("HF_TOKEN",)
    # readiness watches vLLM on the head and Ray on the worker; "already up" compares all three
    assert [(s.node, s.role) for s in plan.watch_specs] == [("spark-a", "vllm"), ("spark-b", "ray")]
    assert [(s.node, s.role) for s in plan.specs] == [("spark-a", "ray"), ("spark-b", "ray"), ("spark-a", "vllm")]


def test_non_carry_over_file_lists_every_per_host_variable(pair):
    inv, pb = pair
    plans = cross_cabled_plans()
    plan = plan_ray(inv, pb, plans)
    path = f"{config_root(inv)}/{NON_CARRY_OVER_FILE}"
    assert list(plan.files) == ["spark-a"] and list(plan.files["spark-a"]) == [path]
    listed = json.loads(plan.files["spark-a"][path])
    assert listed == sorted(listed) == list(plan.non_carry_over)
    for own in plans.values():
        assert set(own.env) <= set(listed)
    # node env keys are per host too; playbook-wide settings are not
    for var in ("VLLM_HOST_IP", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "UCX_NET_DEVICES",
                "NCCL_IB_HCA", "NCCL_IB_GID_INDEX", "NCCL_DEBUG", "VLLM_CONFIG_ROOT"):
        assert var in listed, var
    assert "NCCL_IB_DISABLE" not in listed and "VLLM_ENGINE_READY_TIMEOUT_S" not in listed


def test_temp_dirs_are_own_short_and_per_node(pair, tmp_path):
    inv, pb = pair
    a, b = (temp_dir(inv, n) for n in inv.nodes)
    assert a != b and a.startswith("/tmp/sparkctl-ray-") and a == temp_dir(inv, inv.node("spark-a"))
    assert len(deepest_socket_path(a).encode()) <= UNIX_SOCKET_MAX
    other = load_inventory(write(tmp_path, PAIR.replace("cluster: pair", "cluster: other"), "other.yaml"))
    assert temp_dir(other, other.node("spark-a")) != a


def test_dashboard_and_extra_args(tmp_path):
    inv = load_inventory(write(tmp_path, PAIR, "inv.yaml"))
    pb = load_playbook(write(tmp_path, PLAYBOOK + "  dashboard: true\n  extra_args: ['--num-cpus=2']\n"))
    plan = plan_ray(inv, pb, cross_cabled_plans(), ports=RayPorts(gcs=6379))
    head, worker = plan.ray_specs
    assert "--include-dashboard=true" in head.argv and "--dashboard-host=127.0.0.1" in head.argv
    assert "--dashboard-port=8265" in head.argv and head.listen_ports == (6379, 10001, 8265)
    assert not any(a.startswith("--include-dashboard") or a.startswith("--dashboard") for a in worker.argv)
    assert head.argv[-1] == worker.argv[-1] == "--num-cpus=2"


# ---------------------------------------------------------------------------
# ports
# ---------------------------------------------------------------------------
def test_busy_gcs_port_moves_to_the_next_free_one(pair):
    inv, pb = pair
    ports = choose_ports(inv, pb, {"spark-a": [6379, 6380, 10001]})
    assert ports.gcs == 6381 and ports.client_server == 10000
    assert ports.notes == (
        "spark-a: port 6379 for Ray's GCS is in use; using 6381",
        "spark-a: port 10001 for Ray's client server is in use; using 10000",
    )
    plan = plan_ray(inv, pb, cross_cabled_plans(), ports=ports)
    assert "--port=6381" in plan.ray_specs[0].argv and "--ray-client-server-port=10000" in plan.ray_specs[0].argv
    assert "--address=192.168.177.11:6381" in plan.ray_specs[1].argv
    assert plan.serve.env["RAY_ADDRESS"] == "192.168.177.11:6381"
    assert choose_ports(inv, pb, {}).gcs == 6379 and choose_ports(inv, pb, {}).notes == ()


def test_no_free_port_is_an_error(pair):
    inv, pb = pair
    with pytest.raises(InputError) as caught:
        choose_ports(inv, pb, {"spark-a": range(6379, 6379 + 64)})
    assert "no free port for Ray's GCS near 6379" in caught.value.message


def test_pinned_ports_stay_out_of_rays_worker_range():
    assert choose_port(10001, busy=[10001], downward=True) == 10000
    assert choose_port(9995, busy=range(9995, 10002)) is None  # never into 10002-19999
    assert choose_port(9995, busy=[9995]) == 9996
    assert not in_worker_range(10001) and in_worker_range(10002) and in_worker_range(19999)


def test_two_raylets_on_one_host_get_distinct_ports(tmp_path):
    inv = load_inventory(write(tmp_path, """\
        cluster: local-two
        nodes:
          - {name: head, connection: local, fabric_ip: 127.0.0.1}
          - {name: worker, connection: local, fabric_ip: 127.0.0.1}
        """, "inv.yaml"))
    pb = load_playbook(write(tmp_path, "model: /m\nbackend: ray\ntensor_parallel_size: 2\n"))
    assert set(port_candidates(inv, pb)) == {"head", "worker"}
    ports = choose_ports(inv, pb, {"head": [DEFAULT_DASHBOARD_AGENT_PORT]})
    assert ports.dashboard_agent == {"head": DEFAULT_DASHBOARD_AGENT_PORT + 1, "worker": DEFAULT_DASHBOARD_AGENT_PORT + 2}
    (lo_a, hi_a), (lo_b, hi_b) = ports.worker_ranges["head"], ports.worker_ranges["worker"]
    assert lo_a == 10002 and hi_a < lo_b and hi_b <= 19999
    plans = {n: HostPlan(n, "127.0.0.1", "lo", "127.0.0.1", {"VLLM_HOST_IP": "127.0.0.1"}) for n in ("head", "worker")}
    head, worker = plan_ray(inv, pb, plans, ports=ports).ray_specs
    assert f"--dashboard-agent-listen-port={DEFAULT_DASHBOARD_AGENT_PORT + 2}" in worker.argv
    assert f"--min-worker-port={lo_b}" in worker.argv and f"--max-worker-port={hi_b}" in worker.argv
    assert temp_dir(inv, inv.node("head")) != temp_dir(inv, inv.node("worker"))
    # separate hosts pin nothing beyond the head's ports
    pair = load_inventory(write(tmp_path, PAIR, "pair.yaml"))
    assert choose_ports(pair, pb, {}).dashboard_agent == {} and choose_ports(pair, pb, {}).worker_ranges == {}


# ---------------------------------------------------------------------------
# Ray's view against the inventory
# ---------------------------------------------------------------------------
def ray_node(name: str | None, ip: str, gpus: float = 1.0, host: str = "h", alive: bool = True) -> dict:
    resources = {"CPU": 20.0, "GPU": gpus, f"node:{ip}": 1.0}
    if name:
        resources[f"sparkctl_node:{name}"] = 1.0
    return {"NodeID": "ab" * 28, "Alive": alive, "NodeManagerAddress": ip, "NodeManagerHostname": host, "Resources": resources}


EXPECTED = [
    ExpectedNode("spark-a", "192.168.177.11", 1, "sparkctl_node:spark-a", hostname="spark-a"),
    ExpectedNode("spark-b", "192.168.177.12", 1, "sparkctl_node:spark-b", hostname="spark-b"),
]


def test_membership_ok():
    view = {"nodes": [ray_node("spark-a", "192.168.177.11", host="spark-a"), ray_node("spark-b", "192.168.177.12", host="spark-b"),
                      ray_node("spark-b", "192.168.177.12", host="spark-b", alive=False)]}  # a dead old entry is ignored
    m = verify_membership(view, EXPECTED, 2)
    assert m.ok and sorted(m.joined) == ["spark-a", "spark-b"] and m.gpus == 2 and m.problems == []


def test_membership_missing_worker_is_waited_for():
    m = verify_membership({"nodes": [ray_node("spark-a", "192.168.177.11", host="spark-a")]}, EXPECTED, 2)
    assert not m.ok and m.missing == ["spark-b"] and m.problems == []


@pytest.mark.parametrize(
    "nodes, expected",
    [
        # the worker's Ray ran on the head: same address twice
        ([ray_node("spark-a", "192.168.177.11", host="spark-a"), ray_node("spark-b", "192.168.177.11", host="spark-a")],
         "spark-a and spark-b joined the Ray cluster from the same address 192.168.177.11: a worker's Ray runs on the head (it joined itself)"),
        # the worker's Ray ran on the head although it claimed the worker's address
        ([ray_node("spark-a", "192.168.177.11", host="spark-a"), ray_node("spark-b", "192.168.177.12", host="spark-a")],
         "spark-b's raylet runs on host 'spark-a', but spark-b is 'spark-b'"),
        ([ray_node("spark-a", "192.168.177.11", host="spark-a"), ray_node("spark-b", "10.0.0.11", host="spark-b")],
         "spark-b joined the Ray cluster as 10.0.0.11, not at its fabric address 192.168.177.12"),
        ([ray_node("spark-a", "192.168.177.11", host="spark-a"), ray_node("spark-b", "192.168.177.12", 0, host="spark-b")],
         "spark-b offers 0 GPU(s) to Ray, expected 1"),
        ([ray_node("spark-a", "192.168.177.11", host="spark-a"), ray_node("spark-b", "192.168.177.12", host="spark-b"),
          ray_node(None, "192.168.177.13", host="spark-c")],
         "an unexpected node joined the Ray cluster: 192.168.177.13 (host spark-c)"),
        ([ray_node("spark-a", "192.168.177.11", host="spark-a"), ray_node("spark-b", "192.168.177.12", host="spark-b"),
          ray_node("spark-b", "192.168.177.12", host="spark-b")],
         "spark-b joined the Ray cluster 2 times"),
    ],
)
def test_membership_problems(nodes, expected):
    m = verify_membership({"nodes": nodes}, EXPECTED, 2)
    assert not m.ok and any(expected in p for p in m.problems), m.problems


def test_membership_gpu_total_must_equal_tp_times_pp():
    view = {"nodes": [ray_node("spark-a", "192.168.177.11", host="spark-a"), ray_node("spark-b", "192.168.177.12", host="spark-b")]}
    m = verify_membership(view, EXPECTED, 4)
    assert not m.ok and m.problems == ["Ray sees 2 GPU(s) in total; tensor_parallel_size x pipeline_parallel_size = 4 needs exactly that many"]


def test_membership_on_one_host_with_loopback_addresses():
    """The local pair: Ray rewrites 127.0.0.1 to the host's address, both raylets share it."""
    expected = [ExpectedNode(n, "127.0.0.1", 1, f"sparkctl_node:{n}", loopback=True, shares_host=True) for n in ("head", "worker")]
    view = {"nodes": [ray_node("head", "192.0.2.2"), ray_node("worker", "192.0.2.2")]}
    assert verify_membership(view, expected, 2).ok


def test_map_view_for_status():
    rows = map_view({"nodes": [ray_node("spark-a", "192.168.177.11"), ray_node(None, "192.168.177.13")]}, ["spark-a", "spark-b"])
    assert [(r["node"], r["ip"], r["gpus"]) for r in rows] == [("spark-a", "192.168.177.11", 1.0), (None, "192.168.177.13", 1.0)]


# ---------------------------------------------------------------------------
# what a `ray start` log says (lines as Ray 2.60 prints them)
# ---------------------------------------------------------------------------
GCS_UNREACHABLE = """\
2026-11-23 18:09:29,411	INFO scripts.py:1234 -- Local node IP: 192.168.100.11
[2026-11-23 18:09:34,422 W 8070 8070] rpc_client.h:153: Failed to connect to GCS at address 192.168.100.10:6379 within 5 seconds.
[2026-11-23 18:09:39,424 W 8070 8070] rpc_client.h:638: Failed to connect to the observability pubsub at address 192.168.100.10:6379 within 5 seconds.
"""
GCS_GAVE_UP = GCS_UNREACHABLE + (
    "[2026-11-23 18:10:09,433 W 8070 8070] gcs_client.cc:210: Failed to get cluster ID from GCS server: "
    "TimedOut: Timed out while waiting for GCS to become available.\n"
)
VERSION_MISMATCH = """\
RuntimeError: Version mismatch: The cluster was started with:
    Ray: 2.60.0
    Python: 3.11.7
This process on node 192.168.100.11 was started with:
    Ray: 2.59.0
    Python: 3.12.1
"""


def test_diagnose_gcs_unreachable():
    early = diagnose_ray_log(GCS_UNREACHABLE, node="node1", gcs_address="192.168.100.10:6379", fabric_address="192.168.100.11")
    assert early is not None and early.code == "gcs-unreachable" and early.severity is Severity.WARNING  # the head may still be starting
    assert early.message == "node1: cannot reach the head's Ray GCS at 192.168.100.10:6379"
    assert "firewall" in early.hint and "TCP 6379" in early.hint and "192.168.100.11" in early.hint
    late = diagnose_ray_log(GCS_GAVE_UP, node="node1", gcs_address="192.168.100.10:6379")
    assert late is not None and late.severity is Severity.ERROR and "Failed to get cluster ID" in late.evidence


def test_diagnose_version_mismatch():
    finding = diagnose_ray_log(VERSION_MISMATCH, node="node1", gcs_address="a:6379")
    assert finding is not None and finding.code == "version-mismatch" and finding.severity is Severity.ERROR
    assert "same Ray version" in finding.hint
    assert diagnose_ray_log("Ray runtime started.\n", node="n", gcs_address="a:1") is None


# ---------------------------------------------------------------------------
# `ray stop` only when every Ray process on the host is ours
# ---------------------------------------------------------------------------
def test_ray_stop_only_when_every_ray_process_is_ours():
    ours = [{"pid": 10, "comm": "raylet", "tag": "pair/spark-a/ray/1", "pgid": 9},
            {"pid": 11, "comm": "ray::DashboardA", "tag": None, "pgid": 9}]  # environment overwritten by setproctitle
    assert ray_stop_allowed(ours, "pair", our_groups=[9]) == (True, "every Ray process on the host is this cluster's")
    allowed, why = ray_stop_allowed(ours, "pair")  # untagged outside our groups: not provably ours
    assert not allowed and "pid 11" in why
    foreign = ours + [{"pid": 12, "comm": "raylet", "tag": None, "pgid": 50}]
    assert ray_stop_allowed(foreign, "pair", our_groups=[9])[0] is False
    other_cluster = [{"pid": 13, "comm": "gcs_server", "tag": "pairs/x/ray/1", "pgid": 13}]
    assert ray_stop_allowed(other_cluster, "pair")[0] is False
    assert ray_stop_allowed([], "pair")[0] is False


# ---------------------------------------------------------------------------
# the example playbooks
# ---------------------------------------------------------------------------
EXAMPLES = sorted((REPO / "playbooks" / "examples").glob("*.yaml"))


def test_there_are_examples_for_each_serving_backend():
    backends = {load_playbook(str(p)).backend for p in EXAMPLES}
    assert backends == {"mp", "ray"}


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates_against_a_spark_pair(example, tmp_path):
    inventory = write(tmp_path, """\
        cluster: spark-pair
        ssh: {user: spark}
        nodes:
          - {name: spark-a, host: spark-a.lan, fabric_ip: 192.168.177.11, role: head}
          - {name: spark-b, host: spark-b.lan, fabric_ip: 192.168.177.12}
        """, "pair.yaml")
    result = sparkctl("validate", "-i", inventory, "-p", str(example), "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["playbook"]["tensor_parallel_size"] == 2
    # every setting carries a comment saying why
    for number, line in enumerate(example.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and ":" in stripped and not stripped.endswith(":"):
            key = stripped.split(":", 1)[0]
            if key in {"model", "served_model_name", "host", "port", "stop_grace_s", "pipeline_parallel_size",
                       "NCCL_DEBUG_SUBSYS"}:
                continue
            text = example.read_text().splitlines()
            assert "#" in line or text[number - 2].strip().startswith("#"), f"{example.name}:{number} has no comment: {line}"
