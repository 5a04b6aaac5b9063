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


class LiveLine:
    """One line that changes in place on a terminal; elsewhere (a log, CI) a line
    at most every `every_s` seconds. `done` always leaves its line behind."""

    def __init__(self, stream: TextIO | None = None, *, every_s: float = 5.0):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s
        self.last = 0.0

    def update(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
        elif time.monotonic() - self.last >= self.every_s:
            self.stream.write(text + "\n")
            self.last = time.monotonic()
        else:
            return
        self.stream.flush()

    def done(self, text: str) -> None:
        self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
        self.stream.flush()
        self.last = 0.0


class NullLine:
    def update(self, text: str) -> None:
        pass

    def done(self, text: str) -> None:
        pass
