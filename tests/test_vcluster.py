"""Integration tests of the virtual cluster (tests/vcluster.py): real namespaces, real sshd."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.root]

_REASONS = []
if os.geteuid() != 0:
    _REASONS.append("not running as root")
if not os.path.exists("/usr/sbin/sshd"):
    _REASONS.append("/usr/sbin/sshd missing")
if shutil.which("ip") is None:
    _REASONS.append("`ip` (iproute2) missing")
if shutil.which("ssh") is None:
    _REASONS.append("OpenSSH client `ssh` missing")
if _REASONS:
    pytest.skip("virtual cluster needs root, /usr/sbin/sshd and ip: " + ", ".join(_REASONS),
                allow_module_level=True)

from tests import vcluster  # noqa: E402
from tests.vcluster import VirtualCluster, cleanup_stale  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- helpers


def netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def root_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    # "5: sct-ab12-m0@if2: <...>"
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip()]


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def assert_gone(tag: str, pids: list[int]) -> None:
    ns = [n for n in netns_names() if n.startswith(tag + "-")]
    links = [n for n in root_links() if n.startswith(tag + "-")]
    alive = [p for p in pids if pid_alive(p)]
    assert not ns, f"namespaces left behind: {ns}"
    assert not links, f"links left behind: {links}"
    assert not alive, f"processes left behind: {alive}"


def ssh(cluster: VirtualCluster, node, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Plain OpenSSH client, strict host key checking against the cluster's known_hosts."""
    node = cluster.node(node)
    argv = ["ssh", "-F", "/dev/null", "-i", str(cluster.client_key),
            "-o", f"UserKnownHostsFile={cluster.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
            f"root@{node.mgmt_ip}", *cmd]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def ssh_ok(cluster, node, *cmd) -> str:
    proc = ssh(cluster, node, *cmd)
    assert proc.returncode == 0, f"ssh to {cluster.node(node).name} failed rc={proc.returncode}: {proc.stderr}"
    return proc.stdout


def addrs_of(ip_j_addr: str) -> dict[str, list[str]]:
    return {link["ifname"]: [a["local"] for a in link.get("addr_info", []) if a.get("family") == "inet"]
            for link in json.loads(ip_j_addr)}


def ping(cluster, node, target: str, size: int | None = None, deadline: int = 1) -> subprocess.CompletedProcess:
    """One echo reply within ``deadline`` seconds (ping re-sends once a second until then)."""
    argv = ["ping", "-n", "-c", "1", "-w", str(deadline)]
    if size is not None:
        argv += ["-M", "do", "-s", str(size)]
    return cluster.exec(node, argv + [target], check=False, timeout=10)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _clean_stale_once():
    # leftovers of crashed earlier runs (live clusters of other processes are skipped)
    cleanup_stale()
    yield


@pytest.fixture
def make_cluster(tmp_path):
    clusters: list[VirtualCluster] = []

    def _make(n: int, start: bool = True, **kw) -> VirtualCluster:
        c = VirtualCluster(n, tmp_path / f"vc{len(clusters)}", **kw)
        clusters.append(c)  # registered before start: a half-started cluster is stopped too
        return c.start() if start else c

    try:
        yield _make
    finally:
        errors = []
        for c in reversed(clusters):
            try:
                c.stop()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def cluster2(make_cluster) -> VirtualCluster:
    return make_cluster(2)


# ----------------------------------------------------------------------------- tests


def test_ssh_reaches_every_node_inside_its_namespace(cluster2):
    c = cluster2
    root_addrs = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    root_v4 = {a for v in addrs_of(root_addrs).values() for a in v}
    for node in c.nodes:
        out = ssh_ok(c, node, "cat /proc/net/dev; echo ===; ip -j addr; echo ===; stat -L -c %i /proc/self/ns/net")
        netdev, ipj, inode = out.split("===\n")
        assert node.fabric_ifname in netdev and "mgmt0" in netdev
        addrs = addrs_of(ipj)
        assert addrs[node.fabric_ifname] == [node.fabric_ip], addrs
        assert addrs["mgmt0"] == [node.mgmt_ip], addrs
        assert "eth0" not in addrs  # the root namespace's uplink is not visible in the node
        # really the node's namespace, not the root one
        assert int(inode) == os.stat(f"/run/netns/{node.netns}").st_ino
        assert int(inode) != os.stat("/proc/self/ns/net").st_ino
        assert node.fabric_ip not in root_v4
        assert node.mgmt_ip not in root_v4
        # the fabric link reports the configured MTU
        mtu = json.loads(c.exec(node, ["ip", "-j", "link", "show", "dev", node.fabric_ifname]).stdout)[0]["mtu"]
        assert mtu == 9000
    # sshd pids are real and listed in the node namespace
    for node in c.nodes:
        assert node.sshd_pid in c.pids(node)
        assert Path(f"/proc/{node.sshd_pid}/exe").resolve() == Path("/usr/sbin/sshd").resolve()
        assert int((node.workdir / "sshd.pid").read_text()) == node.sshd_pid
        assert "Server listening on" in (node.workdir / "sshd.log").read_text()


def test_nodes_reach_each_other_over_both_networks(cluster2):
    c = cluster2
    n0, n1 = c.nodes
    assert ping(c, n0, n1.mgmt_ip).returncode == 0
    assert ping(c, n1, n0.fabric_ip).returncode == 0
    # and sshd of node1 is reachable from node0 through the mgmt bridge
    proc = c.exec(n0, ["bash", "-c", f"exec 3<>/dev/tcp/{n1.mgmt_ip}/22 && head -c 4 <&3"], check=False)
    assert proc.stdout == "SSH-", proc


def test_fabric_jumbo_frames_and_mtu_mismatch(cluster2):
    c = cluster2
    n0, n1 = c.nodes
    ok = ping(c, n0, n1.fabric_ip, size=8972)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    c.set_fabric_mtu(n1, 1500)
    mtu = json.loads(c.exec(n1, ["ip", "-j", "link", "show", "dev", n1.fabric_ifname]).stdout)[0]["mtu"]
    assert mtu == 1500
    bad = ping(c, n0, n1.fabric_ip, size=8972)
    assert bad.returncode != 0, "jumbo ping should fail across an MTU mismatch\n" + bad.stdout
    small = ping(c, n0, n1.fabric_ip, size=1472)
    assert small.returncode == 0, small.stdout + small.stderr
    # and back
    c.set_fabric_mtu(n1, 9000)
    assert ping(c, n0, n1.fabric_ip, size=8972).returncode == 0


def test_fabric_link_down_and_up(cluster2):
    c = cluster2
    n0, n1 = c.nodes
    c.set_fabric_link(n1, False)
    assert ping(c, n0, n1.fabric_ip).returncode != 0
    assert ping(c, n0, n1.mgmt_ip).returncode == 0  # mgmt unaffected
    c.set_fabric_link(n1, True)
    # node0's ARP entry for node1 is still INCOMPLETE from the failed ping and is only
    # re-probed once a second, so give it a few seconds (same as on real hardware)
    assert ping(c, n0, n1.fabric_ip, deadline=5).returncode == 0


def test_root_namespace_cannot_reach_fabric(cluster2):
    c = cluster2
    n1 = c.nodes[1]
    # positive control: the fabric address does answer from inside the cluster
    assert ping(c, c.nodes[0], n1.fabric_ip).returncode == 0
    # the root namespace has no route to the fabric through any cluster link
    route = subprocess.run(["ip", "-j", "route", "get", n1.fabric_ip], capture_output=True, text=True)
    if route.returncode == 0:
        devs = [r.get("dev", "") for r in json.loads(route.stdout)]
        assert not any(d.startswith(c.tag) for d in devs), devs
    proc = subprocess.run(["ping", "-n", "-c", "1", "-W", "1", n1.fabric_ip], capture_output=True, text=True)
    assert proc.returncode != 0, proc.stdout
    # while the mgmt address of the same node does answer from the root namespace
    proc = subprocess.run(["ping", "-n", "-c", "1", "-W", "2", n1.mgmt_ip], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_inventory(cluster2, tmp_path):
    c = cluster2
    path = c.write_inventory(tmp_path / "inv" / "inventory.yaml")
    inv = yaml.safe_load(path.read_text())
    assert list(inv) == ["cluster", "ssh", "nodes", "fabric"]
    assert inv["cluster"] == c.name == f"vc-{c.id}"
    assert inv["ssh"] == {"user": "root", "identity_file": str(c.client_key),
                          "known_hosts": str(c.known_hosts), "host_key_policy": "strict"}
    assert Path(inv["ssh"]["identity_file"]).is_absolute()
    assert inv["nodes"] == [
        {"name": "node0", "host": c.nodes[0].mgmt_ip, "fabric_ip": "192.168.100.10", "role": "head"},
        {"name": "node1", "host": c.nodes[1].mgmt_ip, "fabric_ip": "192.168.100.11", "role": "worker"},
    ]
    assert inv["fabric"] == {"interface": "enp1s0f1np1"}
    extra = c.inventory(fabric={"mtu": 1500}, vllm={"image": "x"})
    assert extra["fabric"] == {"interface": "enp1s0f1np1", "mtu": 1500}
    assert extra["vllm"] == {"image": "x"}
    # known_hosts: "ip keytype key" lines for every node, matching the host keys
    lines = c.known_hosts.read_text().splitlines()
    assert len(lines) == 2
    for node, line in zip(c.nodes, lines):
        ip, keytype, key = line.split()
        pub = (node.workdir / "ssh_host_ed25519_key.pub").read_text().split()
        assert (ip, keytype, key) == (node.mgmt_ip, pub[0], pub[1])


def test_stop_leaves_nothing_and_is_idempotent(make_cluster):
    c = make_cluster(2)
    # processes started inside a node, one of them ignoring SIGTERM (exercise the SIGKILL path)
    out = ssh_ok(c, 0, "nohup sleep 1000 >/dev/null 2>&1 & echo $!; "
                       "nohup sh -c \"trap '' TERM; exec sleep 1001\" >/dev/null 2>&1 & echo $!")
    spawned = [int(x) for x in out.split()]
    extra = subprocess.Popen(["ip", "netns", "exec", c.nodes[1].netns, "sleep", "1002"])
    time.sleep(0.2)
    for pid in spawned + [extra.pid]:
        assert pid_alive(pid)
    assert set(spawned) <= set(c.pids(0))
    sshd_pids = [n.sshd_pid for n in c.nodes]
    assert all(sshd_pids)
    assert any(n.startswith(c.tag) for n in netns_names())
    assert any(n.startswith(c.tag) for n in root_links())
    c.stop()
    extra.wait(timeout=5)  # our own child: reap it
    assert_gone(c.tag, sshd_pids + spawned + [extra.pid])
    assert not (vcluster.LOCK_DIR / f"{c.tag}.lock").exists()
    c.stop()  # harmless
    assert_gone(c.tag, sshd_pids)
    # the management subnet is free again (no route left)
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    assert str(c.mgmt_net.network_address) not in routes


@pytest.mark.parametrize("step", ["_create_namespaces", "_setup_fabric", "_start_sshds", "_wait_sshd_ready"])
def test_interrupted_start_leaves_nothing(make_cluster, monkeypatch, step):
    original = getattr(VirtualCluster, step)

    def boom(self, *a, **kw):
        if step in ("_create_namespaces", "_start_sshds"):
            # fail half way through the step
            if step == "_create_namespaces":
                vcluster._run(["ip", "netns", "add", self.nodes[0].netns])
            else:
                self._spawn_sshd(self.nodes[0])
        else:
            original(self, *a, **kw)
        raise RuntimeError(f"simulated failure in {step}")

    monkeypatch.setattr(VirtualCluster, step, boom)
    c = make_cluster(3, start=False)
    with pytest.raises(RuntimeError, match="simulated failure"):
        c.start()
    pids = [n.sshd_pid for n in c.nodes if n.sshd_pid]
    if step in ("_start_sshds", "_wait_sshd_ready"):
        assert pids, "the failure should have happened after sshd was started"
    assert_gone(c.tag, pids)
    c.stop()  # still harmless


def test_sshd_that_fails_to_start_reports_node_and_log(make_cluster, monkeypatch):
    original = VirtualCluster._write_sshd_config

    def bad_config(self, node):
        original(self, node)
        if node.index == 1:
            p = self._sshd_config_path(node)
            p.write_text(p.read_text() + "ThisIsNotAnOption yes\n")

    monkeypatch.setattr(VirtualCluster, "_write_sshd_config", bad_config)
    c = make_cluster(2, start=False)
    with pytest.raises(vcluster.VClusterError) as ei:
        c.start()
    msg = str(ei.value)
    assert "node1" in msg and "ThisIsNotAnOption" in msg, msg
    assert_gone(c.tag, [n.sshd_pid for n in c.nodes if n.sshd_pid])


def test_eight_nodes_all_answer_ssh(make_cluster):
    t0 = time.monotonic()
    c = make_cluster(8)
    start_s = time.monotonic() - t0
    assert len({n.mgmt_ip for n in c.nodes}) == 8
    assert [n.fabric_ip for n in c.nodes] == [f"192.168.100.{10 + i}" for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: ssh(c, n, f"ip -j addr show dev {n.fabric_ifname}"), c.nodes))
    for node, proc in zip(c.nodes, results):
        assert proc.returncode == 0, f"{node.name}: {proc.stderr}"
        assert addrs_of(proc.stdout)[node.fabric_ifname] == [node.fabric_ip]
    # full fabric mesh from the last node, jumbo frames
    for node in c.nodes[:-1]:
        assert ping(c, c.nodes[-1], node.fabric_ip, size=8972).returncode == 0
    assert len(c.inventory()["nodes"]) == 8
    t1 = time.monotonic()
    sshd_pids = [n.sshd_pid for n in c.nodes]
    c.stop()
    stop_s = time.monotonic() - t1
    assert_gone(c.tag, sshd_pids)
    print(f"8-node start {start_s:.2f}s stop {stop_s:.2f}s")
    assert start_s < 30 and stop_s < 30


def test_regenerated_host_key_is_rejected(cluster2):
    c = cluster2
    n0, n1 = c.nodes
    ssh_ok(c, n1, "true")  # positive control
    old_pid = n1.sshd_pid
    c.regenerate_host_key(n1)
    assert n1.sshd_pid != old_pid and n1.sshd_pid in c.pids(n1)
    proc = ssh(c, n1, "true")
    assert proc.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in proc.stderr, proc.stderr
    ssh_ok(c, n0, "true")  # the other node is unaffected


def test_stopped_sshd_refuses_connections(cluster2):
    c = cluster2
    n0, n1 = c.nodes
    old_pid = n1.sshd_pid
    c.stop_sshd(n1)
    assert n1.sshd_pid is None and not pid_alive(old_pid)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((n1.mgmt_ip, 22), timeout=3).close()
    ssh_ok(c, n0, "true")
    # the node itself is still there (only sshd is gone)
    assert ping(c, n0, n1.mgmt_ip).returncode == 0
    c.start_sshd(n1)
    ssh_ok(c, n1, "true")


def test_two_clusters_coexist(make_cluster):
    a = make_cluster(2)
    b = make_cluster(2)
    assert a.id != b.id
    assert not a.mgmt_net.overlaps(b.mgmt_net)
    for c in (a, b):
        for node in c.nodes:
            ssh_ok(c, node, "true")
    # same fabric addresses in both clusters, but isolated from each other
    assert a.nodes[1].fabric_ip == b.nodes[1].fabric_ip
    a.set_fabric_link(a.nodes[1], False)
    assert ping(a, a.nodes[0], a.nodes[1].fabric_ip).returncode != 0
    assert ping(b, b.nodes[0], b.nodes[1].fabric_ip).returncode == 0
    # cleanup_stale leaves live clusters alone
    removed = cleanup_stale()
    assert not any(a.tag in r or b.tag in r for r in removed), removed
    ssh_ok(a, 0, "true")


def _start_cli(tmp_path: Path, n: int) -> tuple[subprocess.Popen, dict]:
    workdir = tmp_path / "cli"
    proc = subprocess.Popen([sys.executable, "-m", "tests.vcluster", "up", str(n), "--workdir", str(workdir)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    inv_path = workdir / "inventory.yaml"
    deadline = time.monotonic() + 30
    while not inv_path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"`vcluster up` exited early rc={proc.returncode}: {proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for `vcluster up` to write inventory.yaml")
        time.sleep(0.05)
    time.sleep(0.05)
    return proc, yaml.safe_load(inv_path.read_text())


def _tag_of_inventory(inv: dict) -> str:
    return "sct-" + inv["cluster"].removeprefix("vc-")


def test_cli_up_and_sigterm_teardown(tmp_path):
    proc, inv = _start_cli(tmp_path, 2)
    try:
        tag = _tag_of_inventory(inv)
        assert {f"{tag}-n0", f"{tag}-n1", f"{tag}-sw"} <= set(netns_names())
        host = inv["nodes"][1]["host"]
        r = subprocess.run(["ssh", "-F", "/dev/null", "-i", inv["ssh"]["identity_file"],
                            "-o", f"UserKnownHostsFile={inv['ssh']['known_hosts']}",
                            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                            f"root@{host}", "ip -br addr"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "192.168.100.11" in r.stdout, r.stderr
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "torn down" in out and "cluster: vc-" in out, out
        assert_gone(tag, [])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        cleanup_stale()


def test_cleanup_stale_after_crash(tmp_path):
    proc, inv = _start_cli(tmp_path, 2)
    tag = _tag_of_inventory(inv)
    sshd_pids = [int((tmp_path / "cli" / f"node{i}" / "sshd.pid").read_text()) for i in range(2)]
    proc.kill()  # crash: no teardown
    proc.wait()
    assert all(pid_alive(p) for p in sshd_pids)
    assert f"{tag}-n0" in netns_names()
    removed = cleanup_stale()
    assert f"netns {tag}-n0" in removed and f"link {tag}-br" in removed, removed
    assert all(f"pid {p}" in removed for p in sshd_pids), removed
    time.sleep(0.1)
    assert_gone(tag, sshd_pids)
    assert cleanup_stale() == []
