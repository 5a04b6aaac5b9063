"""Latency and bus bandwidth against message size, per mode, as a PNG."""

from __future__ import annotations

from typing import Any

from sparkctl.plotting import pyplot, require_matplotlib, save
from sparkctl.probes.allreduce import ProbeReport, ProbeRow
from sparkctl.probes.nccl_tests import human_bytes

__all__ = ["plot", "require_matplotlib"]


def plot(report: ProbeReport, path: str) -> str:
    """Two panels (log-log): p50 latency with its p99 band, and busbw; one line per mode."""
    plt = pyplot()
    fig, (lat, bw) = plt.subplots(1, 2, figsize=(12, 4.5))
    try:
        for mode in report.modes:
            rows = sorted((r for r in report.rows if r.mode == mode), key=lambda r: r.size_bytes)
            _draw_mode(lat, bw, mode, rows)
        lat.set(xscale="log", yscale="log", xlabel="message size", ylabel="latency (µs)",
                title=f"all-reduce latency, {report.world_size} ranks ({report.backend})")
        bw.set(xscale="log", yscale="log", xlabel="message size", ylabel="bus bandwidth (GB/s)",
               title=f"bus bandwidth (verdict: {report.verdict})")
        expect = report.thresholds.get("expect_busbw_gbs")
        if expect and report.backend == "nccl":
            bw.axhline(expect, linestyle="--", color="grey", linewidth=1, label=f"expected {expect:g} GB/s")
        for ax in (lat, bw):
            ticks = sorted({r.size_bytes for r in report.rows})[::4]
            if ticks:
                ax.set_xticks(ticks, [human_bytes(t) for t in ticks], rotation=30)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        save(fig, path)
    finally:
        plt.close(fig)
    return path


def _draw_mode(lat: Any, bw: Any, mode: str, rows: list[ProbeRow]) -> None:
    timed = [r for r in rows if r.latency_us is not None]
    if timed:
        sizes = [r.size_bytes for r in timed]
        label = f"{mode} p50" if timed[0].p50_us is not None else f"{mode} mean"
        line = lat.plot(sizes, [r.latency_us for r in timed], marker="o", markersize=3, label=label)[0]
        band = [r for r in timed if r.p99_us is not None]
        if band:
            lat.fill_between([r.size_bytes for r in band], [r.latency_us for r in band], [r.p99_us for r in band],
                             color=line.get_color(), alpha=0.2, label=f"{mode} p50..p99")
    positive = [r for r in rows if r.busbw_gbs is not None and r.busbw_gbs > 0]
    if positive:
        bw.plot([r.size_bytes for r in positive], [r.busbw_gbs for r in positive], marker="o", markersize=3,
                label=mode)
