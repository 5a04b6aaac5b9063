"""A throwaway "virtual cluster" of DGX-Spark-like nodes for integration tests.

Each node is a Linux network namespace with

* a management interface ``mgmt0`` (``10.<a>.<b>.(10+i)/24``), one end of a veth
  pair whose other end hangs off a bridge in the ROOT namespace that carries
  ``10.<a>.<b>.1/24``; the controller (the test process) reaches the nodes only
  through this network;
* a fabric interface (default ``enp1s0f1np1``, ``192.168.100.(10+i)/24``, MTU
  9000), one end of a veth pair whose other end hangs off a bridge inside a
  separate "switch" namespace; the root namespace cannot reach the fabric;
* a real OpenSSH ``sshd`` listening on the management address, with a throwaway
  ed25519 host key, accepting a throwaway client key for ``root``.

Names (all carry the prefix ``sct-<id>-`` so that :func:`cleanup_stale` can
find leftovers of crashed runs)::

    namespaces          sct-<id>-n0 .. sct-<id>-n7, sct-<id>-sw
    root namespace      sct-<id>-br (mgmt bridge), sct-<id>-m<i> (mgmt veth ends)
    switch namespace    sct-<id>-fbr (fabric bridge), sct-<id>-f<i> (fabric veth ends)

A live cluster holds an ``flock`` on ``/run/lock/sparkctl-vcluster/sct-<id>.lock``
for its whole lifetime; :func:`cleanup_stale` never touches a cluster whose lock
is held, so it is safe to run while other clusters are up.

Command line::

    python -m tests.vcluster up N [--workdir DIR] [--mtu 9000] [--fabric-ifname IF]
    python -m tests.vcluster cleanup [--prefix sct-]

Nothing is registered at import time; all subprocesses use argv lists.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

SSHD = "/usr/sbin/sshd"
IP = "ip"
SSH_KEYGEN = "ssh-keygen"

PREFIX = "sct-"
LOCK_DIR = Path("/run/lock/sparkctl-vcluster")
ENV_MARKER = "SCT_VCLUSTER_NS"  # put into the environment of every process we start in a node

FABRIC_NET = ipaddress.ip_network("192.168.100.0/24")
TWIN_NET = ipaddress.ip_network("192.168.101.0/24")  # the second twin's, as in NVIDIA's playbook
MAX_NODES = 8
IFNAMSIZ_MAX = 15


class VClusterError(RuntimeError):
    """Something about building, driving or tearing down a virtual cluster failed."""


class VClusterCalledProcessError(subprocess.CalledProcessError):
    """CalledProcessError whose message includes the (tail of the) captured output."""

    def __str__(self) -> str:  # pragma: no cover - formatting only
        base = super().__str__()
        out = (self.stderr or "") + (self.output or "")
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        out = out.strip()
        if out:
            base += "\n" + _tail(out, 2000)
        return base


@dataclass
class VNode:
    name: str  # "node0", "node1", ...
    netns: str
    mgmt_ip: str
    fabric_ip: str
    fabric_ifname: str
    workdir: Path  # per-node dir inside the cluster workdir
    sshd_pid: int | None = None

    @property
    def index(self) -> int:
        return int(self.name.removeprefix("node"))


# --------------------------------------------------------------------------- helpers


def _tail(text: str, limit: int = 1500) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


def _file_tail(path: Path, limit: int = 1500) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return _tail(data.decode(errors="replace"), limit) or "<empty>"


def _run(argv: list[str], *, check: bool = True, timeout: float = 30,
         input: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              input=input, env=env, stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise VClusterError(f"timed out after {timeout}s waiting for command {argv!r}") from exc
    if check and proc.returncode != 0:
        raise VClusterCalledProcessError(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc


def _netns_list() -> list[str]:
    proc = _run([IP, "-j", "netns", "list"], check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        # old iproute2 or no /run/netns yet: fall back to the directory
        try:
            return sorted(os.listdir("/run/netns"))
        except FileNotFoundError:
            return []
    return [entry["name"] for entry in json.loads(proc.stdout)]


def _link_names(netns: str | None = None) -> list[str]:
    argv = [IP] + (["-n", netns] if netns else []) + ["-j", "link", "show"]
    proc = _run(argv, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    return [entry["ifname"] for entry in json.loads(proc.stdout)]


def _netns_pids(netns: str) -> list[int]:
    proc = _run([IP, "netns", "pids", netns], check=False)
    if proc.returncode != 0:
        return []
    return sorted(int(tok) for tok in proc.stdout.split() if tok.isdigit())


def _pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    # state is the field after the ")" that closes comm
    state = stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _marked_pids(prefix: str) -> dict[int, str]:
    """pid -> netns name, for every live process whose environment carries our marker
    with a value starting with ``prefix``."""
    needle = (ENV_MARKER + "=").encode()
    found: dict[int, str] = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read()
        except OSError:
            continue
        for item in env.split(b"\0"):
            if item.startswith(needle):
                value = item[len(needle):].decode(errors="replace")
                if value.startswith(prefix) and _pid_alive(int(entry)):
                    found[int(entry)] = value
                break
    return found


def _kill_pids(pids_fn, grace: float, reap=lambda: None) -> list[int]:
    """SIGTERM everything ``pids_fn()`` returns, wait ``grace`` seconds, SIGKILL the
    rest, wait again. Returns the pids that could not be killed (normally empty)."""
    me = os.getpid()
    pids = [p for p in pids_fn() if p != me]
    if not pids:
        return []
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while True:
        reap()
        pids = [p for p in pids_fn() if p != me and _pid_alive(p)]
        if not pids or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    # anything still there (including processes spawned meanwhile) gets SIGKILL
    kill_deadline = time.monotonic() + 5.0
    while pids:
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        time.sleep(0.02)
        reap()
        pids = [p for p in pids_fn() if p != me and _pid_alive(p)]
        if time.monotonic() >= kill_deadline:
            break
    return pids


def can_unlimit_memlock() -> bool:
    """Whether this host lets us raise RLIMIT_MEMLOCK to unlimited (needs
    CAP_SYS_RESOURCE or an unlimited hard limit; some containers have neither)."""
    try:
        return subprocess.run(["prlimit", "--memlock=unlimited:unlimited", "true"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _lock_path(tag: str) -> Path:
    return LOCK_DIR / f"{tag}.lock"


def _tag_of(name: str) -> str:
    """``sct-ab12-n0`` -> ``sct-ab12`` (the per-cluster part of a name)."""
    parts = name.split("-")
    return "-".join(parts[:2]) if len(parts) >= 2 else name


def _lock_is_held(tag: str) -> bool:
    path = _lock_path(tag)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class _FileLock:
    """Blocking flock with a deadline."""

    def __init__(self, path: Path, timeout: float = 30.0):
        self.path, self.timeout, self.fd = path, timeout, -1

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    raise VClusterError(f"timed out after {self.timeout}s waiting for lock {self.path}") from None
                time.sleep(0.02)

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the flock


def _used_ipv4_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 address/prefix and (non-default) route in the root namespace."""
    nets: list[ipaddress.IPv4Network] = []
    proc = _run([IP, "-j", "-4", "addr", "show"], check=False)
    if proc.returncode == 0 and proc.stdout.strip():
        for link in json.loads(proc.stdout):
            for addr in link.get("addr_info", []):
                if addr.get("family") == "inet":
                    nets.append(ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    proc = _run([IP, "-j", "-4", "route", "show", "table", "all"], check=False)
    if proc.returncode == 0 and proc.stdout.strip():
        for route in json.loads(proc.stdout):
            dst = route.get("dst", "")
            if not dst or dst == "default":
                continue
            try:
                nets.append(ipaddress.ip_network(dst if "/" in dst else dst + "/32", strict=False))
            except ValueError:
                continue
    return nets


# --------------------------------------------------------------------------- cluster


class VirtualCluster:
    """N network namespaces with real sshd, a management bridge and a fabric switch."""

    def __init__(self, n_nodes: int, workdir: Path, *, fabric_mtu: int = 9000,
                 fabric_ifname: str = "enp1s0f1np1", name: str | None = None,
                 ready_timeout: float = 20.0, stop_grace: float = 1.0, twins: bool = False,
                 fabric_addresses: bool = True, node_mtu: int | None = None):
        if not isinstance(n_nodes, int) or not 2 <= n_nodes <= MAX_NODES:
            raise ValueError(f"n_nodes must be an int in 2..{MAX_NODES}, got {n_nodes!r}")
        if not 68 <= int(fabric_mtu) <= 65535:
            raise ValueError(f"fabric_mtu out of range: {fabric_mtu!r}")
        if not fabric_ifname or len(fabric_ifname) > IFNAMSIZ_MAX or "/" in fabric_ifname \
                or any(c.isspace() for c in fabric_ifname) or fabric_ifname in ("mgmt0", "lo"):
            raise ValueError(f"bad fabric interface name {fabric_ifname!r} (max {IFNAMSIZ_MAX} chars)")
        self.n_nodes = n_nodes
        self.workdir = Path(workdir).resolve()
        self.fabric_mtu = int(fabric_mtu)
        self.fabric_ifname = fabric_ifname
        # twins=True: a second fabric interface per node, on its own switch, named like a
        # Spark's second twin of the same cage (enp1s0f1np1 -> enP2p1s0f1np1)
        self.twin_ifname = ("enP2p" + fabric_ifname[3:]) if twins and fabric_ifname.startswith("enp") else (
            fabric_ifname[:13] + "t2" if twins else None)
        self.fabric_addresses = fabric_addresses  # False: the twins come up without IPv4, as on a fresh Spark
        self.node_mtu = node_mtu  # node-side MTU of the fabric interfaces (the switch side keeps fabric_mtu)
        self.ready_timeout = ready_timeout
        self.stop_grace = stop_grace
        self.id = self._pick_id()
        self.tag = f"{PREFIX}{self.id}"  # sct-ab12
        self.name = name or f"vc-{self.id}"
        self.switch_netns = f"{self.tag}-sw"
        self.mgmt_bridge = f"{self.tag}-br"
        self.fabric_bridge = f"{self.tag}-fbr"
        self.twin_bridge = f"{self.tag}-fb2"
        self.mgmt_net: ipaddress.IPv4Network | None = None
        self.client_key = self.workdir / "id_ed25519"
        self.known_hosts = self.workdir / "known_hosts"
        self.authorized_keys = self.workdir / "authorized_keys"
        self.nodes: list[VNode] = [
            VNode(name=f"node{i}", netns=f"{self.tag}-n{i}", mgmt_ip="",
                  fabric_ip=str(FABRIC_NET.network_address + 10 + i),
                  fabric_ifname=fabric_ifname, workdir=self.workdir / f"node{i}")
            for i in range(n_nodes)
        ]
        for ifname in (self.mgmt_bridge, self.fabric_bridge, self._mgmt_veth(MAX_NODES - 1),
                       self._fabric_veth(MAX_NODES - 1)):
            assert len(ifname) <= IFNAMSIZ_MAX, ifname
        self._sshd_procs: dict[str, subprocess.Popen] = {}
        self._node_env: dict[str, dict[str, str]] = {}  # set in each login through sshd's SetEnv
        self._lock_fd: int | None = None
        self._started = False
        self._stopped = False
        self.timings: dict[str, float] = {}

    # ---------------------------------------------------------------- naming

    @staticmethod
    def _pick_id() -> str:
        taken = {_tag_of(n) for n in _netns_list() + _link_names()}
        for _ in range(1000):
            cid = secrets.token_hex(2)
            tag = f"{PREFIX}{cid}"
            if tag not in taken and not _lock_path(tag).exists():
                return cid
        raise VClusterError("could not find a free cluster id")

    def _mgmt_veth(self, i: int) -> str:
        return f"{self.tag}-m{i}"

    def _fabric_veth(self, i: int) -> str:
        return f"{self.tag}-f{i}"

    def node(self, node: VNode | str | int) -> VNode:
        """Look a node up by VNode, index, name ("node1") or namespace name."""
        if isinstance(node, VNode):
            return node
        if isinstance(node, int):
            return self.nodes[node]
        for n in self.nodes:
            if node in (n.name, n.netns, n.mgmt_ip):
                return n
        raise KeyError(f"no node {node!r} in cluster {self.name}")

    def __repr__(self) -> str:
        return (f"VirtualCluster(name={self.name!r}, id={self.id!r}, nodes={self.n_nodes}, "
                f"mgmt={self.mgmt_net}, workdir={str(self.workdir)!r})")

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> VirtualCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> VirtualCluster:
        if self._started:
            raise VClusterError(f"{self.name} already started")
        if self._stopped:
            raise VClusterError(f"{self.name} was stopped; create a new VirtualCluster")
        self._started = True
        t0 = time.monotonic()
        try:
            self._take_cluster_lock()
            self._prepare_workdir()
            self._generate_keys()
            self._create_namespaces()
            self._setup_mgmt()
            self._setup_fabric()
            self._write_ssh_files()
            self._start_sshds()
            self._wait_links_up()
            self._wait_sshd_ready()
        except BaseException as exc:
            try:
                self.stop()
            except Exception as cleanup_exc:  # keep the original error, mention the cleanup one
                exc.add_note(f"additionally, teardown after the failed start failed: {cleanup_exc}")
            raise
        self.timings["start"] = time.monotonic() - t0
        return self

    def _take_cluster_lock(self) -> None:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(_lock_path(self.tag), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise VClusterError(f"cluster id {self.id} is in use by another live cluster "
                                f"({_lock_path(self.tag)} is locked)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {self.workdir}\n".encode())
        self._lock_fd = fd
        leftovers = [n for n in _netns_list() + _link_names() if n.startswith(self.tag + "-")]
        if leftovers:
            raise VClusterError(f"names of cluster id {self.id} already exist: {leftovers}; "
                                "run `python -m tests.vcluster cleanup`")

    def _prepare_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            node.workdir.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    def _generate_keys(self) -> None:
        jobs: list[tuple[Path, str]] = [(self.client_key, f"client@{self.name}")]
        jobs += [(n.workdir / "ssh_host_ed25519_key", f"{n.name}@{self.name}") for n in self.nodes]
        self._keygen(jobs)

    @staticmethod
    def _keygen(jobs: list[tuple[Path, str]]) -> None:
        for path, _ in jobs:
            for p in (path, path.with_name(path.name + ".pub")):
                p.unlink(missing_ok=True)
        procs = [(path, subprocess.Popen([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment,
                                          "-f", str(path)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True))
                 for path, comment in jobs]
        errors = []
        for path, proc in procs:
            try:
                out, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                errors.append(f"ssh-keygen for {path} timed out after 30s")
                continue
            if proc.returncode != 0:
                errors.append(f"ssh-keygen for {path} failed (rc={proc.returncode}): {out.strip()}")
        if errors:
            raise VClusterError("; ".join(errors))

    def _create_namespaces(self) -> None:
        for ns in [n.netns for n in self.nodes] + [self.switch_netns]:
            _run([IP, "netns", "add", ns])
            _run([IP, "-n", ns, "link", "set", "lo", "up"])

    def _choose_mgmt_net(self) -> ipaddress.IPv4Network:
        used = _used_ipv4_networks()
        rng = random.Random(secrets.randbits(64))
        for _ in range(2000):
            cand = ipaddress.ip_network(f"10.{rng.randint(64, 254)}.{rng.randint(0, 255)}.0/24")
            if not any(cand.overlaps(u) for u in used):
                return cand
        raise VClusterError("could not find a free 10.x.y.0/24 for the management network")

    def _setup_mgmt(self) -> None:
        # choosing the subnet and putting it on the bridge must be atomic w.r.t. other clusters
        with _FileLock(LOCK_DIR / "subnet.lock"):
            self.mgmt_net = self._choose_mgmt_net()
            _run([IP, "link", "add", "name", self.mgmt_bridge, "type", "bridge"])
            _run([IP, "addr", "add", f"{self.mgmt_net.network_address + 1}/{self.mgmt_net.prefixlen}",
                  "dev", self.mgmt_bridge])
        _run([IP, "link", "set", self.mgmt_bridge, "up"])
        for node in self.nodes:
            node.mgmt_ip = str(self.mgmt_net.network_address + 10 + node.index)
            veth = self._mgmt_veth(node.index)
            _run([IP, "link", "add", veth, "type", "veth", "peer", "name", "mgmt0", "netns", node.netns])
            _run([IP, "link", "set", veth, "master", self.mgmt_bridge, "up"])
            _run([IP, "-n", node.netns, "addr", "add", f"{node.mgmt_ip}/{self.mgmt_net.prefixlen}",
                  "dev", "mgmt0"])
            _run([IP, "-n", node.netns, "link", "set", "mgmt0", "up"])

    def _setup_fabric(self) -> None:
        links = [(self.fabric_bridge, self.fabric_ifname, "f", FABRIC_NET)]
        if self.twin_ifname:
            links.append((self.twin_bridge, self.twin_ifname, "g", TWIN_NET))
        for bridge, ifname, letter, net in links:
            self._setup_fabric_link(bridge, ifname, letter, net)

    def _setup_fabric_link(self, bridge: str, ifname: str, letter: str, net: ipaddress.IPv4Network) -> None:
        sw, mtu = self.switch_netns, str(self.fabric_mtu)
        _run([IP, "-n", sw, "link", "add", "name", bridge, "type", "bridge"])
        for node in self.nodes:
            veth = f"{self.tag}-{letter}{node.index}"
            _run([IP, "-n", sw, "link", "add", veth, "mtu", mtu, "type", "veth",
                  "peer", "name", ifname, "mtu", str(self.node_mtu or mtu), "netns", node.netns])
            _run([IP, "-n", sw, "link", "set", veth, "master", bridge, "up"])
            if self.fabric_addresses:
                _run([IP, "-n", node.netns, "addr", "add", f"{net.network_address + 10 + node.index}/{net.prefixlen}",
                      "dev", ifname])
            _run([IP, "-n", node.netns, "link", "set", ifname, "up"])
        _run([IP, "-n", sw, "link", "set", bridge, "mtu", mtu, "up"])

    def _operstates(self, netns: str) -> dict[str, str]:
        proc = _run([IP, "-n", netns, "-j", "link", "show"], check=False)
        if proc.returncode != 0 or not proc.stdout.strip():
            return {}
        return {e["ifname"]: e.get("operstate", "") for e in json.loads(proc.stdout)}

    def _wait_links_up(self, nodes: Iterable[VNode] | None = None, timeout: float = 10.0) -> None:
        """Wait until mgmt0 and the fabric interface of each node report operstate UP
        (veth carrier changes reach operstate asynchronously, up to ~1s later)."""
        pending = {n.name: n for n in (self.nodes if nodes is None else nodes)}
        deadline = time.monotonic() + timeout
        while True:
            for name, node in list(pending.items()):
                states = self._operstates(node.netns)
                if states.get("mgmt0") == "UP" and states.get(node.fabric_ifname) == "UP" and (
                        not self.twin_ifname or states.get(self.twin_ifname) == "UP"):
                    del pending[name]
            if not pending:
                return
            if time.monotonic() >= deadline:
                node = next(iter(pending.values()))
                raise VClusterError(
                    f"timed out after {timeout}s waiting for links of {', '.join(pending)} to be UP "
                    f"(first: {node.name} in {node.netns}: {self._operstates(node.netns)})")
            time.sleep(0.02)

    def _write_ssh_files(self) -> None:
        pub = self.client_key.with_name(self.client_key.name + ".pub").read_text().strip()
        self.authorized_keys.write_text(pub + "\n")
        self.authorized_keys.chmod(0o600)
        self._write_known_hosts()
        for node in self.nodes:
            self._write_sshd_config(node)

    def _write_known_hosts(self) -> None:
        lines = []
        for node in self.nodes:
            keytype, key = (node.workdir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
            lines.append(f"{node.mgmt_ip} {keytype} {key}")
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def _sshd_config_path(self, node: VNode) -> Path:
        return node.workdir / "sshd_config"

    def _write_sshd_config(self, node: VNode) -> None:
        cfg = f"""\
# generated by tests/vcluster.py for {self.name} {node.name} ({node.netns})
ListenAddress {node.mgmt_ip}
Port 22
HostKey {node.workdir / 'ssh_host_ed25519_key'}
AuthorizedKeysFile {self.authorized_keys}
PidFile {node.workdir / 'sshd.pid'}
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PrintMotd no
PrintLastLog no
UseDNS no
LogLevel VERBOSE
MaxStartups 64:30:128
MaxSessions 64
Subsystem sftp internal-sftp
"""
        env = self._node_env.get(node.name) or {}
        if env:
            cfg += "SetEnv " + " ".join(f"{k}={v}" for k, v in sorted(env.items())) + "\n"
        self._sshd_config_path(node).write_text(cfg)

    def _spawn_sshd(self, node: VNode) -> None:
        log = open(node.workdir / "sshd.log", "ab")
        try:
            log.write(f"--- starting sshd for {node.name} at {time.strftime('%H:%M:%S')} ---\n".encode())
            log.flush()
            env = dict(os.environ, **{ENV_MARKER: node.netns})
            # `ip netns exec` execs (no fork) -> proc.pid is sshd's pid. Where the
            # host allows it, logins get an unlimited memlock, as on a Spark set up
            # for RDMA (limits.conf); prlimit execs too, so the pid stays sshd's.
            memlock = ["prlimit", "--memlock=unlimited:unlimited"] if can_unlimit_memlock() else []
            proc = subprocess.Popen([IP, "netns", "exec", node.netns, *memlock,
                                     SSHD, "-D", "-e", "-f", str(self._sshd_config_path(node))],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                    start_new_session=True)
        finally:
            log.close()
        self._sshd_procs[node.name] = proc
        node.sshd_pid = proc.pid

    def _start_sshds(self) -> None:
        for node in self.nodes:
            self._spawn_sshd(node)

    def _wait_sshd_ready(self, nodes: Iterable[VNode] | None = None) -> None:
        pending = list(self.nodes if nodes is None else nodes)
        deadline = time.monotonic() + self.ready_timeout
        last_err: dict[str, str] = {}
        while pending:
            for node in list(pending):
                proc = self._sshd_procs.get(node.name)
                if proc is not None and proc.poll() is not None:
                    raise VClusterError(
                        f"sshd of {node.name} ({node.netns}, {node.mgmt_ip}) exited with rc={proc.returncode} "
                        f"before accepting connections; {node.workdir / 'sshd.log'} ends with:\n"
                        f"{_file_tail(node.workdir / 'sshd.log')}")
                try:
                    with socket.create_connection((node.mgmt_ip, 22), timeout=0.5) as s:
                        s.settimeout(max(0.1, min(2.0, deadline - time.monotonic())))
                        banner = s.recv(64)
                    if banner.startswith(b"SSH-"):
                        pending.remove(node)
                    else:
                        last_err[node.name] = f"unexpected banner {banner!r}"
                except OSError as exc:
                    last_err[node.name] = f"{type(exc).__name__}: {exc}"
            if not pending:
                break
            if time.monotonic() >= deadline:
                node = pending[0]
                raise VClusterError(
                    f"timed out after {self.ready_timeout}s waiting for sshd of "
                    f"{', '.join(n.name for n in pending)} to accept TCP on port 22 "
                    f"(first: {node.name} {node.mgmt_ip}: {last_err.get(node.name)}); "
                    f"{node.workdir / 'sshd.log'} ends with:\n{_file_tail(node.workdir / 'sshd.log')}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Tear everything down. Idempotent; safe after a partial start."""
        t0 = time.monotonic()
        problems: list[str] = []
        node_ns = [n.netns for n in self.nodes]

        # 1. our own sshd listeners (reap them, so their pids really disappear)
        for node in self.nodes:
            try:
                self._stop_sshd_proc(node)
            except Exception as exc:  # noqa: BLE001 - teardown must go on
                problems.append(f"stopping sshd of {node.name}: {exc}")

        # 2. every process inside the node and switch namespaces, plus anything we
        #    started that still carries our marker (e.g. escaped into another netns)
        existing = set(_netns_list())
        namespaces = [ns for ns in node_ns + [self.switch_netns] if ns in existing]

        def pids_fn() -> list[int]:
            pids = set()
            for ns in namespaces:
                pids.update(_netns_pids(ns))
            pids.update(_marked_pids(self.tag + "-"))
            return sorted(pids)

        left = _kill_pids(pids_fn, self.stop_grace, reap=self._reap)
        if left:
            problems.append(f"processes survived SIGKILL: {left}")

        # 3. links in the root namespace (deleting one veth end deletes its peer)
        root_links = set(_link_names())
        for ifname in [self._mgmt_veth(n.index) for n in self.nodes] + [self.mgmt_bridge]:
            if ifname in root_links:
                proc = _run([IP, "link", "del", ifname], check=False)
                if proc.returncode != 0 and ifname in _link_names():
                    problems.append(f"ip link del {ifname}: {proc.stderr.strip()}")

        # 4. namespaces (their remaining links go with them)
        for ns in namespaces:
            proc = _run([IP, "netns", "del", ns], check=False)
            if proc.returncode != 0 and ns in _netns_list():
                problems.append(f"ip netns del {ns}: {proc.stderr.strip()}")

        # 5. verify
        leftovers = [n for n in _netns_list() if n.startswith(self.tag + "-")]
        leftovers += [n for n in _link_names() if n.startswith(self.tag + "-")]
        leftovers += [f"pid {n.sshd_pid} ({n.name} sshd)" for n in self.nodes
                      if n.sshd_pid is not None and _pid_alive(n.sshd_pid)]
        if leftovers:
            problems.append(f"still present after teardown: {leftovers}")

        if self._lock_fd is not None:
            try:
                _lock_path(self.tag).unlink(missing_ok=True)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None
        self._stopped = True
        self.timings["stop"] = time.monotonic() - t0
        if problems:
            raise VClusterError(f"teardown of {self.name} incomplete: " + "; ".join(problems))

    def _reap(self) -> None:
        for proc in self._sshd_procs.values():
            proc.poll()

    def _stop_sshd_proc(self, node: VNode) -> None:
        proc = self._sshd_procs.pop(node.name, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self.stop_grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    raise VClusterError(f"sshd of {node.name} (pid {proc.pid}) did not die after SIGKILL "
                                        "within 5s") from None

    # ---------------------------------------------------------------- inventory

    def inventory(self, **extra: Any) -> dict:
        if self.mgmt_net is None:
            raise VClusterError(f"{self.name} has no addresses yet; call start() first")
        inv: dict[str, Any] = {
            "cluster": self.name,
            "ssh": {
                "user": "root",
                "identity_file": str(self.client_key),
                "known_hosts": str(self.known_hosts),
                "host_key_policy": "strict",
            },
            "nodes": [
                {"name": n.name, "host": n.mgmt_ip, "fabric_ip": n.fabric_ip,
                 "role": "head" if n.index == 0 else "worker"}
                for n in self.nodes
            ],
            "fabric": {"interface": self.fabric_ifname},
        }
        for key, value in extra.items():
            # a dict given for an existing dict key (e.g. fabric={...}) is merged into it
            if isinstance(value, dict) and isinstance(inv.get(key), dict):
                inv[key] = {**inv[key], **value}
            else:
                inv[key] = value
        return inv

    def write_inventory(self, path: Path, **extra: Any) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.inventory(**extra), sort_keys=False))
        return path

    # ---------------------------------------------------------------- driving nodes

    def exec(self, node: VNode | str | int, argv: list[str], check: bool = True,
             timeout: float = 30) -> subprocess.CompletedProcess:
        """Run argv inside the node's namespace (`ip netns exec`), text mode, output captured."""
        node = self.node(node)
        full = [IP, "netns", "exec", node.netns, *argv]
        env = dict(os.environ, **{ENV_MARKER: node.netns})
        # a timeout raises subprocess.TimeoutExpired (naming the command), like subprocess.run
        proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise VClusterCalledProcessError(proc.returncode, full, proc.stdout, proc.stderr)
        return proc

    def pids(self, node: VNode | str | int) -> list[int]:
        return _netns_pids(self.node(node).netns)

    def ssh_argv(self, node: VNode | str | int, *command: str, connect_timeout: int = 5) -> list[str]:
        """argv for the plain OpenSSH client to run ``command`` on ``node`` as root."""
        node = self.node(node)
        return ["ssh", "-F", "/dev/null", "-i", str(self.client_key),
                "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", f"ConnectTimeout={connect_timeout}",
                f"root@{node.mgmt_ip}", *command]

    def ssh(self, node: VNode | str | int, *command: str, timeout: float = 30,
            check: bool = False) -> subprocess.CompletedProcess:
        argv = self.ssh_argv(node, *command)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise VClusterCalledProcessError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def processes_besides_sshd(self, node: VNode | str | int, *, settle_s: float = 10.0) -> list[str]:
        """Command lines of every process in the node's namespace other than its
        sshd, after waiting up to settle_s for them to go (a closed SSH session
        takes a moment to leave)."""
        n = self.node(node)

        def others() -> list[str]:
            out = []
            for pid in self.pids(n):
                if pid == n.sshd_pid:
                    continue
                try:
                    out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
                except OSError:
                    pass
            return out

        deadline = time.monotonic() + settle_s
        found = others()
        while found and time.monotonic() < deadline:
            time.sleep(0.2)
            found = others()
        return found

    def stop_sshd(self, node: VNode | str | int) -> None:
        node = self.node(node)
        self._stop_sshd_proc(node)
        node.sshd_pid = None

    def start_sshd(self, node: VNode | str | int) -> None:
        node = self.node(node)
        proc = self._sshd_procs.get(node.name)
        if proc is not None and proc.poll() is None:
            return
        self._spawn_sshd(node)
        self._wait_sshd_ready([node])

    def drop_ssh_connections(self, node: VNode | str | int) -> list[int]:
        """SIGKILL the sshd processes serving the node's open connections (its
        listener keeps accepting new ones): every client's connection breaks at
        once, as when a controller's session dies. Returns the pids killed."""
        n = self.node(node)
        killed = []
        for pid in self.pids(n):
            if pid == n.sshd_pid:
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"sshd:"):  # the per-connection monitor and its session child
                _signal(pid, signal.SIGKILL)
                killed.append(pid)
        return killed

    def set_mgmt_link(self, node: VNode | str | int, up: bool) -> None:
        """Node-side management link (the one SSH uses) up/down; ``up`` waits for
        operstate UP. Down: packets are dropped silently, connections hang."""
        n = self.node(node)
        _run([IP, "-n", n.netns, "link", "set", "dev", "mgmt0", "up" if up else "down"])
        if up:
            self._wait_links_up([n])

    def set_node_env(self, node: VNode | str | int, env: dict[str, str]) -> None:
        """Environment every SSH login on the node gets (sshd SetEnv): the way a
        variable such as SPARKCTL_SYSFS_ROOT is "set on that node". Restarts sshd."""
        n = self.node(node)
        for key, value in env.items():
            if not key.replace("_", "").isalnum() or any(c.isspace() or c in "\"'" for c in value):
                raise ValueError(f"unsupported env entry {key}={value!r}")
        self._node_env[n.name] = dict(env)
        self._write_sshd_config(n)
        self.stop_sshd(n)
        self.start_sshd(n)

    def regenerate_host_key(self, node: VNode | str | int) -> None:
        """New host key + sshd restart; known_hosts deliberately NOT updated."""
        node = self.node(node)
        self.stop_sshd(node)
        self._keygen([(node.workdir / "ssh_host_ed25519_key", f"{node.name}@{self.name}-regen")])
        self.start_sshd(node)

    def set_fabric_mtu(self, node: VNode | str | int, mtu: int) -> None:
        node = self.node(node)
        _run([IP, "-n", node.netns, "link", "set", "dev", node.fabric_ifname, "mtu", str(int(mtu))])

    def set_fabric_link(self, node: VNode | str | int, up: bool) -> None:
        """Node-side fabric link up/down; ``up`` waits for operstate UP. Peers that tried
        to reach the node while it was down keep an INCOMPLETE ARP entry that is only
        re-probed once a second, so their first packet afterwards may take ~1-3s."""
        node = self.node(node)
        _run([IP, "-n", node.netns, "link", "set", "dev", node.fabric_ifname, "up" if up else "down"])
        if up:
            self._wait_links_up([node])


# --------------------------------------------------------------------------- stale cleanup


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Remove namespaces, root-namespace links and sshd/other processes left behind by
    crashed runs. Only names starting with ``prefix`` are touched, and clusters whose
    owner is still alive (lock held) are left alone. Returns what was removed."""
    if not prefix:
        raise ValueError("refusing to clean up with an empty prefix")
    removed: list[str] = []
    namespaces = [ns for ns in _netns_list() if ns.startswith(prefix)]
    links = [ln for ln in _link_names() if ln.startswith(prefix)]
    marked = _marked_pids(prefix)
    tags = {_tag_of(x) for x in namespaces + links} | {_tag_of(v) for v in marked.values()}
    live = {t for t in tags if _lock_is_held(t)}
    namespaces = [ns for ns in namespaces if _tag_of(ns) not in live]
    links = [ln for ln in links if _tag_of(ln) not in live]

    def pids_fn() -> list[int]:
        pids = set()
        for ns in namespaces:
            pids.update(_netns_pids(ns))
        pids.update(p for p, v in _marked_pids(prefix).items() if _tag_of(v) not in live)
        return sorted(pids)

    initial = pids_fn()
    left = _kill_pids(pids_fn, 1.0)
    removed += [f"pid {p}" for p in initial if p not in left]
    for ln in links:
        if ln in _link_names():  # may already be gone with its veth peer
            if _run([IP, "link", "del", ln], check=False).returncode == 0:
                removed.append(f"link {ln}")
    for ns in namespaces:
        if _run([IP, "netns", "del", ns], check=False).returncode == 0:
            removed.append(f"netns {ns}")
    for tag in tags - live:
        try:
            _lock_path(tag).unlink()
        except FileNotFoundError:
            pass
    return removed


# --------------------------------------------------------------------------- CLI


def _cli_up(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="vcluster-"))
    stop_requested = False

    def on_signal(signum, frame):
        nonlocal stop_requested
        stop_requested = True
        raise KeyboardInterrupt

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    cluster = VirtualCluster(args.n_nodes, workdir, fabric_mtu=args.mtu, fabric_ifname=args.fabric_ifname,
                             name=args.name)
    try:
        cluster.start()
        inv_path = cluster.write_inventory(workdir / "inventory.yaml")
        print(f"# {cluster!r} up in {cluster.timings['start']:.2f}s; inventory: {inv_path}", flush=True)
        print(inv_path.read_text(), end="", flush=True)
        print("# Ctrl-C or SIGTERM to tear down", flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        # don't let a second signal interrupt the teardown
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        try:
            cluster.stop()
            print(f"# {cluster.name} torn down in {cluster.timings.get('stop', 0):.2f}s", flush=True)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.vcluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a virtual cluster and keep it up until Ctrl-C/SIGTERM")
    up.add_argument("n_nodes", type=int)
    up.add_argument("--workdir", help="cluster workdir (default: a new temp dir)")
    up.add_argument("--mtu", type=int, default=9000, help="fabric MTU (default 9000)")
    up.add_argument("--fabric-ifname", default="enp1s0f1np1")
    up.add_argument("--name", default=None, help="cluster name (default vc-<id>)")
    cl = sub.add_parser("cleanup", help="remove leftovers of crashed runs")
    cl.add_argument("--prefix", default=PREFIX)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("tests.vcluster needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.cmd == "up":
        return _cli_up(args)
    removed = cleanup_stale(args.prefix)
    print("\n".join(removed) if removed else "nothing to clean up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
