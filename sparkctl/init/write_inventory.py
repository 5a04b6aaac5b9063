"""The inventory `init` writes: plain YAML where every derived value carries a
comment saying where it came from. Checked by the real loader before it lands,
written atomically, never over an existing file without --force."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable

from sparkctl.checks.fabric import gib
from sparkctl.errors import InputError, OperationFailed
from sparkctl.init.discover import Discovery, Target
from sparkctl.init.fabric_fix import FabricPlan
from sparkctl.inventory import load_inventory


@dataclass(frozen=True)
class Provenance:
    command: str
    created: str
    fabric_state: str  # "verified" | "pending" (the fix has not been applied yet)
    reach: str  # what the pings showed, one line


def render_inventory(target: Target, discovery: Discovery, plan: FabricPlan, why: Provenance) -> str:
    """The inventory text. Values are validated names and addresses, so they need no quoting."""
    default_kh = os.path.expanduser("~/.ssh/known_hosts")
    lines = [
        f"# Written by `{why.command}` on {why.created}.",
        "# Every derived value says where it came from; `sparkctl init ... --force` writes it again.",
    ]
    if why.fabric_state == "pending":
        lines += ["# NOTE: the fabric addresses below become true once the configuration `init` printed",
                  "# is applied (or `sparkctl init ... --apply`); until then `sparkctl check` fails."]
    lines += [f"cluster: {target.cluster}", "ssh:", f"  user: {target.user}                # --user"]
    if target.port != 22:
        lines.append(f"  port: {target.port}                # --port")
    if target.identity_file:
        lines.append(f"  identity_file: {json.dumps(target.identity_file)}   # --identity-file")
    if os.path.abspath(target.known_hosts) != default_kh:
        lines.append(f"  known_hosts: {json.dumps(target.known_hosts)}   # --known-hosts; keys checked at first contact")
    lines.append("nodes:")
    names_from = discovery.names_from
    for i, (view, name) in enumerate(zip(discovery.nodes, discovery.names)):
        fix = plan.nodes[i]
        first = fix.twins[0]
        lines += [
            f"  - name: {name}          # {names_from}",
            f"    host: {view.host}          # --hosts: the management address"
            + (f" (on {view.mgmt_interface})" if view.mgmt_interface else ""),
            f"    fabric_ip: {fix.fabric_ip}   # {first.netdev}, twin 1 of cabled cage {view.cage}"
            + (" (to be configured)" if why.fabric_state == "pending" and first.changes else ""),
        ]
        lines.append("    role: head            # " + ("--head" if target.head != target.hosts[0] else "the first host")
                     if view.host == target.head else "    role: worker")
        if view.gpus > 1:
            lines.append(f"    gpus: {view.gpus}               # GPUs the node reports")
        twins = ", ".join(f"{t.netdev} {t.target}" for t in fix.twins)
        lines.append(f"    # fabric: {twins}; MTU {plan.mtu}; twins from {view.twins_from}")
        gpu = f"{view.gpus} x {', '.join(view.gpu_names)}" if view.gpus else "no GPU visible"
        lines.append(f"    # {gpu}; memory {gib(view.memory_total)}")
    lines += ["fabric:", f"  mtu: {plan.mtu}                 # every twin, both ends; {why.reach}"]
    return "\n".join(lines) + "\n"


def write_inventory(path: str, text: str, *, force: bool) -> str:
    return write_checked(path, text, force=force, load=load_inventory)


def write_checked(path: str, text: str, *, force: bool, load: Callable[[str], object]) -> str:
    """Write atomically after `load` (the real loader) accepts the text; never over a file without force."""
    if os.path.exists(path) and not force:
        raise InputError(f"{path} exists; not overwritten", hint="choose another -o, or pass --force to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        load(tmp)  # what init writes must load; a failure here is a bug in init
        os.replace(tmp, path)
    except OSError as exc:
        raise OperationFailed(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
