#!/usr/bin/env python3
"""`sparkctl bench` and `vllm bench serve` side by side, in one run, against the
same server: the same random-prompt shape (input/output lengths), the same
request count, at each concurrency, alternating the two tools round by round so
drift in the machine hits both. Prints the median over rounds of request
throughput, median TTFT and median TPOT for each tool, and their ratio.

    python scripts/bench_vs_vllm.py --url http://127.0.0.1:8013 --model tiny \
        --tokenizer playbooks/models/tiny-llama --concurrency 1,4 --rounds 3

`--vllm` is how `vllm` is run (default: the repo's CPU shim in .venv).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VLLM = [str(REPO / ".venv" / "bin" / "python"), str(REPO / "playbooks" / "support" / "vllm_cpu.py")]
METRICS = ("request_throughput", "median_ttft_ms", "median_tpot_ms")


@dataclass(frozen=True)
class Row:
    concurrency: int
    metric: str
    sparkctl: float
    vllm: float

    @property
    def ratio(self) -> float:
        return self.sparkctl / self.vllm if self.vllm else float("nan")


def _pin(args: argparse.Namespace) -> list[str]:
    return ["taskset", "-c", args.client_cpu] if args.client_cpu else []


def run_sparkctl(args: argparse.Namespace, concurrency: int, out: Path) -> dict:
    argv = [*_pin(args), sys.executable, "-m", "sparkctl", "bench", "--url", args.url, "--model", args.model, "-q",
            "--concurrency", str(concurrency), "--input-len", str(args.input_len), "--output-len", str(args.output_len),
            "--num-prompts", str(args.num_prompts), "--warmup", "1", "--seed", str(args.seed),
            "--save-result", str(out)]
    subprocess.run(argv, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["steps"][0]


def run_vllm(args: argparse.Namespace, concurrency: int, out: Path) -> dict:
    argv = [*_pin(args), *args.vllm, "bench", "serve", "--base-url", args.url, "--model", args.model,
            "--tokenizer", args.tokenizer, "--dataset-name", "random", "--random-input-len", str(args.input_len),
            "--random-output-len", str(args.output_len), "--num-prompts", str(args.num_prompts),
            "--max-concurrency", str(concurrency), "--num-warmups", "1", "--seed", str(args.seed),
            "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name]
    env = {**os.environ, "VLLM_TARGET_DEVICE": os.environ.get("VLLM_TARGET_DEVICE", "cpu")}
    subprocess.run(argv, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return json.loads(out.read_text())


def compare(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for concurrency in args.concurrency:
            ours: list[dict] = []
            theirs: list[dict] = []
            for round_ in range(args.rounds):
                tools = [(run_sparkctl, ours), (run_vllm, theirs)]
                if round_ % 2:
                    tools.reverse()  # alternate who goes first
                for run, into in tools:
                    into.append(run(args, concurrency, Path(tmp) / f"{run.__name__}-{concurrency}-{round_}.json"))
                    print(f"c={concurrency} round {round_ + 1}: {run.__name__} done", file=sys.stderr)
            for metric in METRICS:
                rows.append(Row(concurrency, metric, statistics.median(r[metric] for r in ours),
                                statistics.median(r[metric] for r in theirs)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokenizer", required=True, help="a model folder with the tokenizer (vllm bench needs one)")
    parser.add_argument("--concurrency", default="1,4", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--num-prompts", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vllm", nargs="+", default=DEFAULT_VLLM, help="argv that runs vLLM's CLI")
    parser.add_argument("--client-cpu", metavar="CPUS",
                        help="run both clients on these CPUs (taskset), apart from the server's, so neither "
                             "client's own CPU use slows the server it measures")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = compare(args)
    if args.json:
        print(json.dumps([asdict(r) | {"ratio": r.ratio} for r in rows], indent=2))
        return 0
    print(f"{'c':>3}  {'metric':<20} {'sparkctl':>10} {'vllm bench':>10} {'ratio':>6}")
    for r in rows:
        print(f"{r.concurrency:>3}  {r.metric:<20} {r.sparkctl:>10.2f} {r.vllm:>10.2f} {r.ratio:>6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
