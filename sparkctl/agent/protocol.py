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

import dataclasses
import sys
import typing
from typing import Any, ClassVar, Dict, Generic, List, Optional, Tuple, Type, TypeVar

PROTOCOL_VERSION = 2  # 1 was the untyped {"op": ..., **payload} of sparkctl <= 0.1

R = TypeVar("R")
T = TypeVar("T")

JsonDict = Dict[str, Any]


class ProtocolError(ValueError):
    """A message that does not match its type (the text names the field)."""


# --------------------------------------------------------------------------
# replies
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ExitInfo:
    """What a waiter recorded when a run-to-completion command ended."""

    returncode: int
    ended_at: float


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
class RecordStatus(ProcessRecord):
    """A recorded launch and whether that very process (pid + start time) lives."""

    alive: bool = False
    exit: Optional[ExitInfo] = None


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
class PortUse:
    """A requested port something listens on, and the listener."""

    port: int
    pid: Optional[int]
    tag: Optional[str]
    cmdline: str


@dataclasses.dataclass(frozen=True)
class LogChunk:
    """New bytes of a log since a cursor (the whole tail when it was replaced)."""

    path: str
    exists: bool
    data: str
    offset: int
    size: int
    skipped: int = 0


@dataclasses.dataclass(frozen=True)
class StoppedProcess:
    pid: int
    cmdline: str
    why: str = ""


@dataclasses.dataclass(frozen=True)
class LaunchReply:
    process: ProcessRecord


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
class StopReply:
    clean: bool  # nothing of the prefix is left
    stopped: Tuple[StoppedProcess, ...]
    killed: Tuple[int, ...]
    remaining: Tuple[ProcessInfo, ...]
    in_use: Tuple[PortUse, ...]
    records_removed: Tuple[str, ...]
    elapsed_s: float


@dataclasses.dataclass(frozen=True)
class ExecReply:
    rc: int
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False


@dataclasses.dataclass(frozen=True)
class PathInfo:
    exists: bool
    is_dir: bool
    has_config: bool


@dataclasses.dataclass(frozen=True)
class ProbeReply:
    hostname: str
    python: str
    paths: Dict[str, PathInfo]
    commands: Dict[str, Optional[str]]  # command -> where it resolves, or None
    interpreters: Dict[str, Optional[str]]  # command -> the Python that runs it, or None
    in_use: Tuple[PortUse, ...]
    interfaces: Dict[str, List[str]]
    boot_id: str


@dataclasses.dataclass(frozen=True)
class ReadReply:
    path: str
    exists: bool
    data: str = ""
    size: int = 0
    truncated: bool = False
    error: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class RemoveReply:
    removed: Tuple[str, ...]  # the files that existed and were removed


@dataclasses.dataclass(frozen=True)
class RayProcess:
    """A Ray process on a host, whoever started it (tag "?": its environment is not readable)."""

    pid: int
    pgid: int
    comm: str
    cmdline: str
    tag: Optional[str]


@dataclasses.dataclass(frozen=True)
class HostScanReply:
    processes: Tuple[RayProcess, ...]


@dataclasses.dataclass(frozen=True)
class RayGroupStopReply:
    leader: str  # "no record" | "gone" | "terminated" | "killed"
    pgid: Optional[int]
    stopped: Tuple[StoppedProcess, ...]
    killed: Tuple[int, ...]
    remaining: Tuple[int, ...]
    elapsed_s: float
    leader_s: Optional[float] = None  # how long `ray start` took to stop, when it was running


@dataclasses.dataclass(frozen=True)
class FactsReply:
    """The facts are raw observations judged by sparkctl.checks; their sections
    are documented in node_facts' docstring and stay a mapping here."""

    facts: JsonDict


# --------------------------------------------------------------------------
# requests
# --------------------------------------------------------------------------
class Request(Generic[R]):
    """Base of every request: its operation name and the type of its reply."""

    OP: ClassVar[str]
    REPLY: ClassVar[Type[Any]]


@dataclasses.dataclass(frozen=True)
class LaunchRequest(Request[LaunchReply]):
    """Start argv detached (own session, log file, record, tag in its environment)."""

    OP: ClassVar[str] = "launch"
    REPLY: ClassVar[Type[Any]] = LaunchReply
    argv: Tuple[str, ...]
    log: str
    record: str
    tag: str
    role: str
    env: Dict[str, str] = dataclasses.field(default_factory=dict)
    plan_digest: Optional[str] = None
    files: Dict[str, str] = dataclasses.field(default_factory=dict)
    exit_file: Optional[str] = None  # a waiter records the exit status there
    cwd: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class LogCursor:
    path: str
    offset: Optional[int] = 0  # None: the last MAX_TAIL bytes


@dataclasses.dataclass(frozen=True)
class StatusRequest(Request[StatusReply]):
    OP: ClassVar[str] = "status"
    REPLY: ClassVar[Type[Any]] = StatusReply
    tag_prefix: str
    record_dir: str
    logs: Tuple[LogCursor, ...] = ()
    ports: Tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class StopRequest(Request[StopReply]):
    OP: ClassVar[str] = "stop"
    REPLY: ClassVar[Type[Any]] = StopReply
    tag_prefix: str
    record_dir: Optional[str] = None
    grace_s: float = 30.0
    ports: Tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class ExecRequest(Request[ExecReply]):
    OP: ClassVar[str] = "exec"
    REPLY: ClassVar[Type[Any]] = ExecReply
    argv: Tuple[str, ...]
    # A node-side module (a key of client.NODE_MODULES) to run as `argv[0] -c <its source> argv[1:]`:
    # how programs that need another interpreter (vLLM's, Ray's) are shipped.
    program: Optional[str] = None
    env: Dict[str, str] = dataclasses.field(default_factory=dict)
    cwd: Optional[str] = None
    command_timeout_s: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class ProbeRequest(Request[ProbeReply]):
    OP: ClassVar[str] = "probe"
    REPLY: ClassVar[Type[Any]] = ProbeReply
    paths: Tuple[str, ...] = ()
    commands: Tuple[str, ...] = ()
    ports: Tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class ReadRequest(Request[ReadReply]):
    OP: ClassVar[str] = "read"
    REPLY: ClassVar[Type[Any]] = ReadReply
    path: str
    limit: int = 64 << 20


@dataclasses.dataclass(frozen=True)
class RemoveRequest(Request[RemoveReply]):
    """Remove files (a stale job result, Ray's ray_current_cluster); missing ones are fine."""

    OP: ClassVar[str] = "remove"
    REPLY: ClassVar[Type[Any]] = RemoveReply
    paths: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class HostScanRequest(Request[HostScanReply]):
    """Every Ray process on the host (before `ray stop`, which would kill them all)."""

    OP: ClassVar[str] = "host_scan"
    REPLY: ClassVar[Type[Any]] = HostScanReply


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
class FactsRequest(Request[FactsReply]):
    """See node_facts' docstring for what each key asks for."""

    OP: ClassVar[str] = "facts"
    REPLY: ClassVar[Type[Any]] = FactsReply
    sections: Optional[Tuple[str, ...]] = None
    model_path: Optional[str] = None
    ports: Tuple[int, ...] = ()
    peers: Tuple[JsonDict, ...] = ()
    env: Dict[str, str] = dataclasses.field(default_factory=dict)
    vllm_python: Optional[str] = None
    vllm_command: Optional[Tuple[str, ...]] = None
    probe_timeout_s: float = 120.0


REQUESTS = dict((cls.OP, cls) for cls in (
    LaunchRequest, StatusRequest, StopRequest, ExecRequest, ProbeRequest, ReadRequest, RemoveRequest, FactsRequest,
    HostScanRequest, RayGroupStopRequest,
))  # type: Dict[str, Type[Request[Any]]]


# --------------------------------------------------------------------------
# the codec
# --------------------------------------------------------------------------
def to_wire(message: Any) -> JsonDict:
    """A request or reply as JSON data (dicts, lists and scalars only)."""
    return _plain(dataclasses.asdict(message))  # type: ignore[no-any-return]


def _plain(value: Any) -> Any:
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
    hints = typing.get_type_hints(cls)
    fields = dict((f.name, f) for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ProtocolError("%s: unknown field(s) %s" % (where, ", ".join(unknown)))
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = _convert(hints[name], data[name], "%s.%s" % (where, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
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
    if dataclasses.is_dataclass(tp):
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
