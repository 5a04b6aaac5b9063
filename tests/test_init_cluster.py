"""`sparkctl init` over real SSH on the virtual cluster (tests/vcluster.py):
a healthy pair, a pair whose twins have no IPv4 (the printed fix, --apply, a
passing check; a rollback when the verification fails), an unknown host key
(refused without consent, recorded with --accept-new) and an unreachable host."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.conftest import REPO, sparkctl

pytestmark = [pytest.mark.root, pytest.mark.timeout(600)]

SYSFS = REPO / "tests" / "fixtures" / "sysfs"


def init(cluster, *args: str, known_hosts=None):
    hosts = ",".join(n.mgmt_ip for n in cluster.nodes)
    return sparkctl("init", "--hosts", hosts, "--user", "root", "--identity-file", str(cluster.client_key),
                    "--known-hosts", str(known_hosts or cluster.known_hosts), "--name", "pair", *args)


def network_failures(inventory) -> set[tuple[str, str]]:
    result = sparkctl("check", "-i", str(inventory), "--json")
    report = json.loads(result.stdout)
    return {(f["node"], f["check"]) for f in report["findings"] if f["status"] == "FAIL" and f["check"].startswith("net.")}


def addresses(cluster, node, ifname) -> tuple[list[str], int]:
    out = json.loads(cluster.exec(node, ["ip", "-j", "addr", "show", "dev", ifname]).stdout)[0]
    return [f"{a['local']}/{a['prefixlen']}" for a in out.get("addr_info", []) if a["family"] == "inet"], out["mtu"]


def test_healthy_pair_unknown_keys_and_an_unreachable_host(make_vcluster, tmp_path):
    cluster = make_vcluster(2)
    cluster.set_node_env("node0", {"SPARKCTL_SYSFS_ROOT": str(SYSFS / "spark-healthy-a")})
    cluster.set_node_env("node1", {"SPARKCTL_SYSFS_ROOT": str(SYSFS / "spark-healthy-b")})
    inventory = tmp_path / "inventories" / "pair.yaml"
    fresh = tmp_path / "known_hosts"  # a controller that has never seen these hosts

    refused = init(cluster, "-o", str(inventory), "-q", known_hosts=fresh)
    assert refused.returncode == 3, refused.stderr
    assert "host key not known" in refused.stderr and refused.stderr.count("SHA256:") == 2
    assert not inventory.exists() and not fresh.exists()

    done = init(cluster, "-o", str(inventory), "--accept-new", known_hosts=fresh)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(fresh.read_text().splitlines()) == 2
    assert f"inventory: {inventory}" in done.stdout and "the fabric and the nodes' network: 0 FAIL" in done.stdout
    text = inventory.read_text()
    assert "# the first host" in text and "twin 1 of cabled cage p1" in text
    data = yaml.safe_load(text)
    assert [n["fabric_ip"] for n in data["nodes"]] == ["192.168.100.10", "192.168.100.11"]
    assert [n["host"] for n in data["nodes"]] == [n.mgmt_ip for n in cluster.nodes]
    assert data["fabric"]["mtu"] == 9000
    assert sparkctl("validate", "-i", str(inventory)).returncode == 0
    assert network_failures(inventory) == set()
    page = tmp_path / "check.html"
    assert sparkctl("check", "-i", str(inventory), "--report", str(page)).stdout.strip().endswith(f"report: {page}")
    assert "net.peer-mtu" in page.read_text() and "192.168.100.11" in page.read_text()

    again = init(cluster, "-o", str(inventory), known_hosts=fresh)
    assert again.returncode == 2 and "not overwritten" in again.stderr and inventory.read_text() == text

    cluster.stop_sshd("node1")
    unreachable = init(cluster, "-o", str(tmp_path / "other.yaml"), known_hosts=fresh)
    assert unreachable.returncode == 3
    assert cluster.nodes[1].mgmt_ip in unreachable.stderr and cluster.nodes[0].mgmt_ip not in unreachable.stderr.split("\n")[0]


def test_twins_without_ipv4_get_the_printed_fix_then_apply_then_a_passing_check(make_vcluster, tmp_path):
    cluster = make_vcluster(2, twins=True, fabric_addresses=False, node_mtu=1500)
    inventory = tmp_path / "pair.yaml"

    dry = init(cluster, "-o", str(inventory))
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert "enp1s0f1np1 has no IPv4 address" in dry.stdout and "MTU 1500 (want 9000)" in dry.stdout
    assert "sudo ip addr add 192.168.100.10/24 dev enp1s0f1np1" in dry.stdout
    assert "sudo ip addr add 192.168.101.11/24 dev enP2p1s0f1np1" in dry.stdout
    assert "sudo ip link set dev enp1s0f1np1 mtu 9000" in dry.stdout
    assert "      addresses: [192.168.101.10/24]" in dry.stdout and "link-local: []" in dry.stdout
    assert "NOTE: the fabric addresses below become true" in inventory.read_text()
    assert addresses(cluster, "node0", "enp1s0f1np1") == ([], 1500)  # nothing touched without --apply

    netplan = tmp_path / "netplan-{node}"
    applied = init(cluster, "-o", str(inventory), "--force", "--apply", "--netplan-dir", str(netplan))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert addresses(cluster, "node1", "enP2p1s0f1np1") == (["192.168.101.11/24"], 9000)
    assert addresses(cluster, "node0", "mgmt0")[0] == [f"{cluster.nodes[0].mgmt_ip}/{cluster.mgmt_net.prefixlen}"]
    written = tmp_path / "netplan-node1" / "40-sparkctl-fabric.yaml"
    assert oct(written.stat().st_mode & 0o777) == "0o600"
    assert yaml.safe_load(written.read_text())["network"]["ethernets"]["enp1s0f1np1"]["addresses"] == ["192.168.100.11/24"]
    assert "8972 B don't-fragment ok" in applied.stdout and "NOTE" not in inventory.read_text()
    assert network_failures(inventory) == set()


def test_apply_rolls_back_when_the_verification_fails(make_vcluster, tmp_path):
    cluster = make_vcluster(2, twins=True, fabric_addresses=False, node_mtu=1500)
    # the second twin's "cable" of node1 is dead on the switch side: its link looks up, nothing passes
    subprocess.run(["ip", "-n", cluster.switch_netns, "link", "set", f"{cluster.tag}-g1", "nomaster"], check=True)
    netplan = tmp_path / "netplan-{node}"
    result = init(cluster, "-o", str(tmp_path / "pair.yaml"), "--apply", "--netplan-dir", str(netplan))
    assert result.returncode == 1
    assert "rolled back" in result.stderr and "enP2p1s0f1np1 -> node1 192.168.101.11" in result.stderr
    for node in ("node0", "node1"):
        for ifname in ("enp1s0f1np1", "enP2p1s0f1np1"):
            assert addresses(cluster, node, ifname) == ([], 1500), (node, ifname)
    assert not any(p.exists() for p in tmp_path.glob("netplan-*/*.yaml"))
