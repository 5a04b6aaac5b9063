"""known_hosts as OpenSSH reads it, for paramiko.

paramiko's own loader takes a marker line (`@cert-authority pattern type key`,
`@revoked pattern type key`) for a host entry, fails to decode the key type as base64
and raises, so one such line broke every SSH command. Here marker lines are set
aside: keys under @revoked are never trusted, whatever host they are presented for
(OpenSSH: "must not ever be accepted"); @cert-authority lines are counted but not
used (paramiko cannot check host certificates). Lines neither can parse are skipped,
as OpenSSH skips them.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field

import paramiko

from sparkctl.files import NotARegularFile, open_regular


class RevokedHostKey(paramiko.SSHException):
    """The server presented a key that known_hosts lists under @revoked."""


@dataclass
class KnownHosts:
    host_keys: paramiko.HostKeys = field(default_factory=paramiko.HostKeys)
    revoked: set[tuple[str, str]] = field(default_factory=set)  # (key type, base64)
    cert_authorities: int = 0

    def is_revoked(self, key: paramiko.PKey) -> bool:
        return (key.get_name(), key.get_base64()) in self.revoked


def load_known_hosts(path: str, host_keys: paramiko.HostKeys | None = None) -> KnownHosts:
    """Read known_hosts into `host_keys` (an SSHClient's own, or a new set)."""
    known = KnownHosts(host_keys if host_keys is not None else paramiko.HostKeys())
    try:
        with open_regular(path) as handle:
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return known
    except NotARegularFile as exc:  # a FIFO would block every connection
        raise paramiko.SSHException(f"known_hosts {path}: {exc.strerror}") from None
    entries: list[paramiko.hostkeys.HostKeyEntry] = []
    for lineno, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("@"):
            marker, _, rest = text.partition(" ")
            fields = rest.split()
            if marker == "@revoked" and len(fields) >= 3:
                known.revoked.add((fields[1], fields[2]))
            elif marker == "@cert-authority":
                known.cert_authorities += 1
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(text, lineno)
        except Exception:  # noqa: BLE001 - paramiko raises several types for one bad line
            continue
        if entry is not None:
            entries.append(entry)
    for entry in entries:
        if not known.is_revoked(entry.key):
            for name in entry.hostnames:
                known.host_keys.add(name, entry.key.get_name(), entry.key)
    return known


class RejectUnknownPolicy(paramiko.MissingHostKeyPolicy):
    def __init__(self, known: KnownHosts):
        self.known = known

    def missing_host_key(self, client, hostname, key):  # noqa: ANN001 (paramiko's signature)
        _refuse_revoked(self.known, hostname, key)
        note = ""
        if self.known.cert_authorities:
            note = " (its @cert-authority lines are not used: paramiko cannot check host certificates)"
        raise paramiko.SSHException(f"Server {hostname!r} not found in known_hosts{note}")


class AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """Record a first-seen host key in known_hosts; a changed key never reaches here."""

    def __init__(self, path: str, known: KnownHosts):
        self.path = path
        self.known = known

    def missing_host_key(self, client, hostname, key):  # noqa: ANN001
        _refuse_revoked(self.known, hostname, key)
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        with open(self.path, "ab+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            # A last line without its newline would swallow the new entry.
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
            handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n".encode())
        client.get_host_keys().add(hostname, key.get_name(), key)


def _refuse_revoked(known: KnownHosts, hostname: str, key: paramiko.PKey) -> None:
    if known.is_revoked(key):
        raise RevokedHostKey(f"Server {hostname!r} presented a host key listed under @revoked in known_hosts")
