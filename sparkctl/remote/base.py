"""The Runner seam: run an argv on one node, with optional stdin and a deadline."""

from __future__ import annotations

from collections import deque
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


CUT_MARK = b"[... output cut ...]\n"


class OutputTail:
    """The last `limit` bytes of a stream, kept while it is read: a command that prints
    without end (`cat /dev/zero`) costs the controller about the limit, not all it printed."""

    def __init__(self, limit: int = MAX_OUTPUT_BYTES):
        self.limit = limit
        self.cut = False
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def add(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        self._size += len(data)
        # Drop whole chunks from the front while what remains still fills the limit.
        while self._size - len(self._chunks[0]) >= self.limit:
            self._size -= len(self._chunks.popleft())
            self.cut = True

    def value(self) -> bytes:
        excess = self._size - self.limit
        if excess > 0:  # trim the first chunk rather than copy everything twice
            self._chunks[0] = self._chunks[0][excess:]
            self._size = self.limit
            self.cut = True
        return b"".join([CUT_MARK, *self._chunks] if self.cut else self._chunks)
