"""`connection: ssh`: commands over one paramiko connection per node.

Host keys are always verified against known_hosts. `strict` refuses unknown
hosts; `accept-new` records the key of a host seen for the first time (like
OpenSSH's StrictHostKeyChecking=accept-new) and still refuses a changed one.
Only failures classified as transient are retried, within a deadline.
"""

from __future__ import annotations

import os
import select
import shlex
import stat
import threading
import time
from typing import Sequence

import paramiko

from sparkctl.inventory import Node, SshSettings
from sparkctl.remote.base import OutputTail
from sparkctl.remote.known_hosts import AcceptNewPolicy, RejectUnknownPolicy, load_known_hosts
from sparkctl.remote.result import CommandResult, CommandTimeout, NodeUnavailable, SshFailure
from sparkctl.remote.ssh_errors import classify_exception, hint_for


class SshRunner:
    def __init__(self, node: Node, settings: SshSettings):
        self.node = node
        self.node_name = node.name
        self.settings = settings
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    # -- connection -------------------------------------------------------
    def _connect_once(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        known = load_known_hosts(self.settings.known_hosts, client.get_host_keys())
        if self.settings.host_key_policy == "accept-new":
            client.set_missing_host_key_policy(AcceptNewPolicy(self.settings.known_hosts, known))
        else:
            client.set_missing_host_key_policy(RejectUnknownPolicy(known))
        timeout = self.settings.connect_timeout_s
        identity = self.settings.identity_file
        if identity is not None and os.path.exists(identity) and not stat.S_ISREG(os.stat(identity).st_mode):
            raise paramiko.SSHException(f"identity_file {identity}: not a regular file")  # a FIFO would block
        try:
            client.connect(
                hostname=self.node.host,
                port=self.node.port,
                username=self.node.user,
                key_filename=identity,
                look_for_keys=identity is None,
                allow_agent=True,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
            )
        except BaseException:
            client.close()
            raise
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)
        return client

    def _connected(self) -> paramiko.SSHClient:
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if self._client is not None and transport is not None and transport.is_active():
                return self._client
            deadline = time.monotonic() + self.settings.retry_deadline_s
            delay = 0.5
            while True:
                try:
                    self._client = self._connect_once()
                    return self._client
                except (paramiko.SSHException, OSError, EOFError) as exc:
                    classified = classify_exception(exc)
                    if classified.retryable and time.monotonic() + delay < deadline:
                        time.sleep(delay)
                        delay = min(delay * 2, 5.0)
                        continue
                    raise self._unavailable(classified.kind, f"{classified.reason} ({_short(exc)})") from None

    def _unavailable(self, kind: SshFailure, message: str) -> NodeUnavailable:
        hint = hint_for(
            kind,
            host=self.node.host,
            port=self.node.port,
            user=self.node.user,
            known_hosts=self.settings.known_hosts,
        )
        where = f"{self.node.user}@{self.node.host}:{self.node.port}"
        return NodeUnavailable(self.node.name, kind, f"ssh {where}: {message}", hint=hint)

    # -- commands -----------------------------------------------------------
    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout_s: float = 60.0) -> CommandResult:
        argv = tuple(argv)
        command = shlex.join(argv)  # the only place a remote command line is built
        client = self._connected()
        started = time.monotonic()
        transport = client.get_transport()
        try:
            assert transport is not None
            channel = transport.open_session(timeout=self.settings.connect_timeout_s)
        except (paramiko.SSHException, OSError, EOFError, AssertionError) as exc:
            # The connection died between commands; one reconnect, then give up.
            self.close()
            client = self._connected()
            transport = client.get_transport()
            if transport is None:
                raise self._unavailable(SshFailure.OTHER, f"cannot open a session ({_short(exc)})") from None
            channel = transport.open_session(timeout=self.settings.connect_timeout_s)
        try:
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            out, err = _drain(channel, started + timeout_s)
            if out is None or err is None:
                raise CommandTimeout(self.node.name, argv, timeout_s)
            status = channel.recv_exit_status()
            # No exit status and no end of output from the node: the connection broke
            # (the transport thread closes its channels before it marks itself inactive).
            if status == -1 and (not channel.eof_received or not transport.is_active()):
                raise self._unavailable(SshFailure.CONNECTION_LOST, "the connection was lost while a command ran "
                                        f"({time.monotonic() - started:.0f}s in)")
        except (paramiko.SSHException, OSError, EOFError) as exc:  # broke while the command was being sent
            raise self._unavailable(SshFailure.CONNECTION_LOST, "the connection was lost while a command started "
                                    f"({_short(exc)})") from None
        finally:
            channel.close()
        return CommandResult(self.node.name, argv, status, out.value(), err.value(), time.monotonic() - started,
                             truncated=out.cut or err.cut)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _drain(channel: paramiko.Channel, deadline: float) -> tuple[OutputTail | None, OutputTail | None]:
    """Both outputs, each kept as a rolling tail while read; (None, None) at the deadline."""
    out, err = OutputTail(), OutputTail()
    while True:
        progressed = False
        # Bounded bursts, so that output arriving without pause cannot starve the deadline.
        for _ in range(256):
            if not channel.recv_ready():
                break
            out.add(channel.recv(65536))
            progressed = True
        for _ in range(256):
            if not channel.recv_stderr_ready():
                break
            err.add(channel.recv_stderr(65536))
            progressed = True
        if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
            # Closed and drained (exit status arrives before the last data is read).
            if channel.closed or channel.eof_received:
                return out, err
        if time.monotonic() > deadline:
            return None, None
        if not progressed:
            select.select([channel], [], [], 0.05)


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
