"""`sparkctl check` and `up`'s refusal on real namespaced nodes over SSH. The
faults are real: an MTU mismatch on the fabric veth, a fabric link down, a
port taken inside the head's namespace, the model hidden on one node by a
mount in that node's own mount namespace. RDMA cannot exist here, so the
healthy pair points each node at a captured-format Spark sysfs tree through
SPARKCTL_SYSFS_ROOT set on the node (sshd SetEnv)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO, sparkctl
from tests.vcluster import can_unlimit_memlock

pytestmark = [pytest.mark.root, pytest.mark.vllm, pytest.mark.timeout(300)]

SYSFS = REPO / "tests" / "fixtures" / "sysfs"


def write_playbook(tmp_path, model=None) -> str:
    data = yaml.safe_load((REPO / "playbooks" / "tiny-cpu.yaml").read_text())
    data["model"] = str(model or REPO / "playbooks" / "models" / "tiny-llama")
    data["vllm"] = {"command": [str(REPO / ".venv" / "bin" / "python"), str(REPO / "playbooks" / "support" / "vllm_cpu.py")]}
    path = tmp_path / "pb.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def check(inv, pb):
    result = sparkctl("check", "-i", inv, "-p", pb, "--json")
    return result.returncode, json.loads(result.stdout)


def statuses(report, status):
    return {(f["node"], f["check"]) for f in report["findings"] if f["status"] == status}


def only_sshd_left(cluster):
    for node in cluster.nodes:
        assert cluster.pids(node) == [node.sshd_pid], f"{node.name} runs more than its sshd"


def assert_up_refuses(inv, pb, expected: tuple[str | None, str], cluster):
    result = sparkctl("up", "-i", inv, "-p", pb, "--json")
    assert result.returncode == 1, result.stderr
    error = json.loads(result.stdout)
    assert error["message"] == "preflight checks failed; nothing was started"
    node, check_id = expected
    assert any(d.startswith(f"{node or '(cluster)'}: {check_id}:") for d in error["details"]), error["details"]
    only_sshd_left(cluster)


def test_healthy_virtual_pair_with_spark_sysfs_passes_and_plans_per_host(make_vcluster, tmp_path):
    cluster = make_vcluster(2)
    cluster.set_node_env("node0", {"SPARKCTL_SYSFS_ROOT": str(SYSFS / "spark-healthy-a")})
    cluster.set_node_env("node1", {"SPARKCTL_SYSFS_ROOT": str(SYSFS / "spark-healthy-b")})
    inv = str(cluster.write_inventory(tmp_path / "inv.yaml"))
    rc, report = check(inv, write_playbook(tmp_path))
    assert rc == 0, report
    not_pass = statuses(report, "WARN") | statuses(report, "FAIL")
    if can_unlimit_memlock():
        assert not_pass == set()
    else:  # this host forbids raising RLIMIT_MEMLOCK (no CAP_SYS_RESOURCE): a correct WARN, nothing else
        assert not_pass == {("node0", "limits.memlock"), ("node1", "limits.memlock")}
    checked = {f["check"] for f in report["findings"]}
    assert {"rdma.twins-active", "rdma.roce-v2-gid", "rdma.same-cage", "net.peer-reach", "net.mtu-match",
            "versions.vllm", "model.complete", "ports.free"} <= checked
    hosts = report["plan"]["hosts"]
    assert hosts["node0"]["env"]["VLLM_HOST_IP"] == "192.168.100.10"
    assert hosts["node1"]["env"]["VLLM_HOST_IP"] == "192.168.100.11"
    assert hosts["node0"]["env"]["NCCL_IB_HCA"] == hosts["node1"]["env"]["NCCL_IB_HCA"] == "=rocep1s0f1,roceP2p1s0f1"
    assert "NCCL_IB_GID_INDEX" not in hosts["node0"]["env"]
    text = sparkctl("check", "-i", inv, "-p", write_playbook(tmp_path))
    assert "0 FAIL" in text.stdout and "NETWORK PLAN" in text.stdout and "rdma.roce-v2-gid" in text.stdout


def test_mtu_mismatch_on_the_fabric_fails_and_up_refuses(make_vcluster, tmp_path):
    cluster = make_vcluster(2)
    cluster.set_fabric_mtu("node1", 1500)
    inv = str(cluster.write_inventory(tmp_path / "inv.yaml"))
    pb = write_playbook(tmp_path)
    rc, report = check(inv, pb)
    assert rc == 1
    failed = statuses(report, "FAIL")
    assert (None, "net.mtu-match") in failed
    assert ("node0", "net.peer-mtu") in failed  # the jumbo don't-fragment ping from the 9000 side fails
    assert ("node0", "net.peer-reach") not in failed  # small packets still pass: the classic trap
    assert_up_refuses(inv, pb, (None, "net.mtu-match"), cluster)


def test_peer_unreachable_on_the_fabric(make_vcluster, tmp_path):
    cluster = make_vcluster(3)
    cluster.set_fabric_link("node2", False)
    inv = str(cluster.write_inventory(tmp_path / "inv.yaml"))
    result = sparkctl("check", "-i", inv, "--json")  # no playbook: the network checks alone
    report = json.loads(result.stdout)
    assert result.returncode == 1
    failed = statuses(report, "FAIL")
    assert ("node0", "net.peer-reach") in failed and ("node1", "net.peer-reach") in failed
    reach = next(f for f in report["findings"] if f["node"] == "node0" and f["check"] == "net.peer-reach")
    assert "192.168.100.12" in reach["evidence"] and "192.168.100.11" not in reach["evidence"].split("no reply")[-1]


def test_busy_port_on_the_head(make_vcluster, tmp_path):
    cluster = make_vcluster(2)
    head = cluster.nodes[0]
    blocker = subprocess.Popen(
        ["ip", "netns", "exec", head.netns, sys.executable, "-c",
         "import socket,time; s=socket.create_server(('0.0.0.0', 8013)); print('ready', flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert blocker.stdout.readline().strip() == "ready"
        inv = str(cluster.write_inventory(tmp_path / "inv.yaml"))
        pb = write_playbook(tmp_path)
        rc, report = check(inv, pb)
        assert rc == 1
        assert statuses(report, "FAIL") == {("node0", "ports.free")}
        evidence = next(f["evidence"] for f in report["findings"] if f["check"] == "ports.free" and f["node"] == "node0")
        assert f"8013 in use by pid {blocker.pid}" in evidence
        result = sparkctl("up", "-i", inv, "-p", pb, "--json")
        assert result.returncode == 1 and "node0: ports.free" in result.stdout
        assert set(cluster.pids(head)) == {head.sshd_pid, blocker.pid}
    finally:
        blocker.kill()
        blocker.wait()


def test_model_missing_on_one_node(make_vcluster, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(REPO / "playbooks" / "models" / "tiny-llama", models / "tiny-llama")
    cluster = make_vcluster(2)
    # Hide the models folder from node1 only: a tmpfs mounted in node1's sshd mount namespace.
    node1 = cluster.nodes[1]
    subprocess.run(["nsenter", "-t", str(node1.sshd_pid), "-m", "mount", "-t", "tmpfs", "tmpfs", str(models)], check=True)
    inv = str(cluster.write_inventory(tmp_path / "inv.yaml"))
    pb = write_playbook(tmp_path, models / "tiny-llama")
    rc, report = check(inv, pb)
    assert rc == 1
    assert statuses(report, "FAIL") & {("node1", "model.complete")} and ("node0", "model.complete") in statuses(report, "PASS")
    assert_up_refuses(inv, pb, ("node1", "model.complete"), cluster)
    # the explicit override gets past the checks (and then vLLM itself fails on node1)
    forced = sparkctl("up", "-i", inv, "-p", pb, "--ignore-check", "model.complete", "--ignore-check", "model.same")
    assert "preflight checks failed" not in forced.stderr
    sparkctl("down", "-i", inv, "-q")
    only_sshd_left(cluster)
