"""Progress of long work, per node and stage. The library reports events; the
CLI decides how (or whether) to show them."""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO


class Reporter(Protocol):
    def event(self, node: str | None, message: str) -> None: ...


class NullReporter:
    def event(self, node: str | None, message: str) -> None:
        pass


class StreamReporter:
    """Timestamped lines: `[  12.3s] worker   loading weights`."""

    def __init__(self, stream: TextIO | None = None, *, width: int = 10):
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.width = width

    def event(self, node: str | None, message: str) -> None:
        elapsed = time.monotonic() - self.started
        who = (node or "").ljust(self.width)
        self.stream.write(f"[{elapsed:7.1f}s] {who} {message}\n")
        self.stream.flush()


class RecordingReporter:
    """Keeps events in memory (for --json output and tests)."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str | None, str]] = []
        self.started = time.monotonic()

    def event(self, node: str | None, message: str) -> None:
        self.events.append((time.monotonic() - self.started, node, message))
