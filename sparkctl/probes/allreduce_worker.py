"""One rank of sparkctl's all-reduce probe, run under torchrun on every node.

Shipped to the nodes as a plain file and started as `python -m torch.distributed.run
... allreduce_worker.py --sizes ...`, so it imports only torch and the standard
library (never sparkctl). Rank 0 prints exactly one line

    SPARKCTL-PROBE-RESULT {json}

and any rank that fails prints `SPARKCTL-PROBE-ERROR rank N: ...` on stderr and
exits non-zero (sparkctl's group runner then stops the other ranks).

How it measures (why each choice):
- one tensor per size, allocated once and freed (and the CUDA cache emptied)
  before the next: on GB10 unified memory the probe must never hold more than
  the largest size asked for;
- correctness first: every rank fills rank+1, one all-reduce, every element
  must equal n(n+1)/2 (checked with min/max reductions: no mask of the size of
  the tensor); then the tensor is zeroed so repeated in-place sums cannot
  overflow;
- warm-up, then an iteration count from a MAX-reduced warm-up estimate so every
  rank runs the same number of collectives;
- every iteration timed on its own with one timestamp per iteration boundary
  (CUDA events on the stream on GPU, perf_counter on CPU): nothing else runs in
  the timed loop, no per-iteration synchronisation;
- each rank summarises its own iterations (p50/p99/min/mean), then every
  statistic is MAX-reduced across ranks: a collective is as slow as its slowest
  rank. (Not a per-iteration MAX: ranks' clocks are not aligned, so pairing
  iteration i of two ranks pairs two samples of the same collective offset by
  wake-up jitter, and the MAX of each pair measures that jitter, not the link:
  +4-10% at p50 in paired runs on a busy host, see docs/probe-benchmark.md);
- CUDA-graph mode: a batch of all-reduces captured once, replays timed,
  per all-reduce time = replay time / batch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
import traceback
from datetime import timedelta
from typing import Any

RESULT_MARKER = "SPARKCTL-PROBE-RESULT "
ERROR_MARKER = "SPARKCTL-PROBE-ERROR "
PROGRESS_MARKER = "SPARKCTL-PROBE-PROGRESS "

DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Relative tolerance of the sum check: integers are exact in float32 up to 2**24,
# but bf16/fp16 round large sums (big worlds) to their 8/11-bit mantissas.
SUM_TOLERANCE = {"float32": 0.0, "bfloat16": 2.0 ** -7, "float16": 2.0 ** -10}
MODES = ("eager", "graph")
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "num_experts_per_tok",
            "moe_intermediate_size", "n_shared_experts", "first_k_dense_replace", "moe_layer_freq",
            "decoder_sparse_step", "mlp_only_layers")


# ---------------------------------------------------------------- pure helpers
def percentile(sorted_values: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not sorted_values:
        raise ValueError("no values")
    pos = (len(sorted_values) - 1) * pct / 100.0
    low = int(math.floor(pos))
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def busbw_factor(world_size: int) -> float:
    """nccl-tests' all-reduce bus bandwidth factor: 2(n-1)/n (1.0 at n=2)."""
    return 2.0 * (world_size - 1) / world_size if world_size > 0 else 0.0


STATS = ("p50_us", "p99_us", "min_us", "mean_us")


def summarize(times_s: list[float]) -> dict[str, float]:
    """p50/p99/min/mean of per-iteration times, in microseconds."""
    ordered = sorted(times_s)
    return {
        "p50_us": percentile(ordered, 50) * 1e6,
        "p99_us": percentile(ordered, 99) * 1e6,
        "min_us": ordered[0] * 1e6,
        "mean_us": sum(ordered) / len(ordered) * 1e6,
    }


def bandwidth(size_bytes: int, p50_us: float, world_size: int) -> dict[str, float]:
    """algbw = bytes / p50 time and busbw = algbw x 2(n-1)/n, in GB/s (1e9, as nccl-tests)."""
    algbw = size_bytes / (p50_us * 1e-6) / 1e9 if p50_us > 0 else float("inf")
    return {"algbw_gbs": algbw, "busbw_gbs": algbw * busbw_factor(world_size)}


def choose_iterations(estimate_s: float, budget_s: float, min_iters: int, max_iters: int) -> int:
    """As many iterations as fit the time budget, within [min_iters, max_iters]."""
    if estimate_s <= 0 or not math.isfinite(estimate_s):
        return max_iters
    return max(min_iters, min(max_iters, int(budget_s / estimate_s)))


# What timing may add to what it measures. On a GPU, an eager all-reduce loop
# is bound by the host's launch rate, so each CUDA event recorded between calls
# costs host time that shows up as latency (measured on an H100: ~15 us per
# record against ~20 us per all-reduce). Events are therefore recorded every
# `stride` calls, with the stride chosen so that recording adds at most this
# share; each sample is then the mean of `stride` consecutive calls.
MAX_TIMING_OVERHEAD = 0.02
MAX_STRIDE = 64


def choose_stride(record_cost_s: float, per_call_s: float) -> int:
    """Calls per timed sample so that one event record costs <= MAX_TIMING_OVERHEAD of them."""
    if per_call_s <= 0 or not math.isfinite(per_call_s) or record_cost_s <= 0:
        return 1
    return max(1, min(MAX_STRIDE, math.ceil(record_cost_s / (MAX_TIMING_OVERHEAD * per_call_s))))


def element_count(size_bytes: int, dtype: str) -> int:
    """Elements for a message of size_bytes; never more bytes than asked (at least one element)."""
    return max(1, size_bytes // DTYPES[dtype])


def model_summary(path: str) -> dict[str, Any]:
    """What the controller needs from a model's config.json for the token-cost maths."""
    with open(path) as handle:
        config = json.load(handle)
    if not isinstance(config, dict):
        raise ValueError("config.json is not a JSON object")
    return dict(summarize_config(config), path=path)


def summarize_config(config: dict[str, Any]) -> dict[str, Any]:
    """Layers, hidden size, dtype, model type and MoE hints of a config.json object."""
    text = config["text_config"] if isinstance(config.get("text_config"), dict) else {}
    merged = {**config, **text}  # multimodal configs keep the language model under text_config
    out: dict[str, Any] = {}
    for key in ("model_type", "num_hidden_layers", "hidden_size", "torch_dtype", "dtype", "architectures"):
        if key in merged:
            out[key] = merged[key]
    for key in MOE_KEYS:
        if key in merged:
            out[key] = merged[key]
    quant = merged.get("quantization_config")
    if isinstance(quant, dict):
        out["quantization"] = quant.get("quant_method") or quant.get("quant_algo")
    return out


# ---------------------------------------------------------------- arguments
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="sparkctl all-reduce probe (one rank)")
    parser.add_argument("--sizes", required=True, help="comma-separated message sizes in bytes")
    parser.add_argument("--modes", default="eager,graph", help="eager and/or graph (graph needs GPUs)")
    parser.add_argument("--backend", default="auto", choices=("auto", "nccl", "gloo"))
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    parser.add_argument("--warmup", type=int, default=5, help="warm-up iterations per size and mode")
    parser.add_argument("--min-iters", type=int, default=20)
    parser.add_argument("--max-iters", type=int, default=1000)
    parser.add_argument("--time-budget", type=float, default=0.25, help="seconds of timed work per size and mode")
    parser.add_argument("--graph-batch", type=int, default=10, help="all-reduces captured per CUDA graph")
    parser.add_argument("--collective-timeout", type=float, default=300.0, help="seconds before a stuck collective fails")
    parser.add_argument("--model-config", default=None, help="config.json to summarise (rank 0 reads it)")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.modes = [m for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad or not args.modes:
        parser.error(f"--modes must be a comma-separated subset of {','.join(MODES)}, got {','.join(bad) or 'nothing'}")
    if not args.sizes or min(args.sizes) < DTYPES[args.dtype]:
        parser.error(f"--sizes must be >= {DTYPES[args.dtype]} bytes (one {args.dtype} element)")
    if not 1 <= args.min_iters <= args.max_iters:
        parser.error("need 1 <= --min-iters <= --max-iters")
    if args.warmup < 1 or args.graph_batch < 1 or args.time_budget <= 0:
        parser.error("--warmup and --graph-batch must be >= 1 and --time-budget > 0")
    return args


# ---------------------------------------------------------------- the probe
class Probe:
    """The process group, the device and the sweep of one rank."""

    def __init__(self, args: argparse.Namespace):
        import torch
        import torch.distributed as dist

        self.torch, self.dist, self.args = torch, dist, args
        use_cuda = torch.cuda.is_available() if args.backend == "auto" else args.backend == "nccl"
        if use_cuda and not torch.cuda.is_available():
            raise RuntimeError("--backend nccl was asked for, but torch sees no CUDA device on this node")
        self.backend = "nccl" if use_cuda else "gloo"
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device("cuda", self.local_rank) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(self.device)
        kwargs: dict[str, Any] = {"backend": self.backend, "timeout": timedelta(seconds=args.collective_timeout)}
        if use_cuda:
            kwargs["device_id"] = self.device  # binds the communicator to the device (torch >= 2.3)
        try:
            dist.init_process_group(**kwargs)
        except TypeError:  # older torch: no device_id
            kwargs.pop("device_id", None)
            dist.init_process_group(**kwargs)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.dtype = getattr(torch, args.dtype)

    # -- small collectives on control values (outside any timed region)
    def _reduce(self, values: list[float], op: Any) -> list[float]:
        t = self.torch.tensor(values, dtype=self.torch.float64, device=self.device)
        self.dist.all_reduce(t, op=op)
        return t.tolist()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def ranks(self) -> list[dict[str, Any]]:
        name = self.torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        me = {"rank": self.rank, "local_rank": self.local_rank, "host": socket.gethostname(),
              "pid": os.getpid(), "device": name}
        everyone: list[Any] = [None] * self.world
        self.dist.all_gather_object(everyone, me)
        return everyone

    def check_sum(self, t: Any) -> bool:
        """Every rank fills rank+1; after one all-reduce all elements must be n(n+1)/2."""
        t.fill_(self.rank + 1)
        self.dist.all_reduce(t)
        expected = self.world * (self.world + 1) / 2.0
        low, high = t.min().item(), t.max().item()  # reductions: no tensor-sized mask
        tolerance = expected * SUM_TOLERANCE[self.args.dtype]
        ok = abs(low - expected) <= tolerance and abs(high - expected) <= tolerance
        agreed = self._reduce([1.0 if ok else 0.0], self.dist.ReduceOp.MIN)[0]
        t.zero_()  # timed sums of zeros stay zero: no overflow to inf over thousands of iterations
        return agreed == 1.0

    def _warm(self, step: Any, count: int) -> float:
        """Warm-up calls; returns the median seconds per call (the first calls set
        up connections and would inflate a mean)."""
        times = []
        for _ in range(count):
            started = time.perf_counter()
            step()
            self._sync()
            times.append(time.perf_counter() - started)
        return percentile(sorted(times), 50)

    def iterations(self, per_call_s: float) -> int:
        slowest = self._reduce([per_call_s], self.dist.ReduceOp.MAX)[0]
        a = self.args
        return choose_iterations(slowest, a.time_budget, a.min_iters, a.max_iters)

    # -- eager mode
    def eager(self, t: Any) -> tuple[list[float], int]:
        all_reduce = self.dist.all_reduce
        iters = self.iterations(self._warm(lambda: all_reduce(t), self.args.warmup))
        self.dist.barrier()
        self._sync()
        if self.device.type == "cuda":
            return self._timed_cuda_eager(lambda: all_reduce(t), iters)
        stamps = [0.0] * (iters + 1)
        clock = time.perf_counter
        stamps[0] = clock()
        for i in range(1, iters + 1):
            all_reduce(t)
            stamps[i] = clock()
        return [b - a for a, b in zip(stamps, stamps[1:])], iters

    def _timed_cuda_eager(self, step: Any, iters: int) -> tuple[list[float], int]:
        """Back-to-back calls with an event every `stride` calls (agreed by all
        ranks, which must make the same number of calls)."""
        probe_calls = 16
        started = time.perf_counter()
        for _ in range(probe_calls):
            step()
        self._sync()
        per_call = (time.perf_counter() - started) / probe_calls
        mine = choose_stride(self._record_cost(), per_call)
        stride = int(self._reduce([float(mine)], self.dist.ReduceOp.MAX)[0])
        samples = max(self.args.min_iters, -(-iters // stride))
        self.dist.barrier()
        self._sync()
        times = self._timed_cuda(step, samples, calls_per_sample=stride)
        self.last_stride = stride
        return times, samples * stride

    def _events(self, count: int, stream: Any) -> list[Any]:
        """Timing events, already created: torch creates the CUDA event at its
        first record, which must not happen inside a timed loop."""
        events = [self.torch.cuda.Event(enable_timing=True) for _ in range(count)]
        for event in events:
            event.record(stream)
        self._sync()
        return events

    def _record_cost(self) -> float:
        """Host seconds one CUDA event record costs (what timing adds to a launch-bound loop)."""
        stream = self.torch.cuda.current_stream(self.device)
        events = self._events(32, stream)
        started = time.perf_counter()
        for event in events:
            event.record(stream)
        cost = (time.perf_counter() - started) / len(events)
        self._sync()
        return cost

    def _timed_cuda(self, step: Any, samples: int, calls_per_sample: int = 1, per_step: int = 1) -> list[float]:
        """One CUDA event per sample boundary: interval i covers calls_per_sample
        steps of per_step all-reduces each; returns seconds per all-reduce."""
        stream = self.torch.cuda.current_stream(self.device)
        events = self._events(samples + 1, stream)
        events[0].record(stream)
        for i in range(1, samples + 1):
            for _ in range(calls_per_sample):
                step()
            events[i].record(stream)
        self._sync()
        per_sample = calls_per_sample * per_step
        return [events[i - 1].elapsed_time(events[i]) / 1e3 / per_sample for i in range(1, samples + 1)]

    # -- CUDA-graph mode
    def graph(self, t: Any) -> tuple[list[float], int]:
        torch, batch = self.torch, self.args.graph_batch
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
            for _ in range(3):
                self.dist.all_reduce(t)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._sync()
        g = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(g):
                for _ in range(batch):
                    self.dist.all_reduce(t)
        except Exception as exc:
            raise RuntimeError(f"capturing all-reduces in a CUDA graph failed ({exc}); "
                               "rerun with --modes eager to measure without graphs") from exc
        replays = self.iterations(self._warm(g.replay, max(1, -(-self.args.warmup // batch))))
        self.dist.barrier()
        self._sync()
        times = self._timed_cuda(g.replay, replays, per_step=batch)
        self.last_stride = 1
        del g
        return times, replays

    def measure(self, t: Any, nbytes: int, mode: str) -> dict[str, Any]:
        """One size in one mode: this rank's timed iterations, then the row."""
        return self.row(*self.timed(t, mode), nbytes, mode)

    def timed(self, t: Any, mode: str) -> tuple[list[float], int]:
        return self.eager(t) if mode == "eager" else self.graph(t)

    def row(self, local: list[float], iters: int, nbytes: int, mode: str) -> dict[str, Any]:
        """This rank's statistics, each MAX-reduced across ranks (the slowest rank's)."""
        mine = summarize(local)
        slowest = dict(zip(STATS, self._reduce([mine[k] for k in STATS], self.dist.ReduceOp.MAX)))
        row = {"size_bytes": nbytes, "mode": mode, "iterations": iters, **slowest,
               **bandwidth(nbytes, slowest["p50_us"], self.world)}
        if getattr(self, "last_stride", 1) > 1:
            row["calls_per_sample"] = self.last_stride  # percentiles are over means of this many calls
        if mode == "graph":
            row["graph_batch"] = self.args.graph_batch
        return row

    # -- the sweep
    def run(self) -> dict[str, Any]:
        args, torch = self.args, self.torch
        started = time.perf_counter()
        modes = [m for m in args.modes if m == "eager" or self.device.type == "cuda"]
        skipped = {m: "CUDA graphs need GPUs; this run used gloo on CPU" for m in args.modes if m not in modes}
        rows: list[dict[str, Any]] = []
        ranks_agree = True
        for size in args.sizes:
            count = element_count(size, args.dtype)
            nbytes = count * DTYPES[args.dtype]
            t = torch.empty(count, dtype=self.dtype, device=self.device)
            correct = self.check_sum(t)
            ranks_agree = ranks_agree and correct
            for mode in modes:
                row = dict(self.measure(t, nbytes, mode), correct=correct)
                rows.append(row)
                if self.rank == 0:
                    print(f"{PROGRESS_MARKER}{nbytes} B {mode}: p50 {row['p50_us']:.1f} us, "
                          f"busbw {row['busbw_gbs']:.3f} GB/s ({row['iterations']} iterations)", flush=True)
            del t
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # unified memory: give the buffer back before the next size
        return {
            "world_size": self.world,
            "backend": self.backend,
            "dtype": args.dtype,
            "modes": modes,
            "skipped_modes": skipped,
            "ranks_agree": ranks_agree,
            "rows": rows,
            "wall_s": round(time.perf_counter() - started, 3),
            "settings": {"warmup": args.warmup, "min_iters": args.min_iters, "max_iters": args.max_iters,
                         "time_budget_s": args.time_budget, "graph_batch": args.graph_batch},
        }

    def versions(self) -> dict[str, Any]:
        torch = self.torch
        out: dict[str, Any] = {"torch": torch.__version__, "python": sys.version.split()[0]}
        if self.device.type == "cuda":
            out["cuda"] = torch.version.cuda
            try:
                out["nccl"] = ".".join(str(x) for x in torch.cuda.nccl.version())
            except (AttributeError, RuntimeError, TypeError):
                out["nccl"] = None
        return out

    def close(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    probe = None
    try:
        probe = Probe(args)
        ranks = probe.ranks()
        result = probe.run()
        if probe.rank == 0:
            result.update(ranks=ranks, versions=probe.versions())
            if args.model_config:
                try:
                    result["model_config"] = model_summary(args.model_config)
                except (OSError, ValueError) as exc:  # the measurement stands without it
                    result["model_config_error"] = f"{args.model_config}: {exc}"
            print(RESULT_MARKER + json.dumps(result, separators=(",", ":")), flush=True)
        probe.close()
        return 0
    except Exception as exc:  # noqa: BLE001 - say which rank failed and why, then exit non-zero
        rank = probe.rank if probe is not None and hasattr(probe, "rank") else os.environ.get("RANK", "?")
        sys.stderr.write(f"{ERROR_MARKER}rank {rank}: {type(exc).__name__}: {exc}\n")
        traceback.print_exc()
        sys.stderr.flush()
        return 1


if __name__ == "__main__":
    sys.exit(main())
