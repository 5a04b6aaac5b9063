"""`sparkctl sweep`: for each layout in turn, `up` (its progress as it goes), the
same `sparkctl bench` ladder, the result saved at once, `down`; then one report.

Teardown: `up` owns the cluster until it returns (it stops what it started when
it fails or is interrupted); from then on the sweep owns it and calls `down`
after every layout, measured, failed or interrupted, so nothing is left running.
A layout that fails is recorded and the next one runs; Ctrl-C ends the sweep
(exit 130) and `--resume` continues with the layouts not yet measured.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sparkctl.agent.client import Connect, connect
from sparkctl.bench.options import BenchOptions
from sparkctl.bench.result import BenchResult, ResultFile, result_file, save_result
from sparkctl.errors import Interrupted, OperationFailed, SparkctlError
from sparkctl.inventory import Inventory
from sparkctl.layouts import Layout, with_layout
from sparkctl.ops.down import down
from sparkctl.ops.up import up
from sparkctl.perf.hardware import hardware
from sparkctl.playbook import Playbook, check_against_inventory
from sparkctl.progress import Reporter
from sparkctl.sweep.predict import predictor_for
from sparkctl.sweep.report import (
    LayoutReport,
    SweepReport,
    burst_notes,
    is_burst,
    points_of,
    recommend,
)
from sparkctl.sweep.store import SweepManifest, SweepStore

# Benchmarks one layout once it serves: the real one runs `sparkctl bench`; tests pass their own.
Measure = Callable[[Inventory, Playbook], BenchResult]


@dataclass(frozen=True)
class SweepOptions:
    layouts: tuple[Layout, ...]
    bench: BenchOptions
    output_dir: str
    resume: bool = False
    hardware: str = "gb10"
    ignore_checks: frozenset[str] = frozenset()
    plot: str | None = None


def check_layouts(inventory: Inventory, playbook: Playbook, layouts: tuple[Layout, ...]) -> list[str]:
    """Every layout must fit the nodes before the first one starts."""
    problems = []
    for layout in layouts:
        problems += [f"layout {layout.label}: {p}" for p in check_against_inventory(with_layout(playbook, layout), inventory)]
    return problems


def sweep(inventory: Inventory, playbook: Playbook, options: SweepOptions, reporter: Reporter, measure: Measure, *,
          environ: Mapping[str, str] | None = None, connect: Connect = connect) -> SweepReport:
    store = SweepStore(options.output_dir)
    labels = tuple(layout.label for layout in options.layouts)
    bench_json = json.dumps(dataclasses.asdict(options.bench), sort_keys=True, default=str)
    store.begin(SweepManifest(inventory.path, playbook.path, labels, bench_json), resume=options.resume)
    reports: list[LayoutReport] = []
    total = len(options.layouts)
    for index, layout in enumerate(options.layouts, 1):
        label = layout.label
        if store.done(label):
            reporter.event(None, f"[{index}/{total}] {label}: measured earlier ({store.result_path(label)}); skipped")
            reports.append(LayoutReport(label, "measured earlier", result_path=store.result_path(label)))
            continue
        reporter.event(None, f"[{index}/{total}] {label}: up")
        reports.append(_one_layout(inventory, with_layout(playbook, layout), label, options, store, reporter, measure,
                                   environ, connect))
    return build_report(inventory, playbook, options, store, reports)


def _one_layout(inventory: Inventory, playbook: Playbook, label: str, options: SweepOptions, store: SweepStore,
                reporter: Reporter, measure: Measure, environ: Mapping[str, str] | None,
                connect: Connect) -> LayoutReport:
    started = time.monotonic()
    try:
        try:
            up(inventory, playbook, reporter, environ=environ, ignore_checks=options.ignore_checks, connect=connect)
        except Interrupted as exc:  # up stopped what it started
            raise Interrupted(f"sweep interrupted while {label} was starting; nothing is left running",
                              hint="sparkctl sweep ... --resume continues with the layouts not yet measured") from exc
        up_s = round(time.monotonic() - started, 1)
        reporter.event(None, f"{label}: serving after {up_s:.0f}s; bench")
        result = measure(inventory, playbook)
        path = store.save(label, result.to_dict())
        reporter.event(None, f"{label}: result saved to {path}")
        if result.interrupted:
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        _down(inventory, playbook, reporter, connect, label)
        raise Interrupted(f"sweep interrupted during {label}; every process it started has been stopped",
                          hint="sparkctl sweep ... --resume continues with the layouts not yet measured") from None
    except Interrupted:
        _down(inventory, playbook, reporter, connect, label)
        raise
    except SparkctlError as exc:
        reporter.event(None, f"{label}: failed: {exc.message}; stopping it and going on with the next layout")
        _down(inventory, playbook, reporter, connect, label)
        return LayoutReport(label, "failed", error=exc.message)
    _down(inventory, playbook, reporter, connect, label)
    return LayoutReport(label, "measured", result_path=path, up_s=up_s)


def _down(inventory: Inventory, playbook: Playbook, reporter: Reporter, connect: Connect, label: str) -> None:
    reporter.event(None, f"{label}: down")
    result = down(inventory, reporter, playbook=playbook, connect=connect)
    if not result.clean:
        raise OperationFailed(f"{label}: down left processes running or could not reach "
                              f"{', '.join(result.unreachable) or 'a node'}; the sweep stops here",
                              hint="sparkctl status -i INVENTORY shows what is left; sparkctl down stops it")


def _without_bursts(file: ResultFile, report: LayoutReport) -> ResultFile:
    """The layout's points for the Pareto chart, named by its label; a step whose
    tokens came in bursts has no per-user rate to place it by (see burst_notes)."""
    bursts = {p.step for p in report.points if is_burst(p)}
    points = tuple(dataclasses.replace(p, tok_s_per_user=None) if p.label in bursts else p for p in file.points)
    return dataclasses.replace(file, name=report.label, points=points)


def build_report(inventory: Inventory, playbook: Playbook, options: SweepOptions, store: SweepStore,
                 reports: list[LayoutReport]) -> SweepReport:
    """The report over every layout with a saved result (this run's and earlier ones')."""
    hw = hardware(options.hardware)
    predictor, why = predictor_for(playbook, hw)
    notes = [why] if why else [f"predictions: sparkctl explain's model with the {hw.name} preset (--hardware)"]
    if playbook.env.get("VLLM_TARGET_DEVICE") == "cpu":
        notes.append(f"this playbook runs vLLM for CPU: the {hw.name} preset does not describe this machine, so the "
                     "predictions say what that hardware would do, not what these CPUs should do")
    full = []
    for report, layout in zip(reports, options.layouts):
        document = store.load(report.label)
        if document is not None and not document.get("interrupted"):
            report = dataclasses.replace(report, points=points_of(document, layout, predictor),
                                         result_path=store.result_path(report.label))
        full.append(report)
    plot = None
    measured = [r for r in full if r.points and r.result_path]
    if options.plot and measured:
        from sparkctl.bench.plot import plot_results

        files = [_without_bursts(result_file(store.load(r.label), r.result_path or ""), r) for r in measured]
        plot = plot_results(files, options.plot, title=f"{inventory.cluster}: layouts compared")
    complete = all(r.status in ("measured", "measured earlier") for r in full)
    notes += burst_notes(tuple(full))
    result = SweepReport(inventory.cluster, options.output_dir, tuple(full), recommend(tuple(full)), tuple(notes),
                         plot, complete)
    save_result(result.to_dict(), store.path("report.json"))
    return result
