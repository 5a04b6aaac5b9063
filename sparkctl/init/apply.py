"""`init --apply`: the fabric configuration, on the fabric interfaces only, with
a rollback of everything done so far when any step or the verification fails.

Every command is an argv list run through the node's runner (the same SSH
connection `exec` uses); `sudo -n` is put in front for a non-root login.
Order: the `ip` commands for the current boot on every node, then
don't-fragment pings at the full MTU between every pair of twins, then the
netplan file (so the next boot keeps it). `netplan apply` is not run: the
running configuration is already right, and re-rendering could bounce links."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from sparkctl.errors import OperationFailed, SparkctlError
from sparkctl.init.fabric_fix import NETPLAN_FILE, FabricPlan, ip_commands, netplan_yaml
from sparkctl.inventory import Inventory, Node
from sparkctl.progress import Reporter
from sparkctl.remote.session import NodeSession

PING_ATTEMPTS = 5  # a fresh address needs ARP; a link just brought up needs a moment


@dataclass(frozen=True)
class Step:
    node: Node
    argv: tuple[str, ...]
    stdin: bytes | None = None


@dataclass(frozen=True)
class Applied:
    commands: int
    verified: tuple[str, ...]  # one line per pair of twins pinged
    netplan_files: tuple[str, ...]


def netplan_path(netplan_dir: str, node: Node) -> str:
    # "{node}" in --netplan-dir gives each node its own folder (test clusters share one filesystem)
    return os.path.join(netplan_dir.replace("{node}", node.name), NETPLAN_FILE)


def apply_fabric(inventory: Inventory, plan: FabricPlan, reporter: Reporter, *, netplan_dir: str,
                 force: bool) -> Applied:
    fixes = {f.name: f for f in plan.nodes}
    undo: list[Step] = []
    with NodeSession(inventory) as session:
        def run(step: Step) -> bytes:
            argv = list(step.argv) if step.node.user == "root" else ["sudo", "-n", *step.argv]
            result = session.runner(step.node).run(argv, stdin=step.stdin, timeout_s=60)
            if not result.ok:
                raise OperationFailed(f"{step.node.name}: `{' '.join(step.argv)}` exited {result.returncode}: "
                                      f"{result.error_text().strip()[-300:]}",
                                      hint=None if step.node.user == "root" else
                                      "a non-root login needs passwordless sudo for ip and install (sudo -n)")
            return result.stdout

        try:
            old_files = {}
            for node in inventory.nodes:
                path = netplan_path(netplan_dir, node)
                exists = session.runner(node).run(["test", "-e", path], timeout_s=30).ok
                if exists and not force:
                    raise OperationFailed(f"{node.name}: {path} exists; not overwritten",
                                          hint="pass --force to replace it (it is restored on a rollback)")
                # netplan files are mode 600: read the old one as root, to restore it on a rollback
                old_files[node.name] = run(Step(node, ("cat", path))) if exists else None
            count = 0
            for node in inventory.nodes:
                for command, reverse in ip_commands(fixes[node.name]):
                    reporter.event(node.name, " ".join(command))
                    run(Step(node, tuple(command)))
                    undo.append(Step(node, tuple(reverse)))
                    count += 1
            reporter.event(None, "verifying: small and full-MTU don't-fragment pings between every pair of twins")
            verified = _verify(session, inventory, plan)
            written = []
            for node in inventory.nodes:
                path = netplan_path(netplan_dir, node)
                reporter.event(node.name, f"writing {path}")
                run(Step(node, ("install", "-D", "-m", "600", "/dev/stdin", path),
                         netplan_yaml(fixes[node.name]).encode()))
                old = old_files[node.name]
                undo.append(Step(node, ("install", "-m", "600", "/dev/stdin", path), old) if old is not None
                            else Step(node, ("rm", "-f", path)))
                written.append(f"{node.name}:{path}")
        except (SparkctlError, OSError) as exc:
            problems = []
            for step in reversed(undo):
                reporter.event(step.node.name, "rollback: " + " ".join(step.argv))
                try:
                    run(step)
                except (SparkctlError, OSError) as undo_exc:
                    problems.append(str(undo_exc))
            raise OperationFailed(
                f"--apply failed and was rolled back: {getattr(exc, 'message', str(exc))}",
                details=list(getattr(exc, "details", [])) + [f"rollback step failed: {p}" for p in problems],
                hint=getattr(exc, "hint", None) or "the configuration printed above can also be applied by hand",
            ) from None
    return Applied(count, tuple(verified), tuple(written))


def _verify(session: NodeSession, inventory: Inventory, plan: FabricPlan) -> list[str]:
    """Every twin reaches its mate on every other node: a small ping, then one at the full MTU with DF set."""
    fixes = {f.name: f for f in plan.nodes}
    lines: list[str] = []
    failures: list[str] = []
    for node in inventory.nodes:
        for k, twin in enumerate(fixes[node.name].twins):
            for peer in inventory.nodes:
                if peer.name == node.name:
                    continue
                address = fixes[peer.name].twins[k].target.split("/")[0]
                size = twin.mtu - 28  # IPv4 header 20 + ICMP header 8
                ok, tail = _ping(session, node, ["ping", "-c", "1", "-W", "1", "-I", twin.netdev, address])
                if ok:
                    ok, tail = _ping(session, node, ["ping", "-c", "2", "-W", "1", "-M", "do", "-s", str(size),
                                                     "-I", twin.netdev, address])
                line = f"{node.name} {twin.netdev} -> {peer.name} {address}: {size} B don't-fragment"
                (lines if ok else failures).append(line + (" ok" if ok else f" FAILED ({tail})"))
    if failures:
        raise OperationFailed("the fabric does not pass the don't-fragment pings after the change", details=failures)
    return lines


def _ping(session: NodeSession, node: Node, argv: list[str]) -> tuple[bool, str]:
    tail = ""
    for attempt in range(PING_ATTEMPTS):
        result = session.runner(node).run(argv, timeout_s=30)
        if result.ok:
            return True, ""
        tail = ((result.text() + result.error_text()).strip().splitlines()[-1:] or [f"exit {result.returncode}"])[0]
        time.sleep(0.5 * (attempt + 1))
    return False, tail
