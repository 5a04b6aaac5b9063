"""known_hosts files as OpenSSH writes them: marker lines (@cert-authority, @revoked)
and a last line without a newline (issue #13, defect 5). The real-sshd half is in
tests/test_ssh_cluster.py."""

from __future__ import annotations

import os
import socket

import paramiko
import pytest

from sparkctl.inventory import Node, SshSettings
from sparkctl.remote.known_hosts import AcceptNewPolicy, RejectUnknownPolicy, RevokedHostKey, load_known_hosts
from sparkctl.remote.result import NodeUnavailable, SshFailure
from sparkctl.remote.ssh import SshRunner

KEY = paramiko.RSAKey.generate(1024)
OTHER = paramiko.RSAKey.generate(1024)


def line(names: str, key: paramiko.PKey) -> str:
    return f"{names} {key.get_name()} {key.get_base64()}"


def write(tmp_path, text: str):
    path = tmp_path / "known_hosts"
    path.write_text(text)
    return path


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_marker_lines_do_not_break_ssh(tmp_path):
    """Before: paramiko read '@cert-authority' as a host name and the key type as base64:
    InvalidHostKey, "internal error", exit 1, for every node."""
    known = write(tmp_path, "\n".join([
        line("@cert-authority *.example.com", OTHER),
        line("@revoked *", OTHER),
        line("10.0.0.9", KEY),
        "not a valid line at all",
    ]) + "\n")
    node = Node("n", "127.0.0.1", closed_port(), "root", "ssh", None, "head", {}, "python3", "~/.sparkctl", 1, 0)
    runner = SshRunner(node, SshSettings(str(known), "strict", None, 2.0, 0.0))
    with pytest.raises(NodeUnavailable) as caught:
        runner.run(["true"])
    assert caught.value.kind is SshFailure.UNREACHABLE  # it got as far as connecting


def test_revoked_keys_are_collected_and_never_trusted(tmp_path):
    known = write(tmp_path, line("10.0.0.9", KEY) + "\n" + line("@revoked 10.0.0.9", KEY) + "\n"
                  + line("@cert-authority *", OTHER) + "\n")
    loaded = load_known_hosts(str(known))
    assert loaded.is_revoked(KEY) and not loaded.is_revoked(OTHER)
    assert loaded.host_keys.lookup("10.0.0.9") is None  # a revoked key is not a known key
    assert loaded.cert_authorities == 1


def test_accept_new_refuses_a_revoked_key(tmp_path):
    known = write(tmp_path, line("@revoked *", KEY) + "\n")
    policy = AcceptNewPolicy(str(known), load_known_hosts(str(known)))
    with pytest.raises(RevokedHostKey):
        policy.missing_host_key(paramiko.SSHClient(), "10.0.0.9", KEY)
    assert known.read_text() == line("@revoked *", KEY) + "\n"


def test_accept_new_starts_a_new_line_when_the_file_lacks_one(tmp_path):
    known = write(tmp_path, line("10.0.0.8", OTHER))  # no newline at the end
    policy = AcceptNewPolicy(str(known), load_known_hosts(str(known)))
    policy.missing_host_key(paramiko.SSHClient(), "10.0.0.9", KEY)
    assert known.read_text().splitlines() == [line("10.0.0.8", OTHER), line("10.0.0.9", KEY)]
    assert load_known_hosts(str(known)).host_keys.lookup("10.0.0.9") is not None


def test_a_host_known_only_through_a_cert_authority_gets_a_pointed_message(tmp_path):
    known = write(tmp_path, line("@cert-authority *", OTHER) + "\n")
    policy = RejectUnknownPolicy(load_known_hosts(str(known)))
    with pytest.raises(paramiko.SSHException, match="@cert-authority lines are not used"):
        policy.missing_host_key(paramiko.SSHClient(), "10.0.0.9", KEY)


def test_a_fifo_as_known_hosts_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "known_hosts"
    os.mkfifo(fifo)
    with pytest.raises(paramiko.SSHException, match="not a regular file"):
        load_known_hosts(str(fifo))


def test_a_fifo_as_identity_file_is_refused(tmp_path):
    fifo = tmp_path / "id"
    os.mkfifo(fifo)
    node = Node("n", "127.0.0.1", closed_port(), "root", "ssh", None, "head", {}, "python3", "~/.sparkctl", 1, 0)
    runner = SshRunner(node, SshSettings(str(tmp_path / "kh"), "strict", str(fifo), 2.0, 0.0))
    with pytest.raises(NodeUnavailable, match="not a regular file"):
        runner.run(["true"])
