"""Per-node checks: pure functions over one node's facts.

A check whose facts section was not gathered produces no finding (the caller
chose not to look); a section whose reader failed produces a WARN.

When RDMA is required (the rule is `rdma_requirement`'s docstring), the RoCE
checks run on the twins of the cabled cage ("the fabric"); on CPU-only hosts
they are skipped with one WARN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sparkctl.checks.fabric import (
    Fabric,
    Facts,
    Twin,
    fabric_of,
    gib,
    interface_for,
    ipv4_map,
    is_ip,
    netdev_mtu,
    network,
    section,
)
from sparkctl.checks.findings import finding
from sparkctl.checks.spec import DEFAULT_CPU_KVCACHE_GIB, ClusterSpec, NodeSpec, float_or
from sparkctl.findings import Finding, Severity
from sparkctl.netplan import HostPlan

OK, WARNING, ERROR = Severity.OK, Severity.WARNING, Severity.ERROR
RECOMMENDED_MTU = 9000
FULL_RATE_GBPS = 200
MIN_FREE_DISK = 10 * 2**30

HOTPLUG_HINT = (
    "no QSFP cable at boot: DGX OS's cx7-pcie-hotplug removes the ConnectX-7 from the PCI bus. Attach the cable "
    "(it re-enumerates) and reboot both nodes with it attached, or `sudo rm /etc/nvidia/cx7-hotplug-enabled` to "
    "disable the feature. An empty /sys/class/infiniband means 'not cabled', not 'healthy'"
)


@dataclass(frozen=True)
class NodeContext:
    spec: ClusterSpec
    node: NodeSpec
    facts: Facts
    fabric: Fabric
    env: dict[str, str]  # effective NCCL_*/... environment: the node's own, then sparkctl's configuration
    env_source: dict[str, str]  # var -> where it was set
    rdma_required: bool
    rdma_reason: str
    cpu_only: bool
    plan: HostPlan | None

    @property
    def name(self) -> str:
        return self.node.name

    def f(self, check: str, severity: Severity, evidence: str, hint: str | None = None) -> Finding:
        return finding(check, severity, self.node.name, evidence, hint)

    @property
    def uses_rdma(self) -> bool:
        """The RoCE checks apply: RDMA devices are selected for NCCL on a multi-node cluster."""
        return self.fabric.rdma_gathered and bool(self.fabric.selected) and (
            self.spec.multi_node or bool(self.spec.fabric_hcas))


def rdma_requirement(spec: ClusterSpec, facts: Facts, env: dict[str, str]) -> tuple[bool, str]:
    """Whether this node must have working RDMA (RoCE), and why.

    The rule, first match wins:
      1. inventory `fabric.hcas` is set                  -> required (the user named the HCAs)
      2. a single-node cluster                           -> not required (no fabric at all)
      3. NCCL_IB_DISABLE=1 in the effective environment  -> not required (sockets chosen on purpose;
                                                            env.nccl-transport says what it costs)
      4. the node has a GPU (facts gpu.count > 0)        -> required: a GPU node without RDMA devices
                                                            was not cabled at boot (FAIL rdma.devices)
      5. otherwise (no GPU seen: a CPU-only host)        -> not required: the RoCE checks are skipped
                                                            with a WARN "no RDMA hardware"
    """
    if spec.fabric_hcas:
        return True, "inventory fabric.hcas is set"
    if not spec.multi_node:
        return False, "single node: no fabric"
    if _truthy(env.get("NCCL_IB_DISABLE")):
        return False, "NCCL_IB_DISABLE is set"
    gpu = section(facts, "gpu") or {}
    if (gpu.get("count") or 0) > 0:
        return True, "the node has a GPU"
    return False, "no GPU on this node (CPU-only host)"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def node_context(spec: ClusterSpec, node: NodeSpec, facts: Facts, plan: HostPlan | None, cpu_only: bool) -> NodeContext:
    env_section = section(facts, "env") or {}
    env = dict(env_section.get("ambient") or {})
    source = {k: "the node's own environment" for k in env}
    for key, (value, where) in spec.config_env(node.name).items():
        env[key], source[key] = value, where
    required, reason = rdma_requirement(spec, facts, env)
    return NodeContext(spec=spec, node=node, facts=facts, fabric=fabric_of(facts, spec.fabric_hcas), env=env,
                       env_source=source, rdma_required=required, rdma_reason=reason, cpu_only=cpu_only, plan=plan)


# --------------------------------------------------------------------------
# GPU
# --------------------------------------------------------------------------
def check_gpu(ctx: NodeContext) -> list[Finding]:
    gpu = section(ctx.facts, "gpu")
    if gpu is None:
        return _section_error(ctx, "gpu", "gpu.present")
    count = int(gpu.get("count") or 0)
    names = sorted({str(g.get("name")) for g in gpu.get("gpus") or []})
    described = (f"{count}x {', '.join(names)} (driver {gpu.get('driver_version') or '?'}, CUDA "
                 f"{gpu.get('cuda_driver_version') or '?'}, via {gpu.get('source')})")
    if count == 0:
        if ctx.cpu_only:
            return [ctx.f("gpu.present", OK, "no GPU: the playbook runs vLLM on CPU")]
        tried = "; ".join(gpu.get("attempts") or []) or "no source answered"
        return [ctx.f("gpu.present", ERROR, f"no GPU visible ({tried})",
                      "check `nvidia-smi` on the node (driver loaded? DGX OS up to date?); for a CPU-only test "
                      "cluster set VLLM_TARGET_DEVICE: cpu in the playbook env")]
    if count < ctx.node.gpus:
        return [ctx.f("gpu.present", ERROR, f"{described}; the inventory says nodes[].gpus = {ctx.node.gpus}",
                      "fix nodes[].gpus or find out why a GPU is missing (`nvidia-smi -L`)")]
    return [ctx.f("gpu.present", OK, described)]


# --------------------------------------------------------------------------
# RDMA
# --------------------------------------------------------------------------
def check_rdma(ctx: NodeContext) -> list[Finding]:
    rdma = section(ctx.facts, "rdma")
    if rdma is None:
        return _section_error(ctx, "rdma", "rdma.devices")
    fab = ctx.fabric
    root = rdma.get("root", "class/infiniband")
    if not fab.has_devices:
        where = f"{root} is empty" if rdma.get("present") else f"{root} does not exist"
        if ctx.rdma_required:
            return [ctx.f("rdma.devices", ERROR, f"no RDMA devices ({where}; {ctx.rdma_reason})", HOTPLUG_HINT)]
        if not ctx.spec.multi_node:
            return [ctx.f("rdma.devices", OK, f"no RDMA devices; {ctx.rdma_reason}")]
        return [ctx.f("rdma.devices", WARNING, f"no RDMA hardware: RoCE checks skipped ({where}; {ctx.rdma_reason})",
                      "expected on CPU test hosts; on a Spark: " + HOTPLUG_HINT)]
    fw = sorted({t.fw_ver for t in fab.twins if t.fw_ver})
    listed = ", ".join(t.name for t in fab.twins)
    out = []
    missing = [h for h in ctx.spec.fabric_hcas or () if h not in {t.hca for t in fab.twins}]
    if missing:
        out.append(ctx.f("rdma.devices", ERROR, f"fabric.hcas names {', '.join(missing)}, not found (have: {listed})",
                         "fix inventory fabric.hcas (names from `ls /sys/class/infiniband` on the node) or remove it"))
    else:
        out.append(ctx.f("rdma.devices", OK, f"{len(fab.twins)} RDMA device port(s): {listed}"
                         + (f" (firmware {', '.join(fw)})" if fw else "")))
    if not (ctx.spec.multi_node or ctx.spec.fabric_hcas):
        return out
    out += _check_cage(ctx)
    if fab.selected:
        out += _check_twins(ctx)
    return out


def _check_cage(ctx: NodeContext) -> list[Finding]:
    fab = ctx.fabric
    states = ", ".join(f"{t.hca} {t.state_text()}" for t in fab.twins)
    if ctx.spec.fabric_hcas:
        return [ctx.f("rdma.cabled-cage", OK, f"HCAs from inventory fabric.hcas: {', '.join(fab.hcas)}"
                      + (f"; cabled: {', '.join(fab.cabled)}" if fab.cabled else ""))]
    if not fab.cabled:
        status = ERROR if ctx.rdma_required else WARNING
        return [ctx.f("rdma.cabled-cage", status, f"no QSFP cage has link ({states})",
                      "plug the QSFP cable into the same cage on every node, then reboot the nodes with it attached "
                      "(a cable hot-plugged at runtime leaves the link at ~13 Gb/s until reboot)")]
    twins = ", ".join(t.name for t in fab.selected)
    if len(fab.cabled) > 1:
        return [ctx.f("rdma.cabled-cage", WARNING, f"{len(fab.cabled)} cages have link ({', '.join(fab.cabled)}): {twins}",
                      "a second cable adds ~5%; if intended, give all four interfaces IPv4 addresses on their own "
                      "subnets and set fabric.hcas; otherwise unplug one cable")]
    return [ctx.f("rdma.cabled-cage", OK, f"cage {fab.cabled[0]} cabled: twins {twins}")]


def _check_twins(ctx: NodeContext) -> list[Finding]:
    fab = ctx.fabric
    sel = fab.selected
    out = []
    down = [t for t in sel if not t.active]
    if down:
        up = [t for t in sel if t.active]
        evidence = "; ".join(f"{t.name} is {t.state_text()} (netdev {t.operstate or '?'})" for t in down)
        if up:
            evidence += f" while {', '.join(f'{t.name} is {t.state_text()}' for t in up)}: NCCL gets half the bandwidth"
        out.append(ctx.f("rdma.twins-active", ERROR, evidence,
                         f"both twins of a cage come up with one cable: `sudo ip link set {down[0].netdev} up`, "
                         "check NetworkManager (`nmcli device status`), then reboot both nodes with the cable attached"))
    elif not ctx.spec.fabric_hcas and any(len(ctx.fabric.cages.get(c, ())) < 2 for c in fab.cabled):
        out.append(ctx.f("rdma.twins-active", WARNING,
                         f"only one RDMA function serves the cabled cage ({', '.join(t.name for t in sel)}, ACTIVE): "
                         "a Spark has two twins per cage, each ~100 Gb/s",
                         "check that all four ConnectX-7 functions are present (`lspci | grep -i mellanox`)"))
    else:
        out.append(ctx.f("rdma.twins-active", OK, ", ".join(f"{t.name} {t.state_text()}" for t in sel)))
    active = [t for t in sel if t.active]
    if active:
        wrong = [t for t in active if (t.link_layer or "").lower() != "ethernet"]
        if wrong:
            out.append(ctx.f("rdma.link-layer", ERROR,
                             ", ".join(f"{t.hca} link layer {t.link_layer or 'unknown'}" for t in wrong),
                             "the Spark's ConnectX-7 runs RoCE: set the port type to Ethernet "
                             "(mlxconfig LINK_TYPE_P1=2) and reboot"))
        else:
            out.append(ctx.f("rdma.link-layer", OK, "Ethernet (RoCE) on " + ", ".join(t.hca for t in active)))
        slow = [t for t in active if (t.rate_gbps or 0) < FULL_RATE_GBPS
                or (t.speed_mbps is not None and t.speed_mbps < FULL_RATE_GBPS * 1000)]
        rates = ", ".join(f"{t.hca} {t.rate or '?'} (netdev {t.speed_mbps or '?'} Mb/s)" for t in (slow or active))
        if slow:
            out.append(ctx.f("rdma.rate", WARNING, rates,
                             "a direct DAC runs at 200 Gb/s (4X); behind a switch set the port to 200G "
                             "(200G-baseCR4, autoneg off); check the cable and `lspci -vv` LnkSta Width x4"))
        else:
            out.append(ctx.f("rdma.rate", OK, rates))
    out += _check_addresses(ctx)
    out += _check_gids(ctx)
    return out


def _check_addresses(ctx: NodeContext) -> list[Finding]:
    sel = [t for t in ctx.fabric.selected if t.netdev]
    out = []
    none = [t for t in sel if not t.ipv4]
    many = [t for t in sel if len(t.ipv4) > 1]
    listed = ", ".join(f"{t.netdev} {' '.join(t.ipv4) or 'no IPv4'}" for t in sel)
    if none:
        out.append(ctx.f(
            "net.twin-ipv4", ERROR,
            f"{listed}: {', '.join(t.netdev or t.hca for t in none)} has no IPv4 address, so "
            f"{', '.join(t.hca for t in none)} has no IPv4 RoCE v2 GID and NCCL falls back to the fe80 GID 0 "
            "(RoCE timeouts or one twin only)",
            f"give every twin a static IPv4 on its own subnet, e.g. netplan `{none[0].netdev}: addresses: "
            "[192.168.101.10/24]` (the old link-local netplan lists only enp1s0f*), then `sudo netplan apply`"))
    elif many:
        out.append(ctx.f("net.twin-ipv4", WARNING, f"{listed}: more than one IPv4 on {', '.join(str(t.netdev) for t in many)}",
                         "keep exactly one IPv4 per twin (each address adds GIDs; NCCL uses the first it matches)"))
    else:
        out.append(ctx.f("net.twin-ipv4", OK, listed))
    addressed = [t for t in sel if t.ipv4]
    if len(addressed) >= 2:
        nets: dict[str, list[Twin]] = {}
        for t in addressed:
            nets.setdefault(str(network(t.ipv4[0])), []).append(t)
        shared = {n: ts for n, ts in nets.items() if len(ts) > 1}
        if shared:
            text = "; ".join(f"{' and '.join(f'{t.netdev} {t.ipv4[0]}' for t in ts)} share {n}" for n, ts in shared.items())
            out.append(ctx.f("net.twin-subnets", ERROR, text,
                             "put each twin on its own subnet (e.g. 192.168.100.0/24 and 192.168.101.0/24): one "
                             "subnet on both twins confuses routing and NCCL's address matching"))
        else:
            out.append(ctx.f("net.twin-subnets", OK, ", ".join(f"{t.netdev} {network(t.ipv4[0])}" for t in addressed)))
    return out


def _describe_gids(twin: Twin) -> str:
    return ", ".join(f"{g.index}: {g.ipv4 or g.gid} {g.type or '?'}" for g in twin.gids) or "none"


def _check_gids(ctx: NodeContext) -> list[Finding]:
    good, bad = [], []
    for t in ctx.fabric.selected:
        gid = t.roce_v2_ipv4_gid()
        if gid is not None:
            good.append(f"{t.hca} index {gid.index} (RoCE v2 {gid.ipv4} on {t.netdev})")
            continue
        if not t.ipv4:
            bad.append(f"{t.hca}: {t.netdev} has no IPv4, so no IPv4 GID (GIDs {_describe_gids(t)})")
        elif all(g.is_link_local for g in t.gids):
            bad.append(f"{t.hca}: only link-local GIDs ({_describe_gids(t)}) although {t.netdev} has {', '.join(t.ipv4)}")
        else:
            bad.append(f"{t.hca}: no RoCE v2 GID for {', '.join(t.addresses)} on {t.netdev} (GIDs {_describe_gids(t)})")
    out = []
    if bad:
        out.append(ctx.f("rdma.roce-v2-gid", ERROR, "; ".join(bad + good),
                         "NCCL needs an IPv4 RoCE v2 GID on every HCA, else it uses GID 0 (fe80) and times out or "
                         "runs one twin: give each twin its IPv4 address (the kernel then adds the GIDs); if the "
                         "address is there but the GID is not, bounce the link or reboot"))
    else:
        out.append(ctx.f("rdma.roce-v2-gid", OK, "; ".join(good)))
    out.append(_check_gid_pin(ctx))
    return out


def _check_gid_pin(ctx: NodeContext) -> Finding:
    pinned = ctx.env.get("NCCL_IB_GID_INDEX")
    auto = ", ".join(f"{t.hca} {g.index}" for t in ctx.fabric.selected if (g := t.roce_v2_ipv4_gid()) is not None)
    if pinned is None:
        return ctx.f("rdma.gid-index-pin", OK,
                     "NCCL_IB_GID_INDEX unset: NCCL picks the RoCE v2 IPv4 GID per HCA" + (f" ({auto})" if auto else ""))
    where = ctx.env_source.get("NCCL_IB_GID_INDEX", "the environment")
    hint = ("remove NCCL_IB_GID_INDEX: NCCL's auto-selection finds the right GID on each HCA, and indexes drift "
            "after link events (3 -> 4 has been seen within 30 minutes)")
    if not pinned.strip().lstrip("-").isdigit():
        return ctx.f("rdma.gid-index-pin", WARNING,
                     f"NCCL_IB_GID_INDEX={pinned!r} ({where}): not a number; an empty value is read as 0, the "
                     "fe80 link-local GID", hint)
    index = int(pinned)
    if index < 0:
        return ctx.f("rdma.gid-index-pin", OK, f"NCCL_IB_GID_INDEX={index} ({where}): automatic selection")
    wrong = []
    for t in ctx.fabric.selected:
        g = t.gid(index)
        if g is None or not g.is_roce_v2 or g.ipv4 not in t.addresses:
            have = f"{g.ipv4 or g.gid} {g.type}" if g else "empty"
            right = t.roce_v2_ipv4_gid()
            wrong.append(f"on {t.hca} index {index} is {have}"
                         + (f"; its RoCE v2 IPv4 GID is index {right.index}" if right else ""))
    if wrong:
        return ctx.f("rdma.gid-index-pin", WARNING, f"NCCL_IB_GID_INDEX={index} ({where}) but " + "; ".join(wrong), hint)
    return ctx.f("rdma.gid-index-pin", OK,
                 f"NCCL_IB_GID_INDEX={index} ({where}) is the RoCE v2 IPv4 GID on every HCA (unset would be safer)")


def check_transport(ctx: NodeContext) -> list[Finding]:
    if not ctx.uses_rdma:
        return []
    forced = []
    if _truthy(ctx.env.get("NCCL_IB_DISABLE")):
        forced.append(f"NCCL_IB_DISABLE={ctx.env['NCCL_IB_DISABLE']} ({ctx.env_source.get('NCCL_IB_DISABLE')})")
    if (ctx.env.get("NCCL_NET") or "").strip().lower() == "socket":
        forced.append(f"NCCL_NET={ctx.env['NCCL_NET']} ({ctx.env_source.get('NCCL_NET')})")
    if forced:
        return [ctx.f("env.nccl-transport", WARNING,
                      f"{'; '.join(forced)}: NCCL will use TCP sockets although RoCE is cabled (~30% less "
                      "bandwidth, much higher latency)", "remove the variable unless sockets are wanted on purpose")]
    return [ctx.f("env.nccl-transport", OK, "NCCL may use RoCE (NCCL_IB_DISABLE and NCCL_NET=Socket not set)")]


# --------------------------------------------------------------------------
# addressing and MTU
# --------------------------------------------------------------------------
def check_fabric_address(ctx: NodeContext) -> list[Finding]:
    if section(ctx.facts, "netdevs") is None and not ctx.facts.get("interfaces"):
        return []
    ifaces = ipv4_map(ctx.facts)
    node, spec = ctx.node, ctx.spec
    if spec.fabric_interface and spec.fabric_interface not in ifaces and \
            spec.fabric_interface not in (section(ctx.facts, "netdevs") or {}):
        return [ctx.f("net.fabric-address", ERROR, f"fabric.interface {spec.fabric_interface} does not exist on the node",
                      "fix inventory fabric.interface (see `ip -br addr` on the node)")]
    if node.fabric_ip:
        held = interface_for(node.fabric_ip, ifaces)
        if held is None:
            have = ", ".join(f"{n} {' '.join(c)}" for n, c in sorted(ifaces.items()) if c) or "none"
            return [ctx.f("net.fabric-address", ERROR, f"no interface holds fabric_ip {node.fabric_ip} (IPv4 here: {have})",
                          "set nodes[].fabric_ip to an IPv4 address the node really has")]
        return [ctx.f("net.fabric-address", OK, f"fabric_ip {node.fabric_ip} is on {held}")]
    address = ctx.plan.address if ctx.plan else node.host
    if not is_ip(address):
        return [ctx.f("net.fabric-address", WARNING, f"VLLM_HOST_IP would be the host name {address!r}",
                      "set nodes[].fabric_ip to the node's fabric IPv4 address")]
    held = interface_for(address, ifaces)
    if held is None:
        return [ctx.f("net.fabric-address", WARNING, f"{address} (nodes[].host) is not an address of this node",
                      "set nodes[].fabric_ip to an IPv4 address the node really has")]
    why = ctx.plan.why.get("VLLM_HOST_IP", "") if ctx.plan else ""
    return [ctx.f("net.fabric-address", OK, f"VLLM_HOST_IP {address} on {held}" + (f" ({why})" if why else ""))]


def fabric_mtus(ctx: NodeContext) -> dict[str, int | None]:
    """{netdev: mtu} of the interfaces that carry the fabric on this node."""
    if ctx.uses_rdma:
        return {t.netdev: t.mtu for t in ctx.fabric.selected if t.netdev and t.has_link}
    if ctx.plan and ctx.plan.interface:
        return {ctx.plan.interface: netdev_mtu(ctx.facts, ctx.plan.interface)}
    return {}


def check_mtu(ctx: NodeContext) -> list[Finding]:
    if section(ctx.facts, "netdevs") is None:
        return []
    mtus = fabric_mtus(ctx)
    if not mtus or (not ctx.uses_rdma and ctx.spec.fabric_mtu is None):
        return []  # no RoCE fabric and no fabric.mtu: nothing to recommend
    listed = ", ".join(f"{n} {m if m is not None else '?'}" for n, m in mtus.items())
    if ctx.spec.fabric_mtu is not None:
        wrong = {n: m for n, m in mtus.items() if m != ctx.spec.fabric_mtu}
        if wrong:
            return [ctx.f("net.mtu", ERROR, f"MTU {listed}; inventory fabric.mtu is {ctx.spec.fabric_mtu}",
                          f"`sudo ip link set <if> mtu {ctx.spec.fabric_mtu}` and persist it (netplan `mtu:` / nmcli)")]
        return [ctx.f("net.mtu", OK, f"MTU {listed} (fabric.mtu)")]
    low = {n: m for n, m in mtus.items() if (m or 0) < RECOMMENDED_MTU}
    if low:
        return [ctx.f("net.mtu", WARNING, f"MTU {listed}: RoCE runs at a 1024-byte MTU below 9000 "
                      "(small-message latency ~25% higher)",
                      "set mtu: 9000 on every ConnectX-7 interface on every node (netplan or nmcli), persistently")]
    return [ctx.f("net.mtu", OK, f"MTU {listed}")]


# --------------------------------------------------------------------------
# limits, memory, disk, model, ports
# --------------------------------------------------------------------------
def check_memlock(ctx: NodeContext) -> list[Finding]:
    limits = section(ctx.facts, "limits")
    if limits is None or limits.get("memlock_soft") is None:
        return []
    soft = int(limits["memlock_soft"])
    if soft == -1:
        return [ctx.f("limits.memlock", OK, "memlock unlimited")]
    text = f"memlock limit {gib(soft)} ({soft} bytes)"
    if ctx.uses_rdma:
        return [ctx.f("limits.memlock", WARNING, f"{text}: RDMA memory registration can fail "
                      "(ibv_reg_mr: Cannot allocate memory) and NCCL falls back or aborts",
                      "set `* - memlock unlimited` in /etc/security/limits.conf (and --ulimit memlock=-1 "
                      "--cap-add IPC_LOCK for containers), then log in again")]
    return [ctx.f("limits.memlock", OK, f"{text} (no RDMA in use)")]


def check_memory(ctx: NodeContext) -> list[Finding]:
    memory = section(ctx.facts, "memory")
    if memory is None or memory.get("mem_available_bytes") is None:
        return []
    spec = ctx.spec
    available = int(memory["mem_available_bytes"])
    total = int(memory.get("mem_total_bytes") or 0)
    model = section(ctx.facts, "model") or {}
    weights = int(model.get("total_bytes") or 0) if spec.load_format != "dummy" else 0
    share = weights / max(1, len(spec.nodes))
    gpu = section(ctx.facts, "gpu") or {}
    gpus = gpu.get("gpus") or []
    if ctx.cpu_only or not gpus:
        kv_gib = float_or(ctx.env.get("VLLM_CPU_KVCACHE_SPACE") or spec.env_values(ctx.name).get("VLLM_CPU_KVCACHE_SPACE"),
                        DEFAULT_CPU_KVCACHE_GIB)
        need = share + kv_gib * 2**30 * max(1, ctx.node.gpus)
        text = (f"MemAvailable {gib(available)}; needs ~{gib(need)} (weights share {gib(share)} + KV cache "
                f"{kv_gib:g} GiB x {max(1, ctx.node.gpus)})")
        if available < need:
            return [ctx.f("memory.available", ERROR, text,
                          "free memory on the node, or lower VLLM_CPU_KVCACHE_SPACE / use a smaller model")]
        return [ctx.f("memory.available", OK, text)]
    if all(g.get("memory_total_mib") is None for g in gpus):  # unified memory (GB10): vLLM sizes from host memory
        util = spec.gpu_memory_utilization
        want = util * total
        text = (f"MemAvailable {gib(available)} of {gib(total)}; vLLM wants gpu_memory_utilization {util:g} x total "
                f"= {gib(want)}; weights share {gib(share)}")
        if share > want:
            return [ctx.f("memory.available", ERROR, text + ": the weights do not fit",
                          "use more nodes, a smaller or more quantized model, or a higher --gpu-memory-utilization")]
        if available < want:
            return [ctx.f("memory.available", ERROR, text + ": vLLM refuses to start (free memory below the target)",
                          "free memory (stop other jobs and containers, close the desktop session, "
                          "`sync; echo 3 | sudo tee /proc/sys/vm/drop_caches`) or lower --gpu-memory-utilization")]
        return [ctx.f("memory.available", OK, text)]
    device = sum(int(g.get("memory_total_mib") or 0) for g in gpus) * 2**20
    text = f"GPU memory {gib(device)} x {spec.gpu_memory_utilization:g}; weights share {gib(share)}"
    if share > device * spec.gpu_memory_utilization:
        return [ctx.f("memory.available", ERROR, text + ": the weights do not fit",
                      "use more nodes or a smaller / quantized model")]
    return [ctx.f("memory.available", OK, text)]


def check_disk(ctx: NodeContext) -> list[Finding]:
    disk = section(ctx.facts, "disk")
    if disk is None or disk.get("free_bytes") is None:
        return []
    free = int(disk["free_bytes"])
    text = f"{gib(free)} free on {disk.get('path')}"
    if free < MIN_FREE_DISK:
        return [ctx.f("disk.free", WARNING, text, "free disk space (logs, compile caches and downloads need room)")]
    return [ctx.f("disk.free", OK, text)]


def check_model(ctx: NodeContext) -> list[Finding]:
    model = section(ctx.facts, "model")
    path = ctx.spec.model_path
    if model is None or not path or not model.get("path"):
        return []
    copy_hint = f"copy the model to the same absolute path on every node (e.g. `rsync -a {path}/ <node>:{path}/`)"
    if not model.get("exists"):
        return [ctx.f("model.complete", ERROR, f"{path} does not exist", copy_hint)]
    if not model.get("is_dir"):
        return [ctx.f("model.complete", ERROR, f"{path} is not a directory", copy_hint)]
    config = model.get("config") or {}
    if not config.get("present"):
        return [ctx.f("model.complete", ERROR, f"{path} has no config.json", copy_hint)]
    if not config.get("valid"):
        return [ctx.f("model.complete", ERROR, f"{path}/config.json is not valid JSON: {config.get('error')}", copy_hint)]
    kind = config.get("model_type") or "?"
    if ctx.spec.load_format == "dummy":
        return [ctx.f("model.complete", OK, f"config.json ({kind}) valid; --load-format dummy: no weights needed")]
    weights = model.get("weights") or []
    problems = []
    if not weights:
        problems.append("no weight files (*.safetensors, *.bin)")
    index = model.get("index") or None
    if index:
        if not index.get("valid"):
            problems.append(f"{index.get('file')} unreadable: {index.get('error')}")
        if index.get("missing"):
            problems.append(f"{len(index['missing'])} file(s) named in {index['file']} missing: "
                            + ", ".join(index["missing"][:4]))
    for key, label in (("shards_missing", "shard(s) missing"), ("empty_files", "empty file(s)"),
                       ("broken_links", "broken link(s) (blob gone)"),
                       ("incomplete_markers", "unfinished download(s)")):
        items = model.get(key) or []
        if key == "shards_missing" and index and index.get("valid"):
            continue  # the index is the authority when there is one
        if items:
            count = int(model.get("shards_missing_count") or len(items)) if key == "shards_missing" else len(items)
            problems.append(f"{count} {label}: {', '.join(items[:4])}")
    for series in model.get("shard_series_implausible") or []:
        problems.append(f"a weight file claims an implausible shard count ({series}): a stray or corrupt file name")
    total = int(model.get("total_bytes") or 0)
    summary = f"config.json ({kind}), {len(weights)} weight file(s), {gib(total)}"
    if index and index.get("valid"):
        summary += f", {index['file']} lists {index.get('referenced')} file(s)"
    if problems:
        return [ctx.f("model.complete", ERROR, f"{summary}; " + "; ".join(problems),
                      "finish the download (`hf download <repo> --local-dir <path>` resumes) or copy the complete "
                      "model from another node")]
    return [ctx.f("model.complete", OK, summary)]


def check_ports(ctx: NodeContext) -> list[Finding]:
    ports = section(ctx.facts, "ports")
    if ports is None or not ports.get("requested"):
        return []
    own_prefix = f"{ctx.spec.cluster}/"
    foreign = [e for e in ports.get("in_use") or [] if not (e.get("tag") or "").startswith(own_prefix)]
    own = [e for e in ports.get("in_use") or [] if (e.get("tag") or "").startswith(own_prefix)]
    if foreign:
        text = "; ".join(f"port {e['port']} in use by pid {e.get('pid') or '?'} ({e.get('cmdline') or 'unknown'})"
                         for e in foreign)
        return [ctx.f("ports.free", ERROR, text,
                      "stop that process (if it is a sparkctl cluster of another name: `sparkctl down` there), or "
                      "change port / master_port in the playbook")]
    text = "free: " + ", ".join(str(p) for p in ports.get("free") or []) if ports.get("free") else ""
    if own:
        text = "; ".join(filter(None, [text, ", ".join(f"{e['port']} held by this cluster's {e.get('tag')} "
                                                       f"(pid {e.get('pid')})" for e in own)]))
    return [ctx.f("ports.free", OK, text)]


# --------------------------------------------------------------------------
# reachability
# --------------------------------------------------------------------------
def _target(r: dict) -> str:
    label = " ".join(str(x) for x in (r.get("node"), r.get("kind")) if x)
    via = r.get("interface")
    return f"{r.get('address')}" + (f" ({label})" if label else "") + (f" via {via}" if via else "")


def check_reach(ctx: NodeContext) -> list[Finding]:
    reach = section(ctx.facts, "reach")
    if reach is None:
        return []
    results = reach.get("results") or []
    if reach.get("error"):
        return [ctx.f("net.peer-reach", WARNING, str(reach["error"]), "install iputils-ping on the node")]
    if not results:
        return []
    out = []
    lost = [r for r in results if not (r.get("small") or {}).get("ok")]
    refused = [r for r in lost if (r.get("small") or {}).get("error") == "permission"]
    lost = [r for r in lost if r not in refused]
    if lost:
        out.append(ctx.f("net.peer-reach", ERROR,
                         "; ".join(f"no reply from {_target(r)}: {_last(r['small'])}" for r in lost),
                         "check the cable, the addresses and routes: `ip route get <peer>` must name the matching "
                         "local twin, and each twin's peer must be on the same subnet"))
    elif refused:
        out.append(ctx.f("net.peer-reach", WARNING, "ping not permitted: " + "; ".join(_target(r) for r in refused),
                         "allow unprivileged ping (sysctl net.ipv4.ping_group_range) or give ping CAP_NET_RAW"))
    else:
        out.append(ctx.f("net.peer-reach", OK, "replies from " + ", ".join(_target(r) for r in results)))
    jumbo = [r for r in results if (r.get("small") or {}).get("ok") and r.get("jumbo")]
    bad = [r for r in jumbo if not r["jumbo"].get("ok") and r["jumbo"].get("error") != "permission"]
    refused_j = [r for r in jumbo if not r["jumbo"].get("ok") and r["jumbo"].get("error") == "permission"]
    if bad:
        parts = []
        for r in bad:
            size = r["jumbo"].get("size")
            why = ("the local path MTU is smaller (message too long)" if r["jumbo"].get("error") == "local-mtu"
                   else "no reply, while small pings get one: an MTU is smaller somewhere on the path")
            parts.append(f"ping -M do -s {size} (MTU {r.get('mtu')}) to {_target(r)}: {why}")
        out.append(ctx.f("net.peer-mtu", ERROR, "; ".join(parts),
                         "set the same MTU (9000) on both ends of every fabric link; a mismatch passes small pings "
                         "and then hangs a real collective"))
    elif refused_j:
        out.append(ctx.f("net.peer-mtu", WARNING, "ping -I not permitted: " + "; ".join(_target(r) for r in refused_j),
                         "run the check as a user allowed to bind ping to an interface"))
    elif jumbo:
        out.append(ctx.f("net.peer-mtu", OK, "full-MTU don't-fragment pings reach "
                         + ", ".join(f"{_target(r)} (MTU {r.get('mtu')})" for r in jumbo)))
    return out


def _last(result: dict) -> str:
    tail = (result.get("tail") or "").strip().splitlines()
    return tail[-1] if tail else f"exit {result.get('rc')}"


# --------------------------------------------------------------------------
def _section_error(ctx: NodeContext, name: str, check: str) -> list[Finding]:
    value = ctx.facts.get(name)
    if isinstance(value, dict) and value.get("error"):
        return [ctx.f(check, WARNING, f"the {name} facts could not be read: {value['error']}",
                      "run with --debug and report the node agent's error")]
    return []


NODE_CHECKS: tuple[Callable[[NodeContext], list[Finding]], ...] = (
    check_gpu,
    check_rdma,
    check_transport,
    check_fabric_address,
    check_mtu,
    check_memlock,
    check_memory,
    check_disk,
    check_model,
    check_ports,
    check_reach,
)


def node_findings(ctx: NodeContext) -> list[Finding]:
    out: list[Finding] = []
    for check in NODE_CHECKS:
        out += check(ctx)
    return out
