"""Text for people: each command's result as the lines the CLI prints.

Pure functions from result objects to strings; the CLI decides where they go.
(`--json` prints the results' own to_dict() instead.)"""

from __future__ import annotations

from typing import Any

from sparkctl.findings import Severity
from sparkctl.inventory import Inventory
from sparkctl.playbook import Playbook


def validated(inventory: Inventory, playbook: Playbook | None) -> dict[str, Any]:
    """What `validate --json` prints: the files as sparkctl resolved them."""
    summary: dict[str, Any] = {
        "ok": True,
        "inventory": {
            "path": inventory.path,
            "cluster": inventory.cluster,
            "nodes": [
                {"name": n.name, "host": n.host, "port": n.port, "user": n.user, "connection": n.connection,
                 "fabric_ip": n.fabric_ip, "role": n.role, "gpus": n.gpus, "env_keys": sorted(inventory.node_env(n))}
                for n in inventory.nodes
            ],
        },
    }
    if playbook:
        summary["playbook"] = {
            "path": playbook.path,
            "model": playbook.model,
            "served_model_name": playbook.served_model_name,
            "backend": playbook.backend,
            "tensor_parallel_size": playbook.tensor_parallel_size,
            "pipeline_parallel_size": playbook.pipeline_parallel_size,
            "port": playbook.port,
            "vllm_command": list(playbook.vllm_command),
        }
    return summary


def _copies(playbook: Playbook) -> str:
    if playbook.replicas > 1:
        return f", {playbook.replicas} replicas behind vllm-router (policy {playbook.router.policy})"
    if playbook.data_parallel_size > 1:
        return f", data parallel {playbook.data_parallel_size}"
    return ""


def validate_text(inventory: Inventory, playbook: Playbook | None) -> str:
    nodes = ", ".join(f"{n.name} ({n.role}, {n.connection})" for n in inventory.nodes)
    lines = [f"{inventory.path}: ok: cluster {inventory.cluster}, {len(inventory.nodes)} node(s): {nodes}"]
    if playbook:
        lines.append(
            f"{playbook.path}: ok: {playbook.served_model_name} ({playbook.model}), backend {playbook.backend}, "
            f"TP={playbook.tensor_parallel_size} x PP={playbook.pipeline_parallel_size} across {len(inventory.nodes)} node(s)"
            + _copies(playbook)
        )
    return "\n".join(lines)


def exec_text(results: list[Any]) -> str:
    lines = []
    for r in results:
        if r.error is not None:
            what = "connection lost" if r.error_kind == "connection-lost" else "unreachable" if r.unreachable else "failed"
            lines.append(f"== {r.node}: {what}: {r.error}")
            continue
        lines.append(f"== {r.node}: exit {r.returncode} ({r.duration_s:.2f}s)")
        lines += [f"{r.node}: {line}" for line in r.stdout.splitlines()]
        lines += [f"{r.node} [stderr]: {line}" for line in r.stderr.splitlines()]
    return "\n".join(lines)


def up_text(result: Any) -> str:
    if result.outcome == "already-up":
        return f"already up: {result.endpoint}/v1 serves {result.served_model_name!r}; nothing was started"
    lines = [f"ready: {result.endpoint}/v1 serves {result.served_model_name!r} "
             f"(backend {result.backend}, {len(result.nodes)} node(s))"]
    kv = result.kv_cache
    if kv.get("tokens") is not None:
        line = f"  KV cache: {kv['tokens']:,} tokens"
        if kv.get("max_concurrency") is not None:
            line += (f"; maximum concurrency {kv['max_concurrency']:.2f}x at "
                     f"{kv.get('tokens_per_request') or '?'} tokens per request")
        lines.append(line)
    t = result.timings
    lines.append(
        f"  up to ready: {t['total_s']:.1f}s, of which vLLM start-up {t['vllm_startup_s']:.1f}s "
        f"(preflight {t['preflight_s']:.1f}s, launch {t['launch_s']:.1f}s, first completion {t['first_completion_s']:.1f}s)"
    )
    lines += [f"  {name}: pid {node['pid']}, log {node['log']}" for name, node in result.nodes.items()]
    return "\n".join(lines)


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None], width: int = 12) -> str:
    """A small trend: the last `width` values scaled to their own maximum."""
    recent = [v for v in values[-width:]]
    top = max((v for v in recent if v is not None), default=0.0) or 1.0
    return "".join(" " if v is None else SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1)))] for v in recent)


def _num(value: float | None, fmt: str = ".0f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"


def status_text(result: Any, trends: dict[str, list[float | None]] | None = None) -> str:
    """`sparkctl status` for people; with trends (from --watch) a sparkline per series."""
    lines = [f"cluster {result.cluster}: {result.state}"]
    # what made the verdict (ERROR) gets a "!", supporting evidence and `stopped` a "-"
    lines += [f"  {'!' if r.severity is Severity.ERROR else '-'} {r.message}" for r in result.reasons]
    if result.endpoint:
        health = result.health if result.health is not None else "no answer"
        lines.append(f"  endpoint {result.endpoint}: /health {health}; models: {', '.join(result.models) or '-'}")
    sample = result.metrics
    if sample is not None and sample.members:
        lines.append("  behind it: " + "; ".join(
            f"{m.member.label} on {m.member.node} ({m.member.url}) /health {m.health or 'no answer'}" for m in sample.members)
            + " (metrics below: their sum)")
    m = sample.metrics if sample else None
    if m is not None:
        rates = result.rates
        gen = rates.generation_tok_s if rates else None
        hit = (m.prefix_cache_hits / m.prefix_cache_queries) if m.prefix_cache_hits is not None and m.prefix_cache_queries else None
        line = (f"  requests running {_num(m.running)}, waiting {_num(m.waiting)}; KV cache "
                f"{_num(None if m.kv_cache_usage is None else m.kv_cache_usage * 100, '.0f', '%')}; "
                f"generation {_num(gen, '.1f')} tok/s, prompt {_num(rates.prompt_tok_s if rates else None, '.1f')} tok/s"
                f"{f' (over {rates.window_s:.1f} s)' if rates else ''}; prefix-cache hits "
                f"{_num(None if hit is None else hit * 100, '.0f', '%')}; preemptions {_num(m.preemptions)}")
        if trends and trends.get("generation"):
            line += f"  [{sparkline(trends['generation'])}]"
        lines.append(line)
        if result.frozen_for_s:
            lines.append(f"  no token generated for {result.frozen_for_s:.0f} s while requests run")
    elif sample is not None and sample.metrics_error:
        lines.append(f"  {sample.metrics_error}")
    if result.canary:
        lines.append(f"  canary (1 token): {result.canary}")
    lines.append(f"  {'NODE':<10} {'ROLE':<7} {'PROCESS':<8} {'PID':>8} {'STATE':<8} {'LOG GREW':>9} {'LOAD':>5} "
                 f"{'MEM FREE':>9}  GPU")
    for name, node in result.nodes.items():
        if node.error:
            lines.append(f"  {name:<10} {node.role:<7} unreachable: {node.error}")
            continue
        t = node.telemetry
        host = ""
        if t is not None:
            host = f"{_num(t.host.load_1m, '.1f'):>5} {_num(t.host.mem_available_mib and t.host.mem_available_mib / 1024, '.1f', 'G'):>9}"
        gpu = _gpu_text(t, trends.get(f"power:{name}") if trends else None) if t is not None else ""
        if not node.records:
            extra = f" ({len(node.processes)} process(es) of this cluster without a record)" if node.processes else ""
            lines.append(f"  {name:<10} {node.role:<7} {'-':<8} {'-':>8} {'-':<8} {'-':>9} {host}  {gpu}  nothing started{extra}")
        for rec in node.records:
            state = next((s.state for s in node.states if s.pid == rec.get("pid")), "?")
            grew = next((a.grew_s_ago for a in (t.logs if t else ()) if a.path == rec.get("log")), None)
            lines.append(f"  {name:<10} {node.role:<7} {str(rec.get('role')):<8} {rec.get('pid')!s:>8} {state:<8} "
                         f"{_num(grew, '.0f', 's ago'):>9} {host}  {gpu}")
    ray = result.ray
    if ray is not None:
        if ray.get("error"):
            lines.append(f"  Ray: {ray.get('address', '?')}: {ray['error']}")
        elif ray.get("running"):
            joined = ", ".join(f"{r['node'] or '?'} ({r.get('address')})" for r in ray.get("nodes", []) if r.get("alive"))
            lines.append(f"  Ray {ray.get('ray_version', '')} at {ray['address']}: nodes {joined or 'none'}; "
                         f"resources {ray.get('resources')}")
            if ray.get("missing"):
                lines.append(f"  Ray is missing: {', '.join(ray['missing'])}")
    return "\n".join(lines)


def _gpu_text(t: Any, power_trend: list[float | None] | None) -> str:
    if not t.gpus:
        return {"none": "no GPU", "skipped": "-"}.get(t.gpu_source, t.gpu_source)
    parts = []
    for g in t.gpus:
        memory = ("unified" if g.memory_total_mib is None
                  else f"{_num(g.memory_used_mib and g.memory_used_mib / 1024, '.0f')}/{_num(g.memory_total_mib / 1024, '.0f')}G")
        parts.append(f"{_num(g.utilization_pct, '.0f', '%')} {_num(g.power_w, '.0f', 'W')} {_num(g.temperature_c, 'd', 'C')} "
                     f"{_num(g.sm_clock_mhz, 'd', 'MHz')} {memory}")
    text = "; ".join(parts)
    if power_trend:
        text += f" [{sparkline(power_trend)}]"
    return text


def down_text(result: Any) -> str:
    lines = []
    if result.nothing_to_stop and result.clean:
        lines.append(f"cluster {result.cluster}: nothing to stop")
    for name, node in result.nodes.items():
        if node.error:
            lines.append(f"  {name}: NOT stopped, unreachable: {node.error}")
        elif node.remaining:
            pids = ", ".join(str(p["pid"]) for p in node.remaining)
            lines.append(f"  {name}: {len(node.remaining)} process(es) left after SIGKILL: {pids}")
        elif node.stopped:
            lines.append(f"  {name}: stopped {len(node.stopped)} process(es); none left")
        for port in node.ports_in_use:
            lines.append(f"  {name}: note: port {port['port']} is in use by pid {port['pid']} (not started by sparkctl)")
    if result.clean and not result.nothing_to_stop:
        lines.append(f"cluster {result.cluster}: down; nothing left running")
    return "\n".join(lines)


def logs_text(logs: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, entry in logs.items():
        if entry.get("error"):
            lines.append(f"== {name}: unreachable: {entry['error']}")
            continue
        lines.append(f"== {name}: {entry['path']}" + ("" if entry["exists"] else " (no log yet)"))
        lines += [f"{name}: {line}" for line in entry["lines"]]
    return "\n".join(lines)


def doctor_text(artefact: str, report: dict[str, Any]) -> str:
    if artefact == "nccl-log":
        lines = [
            f"transport: {report['transport']} (NCCL network {report.get('network') or '?'}, "
            f"plugin {report['net_plugin'] or '-'})",
            f"devices: {', '.join(report['devices']) or '-'}",
            f"NCCL version: {report['nccl_version'] or 'not in the log'}",
        ]
        findings = report["findings"]
    elif artefact == "nccl-tests":
        lines = [f"{report['collective'] or 'collective ?'}: {len(report['rows'])} sizes, "
                 f"average bus bandwidth {report['avg_busbw_gbs']} GB/s",
                 f"verdict: {report['verdict']}: {report['verdict_reason']}"]
        lines += [f"{row['size_bytes']:>12} B  {row['time_us']:>10} us  algbw {row['algbw_gbs']:>7} GB/s  "
                  f"busbw {row['busbw_gbs']:>7} GB/s" for row in report["rows"]]
        findings = [{"level": "error", "code": "problem", "message": p} for p in report.get("problems") or []]
    else:
        lines = [f"start-up stages reached: {', '.join(report['stages']) or 'none'} (furthest: {report['stage'] or '-'})"]
        if report["kv_cache_tokens"] is not None:
            lines.append(f"KV cache: {report['kv_cache_tokens']:,} tokens; maximum concurrency "
                         f"{report['max_concurrency']}x at {report['max_concurrency_tokens']} tokens per request")
        if report["last_exception"]:
            lines.append(f"last exception: {report['last_exception']}")
        findings = [{"level": "error", "code": f["code"], "message": f"{f['message']}: {f['line']} (hint: {f['hint']})"}
                    for f in report["findings"]]
    lines += [f"{f['level'].upper():7} {f['code']}: {f['message']}" for f in findings]
    for f in report.get("performance_findings") or []:
        lines.append(f"{f['level'].upper():7} {f['code']}: {f['message']} ({f['evidence']}); fix: {f['fix']}")
    if not findings:
        lines.append("no problems found")
    return "\n".join(lines)
