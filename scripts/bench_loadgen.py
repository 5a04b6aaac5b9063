#!/usr/bin/env python3
"""Is `sparkctl bench`'s load generator fast enough, and does it time correctly?

1. throughput: the client alone against a local server that streams instantly
   (tests/stream_server.py writes each whole stream at once, so the client is
   the bottleneck). Each client is pinned to one core (taskset), the server to
   the other; `sparkctl bench` and `vllm bench serve` run alternately, rounds
   times, in the same run. Reported: requests/s and streamed chunks/s, each
   tool's own measurement, median over rounds.
2. accuracy: the same server with a fixed TTFT and inter-token time, at
   concurrency 1 to 64: sparkctl's median TTFT and TPOT against the truth, the
   times the server really produced (its own clock, from each request's arrival;
   a timer can only overshoot the delay it is set to), within 2% + 1 ms.

    python scripts/bench_loadgen.py [--rounds 3] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VLLM = [str(REPO / ".venv" / "bin" / "python"), str(REPO / "playbooks" / "support" / "vllm_cpu.py")]
TOKENIZER = str(REPO / "playbooks" / "models" / "tiny-llama")


class Server:
    def __init__(self, *args: str, cpu: int | None):
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        self.proc = subprocess.Popen([*pin, sys.executable, "-m", "tests.stream_server", "--port", "0", *args],
                                     cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("listening on "):
            raise RuntimeError(f"stream server did not start: {line!r}")
        self.url = f"http://127.0.0.1:{line.split()[-1]}"

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def sparkctl_run(url: str, *, concurrency: int, prompts: int, output_len: int, cpu: int | None, out: Path,
                 warmup: int = 1) -> dict:
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    subprocess.run([*pin, sys.executable, "-m", "sparkctl", "bench", "--url", url, "-q", "--concurrency",
                    str(concurrency), "--input-len", "16", "--output-len", str(output_len), "--num-prompts",
                    str(prompts), "--warmup", str(warmup), "--save-result", str(out)],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["steps"][0]


def vllm_run(url: str, *, concurrency: int, prompts: int, output_len: int, cpu: int | None, out: Path,
             warmup: int = 1) -> dict:
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    subprocess.run([*pin, *VLLM, "bench", "serve", "--base-url", url, "--model", "stream", "--tokenizer", TOKENIZER,
                    "--dataset-name", "random", "--random-input-len", "16", "--random-output-len", str(output_len),
                    "--num-prompts", str(prompts), "--max-concurrency", str(concurrency), "--num-warmups", str(warmup),
                    "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"})
    return json.loads(out.read_text())


@dataclass(frozen=True)
class ThroughputRow:
    tool: str
    requests_per_s: float
    chunks_per_s: float


def throughput(rounds: int, *, concurrency: int, prompts: int, output_len: int) -> list[ThroughputRow]:
    cores = os.cpu_count() or 1
    client_cpu, server_cpu = (0, 1) if cores >= 2 else (None, None)
    server = Server(cpu=server_cpu)
    found: dict[str, list[dict]] = {"sparkctl bench": [], "vllm bench serve": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for round_ in range(rounds):
                order = [("sparkctl bench", sparkctl_run), ("vllm bench serve", vllm_run)]
                for name, run in order if round_ % 2 == 0 else order[::-1]:
                    found[name].append(run(server.url, concurrency=concurrency, prompts=prompts, output_len=output_len,
                                           cpu=client_cpu, out=Path(tmp) / f"r{round_}-{name.split()[0]}.json"))
                    print(f"throughput round {round_ + 1}: {name} done", file=sys.stderr)
    finally:
        server.stop()
    return [
        ThroughputRow(name, statistics.median(r["request_throughput"] for r in runs),
                      statistics.median(r["output_throughput"] for r in runs))  # one token per chunk
        for name, runs in found.items()
    ]


@dataclass(frozen=True)
class AccuracyRow:
    tool: str
    concurrency: int
    ttft_ms: float  # measured by the client
    tpot_ms: float
    true_ttft_ms: float  # what the server really did (its own clock, from each request's arrival)
    true_tpot_ms: float

    def within(self) -> bool:
        return (abs(self.ttft_ms - self.true_ttft_ms) <= 0.02 * self.true_ttft_ms + 1.0
                and abs(self.tpot_ms - self.true_tpot_ms) <= 0.02 * self.true_tpot_ms + 1.0)


def _server_timing(url: str) -> dict:
    with urllib.request.urlopen(url + "/timing", timeout=10) as response:
        return json.loads(response.read())


def accuracy(ttft_ms: float, itl_ms: float, output_len: int, levels: list[int]) -> list[AccuracyRow]:
    cores = os.cpu_count() or 1
    server = Server("--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms), "--jitter-ms", str(ttft_ms * 0.2),
                    cpu=1 if cores >= 2 else None)
    rows = []
    cpu = 0 if cores >= 2 else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for c in levels:
                # both clients against the same truth; c warm-up requests open the connections first
                for tool, run in (("sparkctl bench", sparkctl_run), ("vllm bench serve", vllm_run)):
                    _server_timing(server.url)  # forget the previous run
                    step = run(server.url, concurrency=c, prompts=max(4 * c, 32), output_len=output_len, cpu=cpu,
                               out=Path(tmp) / f"a{c}-{tool.split()[0]}.json", warmup=c)
                    truth = _server_timing(server.url)
                    rows.append(AccuracyRow(tool, c, step["median_ttft_ms"], step["median_tpot_ms"],
                                            truth["median_ttft_ms"], truth["median_tpot_ms"]))
                print(f"accuracy c={c} done", file=sys.stderr)
    finally:
        server.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32, help="throughput benchmark's concurrency")
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--itl-ms", type=float, default=10.0)
    parser.add_argument("--levels", default="1,4,16,64")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if not args.skip_throughput:
        rows = throughput(args.rounds, concurrency=args.concurrency, prompts=args.prompts, output_len=args.output_len)
        reference = next(r for r in rows if r.tool == "vllm bench serve")
        print(f"\n1. client throughput, one core, instant server, c={args.concurrency}, {args.prompts} requests x "
              f"{args.output_len} chunks, median of {args.rounds} alternating rounds:")
        print("| client | requests/s | chunks/s | against vllm bench serve |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r.tool} | {r.requests_per_s:,.1f} | {r.chunks_per_s:,.0f} | "
                  f"{r.requests_per_s / reference.requests_per_s:.2f}x |")
    levels = [int(x) for x in args.levels.split(",")]
    acc = accuracy(args.ttft_ms, args.itl_ms, 32, levels)
    print(f"\n2. timing accuracy: server set to TTFT {args.ttft_ms:g} ms, inter-token {args.itl_ms:g} ms, 32 tokens; "
          "truth = what the server really did, by its own clock (limit: 2% + 1 ms):")
    print("| concurrency | client | median TTFT ms: measured / true | median TPOT ms: measured / true | within the limit |")
    print("|---|---|---|---|---|")
    for a in acc:
        print(f"| {a.concurrency} | {a.tool} | {a.ttft_ms:.2f} / {a.true_ttft_ms:.2f} | {a.tpot_ms:.3f} / "
              f"{a.true_tpot_ms:.3f} | {'yes' if a.within() else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
