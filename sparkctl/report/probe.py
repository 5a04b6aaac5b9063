"""`sparkctl nccl-probe --report`: verdict and its reasons, the transport per node,
the sweep per mode, the plot, and what the latency costs vLLM per token."""

from __future__ import annotations

from sparkctl.findings import probe_status
from sparkctl.probes.allreduce import ProbeReport, describe_transport
from sparkctl.probes.nccl_tests import human_bytes
from sparkctl.report.model import FindingRow, Image, Report, Section, Table, Verdict
from sparkctl.report.plots import png_of

TONE = {"ok": "ok", "degraded": "fail", "inconclusive": "info"}


def probe_report(report: ProbeReport, *, command: str, created: str, cluster: str) -> Report:
    verdict = Verdict(TONE.get(report.verdict, "info"), f"verdict: {report.verdict}", tuple(report.verdict_reasons))
    checks = tuple(FindingRow.of(c, probe_status(c.severity)) for c in report.checks)
    sections = [Section("What was judged", (checks,)),
                Section("Transport NCCL chose, per node",
                        (Table(("node", "transport"), tuple((n, describe_transport(t))
                                                            for n, t in sorted(report.transport.items()))),))]
    for mode in report.modes:
        rows = sorted((r for r in report.rows if r.mode == mode), key=lambda r: r.size_bytes)
        sections.append(Section(f"All-reduce sweep, {mode} mode", (Table(
            ("size", "iterations", "p50 (or mean) µs", "p99 µs", "min µs", "algbw GB/s", "busbw GB/s", "sum correct"),
            tuple((human_bytes(r.size_bytes), _n(r.iterations, "d"), _n(r.latency_us, ".1f"), _n(r.p99_us, ".1f"),
                   _n(r.min_us, ".1f"), _n(r.algbw_gbs, ".3f"), _n(r.busbw_gbs, ".3f"),
                   "-" if r.correct is None else "yes" if r.correct else "NO") for r in rows),
            numeric=(True,) * 7 + (False,)),)))
    notes = list(report.notes) + [f"{mode} mode skipped: {why}" for mode, why in report.skipped_modes.items()]
    if report.rows:
        from sparkctl.probes.plot import plot

        png, why = png_of(lambda path: plot(report, path))
        if png is not None:
            sections.append(Section("Latency and bus bandwidth against size", (Image(
                png, "p50 latency with its p99 band, and bus bandwidth, per mode", "all-reduce sweep plot"),)))
        elif why:
            notes.append(why)
    cost = report.token_cost
    if cost.get("applies"):
        sections.append(Section("What it costs vLLM decode", (Table(
            ("mode", "latency per all-reduce µs", "all-reduces per token", "ms per token", "decode cap tok/s"),
            tuple((mode, f"{c['latency_us']:.1f}", str(cost["all_reduces_per_token"]), f"{c['ms_per_token']:.2f}",
                   f"{c['max_tokens_per_s']:g}") for mode, c in cost["modes"].items()),
            caption=f"TP={cost['tensor_parallel_size']}, {cost['num_hidden_layers']} layers, messages of "
                    f"{human_bytes(cost['message_bytes'])}", numeric=(False, True, True, True, True)),)))
    else:
        notes.append(f"cost to vLLM decode not computed: {cost.get('reason')}")
    metadata: tuple[tuple[str, str], ...] = (("cluster", cluster), ("engine", report.engine), ("backend", report.backend),
                ("ranks", str(report.world_size)), ("dtype", report.dtype or "-"),
                ("wall time", f"{report.wall_s:.1f} s" if report.wall_s else "-"))
    metadata += tuple((f"version: {k}", str(v)) for k, v in sorted(report.versions.items()) if v)
    metadata += tuple((f"threshold: {k}", str(v)) for k, v in report.thresholds.items())
    return Report(f"sparkctl nccl-probe: {cluster}", command, created, metadata, verdict, tuple(sections), tuple(notes))


def _n(value: float | int | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)
