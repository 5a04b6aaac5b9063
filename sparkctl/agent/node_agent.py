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
import shutil
import signal
import socket
import subprocess
import sys
import time

from sparkctl.agent.node_proc import (
    TAG_VAR,
    all_pids,
    boot_id,
    clock_ticks,
    ipv4_by_interface,
    is_alive,
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


# Runs as the session leader in front of a command whose exit status matters
# (torchrun groups): it waits, forwards termination signals, and records the
# status in a file, because a detached process's status is otherwise lost.
WAITER = (
    "import json,os,signal,subprocess,sys,time\n"
    "out=sys.argv[1];p=subprocess.Popen(sys.argv[2:])\n"
    "def fwd(s,f):\n"
    "  try: p.send_signal(s)\n"
    "  except OSError: pass\n"
    "for s in (signal.SIGTERM,signal.SIGINT,signal.SIGHUP): signal.signal(s,fwd)\n"
    "rc=p.wait()\n"
    "open(out+'.tmp','w').write(json.dumps({'returncode':rc,'ended_at':time.time()}));os.replace(out+'.tmp',out)\n"
    "sys.exit(0 if rc==0 else 1)\n"
)


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


def op_launch(req):
    """Start argv detached: own session and process group, stdio to a log file,
    surviving the SSH session. Returns what was started, as observed.

    With "exit_file", a small waiter leads the group and records the command's
    exit status there when it ends."""
    argv = req["argv"]
    log = _expand(req["log"])
    record = _expand(req["record"])
    cwd = _expand(req.get("cwd") or "~")
    for folder in (os.path.dirname(log), os.path.dirname(record)):
        os.makedirs(folder, mode=0o700, exist_ok=True)
    _rotate(log)
    _write_files(req.get("files"))
    env = dict(os.environ)
    env.update(req.get("env") or {})
    env[TAG_VAR] = req["tag"]
    if shutil.which(argv[0], path=env.get("PATH")) is None and not os.path.exists(argv[0]):
        return {"ok": False, "error": "command not found on this node: %s" % argv[0], "kind": "command-not-found"}
    exit_file = _expand(req["exit_file"]) if req.get("exit_file") else None
    if exit_file:
        try:
            os.unlink(exit_file)
        except OSError:
            pass
        argv = [sys.executable, "-c", WAITER, exit_file] + list(argv)
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
        return {"ok": False, "error": failure.decode("utf-8", "replace"), "kind": "exec-failed"}
    stat = proc_stat(pid)
    info = {
        "role": req.get("role", "process"),
        "pid": pid,
        "pgid": pid,
        "starttime": stat[3] if stat else None,
        "boot_id": boot_id(),
        "tag": req["tag"],
        "log": log,
        "argv": req["argv"],
        "env_keys": sorted((req.get("env") or {}).keys()),
        "plan_digest": req.get("plan_digest"),
        "exit_file": exit_file,
        "started_at": time.time(),
        "hostname": socket.gethostname(),
    }
    _write_json_atomic(record, info)
    return {"ok": True, "process": info}


def _records(record_dir):
    records = []
    folder = _expand(record_dir)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return records
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(folder, name)) as handle:
                records.append(json.load(handle))
        except (OSError, ValueError):
            continue
    return records


def _read_from(path, offset):
    """New bytes of a log since offset (restarting when the file was replaced)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return {"path": path, "exists": False, "data": "", "offset": 0, "size": 0}
    if offset is None or offset < 0:
        offset = max(0, size - MAX_TAIL)
    if offset > size:
        offset = 0
    start = max(offset, size - MAX_TAIL)
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(size - start)
    return {
        "path": path,
        "exists": True,
        "data": data.decode("utf-8", "replace"),
        "offset": start + len(data),
        "size": size,
        "skipped": start - offset,
    }


def op_status(req):
    prefix = req["tag_prefix"]
    current_boot = boot_id()
    records = []
    for rec in _records(req["record_dir"]):
        same_boot = rec.get("boot_id") == current_boot
        alive = bool(same_boot and rec.get("pid") and is_alive(rec["pid"], rec.get("starttime")))
        exit_info = None
        if rec.get("exit_file"):
            try:
                with open(rec["exit_file"]) as handle:
                    exit_info = json.load(handle)
            except (OSError, ValueError):
                exit_info = None
        records.append(dict(rec, alive=alive, exit=exit_info))
    procs = our_processes(prefix, req["record_dir"])
    logs = [_read_from(_expand(item["path"]), item.get("offset")) for item in req.get("logs") or []]
    return {
        "ok": True,
        "records": records,
        "processes": procs,
        "ports": ports_of([p["pid"] for p in procs]) if procs else [],
        "in_use": ports_in_use(req.get("ports") or []),
        "logs": logs,
        "boot_id": current_boot,
    }


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
    prefix = req["tag_prefix"]
    record_dir = req.get("record_dir")
    grace = float(req.get("grace_s", 30))
    started = time.time()

    def ours():
        return our_processes(prefix, record_dir)

    procs = ours()
    stopped = [{"pid": p["pid"], "cmdline": p["cmdline"][:200], "why": p["why"]} for p in procs]
    killed = []
    if procs:
        _signal_targets(procs, signal.SIGTERM)
        deadline = started + grace
        while time.time() < deadline:
            procs = ours()
            if not procs:
                break
            time.sleep(0.2)
        procs = ours()
        if procs:
            killed = [p["pid"] for p in procs]
            _signal_targets(procs, signal.SIGKILL)
            kill_deadline = time.time() + 10
            while time.time() < kill_deadline and ours():
                time.sleep(0.1)
    remaining = ours()
    removed = []
    if not remaining and req.get("record_dir"):
        folder = _expand(req["record_dir"])
        for rec in _records(folder):
            if not str(rec.get("tag", "")).startswith(prefix):
                continue
            path = os.path.join(folder, "%s.json" % rec.get("role", "process"))
            try:
                os.unlink(path)
                removed.append(path)
            except OSError:
                pass
    return {
        "ok": not remaining,
        "stopped": stopped,
        "killed": killed,
        "remaining": remaining,
        "in_use": ports_in_use(req.get("ports") or []),
        "records_removed": removed,
        "elapsed_s": round(time.time() - started, 2),
    }


def op_exec(req):
    env = dict(os.environ)
    env.update(req.get("env") or {})
    started = time.time()
    try:
        proc = subprocess.Popen(
            req["argv"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=_expand(req.get("cwd") or "~"), start_new_session=True,
        )
    except OSError as exc:
        code = 127 if exc.errno == errno.ENOENT else 126
        return {"ok": True, "rc": code, "stdout": "", "stderr": "%s: %s\n" % (req["argv"][0], exc.strerror),
                "duration_s": 0.0}
    try:
        out, err = proc.communicate(timeout=req.get("command_timeout_s"))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return {"ok": True, "rc": 124, "timed_out": True, "stdout": out.decode("utf-8", "replace"),
                "stderr": err.decode("utf-8", "replace"), "duration_s": round(time.time() - started, 3)}
    return {"ok": True, "rc": proc.returncode, "stdout": out.decode("utf-8", "replace"),
            "stderr": err.decode("utf-8", "replace"), "duration_s": round(time.time() - started, 3)}


def op_probe(req):
    """Cheap facts `up` needs before starting anything."""
    paths = {}
    for path in req.get("paths") or []:
        full = _expand(path)
        paths[path] = {
            "exists": os.path.exists(full),
            "is_dir": os.path.isdir(full),
            "has_config": os.path.isfile(os.path.join(full, "config.json")),
        }
    commands = {}
    interpreters = {}
    for command in req.get("commands") or []:
        found = shutil.which(command) if os.sep not in command else (command if os.access(command, os.X_OK) else None)
        commands[command] = found
        interpreters[command] = script_interpreter(found) if found else None
    return {
        "ok": True,
        "hostname": socket.gethostname(),
        "python": sys.version.split()[0],
        "paths": paths,
        "commands": commands,
        "interpreters": interpreters,
        "in_use": ports_in_use(req.get("ports") or []),
        "interfaces": ipv4_by_interface()[0],
        "boot_id": boot_id(),
    }


def op_read(req):
    """A file's text (e.g. a job's results), capped; missing is not an error."""
    path = _expand(req["path"])
    limit = int(req.get("limit", 64 << 20))
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            data = handle.read(limit)
    except OSError as exc:
        return {"ok": True, "exists": False, "error": exc.strerror, "path": path}
    return {"ok": True, "exists": True, "path": path, "size": size, "truncated": size > limit,
            "data": data.decode("utf-8", "replace")}


def op_facts(req):
    """Everything `sparkctl check` needs to know about this node (see node_facts.py)."""
    from sparkctl.agent import node_facts  # shipped by the controller with this op only

    return node_facts.gather(req)


OPS = {
    "launch": op_launch,
    "status": op_status,
    "stop": op_stop,
    "exec": op_exec,
    "probe": op_probe,
    "facts": op_facts,
    "read": op_read,
}


def handle(request):
    op = OPS.get(request.get("op"))
    if op is None:
        return {"ok": False, "error": "unknown op %r" % request.get("op"), "kind": "bad-request"}
    try:
        return op(request)
    except Exception as exc:  # noqa: BLE001 - the controller gets the failure, not a hung channel
        import traceback

        return {"ok": False, "error": "%s: %s" % (type(exc).__name__, exc), "kind": "agent-error",
                "traceback": traceback.format_exc()[-4000:]}


def respond(request):
    sys.stdout.write(RESULT_MARKER + json.dumps(handle(request)) + "\n")
    sys.stdout.flush()


