"""Undo what terminals, launchers and copy-paste add to log lines users give us,
and cut what no reader needs: the part of a line past MAX_LINE_CHARS.

The NCCL log, nccl-tests and vLLM log readers all meet the same decoration:
colour codes, and the `(RayWorkerWrapper pid=..., ip=...)` / `(EngineCore_DP0 pid=...)`
tags that vLLM and Ray put in front of a worker's output.

Every pattern here and in the readers is written to run in time linear in the line
(no `.*X` searched at every position, no lazy group before `\\s*$`); the cap bounds
the work per line whatever a future pattern does.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Iterator

# Every fact the readers extract sits in the first few hundred characters of a line;
# a longer line (a pasted blob, a runaway progress bar) is read only this far.
MAX_LINE_CHARS = 4096

# CSI sequences (colours, cursor moves) and OSC sequences (terminal hyperlinks, titles).
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
# One process tag, for readers that compose it with their own prefixes. The lookahead
# stops at the first parenthesis, so a tag that never closes costs one scan, not one per `pid=`.
PROCESS_TAG = r"\((?=[^()]*\bpid=\d)[^()]*\)"
_LEADING_TAG = re.compile(r"\s*" + PROCESS_TAG + r"\s*")
# The NCCL library's own banner ("NCCL version 2.28.9+cuda13.0"), wherever it is printed.
NCCL_VERSION = re.compile(r"\bNCCL version (\d+\.\d+\.\d+(?:\+[\w.]+)?)")


def clip(line: str) -> str:
    return line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS]


def iter_lines(chunks: Iterable[str]) -> Iterator[str]:
    """Lines (any line ending, as str.splitlines) from text arriving in pieces, each
    clipped; a line that never ends holds at most MAX_LINE_CHARS in memory."""
    partial = ""
    for chunk in chunks:
        pieces = (partial + chunk).splitlines(keepends=True)
        partial = ""
        # The last piece may go on in the next chunk (no line end yet, or a "\r" whose
        # "\n" has not arrived): keep it, clipped, until it is complete.
        if pieces and (_body(pieces[-1]) == pieces[-1] or pieces[-1].endswith("\r")):
            partial = clip(pieces.pop())
        for piece in pieces:
            yield clip(_body(piece))
    if partial:
        yield _body(partial)


def _body(piece: str) -> str:
    """A line without its line end."""
    return piece.splitlines()[0]


def finite_float(text: str) -> float | None:
    """A number as a log prints it; None for `1.2.3`, or one too large to be finite."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def count(text: str) -> int | None:
    """A count as a log prints it (`8,192`); None when it is not one or is absurdly long."""
    digits = text.replace(",", "")
    return int(digits) if digits.isdigit() and len(digits) <= 18 else None


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def strip_process_tags(line: str) -> str:
    """Drop every leading process tag (Ray nests them: driver, then actor)."""
    pos = 0
    while (m := _LEADING_TAG.match(line, pos)) is not None:
        pos = m.end()
    return line[pos:]
