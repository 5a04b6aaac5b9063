"""Read `NCCL_DEBUG=INFO` logs the way users paste them, and say which transport
NCCL really used, on which RDMA devices, with which GIDs and MTU, and what is
wrong with that.

Pure functions over text: no I/O, no printing. The line formats are NCCL's own
INFO/WARN strings (shared/reference/spark-networking.md §3.10 and §6); the
judgements come from the failure modes in §5 of the same document.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from ..findings import Finding, Severity, level, most_severe_first
from ..logtext import NCCL_VERSION, finite_float, iter_lines, strip_ansi, strip_process_tags

# NCCL prints the verbs path-MTU enum; people think in bytes.
MTU_BYTES = {1: 256, 2: 512, 3: 1024, 4: 2048, 5: 4096}

# Distinct hosts, ranks, devices, variables... a log can name: a real one names a few
# dozen; a hostile or runaway one could name millions, and the report stays small.
MAX_ITEMS = 1024
MAX_WARNINGS = 100
# Intra-node paths, most capable first: used when no inter-node path is in the log.
_INTRA_RANK = ("nvls", "p2p", "shm")

# ---------------------------------------------------------------- line cleaning
# Ray's dedup marker; everything from it to the end of the line is dropped.
_RAY_REPEAT = re.compile(r"\[repeated \d+x across cluster\]")
_OMITTED = re.compile(r"^\s*\[\s*(?:\.\.\.|…)[^\]]*\bomitted\b")
# host:pid:tid [cudaDev] [file.cc:line ]NCCL LEVEL  (searched anywhere: timestamps,
# mpirun `[1,0]<stdout>:` tags and wrappers may come first). The host starts where a run
# of host characters starts: the leftmost match always does, and without the lookbehind
# a long run would be rescanned from each of its characters.
_PREFIX = re.compile(
    r"(?<![^\s:()\[\]|])(?P<host>[^\s:()\[\]|]+):(?P<pid>\d+):(?P<tid>\d+) \[(?P<dev>\d+)\] (?:\S+:\d+ )?"
    r"NCCL (?P<level>INFO|WARN|TRACE|ABORT)\b ?"
)
_BARE = re.compile(r"\bNCCL (?P<level>INFO|WARN)\b:? ?")

# ---------------------------------------------------------------- NCCL messages
_CUDA_DRIVER = re.compile(r"^cudaDriverVersion (\d+)")
_ENV = re.compile(r"^(NCCL_\w+) set (?:by environment )?to ?(.*?)\.?$")
# Messages are stripped, so no pattern needs a trailing `\s*$` (after a lazy group it is quadratic).
_USING_NETWORK = re.compile(r"^Using network (\S.*)")
_PLUGIN_NAME = re.compile(r"^(?:Initialized|Assigned) NET plugin (\S+)|^P2P plugin (\S+)")
_NET_USING = re.compile(r"^NET/(?P<net>IB\w*|Socket)\s*:\s*Using\b(?P<rest>.*)$")
_IB_ITEM = re.compile(r"\[(\d+)\]([^\s:\[\]]+):(\d+)/(\w+)")
_SOCKET_ITEM = re.compile(r"\[(\d+)\]([^\s:\[\]]+):")
_OOB = re.compile(r";\s*OOB\s+(\S+)$")
_BOOTSTRAP = re.compile(r"^Bootstrap\s*:\s*Using\s+(?:\[\d+\])?(\S+)$")
_IF_INDEX = re.compile(r"<\d+>$")  # "enp1s0f1np1<0>": the interface index NCCL appends
_IB_DEV = re.compile(r"^NET/IB\s*:\s*\[\d+\]\s*([^\s:]+):uverbs\d+:\d+/\w+")
_VIRTUAL_DEV = re.compile(r"Made virtual device \[(\d+)\] name=(\S+)")
_IB_NONE = re.compile(r"^NET/IB\s*:\s*No device found")
_GDR_HCA = re.compile(r"GPU Direct RDMA (Disabled|Enabled) for HCA (\d+) '([^']*)'")
_GDR_FLAG = re.compile(r"\bGDR ([01])\b")
_CHANNEL = re.compile(
    r"\bvia (?P<path>NET/[^/\s]+(?:/\d+)?|P2P/(?:direct pointer|common device|\w+)|SHM/[\w/]+)"
    r"(?P<rest>\S*)"
)
_COMM = re.compile(
    r"\bcomm (?:0x)?[0-9a-fA-F]+ rank (\d+) n[Rr]anks (\d+)(?: nNodes (\d+))?(?: localRanks (\d+))?"
)
_NVLS_CHANNELS = re.compile(r"\b(\d+) nvls channels")
_NVLINK = re.compile(r"\bNVLink\b")
_INIT_TOTAL = re.compile(r"^Init timings\b.*?\btotal ([\d.]+)")
_QP = re.compile(
    r"^NET/IB\s*:\s*(?:NCCL (?:Merged)?Dev|Dev) (\d+) (?:IbDev (\d+) )?Port (\d+) qpn (\d+) mtu (\d+) "
    r"(?:GID (-?\d+) \(([0-9A-Fa-f]+)/([0-9A-Fa-f]+)\)|LID \d+)"
)
# Verbs failures NCCL reports; also matched on un-prefixed lines because torch
# re-prints NCCL's last error ("Last error: NET/IB : Got completion ...").
_IB_ERROR = re.compile(r"NET/IB\s*:?\s*Got completion|\bibv_\w+ failed|\bIBV_WC_\w+_ERR\b")
_PLUGIN_FAIL = re.compile(
    r"^NET/Plugin\b.*(?:[Ff]ail|undefined symbol|unsupported|not supported|[Uu]nable)"
    r"|^NET/OFI\b.*\b(?:[Ff]ailed|[Uu]nable)\b"
    r"|Failed to initialize NET plugin|External network plugin \S+ is unsupported"
)
# Messages printed while NCCL merely probes for an optional plugin.
_PLUGIN_PROBE = re.compile(
    r"Failed to find nccl(?:Coll)?NetPlugin_v\d+ symbol|Could not find|No plugin found|No such file"
)
_SPARK_HCA = re.compile(r"^roce(p1|P2p1)s0f(\d)$")


@dataclass(frozen=True)
class QueuePair:
    """One `NET/IB: NCCL Dev .. qpn .. mtu .. GID ..` line: what a connection really negotiated."""

    host: str | None
    dev: int
    ibdev: int
    port: int
    qpn: int
    mtu_code: int
    mtu_bytes: int | None
    gid_index: int | None
    gid_raw: str | None
    gid: str | None
    link_local: bool
    device: str | None
    line: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host, "dev": self.dev, "ibdev": self.ibdev, "port": self.port, "qpn": self.qpn,
            "mtu_code": self.mtu_code, "mtu_bytes": self.mtu_bytes, "gid_index": self.gid_index,
            "gid_raw": self.gid_raw, "gid": self.gid, "link_local": self.link_local, "device": self.device,
        }


@dataclass
class NcclLogReport:
    transport: str = "unknown"  # ib | socket | nvls | p2p | shm | unknown
    transports_seen: list[str] = field(default_factory=list)
    network: str | None = None  # the NET NCCL selected: "ib" | "socket" | "other"
    net_plugin: str | None = None
    link_layer: str | None = None  # RoCE | IB
    devices: list[str] = field(default_factory=list)
    ib_devices: list[str] = field(default_factory=list)
    socket_devices: list[str] = field(default_factory=list)
    oob_interface: str | None = None
    bootstrap_interface: str | None = None
    nccl_version: str | None = None
    nccl_versions: list[str] = field(default_factory=list)
    cuda_driver_version: int | None = None
    hosts: list[str] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    nranks: int | None = None
    nnodes: int | None = None
    local_ranks: int | None = None
    qps: list[QueuePair] = field(default_factory=list)
    channels: dict[str, int] = field(default_factory=dict)
    nvls_channels: int | None = None
    gdr: bool | None = None
    init_time_s: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    truncated: bool = False
    findings: list[Finding] = field(default_factory=list)

    def codes(self) -> list[str]:
        return [f.code for f in self.findings]

    def to_dict(self) -> dict[str, Any]:
        return {
            "transport": self.transport,
            "transports_seen": list(self.transports_seen),
            "network": self.network,
            "net_plugin": self.net_plugin,
            "link_layer": self.link_layer,
            "devices": list(self.devices),
            "ib_devices": list(self.ib_devices),
            "socket_devices": list(self.socket_devices),
            "oob_interface": self.oob_interface,
            "bootstrap_interface": self.bootstrap_interface,
            "nccl_version": self.nccl_version,
            "nccl_versions": list(self.nccl_versions),
            "cuda_driver_version": self.cuda_driver_version,
            "hosts": list(self.hosts),
            "ranks": list(self.ranks),
            "nranks": self.nranks,
            "nnodes": self.nnodes,
            "local_ranks": self.local_ranks,
            "qps": [q.to_dict() for q in self.qps],
            "channels": dict(self.channels),
            "nvls_channels": self.nvls_channels,
            "gdr": self.gdr,
            "init_time_s": self.init_time_s,
            "env": dict(self.env),
            "warnings": list(self.warnings),
            "truncated": self.truncated,
            "findings": [finding_dict(f) for f in self.findings],
        }


def finding_dict(f: Finding) -> dict[str, Any]:
    """An NCCL log finding in `--json` (doctor nccl-log, nccl-probe's transport): its severity as `level`."""
    return {"code": f.code, "level": level(f.severity), "message": f.message, "evidence": f.evidence}


@dataclass(frozen=True)
class _Line:
    host: str | None
    level: str | None  # INFO/WARN/...; None when NCCL did not prefix the line
    msg: str


class _Omitted:
    """Stands for a "[... N lines omitted ...]" marker among the messages."""


_OMITTED_MARK = _Omitted()


def _cleaned(lines: Iterable[str]) -> Iterator[str]:
    for physical in lines:
        yield strip_process_tags(strip_ansi(physical)).strip()


def _clean_hosts(lines: Iterable[str]) -> set[str]:
    """The first prefix on a line cannot be glued to an earlier message, so its host is
    trusted; it tells where a glued prefix really begins ("...network IBspark-a1:88:88 [0]")."""
    hosts: set[str] = set()
    for line in _cleaned(lines):
        if len(hosts) < MAX_ITEMS and (m := _PREFIX.search(line)) is not None:
            hosts.add(m["host"])
    return hosts


def _messages(lines: Iterable[str], clean_hosts: set[str]) -> Iterator[_Line | _Omitted]:
    """Split pasted lines into NCCL messages."""
    for line in _cleaned(lines):
        if not line:
            continue
        if _OMITTED.match(line):
            yield _OMITTED_MARK
            continue
        starts = [(m.start() + (_glue_offset(m["host"], clean_hosts) if i else 0), m)
                  for i, m in enumerate(_PREFIX.finditer(line))]
        if starts:
            # Ranks writing to one terminal can glue two messages onto one line.
            for i, (begin, m) in enumerate(starts):
                end = starts[i + 1][0] if i + 1 < len(starts) else len(line)
                host = m["host"][begin - m.start():]
                yield _Line(host, m["level"], _tidy(line[m.end():end]))
            continue
        bare = _BARE.search(line)
        if bare is not None:
            yield _Line(None, bare["level"], _tidy(line[bare.end():]))
        else:
            yield _Line(None, None, _tidy(line))


class _Tally:
    """Messages of one kind: all counted, the first few kept."""

    def __init__(self) -> None:
        self.count = 0
        self.first: list[str] = []

    def append(self, msg: str) -> None:
        self.count += 1
        if len(self.first) < 8:
            self.first.append(msg)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> str:
        return self.first[index]


def _glue_offset(host: str, clean_hosts: set[str]) -> int:
    """How many leading characters of a later prefix's host belong to the previous message."""
    if host in clean_hosts:
        return 0
    for known in sorted(clean_hosts, key=len, reverse=True):
        if host.endswith(known):
            return len(host) - len(known)
    return 0


def _add_version(seq: list[str], version: str) -> None:
    """torch prints "NCCL version 2.28.9" for NCCL's "2.28.9+cuda13.0": one version, not two."""
    base = version.split("+")[0]
    for i, seen in enumerate(seq):
        if seen.split("+")[0] == base:
            if "+" in version and "+" not in seen:
                seq[i] = version
            return
    _add(seq, version)


def _tidy(msg: str) -> str:
    if (m := _RAY_REPEAT.search(msg)) is not None:
        msg = msg[:m.start()]
    return msg.strip()


def _add(seq: list, item: Any, limit: int = MAX_ITEMS) -> None:
    if item is not None and len(seq) < limit and item not in seq:
        seq.append(item)


def _put(table: dict, key: Any, value: Any) -> None:
    """setdefault, up to MAX_ITEMS keys."""
    if key in table or len(table) < MAX_ITEMS:
        table.setdefault(key, value)


def _decode_gid(subnet_hex: str, iid_hex: str) -> tuple[str | None, bool]:
    """NCCL prints the two 64-bit halves of the GID as little-endian integers."""
    try:
        raw = int(subnet_hex, 16).to_bytes(8, "little") + int(iid_hex, 16).to_bytes(8, "little")
    except OverflowError:
        return None, False
    addr = ipaddress.IPv6Address(raw)
    text = f"::ffff:{addr.ipv4_mapped}" if addr.ipv4_mapped is not None else str(addr)
    return text, addr.is_link_local


def _channel_kind(path: str) -> str:
    if path.startswith("NET/IB"):  # IB, IBext, IBext_v10
        return "ib"
    if path.startswith("NET/Socket"):
        return "socket"
    if path.startswith("NET/"):
        return "net"
    return "p2p" if path.startswith("P2P/") else "shm"


def _network_of(name: str) -> str:
    return "ib" if name.upper().startswith("IB") else "socket" if name.lower() == "socket" else "other"


def parse_nccl_log(text: str) -> NcclLogReport:
    """Parse an NCCL_DEBUG=INFO log (any mix of ranks, wrappers and noise)."""
    return parse_nccl_log_lines(lambda: iter_lines([text]))


def parse_nccl_log_lines(read: Callable[[], Iterable[str]]) -> NcclLogReport:
    """The same from a source of lines: `read()` gives them from the start and is called
    twice (host names first), so a file is streamed, never held whole."""
    parser = _Parser()
    for ln in _messages(read(), _clean_hosts(read())):
        parser.feed(ln)
    return parser.finish()


class _Parser:
    """What one pass over the messages has seen; `finish` turns it into the report."""

    def __init__(self) -> None:
        self.r = NcclLogReport()
        self.seen = _Seen()
        self.net_names: list[str] = []  # from "Using network X" / "Assigned NET plugin X"
        self.init_names: list[str] = []  # from "Initialized NET plugin X" / "P2P plugin X"
        self.data_kinds: list[str] = []
        self.dev_names: dict[int, str] = {}
        self.gdr_seen: set[bool] = set()
        self.qp_seen: dict[tuple, tuple[str | None, re.Match[str], str]] = {}
        # INFO messages: the first pattern that matches decides what the message is
        self.info_rules: tuple[tuple[Callable[[str], re.Match[str] | None], Callable[[re.Match[str], _Line], None]], ...] = (
            (_CUDA_DRIVER.match, self._cuda_driver),
            (_ENV.match, self._env),
            (_USING_NETWORK.match, self._using_network),
            (_PLUGIN_NAME.match, self._plugin_name),
            (_NET_USING.match, self._net_using),
            (_BOOTSTRAP.match, self._bootstrap),
            (_IB_DEV.match, self._ib_dev),
            (_VIRTUAL_DEV.search, self._virtual_dev),
            (_IB_NONE.match, self._ib_none),
            (_QP.match, self._qp),
            (_COMM.search, self._comm),
            (_INIT_TOTAL.match, self._init_total),
        )

    def feed(self, ln: _Line | _Omitted) -> None:
        if isinstance(ln, _Omitted):
            self.r.truncated = True
            return
        msg = ln.msg
        _add(self.r.hosts, ln.host)
        if (m := NCCL_VERSION.search(msg)) is not None:
            _add_version(self.r.nccl_versions, m[1])
        if ln.level is None:
            if _IB_ERROR.search(msg):  # torch re-printing NCCL's last error
                self.seen.ib_errors.append(msg)
            return
        plugin_failed = bool(_PLUGIN_FAIL.search(msg)) and not _PLUGIN_PROBE.search(msg)
        if plugin_failed:  # NCCL reports some of these at INFO level
            self.seen.plugin_failures.append(msg)
        if ln.level == "WARN":
            self._warn(msg, plugin_failed)
            return
        for find, handle in self.info_rules:
            if (m := find(msg)) is not None:
                handle(m, ln)
                break
        self._data_paths(msg)

    def _warn(self, msg: str, plugin_failed: bool) -> None:
        if _IB_ERROR.search(msg) and not plugin_failed:
            self.seen.ib_errors.append(msg)
        elif not plugin_failed:
            self.seen.other_warns.append(msg)
        _add(self.r.warnings, msg, MAX_WARNINGS)

    # ------------------------------------------------ one handler per kind of INFO message
    def _cuda_driver(self, m: re.Match[str], ln: _Line) -> None:
        self.r.cuda_driver_version = self.r.cuda_driver_version or int(m[1])

    def _env(self, m: re.Match[str], ln: _Line) -> None:
        _put(self.r.env, m[1], m[2].strip())
        _put(self.seen.ev, "env:" + m[1], ln.msg)

    def _using_network(self, m: re.Match[str], ln: _Line) -> None:
        _add(self.net_names, m[1])
        self.seen.ev.setdefault("network:" + _network_of(m[1]), ln.msg)

    def _plugin_name(self, m: re.Match[str], ln: _Line) -> None:
        _add(self.net_names if ln.msg.startswith("Assigned") else self.init_names, m[1] or m[2])

    def _net_using(self, m: re.Match[str], ln: _Line) -> None:
        r, rest = self.r, m["rest"]
        if m["net"] == "Socket":
            for item in _SOCKET_ITEM.finditer(rest):
                _add(r.socket_devices, item[2])
            self.seen.ev.setdefault("socket-using", ln.msg)
        else:
            for item in _IB_ITEM.finditer(rest):
                _put(self.dev_names, int(item[1]), item[2])
                for name in item[2].split("+"):  # merged virtual NICs: a+b
                    _add(r.ib_devices, name)
                r.link_layer = r.link_layer or item[4]
            self.seen.ev.setdefault("ib-using", ln.msg)
        if (oob := _OOB.search(rest)) is not None:
            r.oob_interface = r.oob_interface or _IF_INDEX.sub("", oob[1])

    def _bootstrap(self, m: re.Match[str], ln: _Line) -> None:
        self.r.bootstrap_interface = self.r.bootstrap_interface or _IF_INDEX.sub("", m[1])

    def _ib_dev(self, m: re.Match[str], ln: _Line) -> None:
        _add(self.r.ib_devices, m[1])

    def _virtual_dev(self, m: re.Match[str], ln: _Line) -> None:
        _put(self.dev_names, int(m[1]), m[2])
        for name in m[2].split("+"):
            _add(self.r.ib_devices, name)

    def _ib_none(self, m: re.Match[str], ln: _Line) -> None:
        self.seen.ev.setdefault("ib-none", ln.msg)

    def _qp(self, m: re.Match[str], ln: _Line) -> None:
        _put(self.qp_seen, (ln.host, m[1], m[2], m[3], m[4]), (ln.host, m, ln.msg))

    def _comm(self, m: re.Match[str], ln: _Line) -> None:
        r = self.r
        _add(r.ranks, int(m[1]))
        r.nranks = max(r.nranks or 0, int(m[2]))
        if m[3] is not None:
            r.nnodes = max(r.nnodes or 0, int(m[3]))
        if m[4] is not None:
            r.local_ranks = max(r.local_ranks or 0, int(m[4]))

    def _init_total(self, m: re.Match[str], ln: _Line) -> None:
        if (total := finite_float(m[1])) is not None:
            self.r.init_time_s = max(self.r.init_time_s or 0.0, total)

    # ------------------------------------------------ looked for in every INFO message
    def _data_paths(self, msg: str) -> None:
        """Channels, NVLS, NVLink and GPUDirect: which paths carried data."""
        r, ev = self.r, self.seen.ev
        if (m := _CHANNEL.search(msg)) is not None:
            path, rest = m["path"], m["rest"]
            if path in r.channels or len(r.channels) < MAX_ITEMS:
                r.channels[path] = r.channels.get(path, 0) + 1
            kind = _channel_kind(path)
            _add(self.data_kinds, kind)
            ev.setdefault("channel:" + kind, msg)
            if "GDRDMA" in rest:
                self.gdr_seen.add(True)
        if (m := _NVLS_CHANNELS.search(msg)) is not None:
            r.nvls_channels = max(r.nvls_channels or 0, int(m[1]))
            if int(m[1]) > 0:
                _add(self.data_kinds, "nvls")
        if _NVLINK.search(msg):
            _add(self.data_kinds, "p2p")
        if (m := _GDR_HCA.search(msg)) is not None:
            self.gdr_seen.add(m[1] == "Enabled")
            ev.setdefault("gdr", msg)
        elif (m := _GDR_FLAG.search(msg)) is not None:
            self.gdr_seen.add(m[1] == "1")
            ev.setdefault("gdr", msg)

    def finish(self) -> NcclLogReport:
        r = self.r
        r.ranks.sort()
        r.nccl_version = r.nccl_versions[0] if r.nccl_versions else None
        r.net_plugin = next(iter(self.net_names or self.init_names), None)
        r.gdr = True if True in self.gdr_seen else (False if self.gdr_seen else None)
        # Built last so each QP can be named from every "Using [i]name" line, wherever it was.
        r.qps = [_queue_pair(host, m, line, self.dev_names) for host, m, line in self.qp_seen.values()]
        r.network = _selected_network(r, self.seen.ev)
        r.transport = _transport(r, self.data_kinds)
        r.transports_seen = list(self.data_kinds)
        if r.transport != "unknown":
            _add(r.transports_seen, r.transport)
        r.devices = list(r.socket_devices if r.transport == "socket" else r.ib_devices or r.socket_devices)
        r.findings = most_severe_first(f for rule in _RULES if (f := rule(r, self.seen)) is not None)
        return r


def _queue_pair(host: str | None, m: re.Match[str], line: str, dev_names: dict[int, str]) -> QueuePair:
    mtu = int(m[5])
    gid_index = int(m[6]) if m[6] is not None else None
    gid, link_local = _decode_gid(m[7], m[8]) if m[7] is not None else (None, False)
    return QueuePair(
        host=host, dev=int(m[1]),
        ibdev=int(m[2]) if m[2] is not None else int(m[1]),  # before 2.19 one NCCL dev was one IB dev
        port=int(m[3]), qpn=int(m[4]), mtu_code=mtu, mtu_bytes=MTU_BYTES.get(mtu),
        gid_index=gid_index, gid_raw=f"{m[7]}/{m[8]}" if m[7] is not None else None,
        gid=gid, link_local=link_local, device=dev_names.get(int(m[1])), line=line,
    )


def _selected_network(r: NcclLogReport, ev: dict[str, str]) -> str | None:
    """The NET NCCL chose, whether or not it carried any traffic."""
    if r.net_plugin is not None:
        return _network_of(r.net_plugin)
    if "ib-using" in ev:
        return "ib"
    if "socket-using" in ev or "ib-none" in ev:
        return "socket"
    return None


def _transport(r: NcclLogReport, data_kinds: list[str]) -> str:
    """Inter-node paths win; a log with only intra-node paths is not a socket fallback."""
    if "ib" in data_kinds:
        return "ib"
    if "socket" in data_kinds:
        return "socket"
    intra = [k for k in _INTRA_RANK if k in data_kinds]
    multi_node = (r.nnodes or 0) > 1 or len(r.hosts) > 1
    single_node = r.nnodes == 1 or (bool(intra) and not multi_node)
    if r.network in ("ib", "socket") and not single_node:
        return r.network
    return intra[0] if intra else "unknown"


def _netdev_of(hca: str) -> str | None:
    """DGX Spark names: rocep1s0f1 <-> enp1s0f1np1, roceP2p1s0f1 <-> enP2p1s0f1np1."""
    m = _SPARK_HCA.match(hca)
    return f"en{m[1]}s0f{m[2]}np{m[2]}" if m else None


def _twin_of(hca: str) -> str | None:
    m = _SPARK_HCA.match(hca)
    if not m:
        return None
    return f"roce{'P2p1' if m[1] == 'p1' else 'p1'}s0f{m[2]}"


def _qp_name(qp: QueuePair) -> str:
    return qp.device or f"NCCL dev {qp.dev}"


@dataclass
class _Seen:
    """What the rules read beyond the report: the first line that proves each fact, and the
    WARN/error lines by kind."""

    ev: dict[str, str] = field(default_factory=dict)
    ib_errors: _Tally = field(default_factory=_Tally)
    plugin_failures: _Tally = field(default_factory=_Tally)
    other_warns: _Tally = field(default_factory=_Tally)


# ---------------------------------------------------------------- findings: one function per rule
def _socket_fallback(r: NcclLogReport, seen: _Seen) -> Finding | None:
    if r.transport != "socket":
        return None
    ev = seen.ev
    evidence = ev.get("channel:socket") or ev.get("network:socket") or ev.get("socket-using") or ev.get("ib-none")
    if r.env.get("NCCL_NET", "").lower() == "socket" or r.env.get("NCCL_IB_DISABLE") == "1":
        why, fix = "because the environment forces it", "unset NCCL_NET=Socket / NCCL_IB_DISABLE=1"
    elif "ib-none" in ev:  # checked before plugins: without a device no plugin choice helps
        why = "because NCCL saw no RDMA device (NET/IB : No device found)"
        fix = ("start containers with --device /dev/infiniband --cap-add IPC_LOCK --ulimit memlock=-1 "
               "and check that ibdev2netdev shows both twins Up")
    elif seen.plugin_failures:
        why, fix = "after a NET plugin failed to load", "set NCCL_NET_PLUGIN=none so NCCL uses its built-in IB transport"
    else:
        why = ""
        fix = ("make the RDMA devices visible (--device /dev/infiniband, IPC_LOCK, memlock unlimited), "
               "unset NCCL_IB_DISABLE/NCCL_NET=Socket, and name both twins in NCCL_IB_HCA")
    return Finding(
        "socket-fallback", Severity.ERROR,
        f"Inter-node NCCL traffic runs over TCP sockets{' ' + why if why else ''} "
        f"(\"{evidence}\"), far below RoCE speed and latency; {fix}.", evidence)


def _net_plugin_fallback(r: NcclLogReport, seen: _Seen) -> Finding | None:
    if not seen.plugin_failures:
        return None
    socket = r.transport == "socket"
    after = "NCCL then fell back to sockets" if socket else f"NCCL used {r.net_plugin or 'another NET'} instead"
    first = seen.plugin_failures[0]
    return Finding(
        "net-plugin-fallback", Severity.WARNING if socket else Severity.INFO,
        f"A NET plugin failed (\"{first}\") and {after}; set NCCL_NET_PLUGIN=none unless that "
        "plugin is wanted (NGC images ship aws-ofi-nccl / HPC-X plugins).", first)


def _ib_error(r: NcclLogReport, seen: _Seen) -> Finding | None:
    if not seen.ib_errors:
        return None
    first = seen.ib_errors[0]
    return Finding(
        "ib-error", Severity.ERROR,
        f"The IB/RoCE transport failed ({len(seen.ib_errors)} line(s); first: \"{first}\"); {_ib_error_fix(first)}.",
        first)


def _link_local_gid(r: NcclLogReport, seen: _Seen) -> Finding | None:
    bad_gid = [q for q in r.qps if q.gid_index == 0 or q.link_local]
    if not bad_gid:
        return None
    q = bad_gid[0]
    names = list(dict.fromkeys(_qp_name(x) for x in bad_gid))
    netdev = _netdev_of(q.device or "")
    return Finding(
        "link-local-gid", Severity.ERROR,
        f"QPs on {', '.join(names)} use GID index {q.gid_index} ({q.gid or q.gid_raw}, a link-local fe80 GID"
        f"{', host ' + q.host if q.host else ''}), so that twin has no IPv4 RoCE v2 GID; give "
        f"{netdev or 'its netdev'} an IPv4 address on its own subnet and leave NCCL_IB_GID_INDEX unset.",
        q.line)


def _single_hca(r: NcclLogReport, seen: _Seen) -> Finding | None:
    if r.transport != "ib" or len(r.ib_devices) != 1:
        return None
    dev = r.ib_devices[0]
    twin = _twin_of(dev)
    both = f"{dev},{twin}" if twin else f"{dev} and its twin"
    return Finding(
        "single-hca", Severity.WARNING,
        f"NCCL uses only one RDMA device ({dev}); a Spark reaches each QSFP cage through two PCIe x4 twins, "
        f"so one device caps near half the link (~13.5 GB/s busbw): set NCCL_IB_HCA={both} and give both "
        "twins an IPv4 address on separate subnets.", seen.ev.get("ib-using"))


def _mtu_mismatch(r: NcclLogReport, seen: _Seen) -> Finding | None:
    per_host: dict[str | None, set[int]] = {}
    for q in r.qps:
        per_host.setdefault(q.host, set()).add(q.mtu_code)
    if len(per_host) <= 1 or len({frozenset(v) for v in per_host.values()}) <= 1:
        return None
    desc = ", ".join(f"{h or '?'}: {'/'.join(str(MTU_BYTES.get(c, c)) for c in sorted(v))}"
                     for h, v in per_host.items())
    return Finding(
        "mtu-mismatch", Severity.ERROR,
        f"The nodes report different RoCE MTUs ({desc} bytes), which passes small pings then stalls collectives "
        "(IBV_WC_RETRY_EXC_ERR); set the same netdev MTU (9000) on every twin of every node.", r.qps[0].line)


def _low_mtu(r: NcclLogReport, seen: _Seen) -> Finding | None:
    low = [q for q in r.qps if q.mtu_code < 5]
    if not low:
        return None
    q = low[0]
    names = list(dict.fromkeys(_qp_name(x) for x in low))
    return Finding(
        "low-mtu", Severity.WARNING,
        f"QPs on {', '.join(names)} run at RoCE MTU {q.mtu_bytes or '?'} bytes (mtu {q.mtu_code}), meaning the "
        "CX-7 netdevs are at MTU 1500; set MTU 9000 on both twins on every node (RoCE MTU 4096).", q.line)


def _nccl_version_mismatch(r: NcclLogReport, seen: _Seen) -> Finding | None:
    if len(r.nccl_versions) <= 1:
        return None
    return Finding(
        "nccl-version-mismatch", Severity.ERROR,
        f"Ranks load different NCCL versions ({', '.join(r.nccl_versions)}); use the same NCCL build "
        "(same container image) on every node.", None)


def _slow_init(r: NcclLogReport, seen: _Seen) -> Finding | None:
    if r.init_time_s is None or r.init_time_s <= 30:
        return None
    return Finding(
        "slow-init", Severity.WARNING,
        f"Communicator init took {r.init_time_s:g} s; on NCCL 2.28+ GIN setup can take minutes, "
        "so try NCCL_GIN_ENABLE=0.", None)


def _nccl_warn(r: NcclLogReport, seen: _Seen) -> Finding | None:
    if not seen.other_warns:
        return None
    first = seen.other_warns[0]
    return Finding(
        "nccl-warn", Severity.WARNING,
        f"NCCL printed {len(seen.other_warns)} other WARN line(s), first: \"{first}\"; read them before "
        "trusting any measurement from this run.", first)


def _gid_index_pinned(r: NcclLogReport, seen: _Seen) -> Finding | None:
    gid_pin = r.env.get("NCCL_IB_GID_INDEX")
    if gid_pin is None or gid_pin in ("", "-1"):
        return None
    return Finding(
        "gid-index-pinned", Severity.INFO,
        f"NCCL_IB_GID_INDEX is pinned to {gid_pin}; GID indexes can drift after link events and differ per HCA, "
        "so prefer leaving it unset (NCCL then picks the IPv4 RoCE v2 GID).", seen.ev.get("env:NCCL_IB_GID_INDEX"))


def _gdr_expected_off(r: NcclLogReport, seen: _Seen) -> Finding | None:
    if r.gdr is not False or r.transport != "ib":
        return None
    return Finding(
        "gdr-expected-off", Severity.INFO,
        f"GPUDirect RDMA is off (\"{seen.ev.get('gdr')}\"); that is expected on DGX Spark/GB10 (unified memory), "
        "so leave NCCL_NET_GDR_LEVEL alone there; on discrete-GPU servers check nvidia-peermem/dma-buf.",
        seen.ev.get("gdr"))


def _no_inter_node_evidence(r: NcclLogReport, seen: _Seen) -> Finding | None:
    if r.transport in _INTRA_RANK:
        return Finding(
            "intra-node-only", Severity.INFO,
            f"Only intra-node paths ({r.transport}) appear, so this log says nothing about the inter-node fabric; "
            "capture a multi-node run to judge the network.", None)
    if r.transport == "unknown":
        return Finding(
            "no-transport-evidence", Severity.INFO,
            "The log shows no network selection or channel lines; rerun with NCCL_DEBUG=INFO "
            "NCCL_DEBUG_SUBSYS=INIT,NET and keep the lines from every rank.", None)
    return None


# In this order within a severity (the report lists the most severe first).
_RULES: tuple[Callable[[NcclLogReport, _Seen], Finding | None], ...] = (
    _socket_fallback, _net_plugin_fallback, _ib_error, _link_local_gid, _single_hca, _mtu_mismatch, _low_mtu,
    _nccl_version_mismatch, _slow_init, _nccl_warn, _gid_index_pinned, _gdr_expected_off, _no_inter_node_evidence,
)


def _ib_error_fix(line: str) -> str:
    low = line.lower()
    if "cannot allocate memory" in low or "ibv_reg_mr" in low or "ibv_create_qp" in low:
        return "that is the memlock limit: run containers with --ulimit memlock=-1 --cap-add IPC_LOCK"
    if "status=12" in low or "error 12" in low or "retry_exc" in low:
        return ("transport retry timeout: the peers cannot reach each other over RoCE on that GID, so check MTU "
                "parity on both nodes, an IPv4 address per twin, and leave NCCL_IB_GID_INDEX unset")
    if "ibv_modify_qp" in low:
        return ("the QP could not reach the peer: check the GID (no fe80/RoCE v1, no stale pinned "
                "NCCL_IB_GID_INDEX) and that `ip route get <peer twin>` leaves through the matching twin")
    return "run ib_write_bw between the same twins to reproduce it outside NCCL"
