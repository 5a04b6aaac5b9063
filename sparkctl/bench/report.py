"""Text for people: `sparkctl bench` and `sparkctl bench compare` tables."""

from __future__ import annotations

from typing import Sequence

from sparkctl.bench.result import BenchResult, ResultFile


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return [line(header), *(line(r) for r in rows)]


def client_table(result: BenchResult) -> tuple[list[str], list[list[str]]]:
    """The client's figures, one row per step (the text table and the shareable report)."""
    rows = []
    for s in result.steps:
        fails = f"{s.failed}" + (f" ({', '.join(f'{k} {v}' for k, v in sorted(s.errors.items()))})" if s.errors else "")
        rows.append([
            s.step.label + (" (cut)" if s.interrupted else ""), str(s.completed), fails, _f(s.duration),
            _f(s.request_throughput, 2), _f(s.output_throughput), _f(s.output_throughput_per_node), _f(s.tok_s_per_user),
            f"{_f(s.ttft.median)} / {_f(s.ttft.percentiles[-1][1])}",
            f"{_f(s.tpot.median, 2)} / {_f(s.tpot.percentiles[-1][1], 2)}",
            _f(s.itl.median, 2), _f(s.e2el.median), "yes" if s.saturated else "no",
        ])
    p_top = f"p{result.metadata.percentiles[-1]:g}" if result.metadata.percentiles else "p99"
    header = ["STEP", "OK", "FAILED", "DUR s", "REQ/s", "OUT tok/s", "tok/s/node", "tok/s/user",
              f"TTFT ms p50/{p_top}", f"TPOT ms p50/{p_top}", "ITL ms p50", "E2EL ms p50", "SATURATED"]
    return header, rows


def server_table(result: BenchResult) -> tuple[list[str], list[list[str]]]:
    """The server's /metrics view per step (empty when it was not scraped)."""
    rows = []
    for s in result.steps:
        v = s.server
        if v is not None:
            rows.append([
                s.step.label, _f(v.generation_tokens, 0), _f(v.prompt_tokens, 0), _f(v.requests_success, 0),
                _f(v.preemptions, 0), _pct(v.prefix_cache_hit_rate),
                f"{_f(v.running_mean)} / {_f(v.running_max, 0)}", f"{_f(v.waiting_mean)} / {_f(v.waiting_max, 0)}",
                f"{_pct(v.kv_cache_usage_mean)} / {_pct(v.kv_cache_usage_max)}",
            ])
    header = ["STEP", "GEN tok", "PROMPT tok", "REQUESTS", "PREEMPT", "PREFIX HIT", "RUNNING", "WAITING", "KV CACHE"]
    return header, rows


def step_remarks(result: BenchResult) -> list[str]:
    """Saturation, token-count and error remarks per step, and the SLO line."""
    lines = []
    for s in result.steps:
        for reason in s.saturation_reasons:
            lines.append(f"saturated at {s.step.label}: {reason}")
        if s.token_count_mismatches:
            lines.append(f"{s.step.label}: {s.token_count_mismatches} request(s) where the server's token count "
                         "differs from the streamed chunks (harmless: vLLM sends a token that is not yet a whole "
                         "character with the next one, and speculative decoding several per chunk; "
                         "throughput counts the server's tokens)")
        if s.short_outputs:
            lines.append(f"{s.step.label}: {s.short_outputs} request(s) ended before {s.step.output_len} tokens")
        for sample in s.sample_errors:
            lines.append(f"{s.step.label}: error: {sample}")
    if result.slo is not None:
        slo = result.slo
        limits = ", ".join(f"{k.removesuffix('_ms')} <= {v:g} ms" for k, v in slo.slo.to_dict().items() if v is not None)
        if slo.best_step:
            lines.append(f"SLO ({limits}, {slo.attainment:.0%} of requests): highest load meeting it: "
                         f"{slo.best_step} at {slo.best_output_throughput:,.1f} output tok/s")
        else:
            lines.append(f"SLO ({limits}, {slo.attainment:.0%} of requests): no step met it")
    return lines


def bench_text(result: BenchResult) -> str:
    m = result.metadata
    head = f"{m.endpoint} serving {m.model!r}"
    if m.cluster is not None:
        c = m.cluster
        head += (f" (cluster {c.cluster}: {len(c.node_names)} node(s), TP={c.tensor_parallel_size} "
                 f"PP={c.pipeline_parallel_size}, backend {c.backend})")
    if m.vllm_version:
        head += f", vLLM {m.vllm_version}"
    lines = [head, f"  prompts: {m.tokenizer}; {m.endpoint_type} endpoint; seed {m.seed}"]
    header, client_rows = client_table(result)
    lines.append("")
    lines += _table(header, client_rows)
    server_header, server_rows = server_table(result)
    if server_rows:
        lines += ["", "the server's view (/metrics, deltas over each step; gauges mean / max):"]
        lines += _table(server_header, server_rows)
    lines += [("" if r.startswith("SLO") else "  ") + r for r in step_remarks(result)]
    lines += [f"note: {n}" for n in result.notes]
    if result.interrupted:
        lines.append("interrupted: the table holds what was measured before the interruption")
    return "\n".join(lines)


def compare_text(files: list[ResultFile]) -> str:
    rows = []
    for f in files:
        for p in f.points:
            rows.append([f.name, p.label, str(p.completed), _f(p.request_throughput, 2), _f(p.output_throughput),
                         _f(p.output_throughput_per_node), _f(p.tok_s_per_user), _f(p.median_ttft_ms), _f(p.p99_ttft_ms),
                         _f(p.median_tpot_ms, 2), _f(p.p99_tpot_ms, 2)])
    lines = _table(["RESULT", "STEP", "OK", "REQ/s", "OUT tok/s", "tok/s/node", "tok/s/user", "TTFT p50",
                    "TTFT p99", "TPOT p50", "TPOT p99"], rows)
    lines += [f"  {f.name}: {f.path} ({f.source})" for f in files]
    return "\n".join(lines)
