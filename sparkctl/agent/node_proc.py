"""What a node's /proc, sockets and scripts say: runs ON a node, standard library
only (Python >= 3.8). The one copy of these helpers: the agent (ownership,
stop, status), the facts (ports, the vLLM interpreter) and the Ray operations
all read processes, ports and #! lines through this module."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys

TAG_VAR = "SPARKCTL_TAG"


def module_source(name):
    """The source of a node-side module, to run it under another interpreter
    (`python -c <source>`): the controller's bootstrap keeps what it shipped in
    __source__; inside the package (tests) it is the module's file."""
    __import__(name)
    module = sys.modules[name]
    source = getattr(module, "__source__", None)
    if source is None:
        with open(module.__file__) as handle:
            source = handle.read()
    return source


# --------------------------------------------------------------------------
# /proc helpers
# --------------------------------------------------------------------------
def _read(path, limit=1 << 20):
    with open(path, "rb") as handle:
        return handle.read(limit)


def proc_stat(pid):
    """(state, ppid, pgid, starttime, sid) of a pid, or None when it is gone."""
    try:
        raw = _read("/proc/%d/stat" % pid).decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rfind(")") + 2:].split()
    try:
        return rest[0], int(rest[1]), int(rest[2]), int(rest[19]), int(rest[3])
    except (IndexError, ValueError):
        return None


UNREADABLE = "?"  # the tag of a process whose environment we may not read (another user's)


def proc_tag(pid, unreadable=None):
    """The SPARKCTL_TAG in a process's environment; None without one, `unreadable` when it cannot be read."""
    try:
        env = _read("/proc/%d/environ" % pid)
    except OSError:
        return unreadable
    prefix = (TAG_VAR + "=").encode()
    for entry in env.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode("utf-8", "replace")
    return None


def proc_cmdline(pid, limit=400):
    try:
        raw = _read("/proc/%d/cmdline" % pid, 8192)
    except OSError:
        return ""
    text = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    return text[:limit]


def proc_comm(pid):
    try:
        return _read("/proc/%d/comm" % pid).decode("utf-8", "replace").strip()
    except OSError:
        return None


def proc_raw_cmdline(pid):
    """The NUL-separated command line as bytes (b"" when gone)."""
    try:
        return _read("/proc/%d/cmdline" % pid, 1 << 16)
    except OSError:
        return b""


def proc_cwd(pid):
    try:
        return os.readlink("/proc/%d/cwd" % pid)
    except OSError:
        return None


def open_paths(pid):
    """What a process's file descriptors point to (paths, socket:[..], ...)."""
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return []
    targets = []
    for fd in fds:
        try:
            targets.append(os.readlink("/proc/%d/fd/%s" % (pid, fd)))
        except OSError:
            pass
    return targets


def all_pids():
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            pids.append(int(name))
    return pids


def boot_id():
    try:
        return _read("/proc/sys/kernel/random/boot_id").decode().strip()
    except OSError:
        return ""


def clock_ticks():
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError):
        return 100


def uptime_s():
    try:
        return float(_read("/proc/uptime").split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0



def is_alive(pid, starttime):
    """True when pid exists, is not a zombie and is the same process (start time)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z" and stat[3] == starttime


# --------------------------------------------------------------------------
# sockets
# --------------------------------------------------------------------------
def listening_sockets():
    """{inode: port} for every TCP socket in LISTEN state in this network namespace."""
    result = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = _read(table, 64 << 20).decode().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":
                continue
            port = int(fields[1].rsplit(":", 1)[1], 16)
            result[int(fields[9])] = port
    return result


def socket_owners(inodes, pids=None):
    """{inode: pid} for the given socket inodes, looking at pids (default: all)."""
    owners = {}
    wanted = set(inodes)
    for pid in pids if pids is not None else all_pids():
        try:
            fds = os.listdir("/proc/%d/fd" % pid)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in wanted:
                    owners.setdefault(inode, pid)
    return owners


def ports_in_use(ports):
    """For each requested port that something listens on: the listener's pid and tag."""
    listening = listening_sockets()
    hits = dict((inode, port) for inode, port in listening.items() if port in set(ports))
    if not hits:
        return []
    owners = socket_owners(hits.keys())
    out = []
    seen = set()
    for inode, port in sorted(hits.items(), key=lambda item: item[1]):
        pid = owners.get(inode)
        key = (port, pid)
        if key in seen:
            continue
        seen.add(key)
        out.append(
            {
                "port": port,
                "pid": pid,
                "tag": proc_tag(pid) if pid else None,
                "cmdline": proc_cmdline(pid, 200) if pid else "",
            }
        )
    return out


def ports_of(pids):
    listening = listening_sockets()
    owners = socket_owners(listening.keys(), pids)
    return sorted(set(listening[inode] for inode in owners))




# --------------------------------------------------------------------------
# interpreters
# --------------------------------------------------------------------------
PYTHON_NAME = re.compile(r"^python[0-9.]*$")
PIP_LONG_PATH_EXEC = re.compile(r"^'''exec' (\S+)")


def script_interpreter(path):
    """The Python that runs path: path itself when it is a Python binary, else
    the interpreter its #! line names (a `vllm` or `ray` console script names
    the Python that has vLLM, torch and Ray); None when it names none.

    pip writes `#!/bin/sh` plus `'''exec' /path/python "$0" "$@"` when the venv
    path is too long for a #! line; that second line names the interpreter."""
    if PYTHON_NAME.match(os.path.basename(path)):
        return path
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096).decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    if not head or not head[0].startswith("#!"):
        return None
    words = head[0][2:].strip().split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env":
        names = [w for w in words[1:] if not w.startswith("-")]
        return shutil.which(names[0]) if names else None
    if os.path.basename(words[0]) in ("sh", "bash"):
        match = PIP_LONG_PATH_EXEC.match(head[1]) if len(head) > 1 else None
        return match.group(1).strip("'\"") if match else None
    return words[0]


# --------------------------------------------------------------------------
# addresses
# --------------------------------------------------------------------------
def ipv4_by_interface():
    """({ifname: [ipv4/prefix, ...]}, source, note). `ip -j -4 addr` when iproute2
    is there (every address); else the kernel's ioctls (the primary address of
    each interface), because minimal container images ship without iproute2."""
    ip = shutil.which("ip") or ("/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else None)
    note = None
    if ip is not None:
        try:
            proc = subprocess.run([ip, "-j", "-4", "addr", "show"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, timeout=10)
            if proc.returncode == 0:
                result = {}
                for link in json.loads(proc.stdout.decode() or "[]"):
                    if isinstance(link, dict) and link.get("ifname"):
                        result[link["ifname"]] = ["%s/%s" % (a.get("local"), a.get("prefixlen"))
                                                  for a in link.get("addr_info", []) if a.get("local")]
                return result, "ip", None
            note = "ip -j -4 addr exited %d: %s" % (proc.returncode, proc.stderr.decode("utf-8", "replace")[-200:])
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            note = "ip -j -4 addr: %s" % exc
    else:
        note = "iproute2 `ip` not found: primary IPv4 addresses read with ioctl"
    return _ipv4_via_ioctl(), "ioctl", note


def _ipv4_via_ioctl():
    import fcntl
    import struct

    siocgifaddr, siocgifnetmask = 0x8915, 0x891B
    result = {}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                addr = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), siocgifaddr, request)[20:24])
                mask = fcntl.ioctl(sock.fileno(), siocgifnetmask, request)[20:24]
            except OSError:  # no IPv4 address on this interface
                result[name] = []
                continue
            prefix = bin(struct.unpack("!I", mask)[0]).count("1")
            result[name] = ["%s/%d" % (addr, prefix)]
    finally:
        sock.close()
    return result
