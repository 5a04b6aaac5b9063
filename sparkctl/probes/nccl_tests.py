"""Read nccl-tests text output (all_reduce_perf, all_gather_perf, ...): header,
devices, result rows, footer, and a verdict on bandwidth at large sizes.

Pure functions over text. Formats follow nccl-tests' own printf strings
(shared/reference/spark-networking.md §3.11 and §6): rows are recognised by their
shape, not by position, because mpirun and NCCL print noise in between.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from ..logtext import NCCL_VERSION, PROCESS_TAG, iter_lines, strip_ansi

MIB = 1 << 20
# Below this size a two-node run measures latency more than link bandwidth.
VERDICT_MIN_BYTES = 256 * MIB
DEGRADED_FRACTION = 0.8
# A run prints a few dozen rows and devices; these bound what a runaway or hostile output costs.
MAX_ROWS = 10_000
MAX_DEVICES = 4096
MAX_ERRORS = 100

# Longest names first so "reduce_scatter" is not read as "reduce".
COLLECTIVES = ("reduce_scatter", "all_reduce", "all_gather", "alltoall", "broadcast", "sendrecv",
               "hypercube", "reduce", "gather", "scatter")
TYPE_BYTES = {
    "int8": 1, "uint8": 1, "char": 1, "f8e4m3": 1, "f8e5m2": 1, "fp8_e4m3": 1, "fp8_e5m2": 1,
    "half": 2, "float16": 2, "bfloat16": 2,
    "int32": 4, "uint32": 4, "int": 4, "float": 4, "float32": 4,
    "int64": 8, "uint64": 8, "double": 8, "float64": 8,
}

# An mpirun output tag or a process tag; one space after it is eaten, the row's alignment kept.
_LINE_TAG = re.compile(r"^\s*(?:\[\d+,\d+\]<std(?:out|err)>:|" + PROCESS_TAG + r")\s?")
_VERSION = re.compile(r"^#\s*nccl-tests version (\S+)(?:\s+\((\w+)\))?\s+nccl-headers=(\d+)\s+nccl-library=(\d+)")
_START = re.compile(r"^#\s*Collective test starting:\s*(\S+)")
_CONCLUDED = re.compile(r"^#\s*Collective test concluded:")
_DEVICE = re.compile(
    r"^#\s*Rank\s+(\d+)\s+(?:Group\s+(\d+)\s+)?Pid\s+(\d+)\s+on\s+(\S+)\s+device\s+(\d+)\s+\[([^\]]*)\]\s*(.*)"
)
_COLUMNS = re.compile(r"^#\s*size\s+count\s+type\s+redop\b(.*)$")
_OOB = re.compile(r"^#\s*Out of bounds values\s*:\s*(\d+)\s*(OK|FAILED)?")
_AVG = re.compile(r"^#\s*Avg bus bandwidth\s*:\s*(\S+)\s*(OK|FAILED)?")
# Lines are stripped before matching: no trailing `\s*$` after a lazy group (quadratic).
_ERROR = re.compile(r"^#\s*error:\s*(.+)")
_BINARY = re.compile(r"(?:^|[\s/])(" + "|".join(COLLECTIVES) + r")_perf\b")
_PARAMS = {
    "nthread": r"nThread (\d+)", "ngpus": r"nGpus (\d+)", "min_bytes": r"minBytes (\d+)",
    "max_bytes": r"maxBytes (\d+)", "step": r"step: (\d+)", "warmup_iters": r"warmup iters: (\d+)",
    "iters": r"(?<!warmup )(?<!agg )iters: (\d+)", "agg_iters": r"agg iters: (\d+)",
    "validation": r"validation: (\d+)", "graph": r"graph: (\d+)", "unalign": r"unalign: (\d+)",
}
_INT = re.compile(r"^-?\d+$")
_NUM = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")
_NOT_A_NUMBER = {"nan", "-nan", "+nan", "inf", "-inf", "+inf"}
_WORD = re.compile(r"^[A-Za-z_]\w*$")
_DATE, _CLOCK = re.compile(r"^\d{4}-\d{2}-\d{2}$"), re.compile(r"^\d{2}:\d{2}:\d{2}$")


@dataclass(frozen=True)
class Placement:
    """One half of a row: out-of-place or in-place."""

    time_us: float | None
    algbw_gbs: float | None
    busbw_gbs: float | None
    wrong: int | float | None  # None when nccl-tests printed N/A (-c 0)
    per_iter: dict[str, float | None] | None = None  # -I: i_min, i_max, i_p99 (us), i_cv%

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"time_us": self.time_us, "algbw_gbs": self.algbw_gbs,
                             "busbw_gbs": self.busbw_gbs, "wrong": self.wrong}
        if self.per_iter is not None:
            d["per_iter"] = dict(self.per_iter)
        return d


@dataclass(frozen=True)
class Row:
    size_bytes: int
    count: int
    type: str
    redop: str
    root: int | None  # None for the old layout that had no root column
    out: Placement
    inplace: Placement
    timestamp: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"size_bytes": self.size_bytes, "count": self.count, "type": self.type,
                             "redop": self.redop, "root": self.root}
        d.update(self.out.to_dict())
        d["inplace"] = self.inplace.to_dict()
        if self.timestamp is not None:
            d["timestamp"] = self.timestamp
        return d


@dataclass
class NcclTestsReport:
    collective: str | None = None
    collective_source: str | None = None  # header | command | hint | layout
    version: dict[str, Any] = field(default_factory=dict)
    params: dict[str, int | None] = field(default_factory=dict)
    devices: list[dict[str, Any]] = field(default_factory=list)
    nranks: int | None = None
    nnodes: int | None = None
    busbw_factor: float | None = None
    rows: list[Row] = field(default_factory=list)
    avg_busbw_gbs: float | None = None
    avg_busbw_source: str | None = None  # footer | computed
    avg_busbw_check: str | None = None  # OK | FAILED when NCCL_TESTS_MIN_BW was set
    out_of_bounds: int | None = None
    wrong_total: int | float | None = None
    errors: list[str] = field(default_factory=list)
    concluded: bool = False
    expect_busbw_gbs: float = 22.0
    verdict: str = "inconclusive"  # ok | degraded | inconclusive
    verdict_size_bytes: int | None = None
    verdict_busbw_gbs: float | None = None
    verdict_reason: str = ""
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "collective": self.collective,
            "collective_source": self.collective_source,
            "version": dict(self.version),
            "params": dict(self.params),
            "devices": [dict(d) for d in self.devices],
            "nranks": self.nranks,
            "nnodes": self.nnodes,
            "busbw_factor": self.busbw_factor,
            "rows": [r.to_dict() for r in self.rows],
            "avg_busbw_gbs": self.avg_busbw_gbs,
            "avg_busbw_source": self.avg_busbw_source,
            "avg_busbw_check": self.avg_busbw_check,
            "out_of_bounds": self.out_of_bounds,
            "wrong_total": self.wrong_total,
            "errors": list(self.errors),
            "concluded": self.concluded,
            "expect_busbw_gbs": self.expect_busbw_gbs,
            "verdict": self.verdict,
            "verdict_size_bytes": self.verdict_size_bytes,
            "verdict_busbw_gbs": self.verdict_busbw_gbs,
            "verdict_reason": self.verdict_reason,
            "problems": list(self.problems),
        }


def busbw_factor(collective: str | None, nranks: int | None) -> float | None:
    """busbw/algbw as nccl-tests defines it (doc/PERFORMANCE.md)."""
    if collective is None or not nranks:
        return None
    n = nranks
    if collective == "all_reduce":
        return 2 * (n - 1) / n
    if collective in ("all_gather", "reduce_scatter", "alltoall"):
        return (n - 1) / n
    if collective in ("broadcast", "reduce", "sendrecv"):
        return 1.0
    return None


def collective_from_name(name: str | None) -> str | None:
    """'all_reduce_perf', './build/all_gather_perf', 'x/all_gather-16G.txt' -> canonical name."""
    if not name:
        return None
    low = name.lower().replace("-", "_")
    for c in COLLECTIVES:
        if c in low:
            return c
    if "allreduce" in low:
        return "all_reduce"
    if "allgather" in low:
        return "all_gather"
    return None


def parse_nccl_tests(text: str, *, expect_busbw_gbs: float = 22.0, source_name: str | None = None) -> NcclTestsReport:
    """Parse nccl-tests stdout. `source_name` (e.g. a file name) names the collective when the text does not."""
    return parse_nccl_tests_lines(iter_lines([text]), open_tail=bool(text) and text[-1] not in "\r\n",
                                  expect_busbw_gbs=expect_busbw_gbs, source_name=source_name)


def parse_nccl_tests_lines(lines: Iterable[str], *, open_tail: bool, expect_busbw_gbs: float = 22.0,
                           source_name: str | None = None) -> NcclTestsReport:
    """The same from lines read one at a time. `open_tail`: the last line has no line end
    (the output may have been cut inside it)."""
    rep = NcclTestsReport(expect_busbw_gbs=expect_busbw_gbs)
    root_col: bool | None = None  # from the column header, when present
    per_iter: bool | None = None
    command_coll: str | None = None
    last_row_width: int | None = None
    rows_cut = False
    for physical, last in _with_last(lines):
        raw = _LINE_TAG.sub("", strip_ansi(physical)).rstrip()
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            root_col, per_iter = _header_line(rep, line, root_col, per_iter)
            continue
        if (m := NCCL_VERSION.search(line)) is not None:
            rep.version.setdefault("nccl_runtime", m[1])
        row = _parse_row(line.split(), root_col, per_iter)
        if row is not None and open_tail and last and _narrower(raw, last_row_width):
            rep.problems.append("The last row is cut short and was ignored.")
        elif row is not None and len(rep.rows) >= MAX_ROWS:
            rows_cut = True
        elif row is not None:
            rep.rows.append(row)
            last_row_width = None if "\t" in raw else len(raw)
        elif command_coll is None and (m := _BINARY.search(line)) is not None:
            command_coll = m[1]

    if rows_cut:
        rep.problems.append(f"More than {MAX_ROWS} result rows; the rest were ignored.")
    if rep.devices:
        rep.nranks = len({d["rank"] for d in rep.devices})
        rep.nnodes = len({d["host"] for d in rep.devices})
    if rep.collective is not None:
        rep.collective_source = "header"
    elif command_coll is not None:
        rep.collective, rep.collective_source = command_coll, "command"
    elif (hint := collective_from_name(source_name)) is not None:
        rep.collective, rep.collective_source = hint, "hint"
    elif (guess := _infer_collective(rep.rows)) is not None:
        rep.collective, rep.collective_source = guess, "layout"

    if rep.nranks is None:
        rep.nranks = _nranks_from_counts(rep.collective, rep.rows)
    rep.busbw_factor = busbw_factor(rep.collective, rep.nranks)
    if rep.avg_busbw_gbs is None:
        # nccl-tests averages busbw over both placements; do the same so the number
        # means one thing whether it came from the footer or from here.
        vals = [p.busbw_gbs for r in rep.rows for p in (r.out, r.inplace) if p.busbw_gbs is not None]
        if vals:
            rep.avg_busbw_gbs, rep.avg_busbw_source = round(sum(vals) / len(vals), 4), "computed"
    wrongs = [p.wrong for r in rep.rows for p in (r.out, r.inplace) if p.wrong is not None]
    rep.wrong_total = sum(wrongs) if wrongs else None
    _verdict(rep)
    _problems(rep)
    return rep


def _header_line(rep: NcclTestsReport, line: str, root_col: bool | None, per_iter: bool | None
                 ) -> tuple[bool | None, bool | None]:
    if (m := _VERSION.match(line)) is not None:
        rep.version.update(nccl_tests=m[1], git=m[2], nccl_headers=int(m[3]), nccl_library=int(m[4]),
                           nccl=_decode_nccl_code(int(m[4])))
    elif (m := _START.match(line)) is not None:
        rep.collective = rep.collective or collective_from_name(m[1])
    elif _CONCLUDED.match(line):
        rep.concluded = True
    elif line.lstrip("# ").startswith("nThread"):
        rep.params = {k: (int(x[1]) if (x := re.search(p, line)) else None) for k, p in _PARAMS.items()}
    elif (m := _DEVICE.match(line)) is not None and len(rep.devices) < MAX_DEVICES:
        rep.devices.append({"rank": int(m[1]), "group": int(m[2]) if m[2] else None, "pid": int(m[3]),
                            "host": m[4], "device": int(m[5]), "bus_id": m[6], "name": m[7]})
    elif (m := _COLUMNS.match(line)) is not None:
        cols = m[1].split()
        root_col = bool(cols) and cols[0] == "root"
        per_iter = "i_min" in cols
    elif (m := _OOB.match(line)) is not None:
        rep.out_of_bounds = int(m[1])
    elif (m := _AVG.match(line)) is not None:
        try:
            rep.avg_busbw_gbs, rep.avg_busbw_source = _number(m[1]), "footer"
        except ValueError:  # a mangled footer must not hide the rows
            rep.avg_busbw_gbs, rep.avg_busbw_source = None, None
        rep.avg_busbw_check = m[2]
    elif (m := _ERROR.match(line)) is not None and len(rep.errors) < MAX_ERRORS:
        rep.errors.append(m[1])
    return root_col, per_iter


def _with_last(items: Iterable[str]) -> Iterator[tuple[str, bool]]:
    """Each item, and whether it is the last one (one item of look-ahead)."""
    iterator = iter(items)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for following in iterator:
        yield current, False
        current = following
    yield current, True


def _narrower(raw: str, width: int | None) -> bool:
    """nccl-tests pads every cell to a fixed width, so a complete row is as wide as the
    previous one; a narrower unterminated last line was cut inside its last cell."""
    return width is not None and "\t" not in raw and len(raw) < width


def _decode_nccl_code(code: int) -> str | None:
    """NCCL_VERSION_CODE: 22809 -> 2.28.9 (the 5-digit form used since 2.9)."""
    if code < 10000:
        return None
    return f"{code // 10000}.{(code % 10000) // 100}.{code % 100}"


def _number(tok: str) -> float | None:
    """A numeric cell; None for nan/inf (nccl-tests prints them on failures) and for
    digits too many to be a finite float."""
    if tok.lower() in _NOT_A_NUMBER:
        return None
    if not _NUM.match(tok):
        raise ValueError(tok)
    value = float(tok)
    return value if math.isfinite(value) else None


def _wrong(tok: str) -> int | float | None:
    if tok.upper() == "N/A":
        return None
    v = _number(tok)
    return int(v) if v is not None and v.is_integer() else v


def _placement(cells: list[str]) -> Placement:
    per = None
    if len(cells) == 8:
        per = dict(zip(("i_min_us", "i_max_us", "i_p99_us", "i_cv_pct"), map(_number, cells[4:])))
    return Placement(_number(cells[0]), _number(cells[1]), _number(cells[2]), _wrong(cells[3]), per)


def _parse_row(tokens: list[str], root_col: bool | None, per_iter: bool | None) -> Row | None:
    """A result row, or None for anything else (noise, header, a truncated row)."""
    if len(tokens) < 12 or not (_INT.match(tokens[0]) and _INT.match(tokens[1])):
        return None
    if not (_WORD.match(tokens[2]) and _WORD.match(tokens[3])):
        return None
    timestamp = None
    if _DATE.match(tokens[-2]) and _CLOCK.match(tokens[-1]):  # -Z timestamps after the in-place half
        timestamp, tokens = f"{tokens[-2]} {tokens[-1]}", tokens[:-2]
    rest = tokens[4:]
    if root_col is None:
        # No column header seen: each half has 4 (or 8 with -I) cells, so one extra is the root.
        root_col = len(rest) % 4 == 1 and bool(_INT.match(rest[0]))
    root = None
    if root_col:
        if not _INT.match(rest[0]):
            return None
        root, rest = int(rest[0]), rest[1:]
    width = {True: 8, False: 4, None: len(rest) // 2}[per_iter]
    if width not in (4, 8) or len(rest) != 2 * width:
        return None
    try:
        out, inplace = _placement(rest[:width]), _placement(rest[width:])
    except ValueError:
        return None
    return Row(int(tokens[0]), int(tokens[1]), tokens[2], tokens[3], root, out, inplace, timestamp)


def _infer_collective(rows: list[Row]) -> str | None:
    """Guess from redop/root and count-vs-size when nothing names the test."""
    row = next((r for r in rows if r.count and r.type in TYPE_BYTES), None)
    if row is None:
        return None
    whole = row.count * TYPE_BYTES[row.type] == row.size_bytes  # count covers the whole buffer
    reducing = row.redop != "none"
    rooted = row.root is not None and row.root >= 0
    if reducing and not rooted:
        return "all_reduce" if whole else "reduce_scatter"
    if reducing:
        return "reduce"
    if rooted:
        return "broadcast" if whole else None  # gather/scatter look alike
    if whole:
        return None  # sendrecv or an old alltoall: cannot tell
    # alltoall reports no errors for its in-place half; all_gather does.
    if row.inplace.wrong is None and row.out.wrong is not None:
        return "alltoall"
    return "all_gather"


def _nranks_from_counts(collective: str | None, rows: list[Row]) -> int | None:
    """For per-rank-count tests, size = count * typesize * nranks."""
    if collective not in ("all_gather", "reduce_scatter", "alltoall"):
        return None
    for r in rows:
        per_rank = r.count * TYPE_BYTES.get(r.type, 0)
        if per_rank and r.size_bytes % per_rank == 0:
            return r.size_bytes // per_rank
    return None


def human_bytes(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            v = n / scale
            return f"{v:g} {unit}" if v.is_integer() else f"{v:.1f} {unit}"
    return f"{n} B"


def _verdict(rep: NcclTestsReport) -> None:
    if not rep.rows:
        rep.verdict, rep.verdict_reason = "inconclusive", "No result rows were found, so bandwidth cannot be judged."
        return
    largest = max(r.size_bytes for r in rep.rows)
    row = next(r for r in rep.rows if r.size_bytes == largest)
    rep.verdict_size_bytes = largest
    rep.verdict_busbw_gbs = row.out.busbw_gbs
    size = human_bytes(largest)
    if largest < VERDICT_MIN_BYTES or row.out.busbw_gbs is None:
        rep.verdict = "inconclusive"
        rep.verdict_reason = (f"The largest message is {size}, below 256 MiB, so this run shows latency rather than "
                              "link bandwidth; add a point of at least 1 GiB (-b 1G -e 1G).")
        if row.out.busbw_gbs is None and largest >= VERDICT_MIN_BYTES:
            rep.verdict_reason = f"The busbw at {size} is not a number, so bandwidth cannot be judged."
        return
    bw, expect = row.out.busbw_gbs, rep.expect_busbw_gbs
    floor = DEGRADED_FRACTION * expect
    pct = 100 * bw / expect if expect else 0.0
    if bw < floor:
        rep.verdict = "degraded"
        rep.verdict_reason = (f"Out-of-place busbw at {size} is {bw:.2f} GB/s, {pct:.0f}% of the expected "
                              f"{expect:g} GB/s and below the {floor:.2f} GB/s (80%) line.")
    else:
        rep.verdict = "ok"
        rep.verdict_reason = (f"Out-of-place busbw at {size} is {bw:.2f} GB/s, {pct:.0f}% of the expected "
                              f"{expect:g} GB/s (degraded below {floor:.2f} GB/s).")


def _problems(rep: NcclTestsReport) -> None:
    """Correctness and completeness issues, separate from the bandwidth verdict."""
    if rep.wrong_total:
        rep.problems.append(f"{rep.wrong_total:g} wrong element(s) reported: results are not correct.")
    if rep.out_of_bounds:
        rep.problems.append(f"Out of bounds values: {rep.out_of_bounds}.")
    if rep.avg_busbw_check == "FAILED":
        rep.problems.append("nccl-tests marked the average busbw FAILED against NCCL_TESTS_MIN_BW.")
    rep.problems.extend(f"error: {e}" for e in rep.errors)
    if rep.rows and rep.version and not rep.concluded:
        rep.problems.append("The output stops before 'Collective test concluded' (cut or crashed run).")
