"""The command line: parse arguments, call the library, print, exit.

This is the only module that prints results or chooses an exit status.
Exit codes: 0 ok; 1 failed (check, node command, readiness); 2 bad input;
3 a node unreachable over SSH; 4 a deadline passed; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeAlias

from sparkctl import __version__, jsontext, render
from sparkctl.argtypes import (
    fraction,
    mtu,
    non_negative_float,
    non_negative_int,
    number_list,
    port,
    positive_float,
    positive_int,
    size_factor,
)
from sparkctl.errors import ExitCode, InputError, SparkctlError
from sparkctl.progress import NullReporter, Reporter, StreamReporter

Handler = Callable[[argparse.Namespace], int]


# ----------------------------------------------------------------------------
# output helpers
# ----------------------------------------------------------------------------
def _print_json(data: Any) -> None:
    sys.stdout.write(jsontext.dumps(data) + "\n")


def _emit(args: argparse.Namespace, data: Callable[[], Any], text: Callable[[], str]) -> None:
    """One JSON document with --json, else the text for people."""
    if args.json:
        _print_json(data())
    else:
        out = text()
        if out:
            print(out)


def _reporter(args: argparse.Namespace) -> Reporter:
    return NullReporter() if getattr(args, "quiet", False) else StreamReporter(sys.stderr)


def _report_error(args: argparse.Namespace, error: SparkctlError) -> int:
    if getattr(args, "json", False):
        _print_json({"ok": False, **error.to_dict()})
    err = sys.stderr
    err.write(f"error: {error.message}\n")
    for line in error.details:
        err.write(f"  {line}\n")
    if error.hint:
        err.write(f"hint: {error.hint}\n")
    return int(error.exit_code)


def _inventory_path(args: argparse.Namespace) -> str:
    path = args.inventory or os.environ.get("SPARKCTL_INVENTORY")
    if not path:
        raise InputError("no inventory given", hint="pass -i INVENTORY (or set SPARKCTL_INVENTORY)")
    return path


def _playbook_path(args: argparse.Namespace, *, required: bool) -> str | None:
    path = getattr(args, "playbook", None) or os.environ.get("SPARKCTL_PLAYBOOK")
    if required and not path:
        raise InputError("no playbook given", hint="pass -p PLAYBOOK (or set SPARKCTL_PLAYBOOK)")
    return path


def _load(args: argparse.Namespace, *, playbook: str) -> tuple[Any, Any]:
    """Load the inventory and, as `playbook` says ('required'|'optional'|'none'), the playbook."""
    from sparkctl.inventory import load_inventory
    from sparkctl.playbook import load_playbook

    inventory = load_inventory(_inventory_path(args))
    loaded = None
    if playbook != "none":
        path = _playbook_path(args, required=playbook == "required")
        if path:
            loaded = load_playbook(path)
    return inventory, loaded


def _report_path(args: argparse.Namespace) -> str | None:
    """--report FILE, its format checked before anything is measured."""
    if getattr(args, "report", None):
        from sparkctl.report import report_format

        report_format(args.report)
    return getattr(args, "report", None)


def _write_report(args: argparse.Namespace, build: Callable[[str, str], Any]) -> None:
    """build(command, created) -> Report, written to --report; its path printed last."""
    from datetime import datetime

    from sparkctl.report import write_report

    created = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    path = write_report(build(args.command_line, created), args.report)
    print(f"report: {path}", file=sys.stderr if args.json else sys.stdout)


# ----------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    from sparkctl.playbook import check_against_inventory

    inventory, playbook = _load(args, playbook="optional")
    problems = check_against_inventory(playbook, inventory) if playbook else []
    if problems:
        raise InputError("the playbook does not fit the inventory", details=problems)
    _emit(args, lambda: render.validated(inventory, playbook), lambda: render.validate_text(inventory, playbook))
    return 0



def cmd_exec(args: argparse.Namespace) -> int:
    from sparkctl.ops.exec import exec_all

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise InputError("no command given", hint="sparkctl exec -i INVENTORY -- COMMAND [ARGS...]")
    inventory, _ = _load(args, playbook="none")
    results = exec_all(inventory, command, timeout_s=args.timeout)
    _emit(args, lambda: {"command": command, "nodes": [r.to_dict() for r in results]}, lambda: render.exec_text(results))
    if not args.json:
        print(f"{sum(1 for r in results if r.returncode == 0)}/{len(results)} node(s) exited 0", file=sys.stderr)
    if any(r.unreachable for r in results):
        return int(ExitCode.UNREACHABLE)
    return 0 if all(r.returncode == 0 for r in results) else int(ExitCode.FAILED)



def cmd_check(args: argparse.Namespace) -> int:
    from sparkctl.checks import render_plan, render_text
    from sparkctl.ops.check import run_check

    inventory, playbook = _load(args, playbook="optional")
    _report_path(args)
    report, facts = run_check(inventory, playbook, _reporter(args))
    if args.json:
        data = report.to_dict()
        if args.facts:
            data["raw_facts"] = facts.by_node
        _print_json(data)
    elif args.plan:
        print(render_plan(report.plan))
    else:
        print(render_text(report, show_pass=not args.problems_only))
    if args.report:
        from sparkctl.report.check import check_report

        _write_report(args, lambda command, created: check_report(
            report, command=command, created=created, unreachable=tuple(facts.unreachable)))
    if facts.unreachable:
        return int(ExitCode.UNREACHABLE)
    return report.exit_code


def cmd_up(args: argparse.Namespace) -> int:
    from sparkctl.ops.up import up

    inventory, playbook = _load(args, playbook="required")
    result = up(inventory, playbook, _reporter(args), ignore_checks=set(args.ignore_check or []))
    _emit(args, lambda: {"ok": True, **result.to_dict()}, lambda: render.up_text(result))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from sparkctl.ops.status import status

    inventory, playbook = _load(args, playbook="optional")
    api_key = os.environ.get(args.api_key_env) or None
    if args.watch:
        return _watch_status(args, inventory, playbook, api_key)
    result = status(inventory, playbook=playbook, sample_s=args.sample, wedge_after_s=args.wedge_after,
                    canary_timeout_s=args.canary, api_key=api_key)
    _emit(args, result.to_dict, lambda: render.status_text(result))
    return result.exit_code


def _watch_status(args: argparse.Namespace, inventory: Any, playbook: Any, api_key: str | None) -> int:
    """Redraw in place on a terminal; one JSON object per line with --json; Ctrl-C ends it with 0."""
    from sparkctl.ops.watch import watch

    trends: dict[str, list[float | None]] = {}
    tty = sys.stdout.isatty()
    try:
        for result in watch(inventory, playbook=playbook, interval_s=args.interval, wedge_after_s=args.wedge_after,
                            canary_timeout_s=args.canary, api_key=api_key):
            if args.json:
                sys.stdout.write(jsontext.dumps(result.to_dict(), indent=None) + "\n")
                sys.stdout.flush()
                continue
            trends.setdefault("generation", []).append(result.rates.generation_tok_s if result.rates else None)
            for name, node in result.nodes.items():
                power = [g.power_w for g in node.telemetry.gpus if g.power_w is not None] if node.telemetry else []
                trends.setdefault(f"power:{name}", []).append(sum(power) if power else None)
            text = render.status_text(result, trends)
            stamp = time.strftime("%H:%M:%S")
            sys.stdout.write(("\x1b[H\x1b[2J" if tty else "") + f"{stamp}  every {args.interval:g}s, Ctrl-C to stop\n"
                             + text + "\n" + ("" if tty else "\n"))
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 0
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from sparkctl.ops.down import down
    from sparkctl.ops.up import up
    from sparkctl.ops.watch import SuperviseOptions, supervise

    if not args.restart:
        raise InputError("sparkctl watch supervises with --restart; to only look, use `sparkctl status --watch`")
    inventory, playbook = _load(args, playbook="required")
    reporter = _reporter(args)
    options = SuperviseOptions(interval_s=args.interval, grace_s=args.grace, max_restarts=args.max_restarts,
                               backoff_s=args.backoff, wedge_after_s=args.wedge_after, canary_timeout_s=args.canary,
                               evidence_dir=args.evidence_dir)

    def restart() -> None:
        down(inventory, reporter, playbook=playbook)
        up(inventory, playbook, reporter)

    try:
        result = supervise(inventory, playbook, options, reporter, restart=restart,
                           api_key=os.environ.get(args.api_key_env) or None)
    except KeyboardInterrupt:
        return 0  # the supervisor leaves the cluster as it is
    _emit(args, lambda: {"outcome": result.outcome, "message": result.message, "restarts": result.restarts},
          lambda: result.message)
    return 0 if result.outcome == "stopped-by-down" else int(ExitCode.FAILED)


def cmd_down(args: argparse.Namespace) -> int:
    from sparkctl.ops.down import down

    inventory, playbook = _load(args, playbook="optional")
    result = down(inventory, _reporter(args), playbook=playbook, grace_s=args.grace)
    _emit(args, result.to_dict, lambda: render.down_text(result))
    if result.unreachable:
        return int(ExitCode.UNREACHABLE)
    return 0 if result.clean else int(ExitCode.FAILED)



def cmd_nccl_probe(args: argparse.Namespace) -> int:
    from sparkctl.ops.probe import nccl_probe
    from sparkctl.probes.allreduce import ProbeOptions, parse_size, render_report

    if args.plot:
        from sparkctl.probes.plot import require_matplotlib

        require_matplotlib()  # before minutes of measuring, not after
    try:
        sizes = tuple(parse_size(s) for s in args.sizes.split(",")) if args.sizes else None
        options = ProbeOptions(
            min_bytes=parse_size(args.min_size),
            max_bytes=parse_size(args.max_size),
            factor=args.factor,
            sizes=sizes,
            modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
            dtype=args.dtype,
            backend=args.backend,
            warmup=args.warmup,
            min_iters=args.min_iters,
            max_iters=args.max_iters,
            time_budget_s=args.time_budget,
            expect_busbw_gbs=args.expect_busbw,
            degraded_fraction=args.degraded_fraction,
            max_small_latency_us=args.max_small_latency,
            small_size=parse_size(args.small_size),
            engine=args.engine,
            nccl_tests_binary=args.nccl_tests,
            timeout_s=args.timeout,
            master_port=args.port,
        )
    except ValueError as exc:
        raise InputError(f"invalid probe option: {exc}") from None
    inventory, playbook = _load(args, playbook="optional")
    _report_path(args)
    report = nccl_probe(inventory, playbook, options, _reporter(args), python=args.python)
    if args.plot:
        from sparkctl.probes.plot import plot

        plot(report, args.plot)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(render_report(report))
        if args.plot:
            print(f"plot: {args.plot}")
    if args.report:
        from sparkctl.report.probe import probe_report

        _write_report(args, lambda command, created: probe_report(
            report, command=command, created=created, cluster=inventory.cluster))
    return int(ExitCode.FAILED) if report.verdict == "degraded" else 0


def cmd_run(args: argparse.Namespace) -> int:
    from sparkctl.ops.run import RunOptions, render_generate, render_throughput, run_offline

    batch_sizes = number_list("--batch-sizes", positive_int, args.batch_sizes)
    options = RunOptions(
        input_path=args.input,
        output_path=args.output,
        max_tokens=args.max_tokens,
        batch_sizes=batch_sizes,
        prompt_tokens=args.prompt_tokens,
        repeats=args.repeats,
        seed=args.seed,
        master_port=args.master_port,
        timeout_s=args.timeout,
    )
    inventory, playbook = _load(args, playbook="required")
    result = run_offline(inventory, playbook, args.job, options, _reporter(args))
    if args.json:
        _print_json(result.to_dict())
    else:
        print(render_throughput(result) if args.job == "throughput" else render_generate(result))
    return 0


def _bench_options(args: argparse.Namespace) -> Any:
    from sparkctl.bench import options as o

    input_lens = o.int_list("--input-len", args.input_len)
    if args.prefix_len and any(args.prefix_len >= n for n in input_lens):
        raise InputError(f"--prefix-len {args.prefix_len} must be shorter than every --input-len ({args.input_len})")
    steps = o.build_steps(
        concurrency=o.int_list("--concurrency", args.concurrency),
        request_rates=o.float_list("--request-rate", args.request_rate),
        input_lens=input_lens,
        output_len=args.output_len,
        burstiness=args.burstiness,
        max_concurrency=args.max_concurrency,
    )
    return o.BenchOptions(
        steps=steps,
        num_prompts=args.num_prompts,
        duration_s=args.duration,
        warmup=args.warmup,
        request_timeout_s=args.request_timeout,
        endpoint=args.endpoint,
        seed=args.seed,
        prefix_len=args.prefix_len,
        tokenizer=args.tokenizer,
        percentiles=o.parse_percentiles(args.percentiles),
        slo=o.parse_slo(args.slo),
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from sparkctl.bench.report import bench_text
    from sparkctl.bench.result import result_file, save_result
    from sparkctl.bench.runner import Target
    from sparkctl.ops.bench import bench, cluster_target
    from sparkctl.progress import LiveLine, NullLine

    options = _bench_options(args)
    _report_path(args)
    if args.plot:
        from sparkctl.plotting import require_matplotlib

        require_matplotlib()  # before minutes of measuring, not after
    cluster = None
    inventory = None
    if args.url:
        if args.inventory or getattr(args, "playbook", None):
            raise InputError("--url benchmarks an endpoint without an inventory: give either --url or -i/-p")
        target = Target(args.url, args.model, os.environ.get(args.api_key_env) or None, nodes=args.nodes)
    else:
        inventory, playbook = _load(args, playbook="optional")
        target, cluster = cluster_target(inventory, playbook, os.environ, args.api_key_env)
        if args.model:
            target = Target(target.base_url, args.model, target.api_key, target.nodes)
    progress = NullLine() if args.quiet else LiveLine(sys.stderr)
    result = bench(target, options, progress, cluster, inventory=None if args.url else inventory)
    document = result.to_dict()
    if args.save_result:
        save_result(document, args.save_result)
    if args.plot and result.steps:
        from sparkctl.bench.plot import plot_results

        plot_results([result_file(document, args.save_result or "this run")], args.plot,
                     title=f"{result.metadata.model} at {result.metadata.endpoint}")
    _emit(args, lambda: document, lambda: bench_text(result))
    if not args.json:
        for path, what in ((args.save_result, "result"), (args.plot, "plot")):
            if path:
                print(f"{what}: {path}")
    if args.report:
        from sparkctl.report.bench import bench_report

        _write_report(args, lambda command, created: bench_report(result, command=command, created=created))
    if result.interrupted:
        sys.stderr.write("interrupted: what was measured so far is above" + (f" and in {args.save_result}" if args.save_result else "") + "\n")
        return int(ExitCode.INTERRUPTED)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from sparkctl.layouts import parse_layout
    from sparkctl.ops.bench import bench, cluster_target
    from sparkctl.ops.sweep import SweepOptions, check_layouts, sweep
    from sparkctl.perf.hardware import hardware
    from sparkctl.progress import LiveLine, NullLine
    from sparkctl.sweep.report import render_text

    options = _bench_options(args)
    try:
        layouts = tuple(parse_layout(text) for text in args.layouts.split(",") if text.strip())
    except ValueError as exc:
        raise InputError(f"--layouts: {exc}") from None
    if len({layout.label for layout in layouts}) != len(layouts) or not layouts:
        raise InputError(f"--layouts {args.layouts!r}: name each layout once")
    hardware(args.hardware)  # an unknown preset fails now, not after the last layout
    _report_path(args)
    if args.plot:
        from sparkctl.plotting import require_matplotlib

        require_matplotlib()
    inventory, playbook = _load(args, playbook="required")
    problems = check_layouts(inventory, playbook, layouts)
    if problems:
        raise InputError("a layout does not fit the inventory", details=problems)
    progress = NullLine() if args.quiet else LiveLine(sys.stderr)

    def measure(inv: Any, pb: Any) -> Any:
        target, cluster = cluster_target(inv, pb, os.environ, args.api_key_env)
        return bench(target, options, progress, cluster, inventory=inv)

    sweep_options = SweepOptions(layouts=layouts, bench=options, output_dir=args.output_dir or f"sweep-{inventory.cluster}",
                                 resume=args.resume, hardware=args.hardware, ignore_checks=frozenset(args.ignore_check),
                                 plot=args.plot)
    report = sweep(inventory, playbook, sweep_options, _reporter(args), measure)
    _emit(args, report.to_dict, lambda: render_text(report))
    if args.report:
        from sparkctl.report.sweep import sweep_report

        _write_report(args, lambda command, created: sweep_report(report, command=command, created=created))
    return 0 if report.complete else int(ExitCode.FAILED)


def cmd_bench_compare(args: argparse.Namespace) -> int:
    from sparkctl.bench.report import compare_text
    from sparkctl.bench.result import load_result

    if args.plot:
        from sparkctl.plotting import require_matplotlib

        require_matplotlib()
    files = [load_result(path) for path in args.results]
    if args.plot:
        from sparkctl.bench.plot import plot_results

        plot_results(files, args.plot, title="compared results")
    _emit(args, lambda: {"results": [{"path": f.path, "name": f.name, "source": f.source,
                                      "steps": [p.__dict__ for p in f.points]} for f in files]},
          lambda: compare_text(files) + (f"\nplot: {args.plot}" if args.plot else ""))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from sparkctl.ops import doctor

    if args.artefact == "nccl-log":
        report = doctor.nccl_log(args.file)
    elif args.artefact == "nccl-tests":
        report = doctor.nccl_tests(args.file, expect_busbw_gbs=args.expect_busbw)
    else:
        report = doctor.vllm_log(args.file)
    _emit(args, lambda: report, lambda: render.doctor_text(args.artefact, report))
    return int(ExitCode.FAILED) if report["problem"] else 0



def cmd_explain(args: argparse.Namespace) -> int:
    from sparkctl.ops.explain import ExplainOptions, explain
    from sparkctl.perf.report import render_text

    inventory = playbook = None
    if args.inventory or args.playbook or args.calibrate:
        inventory, playbook = _load(args, playbook="optional" if args.model_config else "required")
    options = ExplainOptions(
        model_config=args.model_config, quant=args.quant, all_linear=args.all_linear, kv_dtype=args.kv_dtype,
        tp=args.tp, pp=args.pp, concurrency=args.concurrency, context=args.context, output_len=args.output_len,
        hardware=args.hardware,
        mem_bw_gbs=args.mem_bw_gbs, tflops=args.tflops, allreduce_us=args.allreduce_us, bench=args.bench,
        calibrate=args.calibrate,
    )
    report = explain(options, inventory=inventory, playbook=playbook)
    _emit(args, lambda: report, lambda: render_text(report))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from sparkctl.ops.logs import read_logs

    inventory, _ = _load(args, playbook="none")
    logs = read_logs(inventory, node=args.node, lines=args.lines, role=args.role)
    _emit(args, lambda: {"cluster": inventory.cluster, "nodes": logs}, lambda: render.logs_text(logs))
    return int(ExitCode.UNREACHABLE) if any(entry.get("error") for entry in logs.values()) else 0



def cmd_init(args: argparse.Namespace) -> int:
    from sparkctl.init.cli_args import init_options, playbook_mode

    if args.playbook_model:
        return playbook_mode(args, _print_json)
    from sparkctl.init.flow import init_cluster
    from sparkctl.init.render import init_text

    options, ask = init_options(args)
    result = init_cluster(options, _reporter(args), ask)
    _emit(args, result.to_dict, lambda: init_text(result))
    return result.exit_code


def cmd_completion(args: argparse.Namespace) -> int:
    from sparkctl.completion import script

    sys.stdout.write(script(args.shell))
    return 0


# ----------------------------------------------------------------------------
# the parser: one function per command group, in the order `--help` lists them
# ----------------------------------------------------------------------------
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # what add_subparsers returns


@dataclass(frozen=True)
class _Parents:
    """Flags shared by several commands (argparse parents)."""

    common: argparse.ArgumentParser
    inv: argparse.ArgumentParser
    pb: argparse.ArgumentParser
    quiet: argparse.ArgumentParser
    report: argparse.ArgumentParser


def _parents() -> _Parents:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    common.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    inv = argparse.ArgumentParser(add_help=False)
    inv.add_argument("-i", "--inventory", help="inventory YAML (default: $SPARKCTL_INVENTORY)")
    pb = argparse.ArgumentParser(add_help=False)
    pb.add_argument("-p", "--playbook", help="playbook YAML (default: $SPARKCTL_PLAYBOOK)")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    report = argparse.ArgumentParser(add_help=False)
    report.add_argument("--report", metavar="FILE.html|FILE.md",
                        help="also write a shareable report: one self-contained HTML page, or Markdown tables")
    return _Parents(common, inv, pb, quiet, report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparkctl",
        description="One vLLM endpoint across several DGX Spark machines, with measurements.",
        epilog="exit codes: 0 ok, 1 failed, 2 bad input, 3 node unreachable, 4 deadline passed, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"sparkctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    shared = _parents()
    for add in (_setup_commands, _observe_commands, _down_command, _probe_command, _run_command, _doctor_command,
                _bench_commands, _explain_command, _logs_command, _init_command, _completion_command):
        add(sub, shared)
    return parser


def _setup_commands(sub: Subparsers, shared: _Parents) -> None:
    """validate, exec, check, up: from files to a serving cluster."""
    p = sub.add_parser("validate", parents=[shared.common, shared.inv, shared.pb], help="check an inventory (and playbook) without touching any node")
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("exec", parents=[shared.common, shared.inv], help="run a command on every node in parallel")
    p.add_argument("--timeout", type=positive_float, default=120.0, help="seconds per node (default 120)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    p.set_defaults(handler=cmd_exec)

    p = sub.add_parser("check", parents=[shared.common, shared.inv, shared.pb, shared.quiet, shared.report], help="preflight every node and the fabric; print the network plan")
    p.add_argument("--plan", action="store_true", help="print only the per-host network plan")
    p.add_argument("--problems-only", action="store_true", help="hide PASS rows")
    p.add_argument("--facts", action="store_true", help="with --json: include every node's raw facts")
    p.set_defaults(handler=cmd_check)

    p = sub.add_parser("up", parents=[shared.common, shared.inv, shared.pb, shared.quiet], help="start vLLM across the nodes and wait until it serves")
    p.add_argument(
        "--ignore-check",
        action="append",
        metavar="ID",
        help="start even though this check FAILs (repeatable; 'all' ignores every check); see `sparkctl check`",
    )
    p.set_defaults(handler=cmd_up)


def _observe_commands(sub: Subparsers, shared: _Parents) -> None:
    """status and watch, sharing the sampling flags."""
    observe = argparse.ArgumentParser(add_help=False)
    observe.add_argument("--interval", type=positive_float, default=5.0, metavar="S", help="seconds between samples (default 5)")
    observe.add_argument("--wedge-after", type=positive_float, default=30.0, metavar="S",
                         help="requests running and no token generated this long is a wedge (default 30)")
    observe.add_argument("--canary", type=positive_float, nargs="?", const=10.0, metavar="S",
                         help="also send a max_tokens=1 request with this deadline (default 10 s when given)")
    observe.add_argument("--api-key-env", default="VLLM_API_KEY", metavar="NAME",
                         help="variable with the endpoint's API key, for the canary (default VLLM_API_KEY)")

    p = sub.add_parser("status", parents=[shared.common, shared.inv, shared.pb, observe],
                       help="per node: processes, telemetry (GPU, host, logs); the endpoint's metrics; a verdict")
    p.add_argument("--watch", action="store_true", help="refresh every --interval (NDJSON with --json); Ctrl-C ends it")
    p.add_argument("--sample", type=non_negative_float, default=3.0, metavar="S",
                   help="without --watch: scrape /metrics twice this far apart for rates and a wedge (default 3; 0: once)")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("watch", parents=[shared.common, shared.inv, shared.pb, observe, shared.quiet],
                       help="supervise: restart a wedged or degraded cluster (--restart), evidence first, with back-off")
    p.add_argument("--restart", action="store_true", help="restart (down, then up) a cluster bad for longer than --grace")
    p.add_argument("--grace", type=non_negative_float, default=60.0, metavar="S", help="how long bad before a restart (default 60)")
    p.add_argument("--max-restarts", type=non_negative_int, default=3, help="restarts per hour before giving up (default 3)")
    p.add_argument("--backoff", type=non_negative_float, default=30.0, metavar="S", help="wait after a restart; doubles, capped at 600 (default 30)")
    p.add_argument("--evidence-dir", default="sparkctl-evidence", metavar="DIR",
                   help="where status, logs and metrics are saved before a restart (default ./sparkctl-evidence)")
    p.set_defaults(handler=cmd_watch)


def _down_command(sub: Subparsers, shared: _Parents) -> None:
    """down."""
    p = sub.add_parser("down", parents=[shared.common, shared.inv, shared.pb, shared.quiet], help="stop everything sparkctl started and verify nothing is left")
    p.add_argument("--grace", type=non_negative_float, default=None, help="seconds between SIGTERM and SIGKILL (default: playbook's stop_grace_s or 30)")
    p.set_defaults(handler=cmd_down)


def _probe_command(sub: Subparsers, shared: _Parents) -> None:
    """nccl-probe: the all-reduce sweep and its verdict thresholds."""
    p = sub.add_parser("nccl-probe", parents=[shared.common, shared.inv, shared.pb, shared.quiet, shared.report],
                       help="all-reduce sweep across the nodes (NCCL on GPUs, gloo on CPUs): latency, bandwidth, transport")
    p.add_argument("--python", help="interpreter with torch on the nodes (default: the playbook's vLLM Python, else python3)")
    p.add_argument("--sizes", help="explicit sizes, e.g. 8,4K,1M,1G (overrides --min-size/--max-size)")
    p.add_argument("--min-size", default="8", help="smallest message (default 8)")
    p.add_argument("--max-size", default="1G", help="largest message (default 1G; never more is allocated)")
    p.add_argument("--factor", type=size_factor, default=2, help="size step (default 2)")
    p.add_argument("--modes", default="eager,graph", help="eager and/or graph (CUDA graphs, GPU only); default both")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    p.add_argument("--backend", default="auto", help="auto (nccl with GPUs, gloo without), nccl or gloo")
    p.add_argument("--warmup", type=non_negative_int, default=5, help="warm-up iterations per size (default 5)")
    p.add_argument("--min-iters", type=positive_int, default=20, help="timed iterations per size, at least (default 20)")
    p.add_argument("--max-iters", type=positive_int, default=1000, help="timed iterations per size, at most (default 1000)")
    p.add_argument("--time-budget", type=positive_float, default=0.25, help="seconds of timed work per size and mode (default 0.25)")
    p.add_argument("--expect-busbw", type=positive_float, default=22.0, metavar="GBS", help="expected large-message bus bandwidth (default 22, a Spark pair)")
    p.add_argument("--degraded-fraction", type=fraction, default=0.8, help="degraded below this fraction of --expect-busbw (default 0.8)")
    p.add_argument("--max-small-latency", type=positive_float, default=50.0, metavar="US", help="small-message latency limit in µs (default 50)")
    p.add_argument("--small-size", default="8K", help="the size the latency limit applies to (default 8K)")
    p.add_argument("--engine", default="torch", choices=["torch", "nccl-tests"], help="torch (default) or nccl-tests' all_reduce_perf via mpirun")
    p.add_argument("--nccl-tests", default="all_reduce_perf", metavar="PATH", help="all_reduce_perf on the nodes (engine nccl-tests)")
    p.add_argument("--port", type=port, help="rendezvous port (default: the first free one from 29500)")
    p.add_argument("--timeout", type=positive_float, help="seconds for the whole probe (default: derived from the sweep)")
    p.add_argument("--plot", metavar="FILE.png", help="draw latency and bus bandwidth against size (needs matplotlib)")
    p.set_defaults(handler=cmd_nccl_probe)


def _run_command(sub: Subparsers, shared: _Parents) -> None:
    """run: an offline torchrun job."""
    p = sub.add_parser("run", parents=[shared.common, shared.inv, shared.pb, shared.quiet],
                       help="an offline SPMD job in a torchrun group (vLLM external_launcher): generate or throughput")
    p.add_argument("job", choices=["generate", "throughput"], help="generate: prompts in, outputs out; throughput: batch-size sweep")
    p.add_argument("--input", help="generate: prompts, one per line or JSONL with a 'prompt' key")
    p.add_argument("--output", help="generate: where to write the outputs (JSONL)")
    p.add_argument("--max-tokens", type=positive_int, default=64, help="tokens generated per prompt (default 64)")
    p.add_argument("--batch-sizes", default="1,2,4,8", help="throughput: batch sizes (default 1,2,4,8)")
    p.add_argument("--prompt-tokens", type=positive_int, default=32, help="throughput: tokens per prompt (default 32)")
    p.add_argument("--repeats", type=positive_int, default=3, help="throughput: batches per batch size (default 3)")
    p.add_argument("--seed", type=int, default=0, help="the seed every rank uses (default 0)")
    p.add_argument("--master-port", type=port, default=29541, help="torchrun rendezvous port (the next free one if busy)")
    p.add_argument("--timeout", type=positive_float, default=3600.0, help="seconds for the whole job, model load included")
    p.set_defaults(handler=cmd_run)


def _doctor_command(sub: Subparsers, shared: _Parents) -> None:
    """doctor: artefacts the user already has."""
    p = sub.add_parser("doctor", parents=[shared.common], help="read an NCCL debug log, an nccl-tests output or a vLLM log you already have")
    p.add_argument("artefact", choices=["nccl-log", "nccl-tests", "vllm-log"], help="what the file is")
    p.add_argument("file", help="the file ('-' for stdin)")
    p.add_argument("--expect-busbw", type=positive_float, default=22.0, metavar="GBS",
                   help="nccl-tests: the link's expected bus bandwidth in GB/s (default 22, a Spark pair)")
    p.set_defaults(handler=cmd_doctor)


def _bench_commands(sub: Subparsers, shared: _Parents) -> None:
    """bench, bench-compare and sweep, sharing the load ladder."""
    # the load ladder, shared by `bench` and `sweep` (read by _bench_options)
    load = argparse.ArgumentParser(add_help=False)
    p = load
    p.add_argument("--concurrency", metavar="N,N,...", help="closed loop: keep exactly N requests in flight, one step per N (default 1,2,4,8)")
    p.add_argument("--request-rate", metavar="R,R,...", help="open loop: arrivals per second (Poisson unless --burstiness), one step per rate")
    p.add_argument("--burstiness", type=positive_float, default=1.0, help="open loop: gamma shape of the arrivals (1 = Poisson; lower is burstier)")
    p.add_argument("--max-concurrency", type=positive_int, help="open loop: at most this many requests in flight")
    p.add_argument("--input-len", default="1024", metavar="N,N,...", help="prompt length in tokens; a list makes one step per length (default 1024)")
    p.add_argument("--output-len", type=positive_int, default=128, help="tokens generated per request (default 128; ignore_eos is sent)")
    p.add_argument("--num-prompts", type=positive_int, default=64, help="requests per step (default 64)")
    p.add_argument("--duration", type=positive_float, metavar="S", help="run each step this many seconds instead of --num-prompts requests")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="requests before each step that are not counted (default 2)")
    p.add_argument("--request-timeout", type=positive_float, default=600.0, metavar="S", help="deadline per request (default 600)")
    p.add_argument("--endpoint", choices=["completions", "chat"], default="completions", help="/v1/completions (default) or /v1/chat/completions")
    p.add_argument("--seed", type=int, default=0, help="seed for prompts and arrivals (default 0)")
    p.add_argument("--prefix-len", type=non_negative_int, default=0, help="tokens of one prefix shared by every prompt (default 0: all prompts unique)")
    p.add_argument("--tokenizer", metavar="PATH", help="a tokenizer.json or model folder for prompt lengths when the server has no /tokenize")
    p.add_argument("--percentiles", metavar="P,P,...", help="extra percentiles, e.g. 50,90,99 (p99 is always reported)")
    p.add_argument("--slo", metavar="ttft=MS,tpot=MS,e2el=MS", help="SLOs for goodput; the report names the highest load meeting them")

    p = sub.add_parser("bench", parents=[shared.common, shared.inv, shared.pb, shared.quiet, load, shared.report],
                       help="serving benchmark of the cluster's endpoint (or --url): TTFT/TPOT/ITL, throughput, the server's view")
    p.add_argument("--url", help="benchmark this OpenAI-compatible endpoint instead of the inventory's (e.g. http://host:8000)")
    p.add_argument("--model", help="the served model name (default: the playbook's, or the only model the endpoint serves)")
    p.add_argument("--api-key-env", default="VLLM_API_KEY", metavar="NAME",
                   help="environment variable holding the API key, if the endpoint needs one (default VLLM_API_KEY)")
    p.add_argument("--nodes", type=positive_int, default=1, help="with --url: nodes behind the endpoint, for tok/s per node (default 1)")
    p.add_argument("--save-result", metavar="FILE.json", help="write the result document (also when interrupted)")
    p.add_argument("--plot", metavar="FILE.png", help="Pareto chart and latency against load (needs matplotlib)")
    p.set_defaults(handler=cmd_bench)

    p = sub.add_parser("bench-compare", parents=[shared.common],
                       help="`sparkctl bench compare A.json B.json ...`: results side by side (sparkctl or vllm bench serve files)")
    p.add_argument("results", nargs="+", metavar="RESULT.json", help="result files")
    p.add_argument("--plot", metavar="FILE.png", help="overlaid Pareto chart (needs matplotlib)")
    p.set_defaults(handler=cmd_bench_compare)

    p = sub.add_parser("sweep", parents=[shared.common, shared.inv, shared.pb, shared.quiet, load, shared.report],
                       help="for each layout: up, the bench ladder, down; then the layouts compared, with a recommendation")
    p.add_argument("--layouts", required=True, metavar="L,L,...", help="layouts to measure, e.g. tp2,dp2,replicas2")
    p.add_argument("--output-dir", metavar="DIR", help="where each layout's result is saved (default sweep-<cluster>)")
    p.add_argument("--resume", action="store_true", help="continue the sweep in --output-dir with the layouts not yet measured")
    p.add_argument("--plot", metavar="FILE.png", help="every layout's Pareto chart overlaid (needs matplotlib)")
    p.add_argument("--hardware", default="gb10", help="explain's hardware preset for the predictions (default gb10)")
    p.add_argument("--ignore-check", action="append", default=[], metavar="ID", help="start each layout despite this failed check (or all)")
    p.add_argument("--api-key-env", default="VLLM_API_KEY", metavar="NAME", help="environment variable holding the API key (default VLLM_API_KEY)")
    p.set_defaults(handler=cmd_sweep)


def _explain_command(sub: Subparsers, shared: _Parents) -> None:
    """explain: the performance model and its rules."""
    p = sub.add_parser("explain", parents=[shared.common, shared.inv, shared.pb],
                       help="predict decode/prefill speed from config.json, say what bounds it, name misconfigurations")
    p.add_argument("--model-config", metavar="CONFIG.json|DIR", help="the model's config.json (default: the playbook's model)")
    p.add_argument("--quant", choices=["bf16", "fp16", "fp8", "nvfp4", "mxfp4", "int4"], help="weight format (overrides quantization_config)")
    p.add_argument("--all-linear", action="store_true", help="attention and LM head quantized too (e.g. --mxfp4-layers moe,qkv,o,lm_head)")
    p.add_argument("--kv-dtype", choices=["bf16", "fp16", "fp8"], help="KV cache dtype (default bf16, or the playbook's --kv-cache-dtype)")
    # explain checks its sizes itself: "--tp must be at least 1" is the message its callers read
    p.add_argument("--tp", type=int, help="tensor parallel size (default: the playbook's, else 1)")
    p.add_argument("--pp", type=int, help="pipeline parallel size (default: the playbook's, else 1)")
    p.add_argument("--concurrency", type=int, default=1, help="requests decoding at once (default 1)")
    p.add_argument("--context", type=int, default=1024, help="tokens in each request's KV cache; also the prompt for TTFT (default 1024)")
    p.add_argument("--output-len", type=int, help="tokens each request generates: with concurrency > 1, other requests' prompts are prefilled between decode steps")
    p.add_argument("--hardware", default="gb10", help="preset: gb10 (default), h100, h200, a100-40gb, a100-80gb, l40s, rtx4090, rtx5090, rtx-pro-6000, t4")
    p.add_argument("--mem-bw-gbs", type=positive_float, help="memory bandwidth in GB/s (overrides the preset)")
    p.add_argument("--tflops", type=positive_float, help="dense tensor TFLOPS (overrides the preset)")
    p.add_argument("--allreduce-us", type=non_negative_float, help="small-message all-reduce latency between two TP ranks (default: last nccl-probe, else a Spark-pair default)")
    p.add_argument("--bench", metavar="RESULT.json", help="a sparkctl bench or vllm bench serve --save-result file to put beside the prediction")
    p.add_argument("--calibrate", metavar="RESULT.json", help="fit this cluster's per-step overhead from a concurrency-1 bench result (needs -i/-p)")
    p.set_defaults(handler=cmd_explain)


def _logs_command(sub: Subparsers, shared: _Parents) -> None:
    """logs."""
    p = sub.add_parser("logs", parents=[shared.common, shared.inv], help="the last lines of each node's vLLM log")
    p.add_argument("--node", help="only this node")
    p.add_argument("-n", "--lines", type=positive_int, default=50, help="lines per node (default 50)")
    # The role names a file on the node: only the roles sparkctl writes logs for.
    p.add_argument("--role", default="vllm", choices=["vllm", "router", "ray", "probe", "job"],
                   help="whose log: vllm (default), router, ray, probe or job")
    p.set_defaults(handler=cmd_logs)


def _init_command(sub: Subparsers, shared: _Parents) -> None:
    """init: an inventory from fresh Sparks, or a playbook for a model."""
    p = sub.add_parser("init", parents=[shared.common, shared.quiet],
                       help="write an inventory from fresh Sparks (--hosts), or a playbook for a model (--playbook)")
    p.add_argument("--hosts", metavar="HOST1,HOST2,...", help="management addresses or names of the nodes")
    p.add_argument("--user", help="SSH login (default: the current user)")
    p.add_argument("--port", type=port, default=22, help="SSH port (default 22)")
    p.add_argument("--identity-file", metavar="FILE", help="private key to log in with")
    p.add_argument("--known-hosts", metavar="FILE", default="~/.ssh/known_hosts", help="where host keys are checked and recorded")
    p.add_argument("--accept-new", action="store_true", help="record unknown host keys without asking (a changed key is refused)")
    p.add_argument("--name", default="sparks", help="the cluster's name (default sparks)")
    p.add_argument("--head", metavar="HOST", help="the head node (default: the first host)")
    p.add_argument("-o", "--output", metavar="FILE.yaml", help="where to write (default inventories/NAME.yaml, or playbooks/MODEL.yaml)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument("--mtu", type=mtu, default=9000, help="fabric MTU (default 9000)")
    p.add_argument("--apply", action="store_true", help="apply the fabric configuration (fabric interfaces only), verify, roll back on failure")
    p.add_argument("--netplan-dir", default="/etc/netplan", metavar="DIR", help="where --apply writes the netplan file (default /etc/netplan)")
    p.add_argument("--playbook", dest="playbook_model", metavar="MODEL", help="write a playbook for this model directory or id (with -i)")
    p.add_argument("-i", "--inventory", help="with --playbook: the inventory (default: $SPARKCTL_INVENTORY)")
    p.set_defaults(handler=cmd_init)


def _completion_command(sub: Subparsers, shared: _Parents) -> None:
    """completion: shell scripts generated from this parser."""
    p = sub.add_parser("completion", help="print a shell completion script (bash, zsh or fish); see the README")
    p.add_argument("shell", choices=["bash", "zsh", "fish"])
    p.set_defaults(handler=cmd_completion)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["bench", "compare"]:
        argv = ["bench-compare", *argv[2:]]  # `bench compare` reads results; `bench` alone measures
    from sparkctl.completion import complete_if_asked

    complete_if_asked(parser)  # exits here when a shell asks for completions
    args = parser.parse_args(argv)
    args.command_line = "sparkctl " + shlex.join(argv)  # what a report says produced it
    # A closed terminal (SIGHUP) or a supervisor's SIGTERM gets what Ctrl-C gets:
    # everything this command started is stopped before it exits.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    handler: Handler = args.handler
    # paramiko logs tracebacks from its transport thread; they are noise unless debugging.
    logging.getLogger("paramiko").setLevel(logging.DEBUG if getattr(args, "debug", False) else logging.CRITICAL + 1)
    try:
        return handler(args)
    except SparkctlError as error:
        return _report_error(args, error)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - last resort: no traceback unless --debug
        if getattr(args, "debug", False):
            traceback.print_exc()
        else:
            sys.stderr.write(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)\n")
        return int(ExitCode.FAILED)


if __name__ == "__main__":
    sys.exit(main())
