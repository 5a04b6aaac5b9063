"""`sparkctl init`'s text for people."""

from __future__ import annotations

from sparkctl.checks import render_text
from sparkctl.checks.fabric import gib
from sparkctl.findings import Severity
from sparkctl.init.flow import InitResult


def init_text(result: InitResult) -> str:
    lines = []
    for key in result.keys:
        state = "accepted and recorded" if key in result.accepted else key.state.value
        lines.append(f"host key {key.entry_name}: {key.key_type} {key.fingerprint} ({state})")
    lines.append("")
    for name, view in zip(result.discovery.names, result.discovery.nodes):
        twins = ", ".join(f"{t.netdev} {'/'.join(t.ipv4) or 'no IPv4'} MTU {t.mtu}" for t in view.twins)
        gpu = f"{view.gpus} x {', '.join(view.gpu_names)}" if view.gpus else "no GPU"
        lines.append(f"{name} ({view.host}): cage {view.cage}: {twins}; {gpu}; memory {gib(view.memory_total)}")
    if result.fix:
        lines += ["", result.fix]
    if result.applied:
        lines += ["", f"applied: {result.applied.commands} command(s); verified:"]
        lines += [f"  {v}" for v in result.applied.verified]
        lines += [f"  persistent: {f}" for f in result.applied.netplan_files]
    lines += ["", f"inventory: {result.output}"]
    if result.check is not None:
        lines += ["", f"sparkctl check -i {result.output}:"]
        problems = any(f.severity is not Severity.OK for f in result.check.findings)
        lines.append(render_text(result.check, show_pass=False, show_plan=False) if problems
                     else render_text(result.check, show_pass=False, show_plan=False).splitlines()[-1])
        failures = result.fabric_failures()
        lines.append(f"the fabric and the nodes' network: {len(failures)} FAIL" + (
            "" if failures else "; FAILs above, if any, are for `up` (vLLM, versions, the model): see the hints"))
    elif result.fix:
        lines.append("the fabric needs the configuration above: apply it (or run again with --apply), "
                     "then `sparkctl check -i " + str(result.output) + "`")
    return "\n".join(lines)
