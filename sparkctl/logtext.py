"""Undo what terminals, launchers and copy-paste add to log lines users give us.

The NCCL log, nccl-tests and vLLM log readers all meet the same decoration:
colour codes, and the `(RayWorkerWrapper pid=..., ip=...)` / `(EngineCore_DP0 pid=...)`
tags that vLLM and Ray put in front of a worker's output.
"""

from __future__ import annotations

import re

# CSI sequences (colours, cursor moves) and OSC sequences (terminal hyperlinks, titles).
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
# One process tag, for readers that compose it with their own prefixes.
PROCESS_TAG = r"\([^()]*\bpid=\d+[^()]*\)"
_LEADING_TAG = re.compile(r"^\s*" + PROCESS_TAG + r"\s*")
# The NCCL library's own banner ("NCCL version 2.28.9+cuda13.0"), wherever it is printed.
NCCL_VERSION = re.compile(r"\bNCCL version (\d+\.\d+\.\d+(?:\+[\w.]+)?)")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def strip_process_tags(line: str) -> str:
    """Drop every leading process tag (Ray nests them: driver, then actor)."""
    while (m := _LEADING_TAG.match(line)) is not None:
        line = line[m.end():]
    return line
