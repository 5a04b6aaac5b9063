"""`sparkctl init`'s steps in order: host keys, facts, the fabric (as found, or
the fix, applied with --apply), the inventory, and `check` on what was written."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from sparkctl.checks import CheckReport
from sparkctl.errors import ConnectionFailed, InputError
from sparkctl.init.apply import Applied, apply_fabric
from sparkctl.init.discover import Discovery, Target, discover, provisional_inventory
from sparkctl.init.fabric_fix import FabricPlan, fix_text, plan_fabric
from sparkctl.init.hostkeys import HostKey, fetch, settle
from sparkctl.init.write_inventory import Provenance, render_inventory, write_inventory
from sparkctl.inventory import load_inventory
from sparkctl.ops.check import run_check
from sparkctl.progress import Reporter
from sparkctl.remote.result import NodeUnavailable

# check areas whose FAILs make init fail; the others (versions, model, memory) are for `up` to
# need and are printed as what is left to do
FABRIC_AREAS = ("facts", "rdma", "net", "env")


@dataclass(frozen=True)
class InitOptions:
    target: Target
    output: str
    force: bool
    accept_new: bool
    apply: bool
    mtu: int
    netplan_dir: str
    command: str
    created: str


@dataclass(frozen=True)
class InitResult:
    output: str | None
    keys: tuple[HostKey, ...]
    accepted: tuple[HostKey, ...]
    discovery: Discovery
    plan: FabricPlan
    fix: str | None  # the printed configuration when the fabric needed one
    applied: Applied | None
    check: CheckReport | None

    def fabric_failures(self) -> list[Any]:
        """The check's FAILs that are init's business: reaching the nodes, RDMA and the network."""
        if self.check is None:
            return []
        return [f for f in self.check.failed() if f.code.split(".")[0] in FABRIC_AREAS]

    @property
    def exit_code(self) -> int:
        if self.plan.needed and self.applied is None:
            return 1  # the fabric still needs the printed configuration
        return 1 if self.fabric_failures() else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "inventory": self.output,
            "host_keys": [{"host": k.entry_name, "type": k.key_type, "fingerprint": k.fingerprint,
                           "state": "accepted" if k in self.accepted else k.state.value} for k in self.keys],
            "nodes": [{"name": name, "host": v.host, "hostname": v.hostname, "gpus": v.gpus, "cage": v.cage,
                       "twins_from": v.twins_from,
                       "twins": [{"netdev": t.netdev, "hca": t.hca, "ipv4": list(t.ipv4), "mtu": t.mtu} for t in v.twins]}
                      for name, v in zip(self.discovery.names, self.discovery.nodes)],
            "fabric": {"configured": not self.plan.needed or self.applied is not None, "problems": list(self.plan.problems),
                       "subnets": [str(net) for net, _ in self.plan.subnets], "mtu": self.plan.mtu,
                       "fabric_ips": {f.name: f.fabric_ip for f in self.plan.nodes}, "fix": self.fix},
            "applied": None if self.applied is None else {"commands": self.applied.commands,
                                                          "verified": list(self.applied.verified),
                                                          "netplan_files": list(self.applied.netplan_files)},
            "check": None if self.check is None else {"status": self.check.worst.value, "counts": self.check.counts(),
                                                      "exit_code": self.check.exit_code,
                                                      "fabric_failures": [f.to_dict() for f in self.fabric_failures()]},
            "exit_code": self.exit_code,
        }


def check_options(target: Target, output: str, force: bool) -> None:
    """Bad input before any node is touched (exit 2)."""
    if len(target.hosts) < 2:
        raise InputError("--hosts needs at least two hosts, separated by commas", hint="--hosts spark-a,spark-b")
    if len(set(target.hosts)) != len(target.hosts):
        raise InputError(f"--hosts names a host twice: {','.join(target.hosts)}")
    if target.head not in target.hosts:
        raise InputError(f"--head {target.head} is not one of --hosts ({','.join(target.hosts)})")
    if os.path.exists(output) and not force:
        raise InputError(f"{output} exists; not overwritten", hint="choose another -o, or pass --force to replace it")


def host_keys(target: Target, *, accept_new: bool, ask: Callable[[HostKey], bool] | None,
              reporter: Reporter) -> tuple[tuple[HostKey, ...], tuple[HostKey, ...]]:
    def one(host: str) -> HostKey | NodeUnavailable:
        try:
            return fetch(host, target.port, target.user, target.known_hosts, timeout_s=10.0)
        except NodeUnavailable as exc:
            return exc

    with ThreadPoolExecutor(max_workers=min(16, len(target.hosts))) as pool:
        outcomes = list(pool.map(one, target.hosts))
    failed = [o for o in outcomes if isinstance(o, NodeUnavailable)]
    if failed:
        raise ConnectionFailed(f"cannot reach {', '.join(f.node for f in failed)} over SSH",
                               details=[str(f) for f in failed], hint=failed[0].hint)
    keys = [o for o in outcomes if isinstance(o, HostKey)]
    for key in keys:
        reporter.event(key.host, f"host key {key.key_type} {key.fingerprint}: {key.state.value}")
    accepted = settle(keys, target.known_hosts, accept_new=accept_new, ask=ask)
    return tuple(keys), tuple(accepted)


def init_cluster(options: InitOptions, reporter: Reporter, ask: Callable[[HostKey], bool] | None) -> InitResult:
    target = options.target
    check_options(target, options.output, options.force)
    keys, accepted = host_keys(target, accept_new=options.accept_new, ask=ask, reporter=reporter)
    reporter.event(None, f"gathering facts from {len(target.hosts)} host(s)")
    discovery = discover(target)
    plan = plan_fabric(discovery, options.mtu)
    fix = fix_text(plan, options.netplan_dir) if plan.needed else None
    applied = None
    if plan.needed and options.apply:
        inventory = provisional_inventory(target, discovery.names)
        applied = apply_fabric(inventory, plan, reporter, netplan_dir=options.netplan_dir, force=options.force)
    pending = plan.needed and applied is None
    text = render_inventory(target, discovery, plan, Provenance(
        options.command, options.created, "pending" if pending else "verified",
        f"{len(applied.verified)} don't-fragment pings at this MTU passed after --apply" if applied
        else "to be set by the configuration init printed" if pending else "as measured on every twin"))
    path = write_inventory(options.output, text, force=options.force)
    report = None
    if not pending:
        reporter.event(None, f"sparkctl check -i {path}")
        report, _ = run_check(load_inventory(path), None, reporter)
    return InitResult(path, keys, accepted, discovery, plan, fix, applied, report)
