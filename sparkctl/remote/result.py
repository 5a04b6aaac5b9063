"""What running a command on a node gives back, and how it can fail."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sparkctl.errors import ConnectionFailed, DeadlineExceeded


@dataclass(frozen=True)
class CommandResult:
    node: str
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    duration_s: float
    truncated: bool = False  # output beyond the cap was dropped; the tail is kept

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    def error_text(self) -> str:
        return self.stderr.decode("utf-8", "replace")


class SshFailure(enum.Enum):
    UNREACHABLE = "unreachable"
    AUTH = "auth"
    HOST_KEY_CHANGED = "host-key-changed"
    HOST_KEY_UNKNOWN = "host-key-unknown"
    HOST_KEY_REVOKED = "host-key-revoked"
    TRANSIENT = "transient"
    CONNECTION_LOST = "connection-lost"  # the connection broke while a command ran
    OTHER = "ssh-error"


class NodeUnavailable(ConnectionFailed):
    """The node could not be reached or logged into; carries the classified kind."""

    def __init__(self, node: str, kind: SshFailure, message: str, *, hint: str | None = None):
        super().__init__(f"{node}: {message}", hint=hint)
        self.node = node
        self.kind = kind


class CommandTimeout(DeadlineExceeded):
    def __init__(self, node: str, argv: tuple[str, ...], timeout_s: float, *, what: str | None = None):
        super().__init__(f"{node}: {what or argv[0]} did not finish within {timeout_s:.0f}s")
        self.node = node
        self.argv = argv
        self.timeout_s = timeout_s
