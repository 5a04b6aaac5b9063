"""`sparkctl sweep`'s order, saving, interruption and resume on the fake cluster
(tests/fake_agent.py), with a stub benchmark: seconds, no vLLM."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sparkctl.bench.options import BenchOptions, build_steps
from sparkctl.errors import InputError, Interrupted
from sparkctl.layouts import layout_of, parse_layout
from sparkctl.ops.sweep import SweepOptions, sweep
from sparkctl.playbook import load_playbook
from sparkctl.sweep.report import render_text
from tests.test_layouts import kill_routers_at_launch
from tests.test_lifecycle_fake import (  # noqa: F401
    ALL_CHECKS,
    Events,
    fake,
    fast_polls,
    inventory,
    local_facts,
)

REPO = Path(__file__).resolve().parent.parent

# measured tok/s per user and in total at c=1 and c=8, per layout: TP wins per user, replicas in total
NUMBERS = {"tp2": {1: (30.0, 30.0), 8: (12.0, 96.0)}, "replicas2": {1: (25.0, 25.0), 8: (20.0, 160.0)}}


@dataclass
class StubResult:
    document: dict[str, Any]

    @property
    def interrupted(self) -> bool:
        return bool(self.document.get("interrupted"))

    def to_dict(self) -> dict[str, Any]:
        return self.document


@dataclass
class StubBench:
    """Answers for a layout as long as it is the one serving; records the order."""

    fake: Any
    calls: list[str] = field(default_factory=list)
    interrupt: str | None = None  # this layout's bench is cut by Ctrl-C

    def __call__(self, inventory: Any, playbook: Any) -> StubResult:
        label = layout_of(playbook).label
        assert self.fake.serving(), "bench ran while nothing served"
        self.calls.append(label)
        steps = [{"label": f"c={c}", "max_concurrency": c, "tok_s_per_user": u, "output_throughput": t,
                  "output_throughput_per_node": t / 2, "median_ttft_ms": 50.0, "input_len": 32, "output_len": 16,
                  "failed": 0} for c, (u, t) in NUMBERS[label].items()]
        return StubResult({"metadata": {"nodes": 2}, "steps": steps, "interrupted": label == self.interrupt})


class CtrlCDuringStart(Events):
    """Ctrl-C the moment `label`'s router has been started (its servers are starting)."""

    def __init__(self, label: str):
        super().__init__()
        self.label = label
        self.current = None

    def event(self, node, message):
        super().event(node, message)
        if message.endswith(": up"):
            self.current = message.split("] ")[1].split(":")[0]
        if self.current == self.label and message.startswith("started router"):
            raise KeyboardInterrupt


def playbook_for(tmp_path, fake):
    path = tmp_path / "pb.yaml"
    path.write_text(f"model: {REPO / 'playbooks' / 'models' / 'tiny-llama'}\nserved_model_name: tiny\n"
                    f"tensor_parallel_size: 2\nhost: 127.0.0.1\nport: {fake.port}\nreplica_port: {fake.replica_port}\n"
                    f"ready_timeout_s: 30\nstop_grace_s: 1\n")
    return load_playbook(str(path))


def options(tmp_path, *, resume=False, layouts="tp2,replicas2", plot=None):
    return SweepOptions(layouts=tuple(parse_layout(x) for x in layouts.split(",")),
                        bench=BenchOptions(steps=build_steps(concurrency=(1, 8), request_rates=(), input_lens=(32,),
                                                             output_len=16, burstiness=1.0, max_concurrency=None),
                                           num_prompts=6),
                        output_dir=str(tmp_path / "out"), resume=resume, ignore_checks=ALL_CHECKS, plot=plot)


def run(inventory, fake, tmp_path, bench, reporter=None, **kw):
    return sweep(inventory, playbook_for(tmp_path, fake), options(tmp_path, **kw), reporter or Events(), bench,
                 environ={}, connect=fake.connect)


def test_each_layout_up_bench_down_in_order_and_the_report_compares_them(inventory, fake, tmp_path):
    bench = StubBench(fake)
    events = Events()
    report = run(inventory, fake, tmp_path, bench, events)
    assert bench.calls == ["tp2", "replicas2"] and fake.running() == []
    order = [line.split(": ", 1)[1] for line in events.lines if line.startswith("-: ") and
             any(w in line for w in (": up", "; bench", ": down"))]
    assert order == ["[1/2] tp2: up", "tp2: serving after 0s; bench", "tp2: down",
                     "[2/2] replicas2: up", "replicas2: serving after 0s; bench", "replicas2: down"]
    assert report.complete and [r.status for r in report.layouts] == ["measured", "measured"]
    assert json.loads((tmp_path / "out" / "tp2.json").read_text())["steps"][0]["label"] == "c=1"
    text = " ".join(report.recommendation)
    assert "for speed per user, at c=1 tp2 is best (c=1: 30.0 against replicas2 25.0 tok/s per user)" in text
    assert "for total throughput, at c=1 tp2 is best" in text and "at c=8 replicas2 is best (c=8: 160.0 against tp2 96.0" in text
    tp2 = report.layouts[0].points[0]
    assert tp2.predicted_tok_s_per_user and tp2.predicted_tok_s_per_user > 0  # explain's prediction beside it
    assert "GB10" in " ".join(report.notes) or "gb10" in " ".join(report.notes)
    assert "== replicas2: measured" in render_text(report)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["complete"] is True


def test_ctrl_c_in_the_middle_of_a_bring_up_leaves_nothing_and_resume_completes(inventory, fake, tmp_path):
    bench = StubBench(fake)
    with pytest.raises(Interrupted, match="while replicas2 was starting"):
        run(inventory, fake, tmp_path, bench, CtrlCDuringStart("replicas2"))
    assert fake.running() == [] and bench.calls == ["tp2"]
    assert (tmp_path / "out" / "tp2.json").exists() and not (tmp_path / "out" / "replicas2.json").exists()

    launches = len(fake.ops("launch"))
    report = run(inventory, fake, tmp_path, bench, resume=True)
    assert bench.calls == ["tp2", "replicas2"]  # tp2 was not measured again
    assert len(fake.ops("launch")) - launches == 3  # two replicas and the router: only replicas2 started
    assert report.complete and [r.status for r in report.layouts] == ["measured earlier", "measured"]
    assert all(r.points for r in report.layouts) and fake.running() == []


def test_ctrl_c_during_a_bench_saves_the_partial_result_aside_and_stops_everything(inventory, fake, tmp_path):
    bench = StubBench(fake, interrupt="tp2")
    with pytest.raises(Interrupted, match="during tp2"):
        run(inventory, fake, tmp_path, bench)
    assert fake.running() == []
    assert (tmp_path / "out" / "tp2.partial.json").exists() and not (tmp_path / "out" / "tp2.json").exists()


def test_a_layout_that_fails_is_recorded_stopped_and_the_next_one_runs(inventory, fake, tmp_path):
    bench = StubBench(fake)
    kill_routers_at_launch(fake)
    report = run(inventory, fake, tmp_path, bench, layouts="replicas2,tp2")
    assert [r.status for r in report.layouts] == ["failed", "measured"] and not report.complete
    assert "vllm-router exited during start-up" in (report.layouts[0].error or "")
    assert bench.calls == ["tp2"] and fake.running() == []


def test_an_earlier_sweep_is_not_overwritten_and_resume_needs_the_same_bench(inventory, fake, tmp_path):
    run(inventory, fake, tmp_path, StubBench(fake), layouts="tp2")
    with pytest.raises(InputError, match="holds an earlier sweep"):
        run(inventory, fake, tmp_path, StubBench(fake), layouts="tp2")
    other = options(tmp_path, resume=True)
    other = SweepOptions(**{**other.__dict__, "bench": BenchOptions(steps=other.bench.steps, num_prompts=99)})
    with pytest.raises(InputError, match="bench settings differ"):
        sweep(inventory, playbook_for(tmp_path, fake), other, Events(), StubBench(fake), environ={}, connect=fake.connect)


def test_the_headline_names_the_light_load_and_the_heavy_load_winners():
    from sparkctl.sweep.report import LayoutReport, Point, recommend

    def layout(label, numbers):
        return LayoutReport(label, "measured", tuple(Point(f"c={c}", c, u, t, t / 2, 50.0, 0) for c, (u, t) in numbers))

    tp = layout("tp2", [(1, (40.0, 40.0)), (4, (30.0, 120.0)), (8, (20.0, 160.0))])
    rep = layout("replicas2", [(1, (30.0, 30.0)), (4, (28.0, 112.0)), (8, (25.0, 200.0))])
    assert recommend((tp, rep))[0] == ("up to c=4 tp2 gives the most tok/s per user (30.0); "
                                       "from c=8 replicas2 gives the most output tok/s in total (200.0)")
    assert recommend((tp,)) == ("measure at least two layouts to compare them",)


def test_per_user_rates_the_total_cannot_produce_are_called_bursts():
    from sparkctl.sweep.report import LayoutReport, Point, burst_notes

    burst = LayoutReport("dp2", "measured", (Point("c=1", 1, 75910.9, 104.4, 52.2, 53.3, 0),
                                             Point("c=2", 2, 289.5, 201.9, 100.9, 34.1, 0)))
    steady = LayoutReport("tp2", "measured", (Point("c=1", 1, 44.6, 45.9, 22.9, 25.9, 0),))
    assert burst_notes((burst, steady)) == [
        ("dp2: at c=1 the tokens reached the client in bursts (median TPOT near 0), so its tok/s per user there says "
         "nothing about speed; compare output tok/s in total")]


def test_the_plot_overlays_every_layout_and_leaves_bursts_off_the_pareto_axis(inventory, fake, tmp_path, monkeypatch):
    from sparkctl.bench import plot as bench_plot

    drawn = {}

    def capture(files, path, *, title=""):
        drawn.update({f.name: [p.tok_s_per_user for p in f.points] for f in files})
        return path

    monkeypatch.setattr(bench_plot, "plot_results", capture)
    monkeypatch.setitem(NUMBERS, "replicas2", {1: (9000.0, 25.0), 8: (20.0, 160.0)})  # c=1: a burst
    report = run(inventory, fake, tmp_path, StubBench(fake), plot=str(tmp_path / "sweep.png"))
    assert report.plot == str(tmp_path / "sweep.png")
    assert drawn == {"tp2": [30.0, 12.0], "replicas2": [None, 20.0]}
    assert any("replicas2: at c=1 the tokens reached the client in bursts" in n for n in report.notes)


def test_the_sweep_report_has_a_table_per_layout_the_recommendation_and_the_plot(inventory, fake, tmp_path):
    from sparkctl.report import write_report
    from sparkctl.report.sweep import sweep_report

    report = run(inventory, fake, tmp_path, StubBench(fake), Events())
    page = sweep_report(report, command="sparkctl sweep --layouts tp2,replicas2", created="2026-11-29 12:00")
    titles = [section.title for section in page.sections]
    assert titles[0] == "Recommendation" and titles[1].startswith("tp2: measured")
    assert titles[2].startswith("replicas2: measured") and titles[-1] == "Every layout's Pareto view"
    assert page.verdict is not None and page.verdict.tone == "ok"
    html = tmp_path / "sweep.html"
    write_report(page, str(html))
    text = html.read_text()
    assert "data:image/png;base64," in text and "tp2" in text and "replicas2" in text and "http://" not in text
    markdown = tmp_path / "sweep.md"
    write_report(page, str(markdown))
    assert "| c=8 |" in markdown.read_text()
