"""One node with RDMA devices, another with none: NCCL can only use sockets between
them, whatever the GPUs (issue #13, defect 10). Facts come from the fixture sysfs trees."""

from __future__ import annotations

import pytest

from sparkctl.checks import NodeSpec, derive_plan
from sparkctl.findings import Severity
from tests.test_checks import by_status, node, one, pair_spec, run  # noqa: F401 (node is a fixture)

FAIL = Severity.ERROR


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu-hosts", "gpu-hosts"])
def test_rdma_on_one_node_only_is_a_cluster_failure(node, gpu):
    spec = pair_spec(nodes=(NodeSpec("a", role="head", host="spark-a", fabric_ip="192.168.100.10"),
                            NodeSpec("b", host="spark-b", fabric_ip="192.168.100.11")))
    findings = run(spec, {"a": node("spark-healthy-a", gpu=gpu), "b": node("no-rdma", gpu=gpu)}, reach=False)
    assert ("rdma.symmetric", None) in by_status(findings, FAIL)
    evidence = one(findings, "rdma.symmetric", None).evidence
    assert "a has RDMA devices" in evidence and "b has none" in evidence and "sockets" in evidence


def test_rdma_everywhere_or_nowhere_is_not_flagged(node):
    both = run(pair_spec(), {"a": node("spark-healthy-a"), "b": node("spark-healthy-b")})
    neither = run(pair_spec(nodes=(NodeSpec("a", role="head", fabric_ip="127.0.0.1"), NodeSpec("b", fabric_ip="127.0.0.1")),
                            cpu_only=True), {"a": node("no-rdma", gpu=False), "b": node("no-rdma", gpu=False)})
    assert not [f for f in both + neither if f.code == "rdma.symmetric"]


def test_the_plan_sets_nccl_ib_hca_on_both_sides_or_neither(node):
    spec = pair_spec(nodes=(NodeSpec("a", role="head", host="spark-a", fabric_ip="192.168.100.10"),
                            NodeSpec("b", host="spark-b", fabric_ip="192.168.100.11")))
    plan = derive_plan(spec, {"a": node("spark-healthy-a", gpu=False), "b": node("no-rdma", gpu=False)})
    assert "NCCL_IB_HCA" not in plan.hosts["a"].env and "NCCL_IB_HCA" not in plan.hosts["b"].env
    assert "b has no RDMA devices" in plan.hosts["a"].why["NCCL_IB_HCA"]
