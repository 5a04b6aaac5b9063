"""Classify SSH failures so that only transient ones are retried.

Works on paramiko exceptions and on the text that OpenSSH's client prints,
because users paste the latter and we meet the former. The four kinds a
person must act on differently: the node is unreachable, the login is
refused, the host key changed (or is unknown), or the failure was transient.
"""

from __future__ import annotations

import errno
import re
import socket
from dataclasses import dataclass

from sparkctl.remote.result import SshFailure

try:  # paramiko is a dependency, but keep text classification usable without it
    import paramiko
    from paramiko.ssh_exception import NoValidConnectionsError
except ImportError:  # pragma: no cover
    paramiko = None  # type: ignore[assignment]
    NoValidConnectionsError = ()  # type: ignore[assignment,misc]


@dataclass(frozen=True)
class Classified:
    kind: SshFailure
    reason: str

    @property
    def retryable(self) -> bool:
        return self.kind is SshFailure.TRANSIENT


# Ordered: the first matching pattern wins. Host-key texts come first because
# OpenSSH ends them with a generic "Host key verification failed.".
_TEXT_RULES: list[tuple[re.Pattern[str], SshFailure, str]] = [
    (re.compile(r"listed under @revoked|is marked as revoked|REVOKED HOST KEY DETECTED", re.I),
     SshFailure.HOST_KEY_REVOKED, "host key revoked"),
    (re.compile(r"REMOTE HOST IDENTIFICATION HAS CHANGED|does not match: got|Host key for server .* does not match", re.I),
     SshFailure.HOST_KEY_CHANGED, "host key changed"),
    (re.compile(r"No \S+ host key is known for|not found in known_hosts|Host key verification failed", re.I),
     SshFailure.HOST_KEY_UNKNOWN, "host key not in known_hosts"),
    (re.compile(r"Permission denied \(|Authentication failed|No authentication methods available|"
                r"Too many authentication failures|Bad authentication type|private key file is encrypted", re.I),
     SshFailure.AUTH, "login refused"),
    (re.compile(r"Could not resolve hostname|Name or service not known|Temporary failure in name resolution|"
                r"nodename nor servname", re.I),
     SshFailure.UNREACHABLE, "host name does not resolve"),
    (re.compile(r"Connection refused|Unable to connect to port", re.I), SshFailure.UNREACHABLE, "connection refused"),
    (re.compile(r"No route to host|Network is unreachable|Host is unreachable", re.I),
     SshFailure.UNREACHABLE, "no route to host"),
    (re.compile(r"Connection timed out during banner exchange|Error reading SSH protocol banner|"
                r"kex_exchange_identification|ssh_exchange_identification|Connection reset by peer|"
                r"Connection closed by|No existing session|Broken pipe|EOF during negotiation|"
                r"Negotiation failed|SSH session not active", re.I),
     SshFailure.TRANSIENT, "connection dropped during the handshake"),
    (re.compile(r"connect to host .* timed out|Connection timed out|timed out", re.I),
     SshFailure.UNREACHABLE, "connection timed out"),
]


def classify_text(text: str) -> Classified:
    for pattern, kind, reason in _TEXT_RULES:
        if pattern.search(text):
            return Classified(kind, reason)
    return Classified(SshFailure.OTHER, _last_line(text) or "ssh failed")


def classify_exception(exc: BaseException) -> Classified:
    if paramiko is not None:
        if isinstance(exc, paramiko.BadHostKeyException):
            return Classified(SshFailure.HOST_KEY_CHANGED, "host key changed")
        if isinstance(exc, paramiko.AuthenticationException):
            return Classified(SshFailure.AUTH, "login refused")
        if isinstance(exc, NoValidConnectionsError):
            # One OSError per address tried; refused on all of them is the usual case.
            inner = list(exc.errors.values())
            if inner:
                return classify_exception(inner[0])
            return Classified(SshFailure.UNREACHABLE, "connection refused")
    if isinstance(exc, socket.gaierror):
        return Classified(SshFailure.UNREACHABLE, "host name does not resolve")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return Classified(SshFailure.UNREACHABLE, "connection timed out")
    if isinstance(exc, ConnectionRefusedError):
        return Classified(SshFailure.UNREACHABLE, "connection refused")
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, EOFError, ConnectionAbortedError)):
        return Classified(SshFailure.TRANSIENT, "connection dropped during the handshake")
    if isinstance(exc, OSError) and exc.errno in {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN}:
        return Classified(SshFailure.UNREACHABLE, "no route to host")
    return classify_text(f"{type(exc).__name__}: {exc}")


def hint_for(kind: SshFailure, *, host: str, port: int, user: str, known_hosts: str) -> str:
    target = f"{user}@{host}" if port == 22 else f"-p {port} {user}@{host}"
    if kind is SshFailure.UNREACHABLE:
        return f"check that the node is up, the address is right and sshd listens: ssh {target} true"
    if kind is SshFailure.AUTH:
        return f"install your public key on the node (ssh-copy-id {target}) or set ssh.identity_file"
    if kind is SshFailure.HOST_KEY_CHANGED:
        entry = host if port == 22 else f"[{host}]:{port}"
        return (
            f"the node's host key is not the one in {known_hosts}; if the node was reinstalled, remove the old key "
            f"with `ssh-keygen -R '{entry}' -f {known_hosts}` and connect again, otherwise treat it as an attack"
        )
    if kind is SshFailure.HOST_KEY_REVOKED:
        return (
            f"the key {host} presents is listed under @revoked in {known_hosts}: treat the node as compromised "
            "or misconfigured; give it a new host key and record that one"
        )
    if kind is SshFailure.HOST_KEY_UNKNOWN:
        return (
            f"the node is not in {known_hosts}: check its fingerprint and add it (ssh-keyscan -p {port} {host} >> "
            f"{known_hosts}), connect once with ssh, or set ssh.host_key_policy: accept-new"
        )
    if kind is SshFailure.CONNECTION_LOST:
        return ("the node may still run what the command started: `sparkctl status` shows it and `sparkctl down` "
                f"stops it once the node answers again (ssh {target} true)")
    if kind is SshFailure.TRANSIENT:
        return "the connection kept dropping during the handshake; check sshd's MaxStartups and the network"
    return f"try: ssh {target} true"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
