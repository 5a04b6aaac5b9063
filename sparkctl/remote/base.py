"""The Runner seam: run an argv on one node, with optional stdin and a deadline."""

from __future__ import annotations

from typing import Protocol, Sequence

from sparkctl.agent.node_output import CUT_MARK, MAX_OUTPUT_BYTES, OutputTail
from sparkctl.remote.result import CommandResult

__all__ = ["CUT_MARK", "MAX_OUTPUT_BYTES", "OutputTail", "Runner"]



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


