"""The node agent's protocol: one frozen request and one frozen reply type per
operation, and the one codec that turns them into JSON and back.

Both sides use this module: the controller imports it, and it is shipped to
the nodes with the agent (client.NODE_MODULES), so it is standard library only
and Python 3.8 syntax (typing.List, not list[...]). Every message is checked
against its type when it is read, on either side: a missing or mistyped field
is a ProtocolError naming the field, never a KeyError or a silent None.

Wire format (one JSON object each way):
    request  {"v": PROTOCOL_VERSION, "op": <Request.OP>, "args": {<request fields>}}
    reply    {"v": PROTOCOL_VERSION, "ok": true, "reply": {<reply fields>}}
          or {"v": PROTOCOL_VERSION, "ok": false, "error": str, "kind": str}
An agent that receives another version answers kind "protocol-version".
"""

import sys
import typing
from typing import Any, Callable, ClassVar, Dict, Generic, List, Optional, Tuple, Type, TypeVar

PROTOCOL_VERSION = 2  # 1 was the untyped {"op": ..., **payload} of sparkctl <= 0.1

R = TypeVar("R")
T = TypeVar("T")

JsonDict = Dict[str, Any]


class ProtocolError(ValueError):
    """A message that does not match its type (the text names the field)."""


# --------------------------------------------------------------------------
# frozen message classes
# --------------------------------------------------------------------------
# Like frozen dataclasses (and type-checked as such), without the dataclasses
# module: importing it and generating code for every class would cost every
# agent call tens of milliseconds on the node.
if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # a node's older Python: only type checkers read the transform

    def dataclass_transform(**_kwargs: Any) -> Callable[[T], T]:
        return lambda decorator: decorator


_MISSING = object()


class _Factory(object):
    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], T]) -> T:
    """A field whose default is made fresh for every message (a dict, say)."""
    return _Factory(default_factory)  # type: ignore[return-value]


class Field(object):
    __slots__ = ("name", "type", "default")

    def __init__(self, name: str, type_: Any, default: Any) -> None:
        self.name = name
        self.type = type_
        self.default = default


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def message(cls: Type[T]) -> Type[T]:
    """Make cls a frozen message: keyword/positional __init__ over its annotated
    fields (ClassVars excluded, base classes first), __eq__, __hash__, __repr__."""
    fields = {}  # type: Dict[str, Field]
    for klass in reversed(cls.__mro__):
        for name, type_ in klass.__dict__.get("__annotations__", {}).items():
            if typing.get_origin(type_) is ClassVar or type_ is ClassVar:
                continue
            default = klass.__dict__.get(name, _MISSING)
            fields[name] = Field(name, type_, default)
    for name, fld in fields.items():
        if isinstance(fld.default, _Factory) and name in cls.__dict__:
            delattr(cls, name)
    setattr(cls, "__message_fields__", tuple(fields.values()))
    setattr(cls, "__init__", _init)
    setattr(cls, "__setattr__", _frozen)
    setattr(cls, "__delattr__", _frozen)
    setattr(cls, "__eq__", _eq)
    setattr(cls, "__hash__", _hash)
    setattr(cls, "__repr__", _repr)
    return cls


def fields_of(cls: Any) -> Tuple[Field, ...]:
    return cls.__message_fields__  # type: ignore[no-any-return]


def is_message(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "__message_fields__")


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    fields = fields_of(type(self))
    if len(args) > len(fields):
        raise TypeError("%s takes %d fields, got %d" % (type(self).__name__, len(fields), len(args)))
    values = dict(zip((f.name for f in fields), args))
    for name, value in kwargs.items():
        if name in values:
            raise TypeError("%s: %s given twice" % (type(self).__name__, name))
        values[name] = value
    unknown = set(values) - set(f.name for f in fields)
    if unknown:
        raise TypeError("%s: unknown field(s) %s" % (type(self).__name__, ", ".join(sorted(unknown))))
    for fld in fields:
        if fld.name in values:
            value = values[fld.name]
        elif isinstance(fld.default, _Factory):
            value = fld.default.make()
        elif fld.default is not _MISSING:
            value = fld.default
        else:
            raise TypeError("%s: missing field %s" % (type(self).__name__, fld.name))
        object.__setattr__(self, fld.name, value)


def _frozen(self: Any, *_args: Any) -> None:
    raise AttributeError("%s is frozen" % type(self).__name__)


def _values(self: Any) -> Tuple[Any, ...]:
    return tuple(getattr(self, f.name) for f in fields_of(type(self)))


def _eq(self: Any, other: Any) -> bool:
    return type(self) is type(other) and _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash((type(self), _values(self)))


def _repr(self: Any) -> str:
    return "%s(%s)" % (type(self).__name__, ", ".join("%s=%r" % (f.name, getattr(self, f.name))
                                                       for f in fields_of(type(self))))


# --------------------------------------------------------------------------
# replies
# --------------------------------------------------------------------------
@message
class ExitInfo:
    """What a waiter recorded when a run-to-completion command ended."""

    returncode: int
    ended_at: float


@message
class ProcessRecord:
    """A launch as the node recorded it (written by `launch`, read by `status`)."""

    role: str
    pid: int
    pgid: int
    starttime: Optional[int]
    boot_id: str
    tag: str
    log: str
    argv: Tuple[str, ...]
    env_keys: Tuple[str, ...]
    plan_digest: Optional[str]
    exit_file: Optional[str]
    started_at: float
    hostname: str


@message
class RecordStatus(ProcessRecord):
    """A recorded launch and whether that very process (pid + start time) lives."""

    alive: bool = False
    exit: Optional[ExitInfo] = None


@message
class ProcessInfo:
    """A live process the agent counts as ours, and why (tag, session, descendant)."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    starttime: int
    age_s: float
    state: str
    tag: Optional[str]
    why: str
    cmdline: str


@message
class PortUse:
    """A requested port something listens on, and the listener."""

    port: int
    pid: Optional[int]
    tag: Optional[str]
    cmdline: str


@message
class LogChunk:
    """New bytes of a log since a cursor (the whole tail when it was replaced)."""

    path: str
    exists: bool
    data: str
    offset: int
    size: int
    skipped: int = 0


@message
class StoppedProcess:
    pid: int
    cmdline: str
    why: str = ""


@message
class LaunchReply:
    process: ProcessRecord


@message
class StatusReply:
    records: Tuple[RecordStatus, ...]
    processes: Tuple[ProcessInfo, ...]
    ports: Tuple[int, ...]
    in_use: Tuple[PortUse, ...]
    logs: Tuple[LogChunk, ...]
    boot_id: str

    def record(self, role: str) -> Optional[RecordStatus]:
        """The record of one role (vllm, ray, job, ...), if the node keeps one."""
        return next((r for r in self.records if r.role == role), None)


@message
class StopReply:
    clean: bool  # nothing of the prefix is left
    stopped: Tuple[StoppedProcess, ...]
    killed: Tuple[int, ...]
    remaining: Tuple[ProcessInfo, ...]
    in_use: Tuple[PortUse, ...]
    records_removed: Tuple[str, ...]
    elapsed_s: float


@message
class ExecReply:
    rc: int
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False


@message
class PathInfo:
    exists: bool
    is_dir: bool
    has_config: bool


@message
class ProbeReply:
    hostname: str
    python: str
    paths: Dict[str, PathInfo]
    commands: Dict[str, Optional[str]]  # command -> where it resolves, or None
    interpreters: Dict[str, Optional[str]]  # command -> the Python that runs it, or None
    in_use: Tuple[PortUse, ...]
    interfaces: Dict[str, List[str]]
    boot_id: str


@message
class ReadReply:
    path: str
    exists: bool
    data: str = ""
    size: int = 0
    truncated: bool = False
    error: Optional[str] = None


@message
class RemoveReply:
    removed: Tuple[str, ...]  # the files that existed and were removed


@message
class RayProcess:
    """A Ray process on a host, whoever started it (tag "?": its environment is not readable)."""

    pid: int
    pgid: int
    comm: str
    cmdline: str
    tag: Optional[str]


@message
class HostScanReply:
    processes: Tuple[RayProcess, ...]


@message
class RayGroupStopReply:
    leader: str  # "no record" | "gone" | "terminated" | "killed"
    pgid: Optional[int]
    stopped: Tuple[StoppedProcess, ...]
    killed: Tuple[int, ...]
    remaining: Tuple[int, ...]
    elapsed_s: float
    leader_s: Optional[float] = None  # how long `ray start` took to stop, when it was running


@message
class FactsReply:
    """The facts are raw observations judged by sparkctl.checks; their sections
    are documented in node_facts' docstring and stay a mapping here."""

    facts: JsonDict


@message
class HostStats:
    load_1m: Optional[float]
    load_5m: Optional[float]
    load_15m: Optional[float]
    cpus: int
    mem_total_mib: Optional[int]
    mem_available_mib: Optional[int]


@message
class GpuStats:
    """One GPU now; None where the device does not report a figure (GB10 memory)."""

    index: int
    name: Optional[str]
    utilization_pct: Optional[float]
    power_w: Optional[float]
    temperature_c: Optional[int]
    sm_clock_mhz: Optional[int]
    mem_clock_mhz: Optional[int]
    memory_used_mib: Optional[int]
    memory_total_mib: Optional[int]


@message
class LogAge:
    path: str
    exists: bool
    size: int = 0
    grew_s_ago: Optional[float] = None  # seconds since the log last changed


@message
class TelemetryReply:
    """What `status` sees of a node in one round trip: its status and its telemetry."""

    status: StatusReply
    host: HostStats
    gpus: Tuple[GpuStats, ...]
    gpu_source: str  # nvml | nvidia-smi | none | skipped
    gpu_error: Optional[str]
    unified_memory: bool  # the GPUs share the host's memory (GB10): the host's figures stand for theirs
    logs: Tuple[LogAge, ...]
    at: float  # the node's clock when it answered


# --------------------------------------------------------------------------
# requests
# --------------------------------------------------------------------------
class Request(Generic[R]):
    """Base of every request: its operation name and the type of its reply."""

    OP: ClassVar[str]
    REPLY: ClassVar[Type[Any]]


@message
class LaunchRequest(Request[LaunchReply]):
    """Start argv detached (own session, log file, record, tag in its environment)."""

    OP: ClassVar[str] = "launch"
    REPLY: ClassVar[Type[Any]] = LaunchReply
    argv: Tuple[str, ...]
    log: str
    record: str
    tag: str
    role: str
    env: Dict[str, str] = field(default_factory=dict)
    plan_digest: Optional[str] = None
    files: Dict[str, str] = field(default_factory=dict)
    exit_file: Optional[str] = None  # a waiter records the exit status there
    cwd: Optional[str] = None
    private_dirs: Tuple[str, ...] = ()  # made (or checked) this user's alone, mode 0700, before the start


@message
class LogCursor:
    path: str
    offset: Optional[int] = 0  # None: the last MAX_TAIL bytes


@message
class StatusRequest(Request[StatusReply]):
    OP: ClassVar[str] = "status"
    REPLY: ClassVar[Type[Any]] = StatusReply
    tag_prefix: str
    record_dir: str
    logs: Tuple[LogCursor, ...] = ()
    ports: Tuple[int, ...] = ()


@message
class StopRequest(Request[StopReply]):
    OP: ClassVar[str] = "stop"
    REPLY: ClassVar[Type[Any]] = StopReply
    tag_prefix: str
    record_dir: Optional[str] = None
    grace_s: float = 30.0
    ports: Tuple[int, ...] = ()


@message
class ExecRequest(Request[ExecReply]):
    OP: ClassVar[str] = "exec"
    REPLY: ClassVar[Type[Any]] = ExecReply
    argv: Tuple[str, ...]
    # A node-side module (a key of client.NODE_MODULES) to run as `argv[0] -c <its source> argv[1:]`:
    # how programs that need another interpreter (vLLM's, Ray's) are shipped.
    program: Optional[str] = None
    env: Dict[str, str] = field(default_factory=dict)
    cwd: Optional[str] = None
    command_timeout_s: Optional[float] = None


@message
class ProbeRequest(Request[ProbeReply]):
    OP: ClassVar[str] = "probe"
    REPLY: ClassVar[Type[Any]] = ProbeReply
    paths: Tuple[str, ...] = ()
    commands: Tuple[str, ...] = ()
    ports: Tuple[int, ...] = ()


@message
class ReadRequest(Request[ReadReply]):
    OP: ClassVar[str] = "read"
    REPLY: ClassVar[Type[Any]] = ReadReply
    path: str
    limit: int = 64 << 20


@message
class RemoveRequest(Request[RemoveReply]):
    """Remove files (a stale job result, Ray's ray_current_cluster); missing ones are fine."""

    OP: ClassVar[str] = "remove"
    REPLY: ClassVar[Type[Any]] = RemoveReply
    paths: Tuple[str, ...]


@message
class HostScanRequest(Request[HostScanReply]):
    """Every Ray process on the host (before `ray stop`, which would kill them all)."""

    OP: ClassVar[str] = "host_scan"
    REPLY: ClassVar[Type[Any]] = HostScanReply


@message
class RayGroupStopRequest(Request[RayGroupStopReply]):
    """Stop a node's `ray start --block` by its recorded pid, then what is left of its Ray."""

    OP: ClassVar[str] = "ray_group_stop"
    REPLY: ClassVar[Type[Any]] = RayGroupStopReply
    tag_prefix: str
    temp_dir: str  # this node's own Ray temp dir
    grace_s: float
    pid: Optional[int] = None  # None: no live record is left
    pgid: Optional[int] = None
    starttime: Optional[int] = None


@message
class FactsRequest(Request[FactsReply]):
    """See node_facts' docstring for what each key asks for."""

    OP: ClassVar[str] = "facts"
    REPLY: ClassVar[Type[Any]] = FactsReply
    sections: Optional[Tuple[str, ...]] = None
    model_path: Optional[str] = None
    ports: Tuple[int, ...] = ()
    peers: Tuple[JsonDict, ...] = ()
    env: Dict[str, str] = field(default_factory=dict)
    vllm_python: Optional[str] = None
    vllm_command: Optional[Tuple[str, ...]] = None
    probe_timeout_s: float = 120.0
    cache_dir: Optional[str] = None  # where the node may keep the vLLM-Python probe's answer


@message
class TelemetryRequest(Request[TelemetryReply]):
    """A status (as StatusRequest) plus the node's host, GPU and log telemetry."""

    OP: ClassVar[str] = "telemetry"
    REPLY: ClassVar[Type[Any]] = TelemetryReply
    tag_prefix: str
    record_dir: str
    gpus: bool = True


REQUESTS = dict((cls.OP, cls) for cls in (
    LaunchRequest, StatusRequest, StopRequest, ExecRequest, ProbeRequest, ReadRequest, RemoveRequest, FactsRequest,
    HostScanRequest, RayGroupStopRequest, TelemetryRequest,
))  # type: Dict[str, Type[Request[Any]]]


# --------------------------------------------------------------------------
# the codec
# --------------------------------------------------------------------------
def to_wire(msg: Any) -> JsonDict:
    """A request or reply as JSON data (dicts, lists and scalars only)."""
    return _plain(msg)  # type: ignore[no-any-return]


def _plain(value: Any) -> Any:
    if is_message(type(value)):
        return dict((f.name, _plain(getattr(value, f.name))) for f in fields_of(type(value)))
    if isinstance(value, dict):
        return dict((k, _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def from_wire(cls: Type[T], data: Any, where: str = "") -> T:
    """Build cls from JSON data, checking every field's type; unknown fields are errors."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ProtocolError("%s: expected an object, got %s" % (where, type(data).__name__))
    fields = dict((f.name, f) for f in fields_of(cls))
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ProtocolError("%s: unknown field(s) %s" % (where, ", ".join(unknown)))
    values = {}
    for name, fld in fields.items():
        if name in data:
            values[name] = _convert(fld.type, data[name], "%s.%s" % (where, name))
        elif fld.default is _MISSING:
            raise ProtocolError("%s: missing field %s" % (where, name))
    return cls(**values)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ProtocolError("%s: expected a list, got %s" % (where, type(value).__name__))
        items = [_convert(args[0], item, "%s[%d]" % (where, i)) for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ProtocolError("%s: expected an object with string keys" % where)
        return dict((k, _convert(args[1], v, "%s[%r]" % (where, k))) for k, v in value.items())
    if is_message(tp):
        return from_wire(tp, value, where)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ProtocolError("%s: expected %s, got %r" % (where, getattr(tp, "__name__", tp), value))


def encode_request(request: Request[Any]) -> JsonDict:
    return {"v": PROTOCOL_VERSION, "op": request.OP, "args": to_wire(request)}


def decode_request(data: Any) -> Request[Any]:
    """The agent's side: the request, or ProtocolError (version, op or fields)."""
    if not isinstance(data, dict):
        raise ProtocolError("a request must be an object")
    if data.get("v") != PROTOCOL_VERSION:
        raise VersionMismatch(data.get("v"))
    cls = REQUESTS.get(data.get("op"))  # type: ignore[arg-type]
    if cls is None:
        raise ProtocolError("unknown op %r" % (data.get("op"),))
    return from_wire(cls, data.get("args"), cls.OP)


class VersionMismatch(ProtocolError):
    def __init__(self, got: Any):
        ProtocolError.__init__(self, "the controller speaks protocol %r, this agent speaks %d" % (got, PROTOCOL_VERSION))


def ok_reply(reply: Any) -> JsonDict:
    return {"v": PROTOCOL_VERSION, "ok": True, "reply": to_wire(reply)}


def error_reply(message: str, kind: str) -> JsonDict:
    return {"v": PROTOCOL_VERSION, "ok": False, "error": message, "kind": kind}


if sys.version_info < (3, 8):  # pragma: no cover - typing.get_origin is 3.8+
    raise ImportError("sparkctl's node agent needs Python 3.8 or newer")
