"""sparkctl over real SSH to namespaced nodes (real sshd, real host keys)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import yaml

from sparkctl.remote.result import SshFailure
from sparkctl.remote.ssh_errors import classify_text
from tests.conftest import sparkctl

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]


def write_inventory(cluster, tmp_path, name="inv.yaml", **extra):
    path = tmp_path / name
    cluster.write_inventory(path, **extra)
    return str(path)


def exec_json(inventory, *command):
    result = sparkctl("exec", "-i", inventory, "--json", "--", *command)
    return result.returncode, json.loads(result.stdout), result.stderr


def test_exec_on_eight_nodes_runs_in_each_node(make_vcluster, tmp_path):
    cluster = make_vcluster(8)
    inventory = write_inventory(cluster, tmp_path, env={"SPARKCTL_TEST_VAR": "from inventory"})
    rc, out, err = exec_json(inventory, "sh", "-c", "ip -j -4 addr show dev enp1s0f1np1; printf %s \"$SPARKCTL_TEST_VAR\" >&2")
    assert rc == 0, err
    assert [n["node"] for n in out["nodes"]] == [f"node{i}" for i in range(8)]
    for node, result in zip(cluster.nodes, out["nodes"]):
        addrs = [a["local"] for link in json.loads(result["stdout"]) for a in link["addr_info"]]
        assert addrs == [node.fabric_ip]  # it ran inside that node's namespace
        assert result["stderr"] == "from inventory" and result["returncode"] == 0


def test_exit_codes_are_reported_per_node(make_vcluster, tmp_path):
    cluster = make_vcluster(2)
    inventory = write_inventory(cluster, tmp_path)
    rc, out, _ = exec_json(inventory, "sh", "-c", 'ip -4 -o addr show dev enp1s0f1np1 | grep -q 192.168.100.11 && exit 3; exit 0')
    assert rc == 1
    assert [n["returncode"] for n in out["nodes"]] == [0, 3]


def test_changed_host_key_is_refused_with_a_hint(make_vcluster, tmp_path):
    cluster = make_vcluster(3)
    inventory = write_inventory(cluster, tmp_path)
    cluster.regenerate_host_key("node1")
    rc, out, _ = exec_json(inventory, "true")
    assert rc == 3
    by_node = {n["node"]: n for n in out["nodes"]}
    assert by_node["node1"]["error_kind"] == SshFailure.HOST_KEY_CHANGED.value
    assert by_node["node1"]["unreachable"] is True
    assert by_node["node0"]["returncode"] == 0 and by_node["node2"]["returncode"] == 0
    # the text path of the CLI names the fix
    text = sparkctl("exec", "-i", inventory, "--", "true")
    assert "host key changed" in text.stdout
    # accept-new must never accept a changed key either
    inventory_accept = write_inventory(cluster, tmp_path, "accept.yaml", ssh={"host_key_policy": "accept-new"})
    rc, out, _ = exec_json(inventory_accept, "true")
    assert rc == 3 and out["nodes"][1]["error_kind"] == SshFailure.HOST_KEY_CHANGED.value


def test_unknown_host_strict_refuses_accept_new_records(make_vcluster, tmp_path):
    cluster = make_vcluster(2)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    strict = write_inventory(cluster, tmp_path, "strict.yaml", ssh={"known_hosts": str(empty)})
    rc, out, _ = exec_json(strict, "true")
    assert rc == 3 and {n["error_kind"] for n in out["nodes"]} == {SshFailure.HOST_KEY_UNKNOWN.value}
    assert empty.read_text() == ""
    accepting = write_inventory(cluster, tmp_path, "accept.yaml", ssh={"known_hosts": str(empty), "host_key_policy": "accept-new"})
    rc, out, _ = exec_json(accepting, "true")
    assert rc == 0
    recorded = empty.read_text().splitlines()
    assert sorted(line.split()[0] for line in recorded) == sorted(n.mgmt_ip for n in cluster.nodes)
    # ... and the recorded keys are the real ones: strict checking now passes
    rc, _, _ = exec_json(strict, "true")
    assert rc == 0


def test_stopped_sshd_is_unreachable_others_still_answer(make_vcluster, tmp_path):
    cluster = make_vcluster(3)
    inventory = write_inventory(cluster, tmp_path, ssh={"retry_deadline_s": 30})
    cluster.stop_sshd("node2")
    started = time.monotonic()
    rc, out, _ = exec_json(inventory, "echo", "alive")
    elapsed = time.monotonic() - started
    assert rc == 3
    by_node = {n["node"]: n for n in out["nodes"]}
    assert by_node["node2"]["error_kind"] == SshFailure.UNREACHABLE.value
    assert "connection refused" in by_node["node2"]["error"]
    assert by_node["node0"]["stdout"] == "alive\n" and by_node["node1"]["stdout"] == "alive\n"
    assert elapsed < 20  # refused is not transient: no retrying until the 30 s deadline


def test_wrong_key_is_a_login_failure(make_vcluster, tmp_path):
    import subprocess

    cluster = make_vcluster(2)
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    inventory = write_inventory(cluster, tmp_path, ssh={"identity_file": str(other)})
    rc, out, _ = exec_json(inventory, "true")
    assert rc == 3 and {n["error_kind"] for n in out["nodes"]} == {SshFailure.AUTH.value}


class FlakyProxy:
    """A TCP proxy in front of a real sshd that resets the first `drops`
    connections (as an overloaded sshd does) and then forwards faithfully."""

    def __init__(self, target: tuple[str, int], drops: int):
        self.target = target
        self.drops = drops
        self.accepted = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            if self.accepted <= self.drops:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.server.close()


def test_transient_failures_are_retried_within_the_deadline(make_vcluster, tmp_path):
    cluster = make_vcluster(2)
    node = cluster.nodes[0]
    proxy = FlakyProxy((node.mgmt_ip, 22), drops=2)
    try:
        # known_hosts entry for the proxy's address carries node0's real key
        key = next(entry.split(None, 1)[1] for entry in cluster.known_hosts.read_text().splitlines() if entry.startswith(node.mgmt_ip + " "))
        known = tmp_path / "proxy_known_hosts"
        known.write_text(f"[127.0.0.1]:{proxy.port} {key}\n")
        inventory = tmp_path / "proxy.yaml"
        inventory.write_text(yaml.safe_dump({
            "cluster": "proxied",
            "ssh": {"user": "root", "identity_file": str(cluster.client_key), "known_hosts": str(known), "retry_deadline_s": 30},
            "nodes": [{"name": "node0", "host": "127.0.0.1", "port": proxy.port}],
        }))
        rc, out, err = exec_json(str(inventory), "echo", "through")
        assert rc == 0, (out, err)
        assert out["nodes"][0]["stdout"] == "through\n"
        assert proxy.accepted == 3  # two resets retried, the third attempt went through
    finally:
        proxy.close()


def test_openssh_client_texts_from_this_machine_classify(make_vcluster):
    """The classifier on what this machine's own OpenSSH client prints."""
    import subprocess

    cluster = make_vcluster(2)
    cluster.regenerate_host_key("node0")
    cluster.stop_sshd("node1")
    changed = subprocess.run(cluster.ssh_argv("node0", "true"), capture_output=True, text=True)
    refused = subprocess.run(cluster.ssh_argv("node1", "true"), capture_output=True, text=True)
    assert classify_text(changed.stderr).kind is SshFailure.HOST_KEY_CHANGED, changed.stderr
    assert classify_text(refused.stderr).kind is SshFailure.UNREACHABLE, refused.stderr


def test_known_hosts_markers_revoked_keys_and_a_missing_newline(make_vcluster, tmp_path):
    """#13 defect 5 over real sshd: marker lines are skipped, a key under @revoked is
    refused (exit 3, with either policy), and accept-new starts a new line first."""
    cluster = make_vcluster(2)
    entries = cluster.known_hosts.read_text().splitlines()
    node1_key = entries[1].split(None, 1)[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"@cert-authority *.example.com {node1_key}\n" + "\n".join(entries) + "\n")
    inventory = write_inventory(cluster, tmp_path, "markers.yaml", ssh={"known_hosts": str(known)})
    rc, out, err = exec_json(inventory, "true")
    assert rc == 0, err
    known.write_text("\n".join(entries) + f"\n@revoked * {node1_key}\n")
    for policy in ("strict", "accept-new"):
        inventory = write_inventory(cluster, tmp_path, f"{policy}.yaml", ssh={"known_hosts": str(known), "host_key_policy": policy})
        rc, out, _ = exec_json(inventory, "true")
        by_node = {n["node"]: n for n in out["nodes"]}
        assert rc == 3 and by_node["node1"]["error_kind"] == SshFailure.HOST_KEY_REVOKED.value
        assert by_node["node0"]["returncode"] == 0
    assert "@revoked" in known.read_text() and known.read_text().count(node1_key) == 2  # nothing recorded
    known.write_text(entries[0])  # no newline at the end
    accepting = write_inventory(cluster, tmp_path, "accept2.yaml", ssh={"known_hosts": str(known), "host_key_policy": "accept-new"})
    rc, _, err = exec_json(accepting, "true")
    assert rc == 0, err
    assert known.read_text().splitlines() == entries
