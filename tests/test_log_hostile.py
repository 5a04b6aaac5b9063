"""Hostile log text: every log reader stays linear in the size of its input.

The shapes are the ones an audit found quadratic (issue #13, defect 1): a long run of
host-name characters before an NCCL prefix, `Using network` with a long gap, the Ray
`[repeated ...]` marker after a run of spaces, an unclosed `(... pid=N ...)` tag,
repeated `Access to model `, and nccl-tests' `# error:` / `# Rank` lines with a long gap.
Each is fed as one 1 MiB line and as 1 MiB of lines just under the length cap (so a
pattern that is still quadratic below the cap is caught too).
"""

from __future__ import annotations

import time

import pytest

from sparkctl.logtext import MAX_LINE_CHARS
from sparkctl.probes.nccl_log import parse_nccl_log
from sparkctl.probes.nccl_tests import parse_nccl_tests
from sparkctl.serve.vllm_log import LogReader, read_log

MIB = 1 << 20
NCCL = "spark-a:1:2 [0] NCCL INFO "


def _fill(head: str, unit: str, tail: str, size: int) -> str:
    return head + unit * max(1, (size - len(head) - len(tail)) // len(unit)) + tail


# name -> (head, repeated unit, tail)
SHAPES: dict[str, tuple[str, str, str]] = {
    "letters": ("", "a", ""),
    "spaces": ("x", " ", "x"),
    "nccl-prefix-host": ("", "a", ":1:2 [0] NCCL INFO x"),
    "nccl-prefix-colons": ("", "1:", ""),
    "nccl-prefix-repeated": ("", "h:1:1 [0] ", ""),
    "using-network": (NCCL + "Using network IB", " ", "x"),
    "ray-repeated": (NCCL + "x", " ", "[repeated 2x across cluster"),
    "ray-repeated-many": (NCCL, " [repeated 2x across cluster", ""),
    "pid-tag-unclosed": ("(", "pid=1 ", ""),
    "pid-tag-spaces": ("", " ", "(pid=1"),
    "access-to-model": ("", "Access to model ", ""),
    "tests-error": ("# error: a", " ", "b"),
    "tests-rank": ("# Rank 0 Pid 1 on h device 0 [x] a", " ", "b"),
    "tests-params": ("# nThread 1 ", "iters: 1 ", ""),
    "oob": (NCCL + "NET/IB : Using [0]a:1/RoCE ; OOB a", " ", "b"),
    "oob-many": (NCCL + "NET/Socket : Using", "; OOB a", ""),
    "bootstrap": (NCCL + "Bootstrap : Using a", " ", "b"),
    "env": (NCCL + "NCCL_X set to ", ".", "x"),
    "qp": (NCCL + "NET/IB : Dev 0 Port 1 qpn 1 mtu 5 GID 1 (", "a", ""),
    "ansi-osc": ("\x1b]", "a", ""),
    "ansi-csi": ("", "\x1b[", ""),
    "kv-cache": ("KV cache size: ", "1", ""),
    "traceback": ("", "a.", "Error: x"),
    "tests-row": ("", "1 ", ""),
}

READERS = {
    "nccl-log": parse_nccl_log,
    "nccl-tests": parse_nccl_tests,
    "vllm-log": read_log,
}


def _timed(fn, text: str) -> float:
    """CPU seconds, so that other work on a shared machine does not fail the test."""
    started = time.process_time()
    fn(text)
    return time.process_time() - started


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_one_mib_line_is_read_in_under_a_second(shape, reader):
    head, unit, tail = SHAPES[shape]
    assert _timed(READERS[reader], _fill(head, unit, tail, MIB) + "\n") < 1.0


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_one_mib_of_lines_at_the_cap_is_read_in_under_a_second(shape, reader):
    head, unit, tail = SHAPES[shape]
    line = _fill(head, unit, tail, MAX_LINE_CHARS - 1)
    text = (line + "\n") * (MIB // (len(line) + 1))
    assert _timed(READERS[reader], text) < 1.0


def test_the_incremental_vllm_reader_bounds_an_endless_line():
    """`up` feeds node logs in chunks; a line that never ends must not be re-joined each time."""
    reader = LogReader()
    started = time.process_time()
    for _ in range(2048):  # 8 MiB without a line end
        reader.feed("a" * 4096)
    reader.feed("\nApplication startup complete.\n")
    assert time.process_time() - started < 1.0
    assert reader.close().stage == "api up"


def test_facts_survive_on_a_long_line():
    """The cap keeps the start of a line, where every fact the readers look for is."""
    line = NCCL + "Using network IB" + " " * (2 * MIB)
    assert parse_nccl_log(line + "\n").network == "ib"
    assert read_log("INFO Application startup complete." + "x" * MIB + "\n").stage == "api up"
