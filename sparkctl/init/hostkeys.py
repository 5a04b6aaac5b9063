"""First contact with a host: fetch its SSH host key, compare it with known_hosts,
and record an unknown one only with consent (asked, or --accept-new). A changed
key is always refused, as everywhere in sparkctl."""

from __future__ import annotations

import base64
import enum
import fcntl
import hashlib
import os
import socket
from dataclasses import dataclass
from typing import Callable

import paramiko

from sparkctl.errors import ConnectionFailed
from sparkctl.remote.result import NodeUnavailable, SshFailure
from sparkctl.remote.ssh_errors import classify_exception, hint_for


class KeyState(enum.Enum):
    KNOWN = "known"
    UNKNOWN = "unknown"
    CHANGED = "changed"


@dataclass(frozen=True)
class HostKey:
    host: str
    port: int
    key_type: str
    key_base64: str
    state: KeyState

    @property
    def entry_name(self) -> str:
        """How known_hosts names the host (OpenSSH's form)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(base64.b64decode(self.key_base64)).digest()
        return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def fetch(host: str, port: int, user: str, known_hosts: str, timeout_s: float) -> HostKey:
    """The host's key (no login yet) and how it compares with known_hosts."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        kind = classify_exception(exc)
        raise NodeUnavailable(host, SshFailure.UNREACHABLE, f"ssh {host}:{port}: {kind.reason} ({exc})",
                              hint=hint_for(SshFailure.UNREACHABLE, host=host, port=port, user=user,
                                            known_hosts=known_hosts)) from None
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout_s)
        key = transport.get_remote_server_key()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise NodeUnavailable(host, SshFailure.OTHER, f"ssh {host}:{port}: no SSH handshake ({exc})") from None
    finally:
        transport.close()
    known = paramiko.HostKeys()
    if os.path.exists(known_hosts):
        known.load(known_hosts)
    name = host if port == 22 else f"[{host}]:{port}"
    entry = known.lookup(name)
    recorded = entry.get(key.get_name()) if entry is not None else None
    if recorded is None:
        state = KeyState.UNKNOWN
    else:
        state = KeyState.KNOWN if recorded.asbytes() == key.asbytes() else KeyState.CHANGED
    return HostKey(host, port, key.get_name(), key.get_base64(), state)


def record(known_hosts: str, key: HostKey) -> None:
    os.makedirs(os.path.dirname(known_hosts) or ".", mode=0o700, exist_ok=True)
    with open(known_hosts, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(f"{key.entry_name} {key.key_type} {key.key_base64}\n")


def settle(keys: list[HostKey], known_hosts: str, *, accept_new: bool,
           ask: Callable[[HostKey], bool] | None) -> list[HostKey]:
    """Refuse changed keys; record unknown ones the user accepts; refuse the rest (exit 3)."""
    changed = [k for k in keys if k.state is KeyState.CHANGED]
    if changed:
        first = changed[0]
        raise ConnectionFailed(
            "host key changed: " + ", ".join(f"{k.entry_name} now offers {k.key_type} {k.fingerprint}" for k in changed),
            hint=hint_for(SshFailure.HOST_KEY_CHANGED, host=first.host, port=first.port, user="USER",
                          known_hosts=known_hosts))
    accepted: list[HostKey] = []
    refused: list[HostKey] = []
    for key in (k for k in keys if k.state is KeyState.UNKNOWN):
        (accepted if accept_new or (ask is not None and ask(key)) else refused).append(key)
    if refused:
        raise ConnectionFailed(
            f"host key not known and not accepted ({known_hosts})",
            details=[f"{k.entry_name}: {k.key_type} {k.fingerprint}" for k in refused],
            hint="compare the fingerprints with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on each node, "
                 "then run again and answer yes, or pass --accept-new")
    for key in accepted:
        record(known_hosts, key)
    return accepted
