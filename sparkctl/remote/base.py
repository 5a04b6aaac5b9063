"""The Runner seam: run an argv on one node, with optional stdin and a deadline."""

from __future__ import annotations

from typing import Protocol, Sequence

from sparkctl.remote.result import CommandResult

# Output beyond this is cut (the tail is kept): a runaway command must not
# exhaust the controller's memory.
MAX_OUTPUT_BYTES = 32 * 1024 * 1024


class Runner(Protocol):
    node_name: str

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout_s: float = 60.0) -> CommandResult:
        """Run argv (never through a shell built from user input) and wait for it.

        Raises NodeUnavailable when the node cannot be reached and CommandTimeout
        when the command outlives `timeout_s`; a non-zero exit is a result, not
        an exception.
        """
        ...

    def close(self) -> None: ...


def keep_tail(data: bytes) -> bytes:
    if len(data) <= MAX_OUTPUT_BYTES:
        return data
    return b"[... output cut ...]\n" + data[-MAX_OUTPUT_BYTES:]
