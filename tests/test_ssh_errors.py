"""The SSH failure classifier on real OpenSSH and paramiko error texts
(captured from real runs, see tests/fixtures/ssh-errors/SOURCES.md) and on
the exception objects paramiko raises."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import paramiko
import pytest
from paramiko.ssh_exception import NoValidConnectionsError

from sparkctl.remote.result import SshFailure
from sparkctl.remote.ssh_errors import classify_exception, classify_text, hint_for

FIXTURES = Path(__file__).parent / "fixtures" / "ssh-errors"

EXPECTED = {
    "auth-denied": SshFailure.AUTH,
    "host-key-changed": SshFailure.HOST_KEY_CHANGED,
    "host-key-unknown": SshFailure.HOST_KEY_UNKNOWN,
    "connection-refused": SshFailure.UNREACHABLE,
    "unresolvable": SshFailure.UNREACHABLE,
    "timeout": SshFailure.UNREACHABLE,
    "kex-reset": SshFailure.TRANSIENT,
    "kex-closed": SshFailure.TRANSIENT,
    "banner-timeout": SshFailure.TRANSIENT,
}


@pytest.mark.parametrize("tool", ["openssh", "paramiko"])
@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_real_texts(tool, case):
    text = (FIXTURES / f"{tool}-{case}.txt").read_text()
    classified = classify_text(text)
    assert classified.kind is EXPECTED[case], text
    assert classified.retryable == (EXPECTED[case] is SshFailure.TRANSIENT)


def test_every_fixture_is_covered():
    names = {p.stem.split("-", 1)[1] for p in FIXTURES.glob("*.txt")}
    assert names == set(EXPECTED)


@pytest.mark.parametrize(
    "exc, kind",
    [
        (paramiko.AuthenticationException("Authentication failed."), SshFailure.AUTH),
        (NoValidConnectionsError({("127.0.0.1", 22): ConnectionRefusedError(errno.ECONNREFUSED, "refused")}), SshFailure.UNREACHABLE),
        (socket.gaierror(-2, "Name or service not known"), SshFailure.UNREACHABLE),
        (TimeoutError("timed out"), SshFailure.UNREACHABLE),
        (OSError(errno.EHOSTUNREACH, "No route to host"), SshFailure.UNREACHABLE),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), SshFailure.UNREACHABLE),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), SshFailure.TRANSIENT),
        (EOFError(), SshFailure.TRANSIENT),
        (paramiko.SSHException("Error reading SSH protocol banner"), SshFailure.TRANSIENT),
        (paramiko.SSHException("No existing session"), SshFailure.TRANSIENT),
        (paramiko.SSHException("Server '[10.0.0.1]:22' not found in known_hosts"), SshFailure.HOST_KEY_UNKNOWN),
        (paramiko.SSHException("Incompatible ssh peer (no acceptable host key)"), SshFailure.OTHER),
    ],
)
def test_exceptions(exc, kind):
    assert classify_exception(exc).kind is kind


def test_bad_host_key_exception_is_a_changed_key():
    got, expected = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
    exc = paramiko.BadHostKeyException("10.0.0.5", got, expected)
    assert classify_exception(exc).kind is SshFailure.HOST_KEY_CHANGED


def test_hints_name_the_fix():
    args = dict(host="10.0.0.5", port=2222, user="nvidia", known_hosts="/home/u/.ssh/known_hosts")
    assert "ssh-keygen -R '[10.0.0.5]:2222' -f /home/u/.ssh/known_hosts" in hint_for(SshFailure.HOST_KEY_CHANGED, **args)
    assert "ssh-copy-id -p 2222 nvidia@10.0.0.5" in hint_for(SshFailure.AUTH, **args)
    assert "accept-new" in hint_for(SshFailure.HOST_KEY_UNKNOWN, **args)
    assert "ssh -p 2222 nvidia@10.0.0.5 true" in hint_for(SshFailure.UNREACHABLE, **args)
