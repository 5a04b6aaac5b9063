"""sparkctl's node agent: runs ON a node, standard library only (Python >= 3.8).

The controller sends this file's source (and any other node-side module an
operation needs) with one JSON request on stdin to `python3 -c BOOTSTRAP`
(see client.py), so nothing has to be installed on the
nodes and no value from an inventory or playbook ever appears in a command
line: environment values (tokens included) travel on stdin.

Every process sparkctl starts carries SPARKCTL_TAG=<cluster>/<node>/<launch id>
in its environment, which its children inherit. Stopping and status use that
tag (read from /proc/<pid>/environ) and the recorded pid + start time, never
process names, so only what sparkctl started is ever signalled.
"""

import errno
import json
import os
import select
import shutil
import signal
import socket
import stat as stat_module
import subprocess
import sys
import threading
import time

from sparkctl.agent import protocol
from sparkctl.agent.node_output import OutputTail, pump
from sparkctl.agent.node_proc import (
    TAG_VAR,
    all_pids,
    boot_id,
    clock_ticks,
    ipv4_by_interface,
    is_alive,
    module_source,
    ports_in_use,
    ports_of,
    proc_cmdline,
    proc_stat,
    proc_tag,
    script_interpreter,
    uptime_s,
)

RESULT_MARKER = "SPARKCTL-AGENT-RESULT "
MAX_TAIL = 256 * 1024
SHM_DIR = "/dev/shm/"


def our_sessions(prefix, record_dir):
    """{session id: leader start time} of the launches recorded for prefix on
    this boot. A launch calls setsid, so its pid is the session id of all it
    starts; a leader pid now held by another process means the session is gone."""
    sessions = {}
    if not record_dir:
        return sessions
    current = boot_id()
    for rec in _records(record_dir):
        pid, start = rec.get("pid"), rec.get("starttime")
        if not str(rec.get("tag", "")).startswith(prefix) or rec.get("boot_id") != current or not pid or start is None:
            continue
        stat = proc_stat(pid)
        if stat is not None and stat[3] != start:
            continue  # the pid was reused: that number no longer names our session
        sessions[pid] = start
    return sessions


def our_processes(prefix, record_dir=None):
    """Live (non-zombie) processes that sparkctl started under prefix.

    Ours is: carrying SPARKCTL_TAG=<prefix>..., or a member of a session a
    recorded launch created, or a descendant of either. The tag alone is not
    enough: setproctitle (vLLM's `VLLM::` workers, Ray's agents) can overwrite
    the environment block that /proc/<pid>/environ shows."""
    me = os.getpid()
    sessions = our_sessions(prefix, record_dir)
    table = {}
    for pid in all_pids():
        if pid == me:
            continue
        stat = proc_stat(pid)
        if stat is not None and stat[0] != "Z":
            table[pid] = stat
    found = {}
    for pid, stat in table.items():
        tag = proc_tag(pid)
        if tag is not None and tag.startswith(prefix):
            found[pid] = ("tag", tag)
        elif stat[4] in sessions and stat[3] >= sessions[stat[4]]:
            found[pid] = ("session", tag)
    children = {}
    for pid, stat in table.items():
        children.setdefault(stat[1], []).append(pid)
    pending = list(found)
    while pending:  # descendants that left the session (setsid) or lost the tag
        for child in children.get(pending.pop(), []):
            if child not in found:
                found[child] = ("descendant", proc_tag(child))
                pending.append(child)
    ticks = clock_ticks()
    now = uptime_s()
    result = []
    for pid in sorted(found):
        stat = table[pid]
        why, tag = found[pid]
        result.append({
            "pid": pid, "ppid": stat[1], "pgid": stat[2], "sid": stat[4], "starttime": stat[3],
            "age_s": round(max(0.0, now - stat[3] / float(ticks)), 1), "state": stat[0],
            "tag": tag, "why": why, "cmdline": proc_cmdline(pid),
        })
    return result


def tagged_processes(prefix):
    """Processes carrying the tag (no records consulted): for callers without a record folder."""
    return our_processes(prefix, None)


# --------------------------------------------------------------------------
# operations
# --------------------------------------------------------------------------
def _expand(path):
    return os.path.abspath(os.path.expanduser(path))


def _write_json_atomic(path, data):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _rotate(log, keep=3):
    if not os.path.exists(log):
        return
    for i in range(keep - 1, 0, -1):
        older = "%s.%d" % (log, i)
        if os.path.exists(older):
            os.replace(older, "%s.%d" % (log, i + 1))
    os.replace(log, log + ".1")


def _write_files(files):
    """Files a launch needs on the node (e.g. a probe script), written privately."""
    written = []
    for path, content in sorted((files or {}).items()):
        full = _expand(path)
        os.makedirs(os.path.dirname(full), mode=0o700, exist_ok=True)
        tmp = "%s.tmp.%d" % (full, os.getpid())
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            handle.write(content)
        os.replace(tmp, full)
        written.append(full)
    return written


class OpFailed(Exception):
    """An operation that could not do what it was asked (the controller raises AgentError)."""

    def __init__(self, message, kind):
        Exception.__init__(self, message)
        self.kind = kind


def op_launch(req):
    """Start argv detached: own session and process group, stdio to a log file,
    surviving the SSH session. Returns what was started, as observed.

    With exit_file, a small waiter leads the group and records the command's
    exit status there when it ends."""
    argv = list(req.argv)
    log = _expand(req.log)
    record = _expand(req.record)
    cwd = _expand(req.cwd or "~")
    for folder in (os.path.dirname(log), os.path.dirname(record)):
        os.makedirs(folder, mode=0o700, exist_ok=True)
    for folder in req.private_dirs:
        ensure_private_dir(_expand(folder))
    _rotate(log)
    _write_files(req.files)
    env = dict(os.environ)
    env.update(req.env)
    env[TAG_VAR] = req.tag
    if shutil.which(argv[0], path=env.get("PATH")) is None and not os.path.exists(argv[0]):
        raise OpFailed("command not found on this node: %s" % argv[0], "command-not-found")
    exit_file = _expand(req.exit_file) if req.exit_file else None
    if exit_file:
        try:
            os.unlink(exit_file)
        except OSError:
            pass
        argv = [sys.executable, "-c", module_source("sparkctl.agent.node_waiter"), exit_file] + argv
    pid = _spawn_detached(argv, env, log, cwd)
    stat = proc_stat(pid)
    process = protocol.ProcessRecord(
        role=req.role, pid=pid, pgid=pid, starttime=stat[3] if stat else None, boot_id=boot_id(), tag=req.tag,
        log=log, argv=tuple(req.argv), env_keys=tuple(sorted(req.env)), plan_digest=req.plan_digest,
        exit_file=exit_file, started_at=time.time(), hostname=socket.gethostname(),
    )
    _write_json_atomic(record, protocol.to_wire(process))
    return protocol.LaunchReply(process=process)


def _spawn_detached(argv, env, log, cwd):
    """fork, setsid, stdio to the log, exec; the pid, or OpFailed with why exec failed."""
    read_end, write_end = os.pipe()  # both close-on-exec: EOF on exec success
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            os.setsid()
            log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            null_fd = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null_fd, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.closerange(3, write_end)
            os.closerange(write_end + 1, 65536)
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        except BaseException as exc:  # report why exec failed, then die
            try:
                os.write(write_end, ("%s: %s" % (type(exc).__name__, exc)).encode())
            finally:
                os._exit(127)
    os.close(write_end)
    failure = b""
    while True:
        chunk = os.read(read_end, 4096)
        if not chunk:
            break
        failure += chunk
    os.close(read_end)
    if failure:
        os.waitpid(pid, 0)
        raise OpFailed(failure.decode("utf-8", "replace"), "exec-failed")
    return pid


def ensure_private_dir(path):
    """A folder this user alone may use: made 0700, or an existing one of ours set to 0700.
    A link, a file, or a folder another user made first (in /tmp, say) is refused."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise OpFailed("cannot make %s: %s" % (path, exc.strerror), "unsafe-dir") from None
    st = os.lstat(path)
    if not stat_module.S_ISDIR(st.st_mode):
        raise OpFailed("%s exists and is not a folder (a link or a file): refusing to use it" % path, "unsafe-dir")
    if st.st_uid != os.geteuid():
        raise OpFailed("%s belongs to uid %d, not to this user: refusing to use it (remove it, or it is another "
                       "user's)" % (path, st.st_uid), "unsafe-dir")
    os.chmod(path, 0o700)


def _private(path):
    """Ours and writable by nobody else: a record another user could write might name
    a session for us to signal, so only such files (in such a folder) are trusted."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return st.st_uid == os.geteuid() and not (st.st_mode & 0o022)


def _record_files(record_dir):
    """(path, record) of the trusted launch records in record_dir (written by op_launch)."""
    found = []
    folder = _expand(record_dir)
    if not _private(folder):
        return found
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return found
    for name in names:
        path = os.path.join(folder, name)
        if not name.endswith(".json") or not _private(path) or os.path.islink(path):
            continue
        try:
            with open(path) as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            found.append((path, record))
    return found


def _records(record_dir):
    return [record for _, record in _record_files(record_dir)]


def _typed_records(record_dir):
    typed = []
    for rec in _records(record_dir):
        try:
            typed.append(protocol.from_wire(protocol.ProcessRecord, rec))
        except protocol.ProtocolError:
            continue  # a record another version wrote; its processes are still found by tag
    return typed


def _read_from(path, offset):
    """New bytes of a log since offset (restarting when the file was replaced)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return protocol.LogChunk(path=path, exists=False, data="", offset=0, size=0)
    if offset is None or offset < 0:
        offset = max(0, size - MAX_TAIL)
    if offset > size:
        offset = 0
    start = max(offset, size - MAX_TAIL)
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(size - start)
    return protocol.LogChunk(path=path, exists=True, data=data.decode("utf-8", "replace"), offset=start + len(data),
                             size=size, skipped=start - offset)


def _exit_info(exit_file):
    if not exit_file:
        return None
    try:
        with open(exit_file) as handle:
            return protocol.from_wire(protocol.ExitInfo, json.load(handle))
    except (OSError, ValueError):  # not written yet (ProtocolError is a ValueError)
        return None


def _process_infos(procs):
    return tuple(protocol.ProcessInfo(**p) for p in procs)


def _port_uses(ports):
    return tuple(protocol.PortUse(**hit) for hit in ports_in_use(list(ports)))


def op_status(req):
    current_boot = boot_id()
    records = []
    for rec in _typed_records(req.record_dir):
        alive = bool(rec.boot_id == current_boot and rec.pid and rec.starttime is not None
                     and is_alive(rec.pid, rec.starttime))
        fields = dict((f, getattr(rec, f)) for f in protocol.to_wire(rec))
        records.append(protocol.RecordStatus(alive=alive, exit=_exit_info(rec.exit_file), **fields))
    procs = our_processes(req.tag_prefix, req.record_dir)
    return protocol.StatusReply(
        records=tuple(records),
        processes=_process_infos(procs),
        ports=tuple(ports_of([p["pid"] for p in procs]) if procs else ()),
        in_use=_port_uses(req.ports),
        logs=tuple(_read_from(_expand(cursor.path), cursor.offset) for cursor in req.logs),
        boot_id=current_boot,
    )


def _signal_targets(procs, sig):
    """Signal whole process groups whose members are all ours; otherwise single pids."""
    by_group = {}
    for proc in procs:
        by_group.setdefault(proc["pgid"], []).append(proc)
    ours = set(p["pid"] for p in procs)
    sent = []
    for pgid, members in by_group.items():
        group_pids = [pid for pid in all_pids() if (proc_stat(pid) or (None, None, None, None, None))[2] == pgid]
        if group_pids and set(group_pids) <= ours:
            try:
                os.killpg(pgid, sig)
                sent.append({"pgid": pgid})
            except OSError:
                pass
            continue
        for proc in members:
            try:
                os.kill(proc["pid"], sig)
                sent.append({"pid": proc["pid"]})
            except OSError:
                pass
    return sent


def op_stop(req):
    """SIGTERM everything of the prefix (tag, session, descendants), wait,
    SIGKILL what is left, verify."""
    prefix = req.tag_prefix
    started = time.time()

    def ours():
        return our_processes(prefix, req.record_dir)

    procs = ours()
    stopped = tuple(protocol.StoppedProcess(pid=p["pid"], cmdline=p["cmdline"][:200], why=p["why"]) for p in procs)
    killed = []
    shared = _shm_mapped(p["pid"] for p in procs)
    if procs:
        killed = _terminate(ours, procs, req.grace_s)
    remaining = ours()
    if not remaining:
        _remove_orphaned_shm(shared)
    removed = [] if remaining or not req.record_dir else _remove_records(req.record_dir, prefix)
    return protocol.StopReply(
        clean=not remaining,
        stopped=stopped,
        killed=tuple(killed),
        remaining=_process_infos(remaining),
        in_use=_port_uses(req.ports),
        records_removed=tuple(removed),
        elapsed_s=round(time.time() - started, 2),
    )


def _shm_mapped(pids):
    """The /dev/shm files the processes map (vLLM's CPU tensor-parallel buffers,
    multiprocessing's semaphores)."""
    found = set()
    for pid in pids:
        try:
            with open("/proc/%d/maps" % pid) as handle:
                for line in handle:
                    fields = line.rstrip("\n").split(None, 5)
                    if len(fields) == 6 and fields[5].startswith(SHM_DIR) and not fields[5].endswith(" (deleted)"):
                        found.add(fields[5])
        except OSError:
            continue
    return found


def _remove_orphaned_shm(paths):
    """Unlink the stopped processes' /dev/shm files that nothing maps any more. A
    process killed before its own clean-up leaves them, and vLLM's CPU workers
    name theirs by rank alone: the next tensor-parallel start on the node then
    fails with "create shm in SHMManager failed. errno: 17"."""
    if not paths:
        return
    orphaned = set(paths) - _shm_mapped(all_pids())
    for path in orphaned:
        try:
            info = os.lstat(path)
            if stat_module.S_ISREG(info.st_mode) and info.st_uid == os.getuid():
                os.unlink(path)
        except OSError:
            pass


def _terminate(ours, procs, grace_s):
    """SIGTERM, wait up to grace_s, SIGKILL what is left; the pids that needed SIGKILL."""
    _signal_targets(procs, signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline:
        procs = ours()
        if not procs:
            break
        time.sleep(0.2)
    procs = ours()
    if not procs:
        return []
    _signal_targets(procs, signal.SIGKILL)
    kill_deadline = time.time() + 10
    while time.time() < kill_deadline and ours():
        time.sleep(0.1)
    return [p["pid"] for p in procs]


def _remove_records(record_dir, prefix):
    removed = []
    for path, rec in _record_files(record_dir):  # the file listed, never a path built from its content
        if not str(rec.get("tag", "")).startswith(prefix):
            continue
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def op_exec(req):
    env = dict(os.environ)
    env.update(req.env)
    started = time.time()
    argv = list(req.argv)
    if req.program:  # a shipped module, run under the interpreter argv[0] names
        argv[1:1] = ["-c", module_source(req.program)]
    try:
        proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=_expand(req.cwd or "~"), start_new_session=True,
        )
    except OSError as exc:
        code = 127 if exc.errno == errno.ENOENT else 126
        return protocol.ExecReply(rc=code, stdout="", stderr="%s: %s\n" % (req.argv[0], exc.strerror), duration_s=0.0)
    # rolling tails while reading: endless output costs the node about the cap, not all of it
    out, err = OutputTail(), OutputTail()
    deadline = time.monotonic() + (req.command_timeout_s if req.command_timeout_s else 10 ** 9)
    ended = threading.Event()
    threading.Thread(target=_stop_when_orphaned, args=(proc, ended), daemon=True).start()
    with proc:
        try:
            timed_out = not pump(proc, b"", out, err, deadline)
            if timed_out:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        finally:
            ended.set()
    return protocol.ExecReply(
        rc=124 if timed_out else proc.returncode, stdout=out.value().decode("utf-8", "replace"),
        stderr=err.value().decode("utf-8", "replace"), duration_s=round(time.time() - started, 3), timed_out=timed_out,
    )


def op_probe(req):
    """Cheap facts `up` needs before starting anything."""
    paths = {}
    for path in req.paths:
        full = _expand(path)
        paths[path] = protocol.PathInfo(
            exists=os.path.exists(full),
            is_dir=os.path.isdir(full),
            has_config=os.path.isfile(os.path.join(full, "config.json")),
        )
    commands = {}
    interpreters = {}
    for command in req.commands:
        found = shutil.which(command) if os.sep not in command else (command if os.access(command, os.X_OK) else None)
        commands[command] = found
        interpreters[command] = script_interpreter(found) if found else None
    return protocol.ProbeReply(
        hostname=socket.gethostname(),
        python=sys.version.split()[0],
        paths=paths,
        commands=commands,
        interpreters=interpreters,
        in_use=_port_uses(req.ports),
        interfaces=ipv4_by_interface()[0],
        boot_id=boot_id(),
    )


def op_read(req):
    """A file's text (e.g. a job's results), capped; missing is not an error."""
    path = _expand(req.path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            data = handle.read(req.limit)
    except OSError as exc:
        return protocol.ReadReply(path=path, exists=False, error=exc.strerror)
    return protocol.ReadReply(path=path, exists=True, size=size, truncated=size > req.limit,
                              data=data.decode("utf-8", "replace"))


def op_remove(req):
    removed = []
    for path in req.paths:
        full = _expand(path)
        try:
            os.unlink(full)
            removed.append(path)
        except FileNotFoundError:
            pass
    return protocol.RemoveReply(removed=tuple(removed))


def op_telemetry(req):
    """A status of the prefix and the node's telemetry, in one round trip (see node_telemetry.py)."""
    from sparkctl.agent import node_telemetry  # shipped by the controller with this op only

    status = op_status(protocol.StatusRequest(tag_prefix=req.tag_prefix, record_dir=req.record_dir))
    return node_telemetry.telemetry(status, req)


def op_facts(req):
    """Everything `sparkctl check` needs to know about this node (see node_facts.py)."""
    from sparkctl.agent import node_facts  # shipped by the controller with this op only

    wanted = dict((k, v) for k, v in protocol.to_wire(req).items() if v is not None)
    return protocol.FactsReply(facts=node_facts.gather(wanted))


OPS = {
    "launch": op_launch,
    "status": op_status,
    "stop": op_stop,
    "exec": op_exec,
    "probe": op_probe,
    "facts": op_facts,
    "read": op_read,
    "remove": op_remove,
    "telemetry": op_telemetry,
    "host_scan": lambda req: _node_ray().op_host_scan(req),
    "ray_group_stop": lambda req: _node_ray().op_ray_group_stop(req),
}


def _stop_when_orphaned(proc, ended):
    """Kill the command's group once nobody can receive its result: the pipe (or
    socket) our reply goes to hung up because the controller's SSH connection died.
    Otherwise the command would run on to its end, unrecorded (exec has no record)."""
    poller = select.poll()
    poller.register(sys.stdout.fileno(), 0)  # POLLHUP and POLLERR are always reported
    while not ended.is_set():
        if any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(500)):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            return


def _node_ray():
    from sparkctl.agent import node_ray  # shipped by the controller with these ops only

    return node_ray


def handle(message):
    """One wire request -> one wire reply; every failure is a reply, never a hung channel."""
    try:
        request = protocol.decode_request(message)
    except protocol.VersionMismatch as exc:
        return protocol.error_reply(str(exc), "protocol-version")
    except protocol.ProtocolError as exc:
        return protocol.error_reply(str(exc), "bad-request")
    try:
        return protocol.ok_reply(OPS[request.OP](request))
    except OpFailed as exc:
        return protocol.error_reply(str(exc), exc.kind)
    except Exception as exc:  # noqa: BLE001 - the controller gets the failure, not a hung channel
        import traceback

        reply = protocol.error_reply("%s: %s" % (type(exc).__name__, exc), "agent-error")
        reply["traceback"] = traceback.format_exc()[-4000:]
        return reply


def respond(message):
    sys.stdout.write(RESULT_MARKER + json.dumps(handle(message)) + "\n")
    sys.stdout.flush()
