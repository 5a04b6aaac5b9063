"""The all-reduce probe's controller half, pure: options, the torchrun job, the
worker's result line, the analysis (verdict, transport, what it costs vLLM)
and its text rendering. No I/O, no printing; `sparkctl.ops.probe` runs it.

Reference figures (shared/reference/spark-networking.md §4.1, benchmarks.md §4.6):
- large-message all-reduce busbw on a healthy Spark pair: 21.4-24.1 GB/s
  (256 MiB-4 GiB, NCCL 2.30.7, MTU 9000); NVIDIA's own gate is 21.875 GB/s;
- small messages, nccl-tests: 8 KB 27.8 us at MTU 9000, 35.2 us at MTU 1500;
  16 KB 31.9 us; one seed measured 18 us raw and 46 us inside a CUDA graph;
- decode under TP: 2 all-reduces per layer per step, each hidden_size x 2 B.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from sparkctl.backends.torchrun import TorchrunJob
from sparkctl.errors import InputError, OperationFailed
from sparkctl.findings import Finding, Severity, most_severe_first, probe_status
from sparkctl.inventory import Inventory
from sparkctl.lifecycle.spec import node_dir
from sparkctl.probes.nccl_log import finding_dict, parse_nccl_log
from sparkctl.probes.nccl_tests import DEGRADED_FRACTION, VERDICT_MIN_BYTES, human_bytes

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
RESULT_MARKER = "SPARKCTL-PROBE-RESULT "
ERROR_MARKER = "SPARKCTL-PROBE-ERROR "
WORKER_FILE = "allreduce_worker.py"
MODES = ("eager", "graph")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# 16 GiB all-gathers have frozen Sparks (unified memory shared with the OS, PB#102):
# refuse sizes that large outright rather than take a node down.
MAX_SIZE = 8 * GIB
# Expected healthy large-message busbw of a Spark pair (§4.1: 21.4-24.1 GB/s all-reduce;
# NVIDIA's gate 21.875 GB/s); degraded below DEGRADED_FRACTION of it.
DEFAULT_EXPECT_BUSBW_GBS = 22.0
# Small-message ceiling for eager torch/NCCL at 8 KiB: nccl-tests measures 27.8 us on a
# healthy pair (35.2 us at MTU 1500); torch's eager call adds a few us of launch work.
# 50 us (~1.8x the healthy figure) passes every healthy configuration in the reference and
# catches what hurts decode: socket fallback, one twin, a slow proxy path.
DEFAULT_MAX_SMALL_LATENCY_US = 50.0
DEFAULT_SMALL_SIZE = 8 * KIB

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": KIB, "m": MIB, "g": GIB, "t": 1 << 40}


# ---------------------------------------------------------------- sizes
def parse_size(text: str | int) -> int:
    """'8', '8B', '4K', '4KiB', '16M', '1G' -> bytes (binary multiples, as nccl-tests' -b/-e)."""
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE.match(str(text))
        if m is None:
            raise InputError(f"not a size: {text!r}", hint="write sizes like 8, 4K, 16M or 1G (powers of 1024)")
        number = float(m[1]) * _UNITS[m[2].lower()]
        if not number.is_integer():
            raise InputError(f"size {text!r} is not a whole number of bytes")
        value = int(number)
    if value < 1:
        raise InputError(f"size {text!r} must be at least 1 byte")
    return value


def size_sweep(min_bytes: int, max_bytes: int, factor: int = 2) -> tuple[int, ...]:
    """min, min*f, min*f^2 ... up to max (max included even when off the grid)."""
    if factor < 2:
        raise InputError(f"the size factor must be an integer >= 2, got {factor}")
    if min_bytes > max_bytes:
        raise InputError(f"the smallest size ({human_bytes(min_bytes)}) is above the largest ({human_bytes(max_bytes)})")
    sizes = []
    size = min_bytes
    while size <= max_bytes:
        sizes.append(size)
        size *= factor
    if sizes[-1] != max_bytes:
        sizes.append(max_bytes)
    return tuple(sizes)


# ---------------------------------------------------------------- options
@dataclass(frozen=True)
class ProbeOptions:
    min_bytes: int = 8
    max_bytes: int = GIB
    factor: int = 2
    sizes: tuple[int, ...] | None = None  # an explicit list replaces min/max/factor
    modes: tuple[str, ...] = MODES
    dtype: str = "float32"
    backend: str = "auto"  # auto: nccl when the nodes have CUDA, gloo otherwise
    warmup: int = 5
    min_iters: int = 20
    max_iters: int = 1000
    time_budget_s: float = 0.25  # timed work per size and mode
    graph_batch: int = 10
    expect_busbw_gbs: float = DEFAULT_EXPECT_BUSBW_GBS
    degraded_fraction: float = DEGRADED_FRACTION
    max_small_latency_us: float = DEFAULT_MAX_SMALL_LATENCY_US
    small_size: int = DEFAULT_SMALL_SIZE
    engine: str = "torch"  # torch | nccl-tests
    nccl_tests_binary: str = "all_reduce_perf"
    nccl_tests_iters: int = 50
    timeout_s: float | None = None  # None: derived from the sweep
    master_port: int | None = None  # None: the first free port from 29500
    collective_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        problems = []
        if not self.modes or any(m not in MODES for m in self.modes):
            problems.append(f"modes must be a subset of {', '.join(MODES)}, got {', '.join(self.modes) or 'nothing'}")
        if self.dtype not in DTYPE_BYTES:
            problems.append(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {self.dtype!r}")
        if self.backend not in ("auto", "nccl", "gloo"):
            problems.append(f"backend must be auto, nccl or gloo, got {self.backend!r}")
        if self.engine not in ("torch", "nccl-tests"):
            problems.append(f"engine must be torch or nccl-tests, got {self.engine!r}")
        if not 1 <= self.min_iters <= self.max_iters:
            problems.append(f"need 1 <= min_iters ({self.min_iters}) <= max_iters ({self.max_iters})")
        if self.warmup < 1 or self.graph_batch < 1 or self.nccl_tests_iters < 1:
            problems.append("warmup, graph_batch and nccl_tests_iters must be at least 1")
        if self.time_budget_s <= 0 or self.collective_timeout_s <= 0:
            problems.append("time_budget_s and collective_timeout_s must be positive")
        if not 0 < self.degraded_fraction <= 1 or self.expect_busbw_gbs <= 0 or self.max_small_latency_us <= 0:
            problems.append("thresholds must be positive (degraded_fraction in (0, 1])")
        if problems:
            raise InputError("invalid probe options", details=problems)
        sizes = self.size_list()
        elem = DTYPE_BYTES[self.dtype]
        if min(sizes) < elem:
            raise InputError(f"the smallest size is {min(sizes)} B, less than one {self.dtype} element ({elem} B)")
        if max(sizes) > MAX_SIZE:
            raise InputError(
                f"the largest size ({human_bytes(max(sizes))}) is above {human_bytes(MAX_SIZE)}",
                hint="GB10 memory is shared with the OS; very large buffers have frozen Sparks. 1G measures the link fully",
            )

    def size_list(self) -> tuple[int, ...]:
        if self.sizes:
            return tuple(sorted(set(self.sizes)))
        return size_sweep(self.min_bytes, self.max_bytes, self.factor)

    def deadline_s(self) -> float:
        """How long the whole group may run: start-up (NCCL init can take minutes
        with GIN) plus, per size and mode, the budget and the minimum iterations
        at a pessimistic 0.5 GB/s."""
        if self.timeout_s is not None:
            return self.timeout_s
        calls = self.warmup + self.min_iters + 3
        per_mode = sum(2 * self.time_budget_s + calls * (1e-4 + size / 0.5e9) for size in self.size_list())
        return 300.0 + per_mode * len(self.modes)

    def thresholds(self) -> dict[str, Any]:
        return {
            "expect_busbw_gbs": self.expect_busbw_gbs,
            "degraded_below_gbs": round(self.expect_busbw_gbs * self.degraded_fraction, 3),
            "busbw_min_size_bytes": VERDICT_MIN_BYTES,
            "max_small_latency_us": self.max_small_latency_us,
            "small_size_bytes": self.small_size,
        }


# ---------------------------------------------------------------- the job
def worker_source() -> str:
    return resources.files("sparkctl.probes").joinpath(WORKER_FILE).read_text(encoding="utf-8")


def worker_args(options: ProbeOptions, *, model_config_path: str | None = None) -> tuple[str, ...]:
    args = [
        "--sizes", ",".join(str(s) for s in options.size_list()),
        "--modes", ",".join(options.modes),
        "--backend", options.backend,
        "--dtype", options.dtype,
        "--warmup", str(options.warmup),
        "--min-iters", str(options.min_iters),
        "--max-iters", str(options.max_iters),
        "--time-budget", f"{options.time_budget_s:g}",
        "--graph-batch", str(options.graph_batch),
        "--collective-timeout", f"{options.collective_timeout_s:g}",
    ]
    if model_config_path:
        args += ["--model-config", model_config_path]
    return tuple(args)


def build_job(
    inventory: Inventory,
    options: ProbeOptions,
    *,
    python: str,
    master_port: int,
    model_config_path: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[TorchrunJob, dict[str, dict[str, str]]]:
    """The torchrun job (role "probe") and the worker file for every node.

    The program names the worker by a relative path: run_group starts every
    process in the node's sparkctl directory, which is where the file goes."""
    job_env = {
        "NCCL_DEBUG": "INFO",
        "NCCL_DEBUG_SUBSYS": "INIT,NET",  # transport, HCAs, GID and MTU of the QPs
        "OMP_NUM_THREADS": "1",  # gloo ranks must not fight over cores with intra-op threads
        **(env or {}),
    }
    job = TorchrunJob(
        role="probe",
        python=python,
        program=(WORKER_FILE, *worker_args(options, model_config_path=model_config_path)),
        master_port=master_port,
        nproc_per_node=inventory.nodes[0].gpus,
        env=job_env,
    )
    source = worker_source()
    files = {n.name: {f"{node_dir(n, inventory.cluster)}/{WORKER_FILE}": source} for n in inventory.nodes}
    return job, files


# ---------------------------------------------------------------- results
@dataclass(frozen=True)
class ProbeRow:
    size_bytes: int
    mode: str
    iterations: int | None
    p50_us: float | None
    p99_us: float | None
    min_us: float | None
    mean_us: float | None
    algbw_gbs: float | None
    busbw_gbs: float | None
    correct: bool | None = None

    @property
    def latency_us(self) -> float | None:
        """p50 when per-iteration times exist, else the mean (nccl-tests prints only that)."""
        return self.p50_us if self.p50_us is not None else self.mean_us

    def to_dict(self) -> dict[str, Any]:
        def r(x: float | None, nd: int) -> float | None:
            return None if x is None else round(x, nd)

        return {
            "size_bytes": self.size_bytes, "mode": self.mode, "iterations": self.iterations,
            "p50_us": r(self.p50_us, 3), "p99_us": r(self.p99_us, 3), "min_us": r(self.min_us, 3),
            "mean_us": r(self.mean_us, 3), "algbw_gbs": r(self.algbw_gbs, 6), "busbw_gbs": r(self.busbw_gbs, 6),
            "correct": self.correct,
        }


@dataclass
class ProbeResult:
    """What the ranks measured (the worker's result line, or nccl-tests' table)."""

    world_size: int
    backend: str
    rows: list[ProbeRow]
    modes: list[str]
    dtype: str | None = None
    ranks_agree: bool | None = None
    wall_s: float | None = None
    ranks: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, Any] = field(default_factory=dict)
    skipped_modes: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    model_config: dict[str, Any] | None = None
    model_config_error: str | None = None
    engine: str = "torch"


def _row(d: dict[str, Any]) -> ProbeRow:
    return ProbeRow(
        size_bytes=int(d["size_bytes"]), mode=str(d["mode"]), iterations=d.get("iterations"),
        p50_us=d.get("p50_us"), p99_us=d.get("p99_us"), min_us=d.get("min_us"), mean_us=d.get("mean_us"),
        algbw_gbs=d.get("algbw_gbs"), busbw_gbs=d.get("busbw_gbs"), correct=d.get("correct"),
    )


def parse_result(head_log: str) -> ProbeResult:
    """The last `SPARKCTL-PROBE-RESULT {json}` line of rank 0's log."""
    payload = None
    for line in reversed(head_log.splitlines()):
        at = line.find(RESULT_MARKER)
        if at >= 0:
            payload = line[at + len(RESULT_MARKER):]
            break
    if payload is None:
        errors = [line.strip() for line in head_log.splitlines() if ERROR_MARKER in line]
        tail = [line for line in head_log.splitlines() if line.strip()][-15:]
        raise OperationFailed(
            "the probe ended without a result line on the head",
            details=errors or tail,
            hint="read the head's probe log; a rank that fails prints SPARKCTL-PROBE-ERROR with the cause",
        )
    try:
        data = json.loads(payload)
        rows = [_row(r) for r in data["rows"]]
        return ProbeResult(
            world_size=int(data["world_size"]), backend=str(data["backend"]), rows=rows,
            modes=list(data.get("modes", [])), dtype=data.get("dtype"), ranks_agree=data.get("ranks_agree"),
            wall_s=data.get("wall_s"), ranks=list(data.get("ranks", [])), versions=dict(data.get("versions", {})),
            skipped_modes=dict(data.get("skipped_modes", {})), settings=dict(data.get("settings", {})),
            model_config=data.get("model_config"), model_config_error=data.get("model_config_error"),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise OperationFailed(f"the probe's result line cannot be read ({exc})", details=[payload[:300]]) from None


# ---------------------------------------------------------------- interpolation
def rows_of(rows: list[ProbeRow], mode: str) -> list[ProbeRow]:
    return sorted((r for r in rows if r.mode == mode and r.latency_us is not None), key=lambda r: r.size_bytes)


def latency_at(rows: list[ProbeRow], size: int) -> tuple[float, dict[str, Any]] | None:
    """Latency at `size` from one mode's rows: measured, interpolated on log-log
    axes between the two neighbouring sizes, or the nearest end of the sweep."""
    if not rows:
        return None
    for r in rows:
        if r.size_bytes == size:
            return r.latency_us or 0.0, {"method": "measured", "sizes": [size]}
    below = [r for r in rows if r.size_bytes < size]
    above = [r for r in rows if r.size_bytes > size]
    if below and above:
        a, b = below[-1], above[0]
        la, lb = a.latency_us or 0.0, b.latency_us or 0.0
        if la > 0 and lb > 0:
            w = math.log(size / a.size_bytes) / math.log(b.size_bytes / a.size_bytes)
            value = math.exp(math.log(la) + w * (math.log(lb) - math.log(la)))
        else:
            value = la + (lb - la) * (size - a.size_bytes) / (b.size_bytes - a.size_bytes)
        return value, {"method": "interpolated", "sizes": [a.size_bytes, b.size_bytes]}
    nearest = above[0] if above else below[-1]
    return nearest.latency_us or 0.0, {"method": "nearest", "sizes": [nearest.size_bytes]}


# ---------------------------------------------------------------- transport
def transport_summary(log: str) -> dict[str, Any]:
    """What NCCL really used, from one node's NCCL_DEBUG=INFO output."""
    rep = parse_nccl_log(log)
    qps: list[dict[str, Any]] = []
    for q in rep.qps:
        entry = {"device": q.device, "gid_index": q.gid_index, "gid": q.gid, "mtu_bytes": q.mtu_bytes,
                 "link_local": q.link_local}
        if entry not in qps:
            qps.append(entry)
    return {
        "source": "nccl-log",
        "transport": rep.transport,
        "network": rep.network,
        "net_plugin": rep.net_plugin,
        "link_layer": rep.link_layer,
        "devices": list(rep.devices),
        "oob_interface": rep.oob_interface or rep.bootstrap_interface,
        "nccl_version": rep.nccl_version,
        "gdr": rep.gdr,
        "init_time_s": rep.init_time_s,
        "nranks": rep.nranks,
        "qps": qps,
        "findings": [finding_dict(f) for f in rep.findings],
    }


def gloo_transport(interface: str | None) -> dict[str, Any]:
    return {"source": "gloo", "transport": "tcp", "network": "socket", "interface": interface,
            "devices": [], "qps": [], "findings": [],
            "note": "gloo moves data over TCP sockets; NCCL and RDMA are not involved"}


def describe_transport(t: dict[str, Any]) -> str:
    if t.get("source") == "gloo":
        return f"gloo over TCP ({t.get('interface') or 'interface not pinned'})"
    kind = t.get("transport", "unknown")
    plugin = t.get("net_plugin")
    name = {"ib": "RDMA (NET/IB" + (f", plugin {plugin}" if plugin and plugin != "IB" else "") + ")",
            "socket": "TCP sockets (NET/Socket)",
            "unknown": ("none (a single rank connects to no one)" if t.get("nranks") == 1
                        else "unknown (no connection lines in the NCCL log)")}.get(kind, kind)
    parts = [name]
    if t.get("devices"):
        parts.append("on " + ", ".join(t["devices"]))
    for q in t.get("qps", []):
        gid = f"GID {q['gid_index']}" + (f" ({q['gid']})" if q.get("gid") else "")
        parts.append(f"{q.get('device') or 'dev'}: {gid}, RoCE MTU {q.get('mtu_bytes') or '?'}")
    if t.get("oob_interface"):
        parts.append(f"bootstrap {t['oob_interface']}")
    return "; ".join(parts)


# ---------------------------------------------------------------- verdict
# One Finding per thing judged: ERROR degrades the verdict, INFO is "not judged" (the run
# cannot say), WARNING is reported without changing the verdict.
def check_dict(check: Finding) -> dict[str, str]:
    """A verdict check in `nccl-probe --json`: its severity as nccl-probe's status word."""
    return {"name": check.code, "status": probe_status(check.severity), "reason": check.message}


def judge(result: ProbeResult, transports: dict[str, dict[str, Any]], options: ProbeOptions) -> tuple[str, list[Finding]]:
    """ok / degraded / inconclusive, with one check per thing judged."""
    checks: list[Finding] = []
    if result.ranks_agree is False:
        checks.append(Finding("correctness", Severity.ERROR,
                              "ranks disagree on the all-reduce sum: the collective returned wrong data"))
    if result.backend != "nccl":
        checks.append(Finding("thresholds", Severity.INFO,
                              f"this run used {result.backend} on CPU: the thresholds ({options.expect_busbw_gbs:g} GB/s "
                              f"busbw, {options.max_small_latency_us:g} us at {human_bytes(options.small_size)}) are "
                              "for NCCL on GPUs over RoCE and do not apply"))
        return _verdict(checks), checks
    if result.world_size == 1:
        checks.append(Finding("topology", Severity.INFO,
                              "a single rank: nothing crosses a link (busbw is 0 by definition); this run exercises "
                              "the probe, NCCL start-up and the timing only"))
        checks.extend(c for c in _transport_checks(transports) if c.code != "transport")
        return _verdict(checks), checks
    hosts = {r.get("host") for r in result.ranks if r.get("host")}
    if len(hosts) == 1 and result.world_size > 1:
        checks.append(Finding("topology", Severity.INFO,
                              f"every rank ran on {next(iter(hosts))}: this measures the intra-node path, not the link"))
    checks.extend(_transport_checks(transports))
    mode = "eager" if "eager" in {r.mode for r in result.rows} else (result.rows[0].mode if result.rows else "eager")
    rows = rows_of(result.rows, mode)
    checks.append(_bandwidth_check(rows, mode, options))
    checks.append(_latency_check(rows, mode, options))
    return _verdict(checks), checks


def _verdict(checks: list[Finding]) -> str:
    severities = {c.severity for c in checks}
    if Severity.ERROR in severities:
        return "degraded"
    return "inconclusive" if Severity.INFO in severities or not checks else "ok"


def _transport_checks(transports: dict[str, dict[str, Any]]) -> list[Finding]:
    checks = []
    kinds = {name: t.get("transport", "unknown") for name, t in transports.items()}
    socket_nodes = sorted(n for n, k in kinds.items() if k == "socket")
    if socket_nodes:
        checks.append(Finding("transport", Severity.ERROR,
                              f"NCCL fell back to TCP sockets on {', '.join(socket_nodes)} instead of RDMA"))
    elif kinds and all(k == "unknown" for k in kinds.values()):
        if all(t.get("nranks") == 1 for t in transports.values()):
            reason = "a single rank: NCCL connects no ranks, so no transport is used and none can be judged"
        elif any(t.get("nccl_version") for t in transports.values()):
            reason = "the NCCL logs show no connection between ranks (init lines only)"
        else:
            reason = "no NCCL INFO lines in the logs (is NCCL_DEBUG overridden in the inventory?)"
        checks.append(Finding("transport", Severity.INFO, reason))
    elif kinds:
        checks.append(Finding("transport", Severity.OK, "NCCL used " + ", ".join(
            f"{n}: {describe_transport(t).split(';')[0]}" for n, t in sorted(transports.items()))))
    seen: set[str] = set()
    for name, t in sorted(transports.items()):
        for f in t.get("findings", []):
            severity = Severity(f["level"])  # the summary's `level` is the severity's own name
            if f["code"] in seen or f["code"] == "socket-fallback" or severity is Severity.INFO:
                continue
            seen.add(f["code"])
            checks.append(Finding(f"nccl:{f['code']}", severity,
                                  f"{name}: {f['message']}"))
    return checks


def _bandwidth_check(rows: list[ProbeRow], mode: str, options: ProbeOptions) -> Finding:
    big = [r for r in rows if r.size_bytes >= VERDICT_MIN_BYTES and r.busbw_gbs is not None]
    if not big:
        largest = human_bytes(rows[-1].size_bytes) if rows else "nothing"
        return Finding("busbw", Severity.INFO, f"the largest {mode} size is {largest}, below "
                       f"{human_bytes(VERDICT_MIN_BYTES)}: bandwidth not judged (measure up to 1G)")
    row = big[-1]
    bw = row.busbw_gbs or 0.0
    floor = options.expect_busbw_gbs * options.degraded_fraction
    pct = 100 * bw / options.expect_busbw_gbs
    text = (f"{mode} busbw at {human_bytes(row.size_bytes)} is {bw:.2f} GB/s, {pct:.0f}% of the expected "
            f"{options.expect_busbw_gbs:g} GB/s (degraded below {floor:.2f})")
    return Finding("busbw", Severity.ERROR if bw < floor else Severity.OK, text)


def _latency_check(rows: list[ProbeRow], mode: str, options: ProbeOptions) -> Finding:
    size = options.small_size
    if not rows or not rows[0].size_bytes <= size <= rows[-1].size_bytes:
        return Finding("small-latency", Severity.INFO,
                       f"{human_bytes(size)} is outside the measured sizes: small-message latency not judged")
    found = latency_at(rows, size)
    assert found is not None
    value, basis = found
    stat = "p50" if rows[0].p50_us is not None else "mean"
    how = "" if basis["method"] == "measured" else " (interpolated)"
    limit = options.max_small_latency_us
    text = f"{mode} {stat} latency at {human_bytes(size)} is {value:.1f} us{how}, limit {limit:g} us"
    return Finding("small-latency", Severity.ERROR if value > limit else Severity.OK, text)


# ---------------------------------------------------------------- token cost
def dtype_bytes(name: str | None) -> int | None:
    if not name:
        return None
    low = str(name).lower().replace("torch.", "")
    if low in ("bfloat16", "float16", "half", "fp16", "bf16"):
        return 2
    if low in ("float32", "float", "fp32"):
        return 4
    return None


def token_cost(
    rows: list[ProbeRow],
    model_config: dict[str, Any] | None,
    *,
    tensor_parallel_size: int,
    batch: int = 1,
) -> dict[str, Any]:
    """What the measured latency costs one decode step of the model under TP.

    Dense and MoE models alike all-reduce twice per layer under TP (after the
    attention output projection and after the MLP/MoE block), each message
    batch x hidden_size x activation bytes."""
    if not model_config:
        return {"applies": False, "reason": "no model config.json (give a playbook whose model is a local path)"}
    layers, hidden = model_config.get("num_hidden_layers"), model_config.get("hidden_size")
    if not isinstance(layers, int) or not isinstance(hidden, int):
        return {"applies": False, "reason": "config.json has no integer num_hidden_layers / hidden_size"}
    if tensor_parallel_size <= 1:
        return {"applies": False, "reason": "tensor_parallel_size is 1: decode needs no all-reduce"}
    declared = model_config.get("torch_dtype") or model_config.get("dtype")
    elem = dtype_bytes(declared) or 2
    message = batch * hidden * elem
    per_token = 2 * layers
    moe = any(k in model_config for k in ("num_experts", "num_local_experts", "n_routed_experts"))
    out: dict[str, Any] = {
        "applies": True,
        "model_type": model_config.get("model_type"),
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "activation_bytes": elem,
        "activation_dtype_source": "config.json torch_dtype" if dtype_bytes(declared) else "assumed bf16",
        "moe": moe,
        "tensor_parallel_size": tensor_parallel_size,
        "decode_batch": batch,
        "all_reduces_per_token": per_token,
        "message_bytes": message,
        "modes": {},
        "note": ("MoE under TP all-reduces like a dense model (expert parallelism would use all-to-all instead)"
                 if moe else "dense model under TP: 2 all-reduces per layer"),
    }
    for mode in sorted({r.mode for r in rows}):
        found = latency_at(rows_of(rows, mode), message)
        if found is None:
            continue
        latency, basis = found
        ms = per_token * latency / 1000.0
        out["modes"][mode] = {
            "latency_us": round(latency, 3),
            "latency_basis": basis,
            "ms_per_token": round(ms, 4),
            "max_tokens_per_s": round(1000.0 / ms, 1) if ms > 0 else None,
        }
    return out


# ---------------------------------------------------------------- the report
@dataclass
class ProbeReport:
    engine: str
    world_size: int
    backend: str
    dtype: str | None
    modes: list[str]
    rows: list[ProbeRow]
    ranks_agree: bool | None
    transport: dict[str, dict[str, Any]]
    verdict: str
    checks: list[Finding]
    thresholds: dict[str, Any]
    token_cost: dict[str, Any]
    wall_s: float | None = None
    ranks: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, Any] = field(default_factory=dict)
    skipped_modes: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    network: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict_reasons(self) -> list[str]:
        return [c.message for c in most_severe_first(self.checks)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "world_size": self.world_size,
            "backend": self.backend,
            "dtype": self.dtype,
            "modes": list(self.modes),
            "skipped_modes": dict(self.skipped_modes),
            "ranks_agree": self.ranks_agree,
            "wall_s": self.wall_s,
            "rows": {m: [r.to_dict() for r in self.rows if r.mode == m] for m in self.modes},
            "transport": {k: dict(v) for k, v in self.transport.items()},
            "verdict": self.verdict,
            "verdict_reasons": self.verdict_reasons,
            "checks": [check_dict(c) for c in self.checks],
            "thresholds": dict(self.thresholds),
            "token_cost": dict(self.token_cost),
            "ranks": list(self.ranks),
            "versions": dict(self.versions),
            "settings": dict(self.settings),
            "network": dict(self.network),
            "notes": list(self.notes),
        }


def analyse(
    result: ProbeResult,
    nccl_logs_by_node: dict[str, str],
    options: ProbeOptions,
    *,
    model_config: dict[str, Any] | None = None,
    tensor_parallel_size: int | None = None,
    interfaces: dict[str, str | None] | None = None,
) -> ProbeReport:
    """Rows, transport per node, verdict and token cost from what the ranks measured.

    model_config: a config.json summary (else the one the worker read on the node);
    interfaces: the network plan's interface per node (named for gloo runs)."""
    if result.backend == "nccl":
        transports = {name: transport_summary(log) for name, log in nccl_logs_by_node.items()}
    else:
        transports = {name: gloo_transport((interfaces or {}).get(name)) for name in nccl_logs_by_node}
    verdict, checks = judge(result, transports, options)
    config = model_config or result.model_config
    cost = token_cost(result.rows, config, tensor_parallel_size=tensor_parallel_size or result.world_size)
    notes = []
    if result.model_config_error:
        notes.append(f"model config not read: {result.model_config_error}")
    return ProbeReport(
        engine=result.engine, world_size=result.world_size, backend=result.backend, dtype=result.dtype,
        modes=list(result.modes), rows=list(result.rows), ranks_agree=result.ranks_agree, transport=transports,
        verdict=verdict, checks=checks, thresholds=options.thresholds(), token_cost=cost, wall_s=result.wall_s,
        ranks=list(result.ranks), versions=dict(result.versions), skipped_modes=dict(result.skipped_modes),
        settings=dict(result.settings), notes=notes,
    )


# ---------------------------------------------------------------- rendering
def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def render_table(report: ProbeReport) -> str:
    """One fixed-width block per mode: size, iterations, latency percentiles (us), GB/s."""
    blocks = []
    for mode in report.modes:
        rows = sorted((r for r in report.rows if r.mode == mode), key=lambda r: r.size_bytes)
        if not rows:
            continue
        centre = "p50 µs" if any(r.p50_us is not None for r in rows) else "mean µs"  # nccl-tests: mean only
        header = (f"{'size':>9}  {'iters':>6}  {centre:>10}  {'p99 µs':>10}  {'min µs':>10}  "
                  f"{'algbw GB/s':>10}  {'busbw GB/s':>10}")
        lines = [f"{mode} ({report.engine}, {report.backend}, {report.world_size} ranks)", header]
        for r in rows:
            lines.append(
                f"{human_bytes(r.size_bytes):>9}  {_num(r.iterations, 'd'):>6}  {_num(r.latency_us, '.1f'):>10}  "
                f"{_num(r.p99_us, '.1f'):>10}  {_num(r.min_us, '.1f'):>10}  {_num(r.algbw_gbs, '.3f'):>10}  "
                f"{_num(r.busbw_gbs, '.3f'):>10}"
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def render_summary(report: ProbeReport) -> str:
    """Verdict, transport per node and what the latency costs vLLM, as lines."""
    lines = [f"verdict: {report.verdict}"]
    lines += [f"  - {reason}" for reason in report.verdict_reasons]
    if report.ranks_agree is not None:
        lines.append(f"ranks agree on the sum: {'yes' if report.ranks_agree else 'NO'}")
    for mode, why in report.skipped_modes.items():
        lines.append(f"{mode} mode skipped: {why}")
    lines.append("transport:")
    lines += [f"  {node}: {describe_transport(t)}" for node, t in sorted(report.transport.items())]
    cost = report.token_cost
    if cost.get("applies"):
        lines.append(
            f"cost to vLLM decode (TP={cost['tensor_parallel_size']}, batch {cost['decode_batch']}): "
            f"{cost['num_hidden_layers']} layers x 2 = {cost['all_reduces_per_token']} all-reduces per token "
            f"of {human_bytes(cost['message_bytes'])}"
        )
        for mode, c in cost["modes"].items():
            basis = c["latency_basis"]
            at = {"measured": "measured", "interpolated": "interpolated between "
                  + " and ".join(human_bytes(s) for s in basis["sizes"]),
                  "nearest": "nearest measured size " + human_bytes(basis["sizes"][0])}[basis["method"]]
            lines.append(
                f"  {mode}: {c['latency_us']:.1f} us each ({at}) -> {c['ms_per_token']:.2f} ms per token; "
                f"communication alone caps decode at {c['max_tokens_per_s']:g} tok/s"
            )
    else:
        lines.append(f"cost to vLLM decode: not computed ({cost.get('reason')})")
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def render_report(report: ProbeReport) -> str:
    return render_table(report) + "\n\n" + render_summary(report)
