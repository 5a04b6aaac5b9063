"""The Pareto view (tok/s per user against output tok/s per node, one point per
step, the frontier drawn through the points no other point beats on both) and
latency against load, as a PNG. Several results overlay on one chart."""

from __future__ import annotations

from typing import Any

from sparkctl.bench.result import ResultFile, ResultPoint
from sparkctl.plotting import pyplot, save


def frontier(points: list[ResultPoint]) -> list[ResultPoint]:
    """The points no other point beats on both tok/s/user and tok/s/node, by tok/s/user."""
    usable = [p for p in points if p.tok_s_per_user is not None]
    usable.sort(key=lambda p: (p.tok_s_per_user or 0.0, p.output_throughput_per_node), reverse=True)
    front: list[ResultPoint] = []
    best = float("-inf")
    for p in usable:
        if p.output_throughput_per_node > best:
            front.append(p)
            best = p.output_throughput_per_node
    return front


def _load(p: ResultPoint) -> float | None:
    return float(p.max_concurrency) if p.max_concurrency is not None else p.request_rate


def plot_results(files: list[ResultFile], path: str, *, title: str = "") -> str:
    plt = pyplot()
    fig, (pareto, latency) = plt.subplots(1, 2, figsize=(13, 5))
    try:
        for index, f in enumerate(files):
            # one colour per result on both charts: TTFT solid, TPOT dashed
            _draw(pareto, latency, f, label=f.name if len(files) > 1 else None, color=f"C{index % 10}")
        pareto.set(xlabel="tok/s per user (1000 / median TPOT ms)", ylabel="output tok/s per node",
                   title=title or "throughput per node against speed per user")
        latency.set(xlabel="load (concurrency, or request rate for open loop)", ylabel="ms",
                    title="median latency against load")
        latency.set_yscale("log")
        for ax in (pareto, latency):
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        return save(fig, path)
    finally:
        plt.close(fig)


def _draw(pareto: Any, latency: Any, f: ResultFile, *, label: str | None, color: str) -> None:
    points = [p for p in f.points if p.tok_s_per_user is not None]
    if points:
        pareto.scatter([p.tok_s_per_user for p in points], [p.output_throughput_per_node for p in points],
                       label=label, color=color)
        front = frontier(points)
        pareto.plot([p.tok_s_per_user for p in front], [p.output_throughput_per_node for p in front],
                    color=color, alpha=0.6)
        for p in points:
            pareto.annotate(p.label.split(" in=")[0], (p.tok_s_per_user, p.output_throughput_per_node),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
    loaded = sorted((p for p in f.points if _load(p) is not None), key=lambda p: _load(p) or 0.0)
    prefix = f"{label}: " if label else ""
    for metric, style in (("median_ttft_ms", "o-"), ("median_tpot_ms", "s--")):
        xs = [_load(p) for p in loaded if getattr(p, metric) is not None]
        ys = [getattr(p, metric) for p in loaded if getattr(p, metric) is not None]
        if xs:
            latency.plot(xs, ys, style, color=color,
                         label=f"{prefix}{metric.removeprefix('median_').removesuffix('_ms').upper()}")
