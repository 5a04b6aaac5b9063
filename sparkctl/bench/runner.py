"""The load generator: checks the endpoint, builds prompts, runs each step
(closed or open loop) while sampling the server's /metrics, and stops cleanly
on Ctrl-C/SIGTERM with what was measured so far.

One asyncio loop and one aiohttp session (kept-alive connections) drive every
request; nothing blocking runs on the loop while a step is timed: prompts are
built before the step starts, and the progress callback only formats a line.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Awaitable, Callable, Protocol, Sequence

import aiohttp

from sparkctl.bench.client import Prompt, RequestRecord, RequestShape, send
from sparkctl.bench.metrics import MetricsSample, combine_samples, parse_metrics, server_view
from sparkctl.bench.options import BenchOptions, LoadStep
from sparkctl.bench.prompts import PromptBuilder, ServerTokenizer, choose_tokenizer
from sparkctl.bench.stats import StepResult, step_result
from sparkctl.errors import InputError, OperationFailed

CHECK_TIMEOUT_S = 10.0  # a dead or wrong endpoint is named within this
PROBE_TOKENS = 2


class Progress(Protocol):
    def update(self, text: str) -> None: ...

    def done(self, text: str) -> None: ...


@dataclass(frozen=True)
class Target:
    base_url: str
    model: str | None  # None: the one model the endpoint serves
    api_key: str | None = None
    nodes: int = 1
    # the servers whose /metrics make the server's view, when the endpoint is a router
    # in front of them; empty: the endpoint's own
    metrics_from: tuple[str, ...] = ()


@dataclass(frozen=True)
class EndpointInfo:
    model: str
    models: tuple[str, ...]
    version: str | None
    max_model_len: int | None


@dataclass
class BenchRun:
    endpoint: EndpointInfo
    tokenizer: str
    tokens_exact: bool
    ignore_eos: bool
    metrics: bool
    steps: list[StepResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False


# ----------------------------------------------------------------------------
# the endpoint, checked before any load
# ----------------------------------------------------------------------------
async def _get_json(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, object]:
    async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=CHECK_TIMEOUT_S)) as response:
        body = await response.read()
        try:
            return response.status, json.loads(body) if body else None
        except ValueError:
            return response.status, None


async def check_endpoint(session: aiohttp.ClientSession, target: Target, headers: dict[str, str]) -> EndpointInfo:
    url = target.base_url.rstrip("/")
    try:
        status, data = await _get_json(session, url + "/v1/models", headers)
    except TimeoutError:
        raise OperationFailed(f"{url}: no answer within {CHECK_TIMEOUT_S:g}s (GET /v1/models)",
                              hint="is the server up and reachable from here? (`sparkctl status`)") from None
    except (aiohttp.ClientError, OSError) as exc:
        reason = "connection refused" if isinstance(exc, aiohttp.ClientConnectorError) else str(exc)
        raise OperationFailed(f"{url}: {reason} (GET /v1/models)",
                              hint="is the server up and listening there? (`sparkctl status`)") from None
    if status in (401, 403):
        raise OperationFailed(f"{url}: HTTP {status}: the endpoint wants an API key",
                              hint="export the key in the variable --api-key-env names (default VLLM_API_KEY)")
    if status != 200 or not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise OperationFailed(f"{url}: not OpenAI-compatible: GET /v1/models answered HTTP {status}"
                              + ("" if isinstance(data, dict) else " without a JSON model list"))
    entries = [e for e in data["data"] if isinstance(e, dict) and isinstance(e.get("id"), str)]
    models = tuple(e["id"] for e in entries)
    model = target.model
    if model is None:
        if len(models) != 1:
            raise InputError(f"{url} serves {len(models)} models ({', '.join(models) or 'none'}); name one with --model")
        model = models[0]
    if model not in models:
        raise OperationFailed(f"{url}: HTTP 404 model not found: {model!r} is not served",
                              details=[f"served: {', '.join(models) or 'nothing'}"])
    entry = entries[models.index(model)]
    max_len = entry.get("max_model_len")
    version = None
    try:
        status, data = await _get_json(session, url + "/version", headers)
        if status == 200 and isinstance(data, dict):
            version = str(data.get("version"))
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass
    return EndpointInfo(model, models, version, max_len if isinstance(max_len, int) else None)


async def _probe(session: aiohttp.ClientSession, shape: RequestShape, timeout_s: float) -> RequestRecord:
    record = RequestRecord(prompt_len=1)
    return await send(session, shape, Prompt("Hello", 1), record, timeout_s=timeout_s, output_len=PROBE_TOKENS)


async def probe_streaming(session: aiohttp.ClientSession, shape: RequestShape, timeout_s: float) -> tuple[RequestShape, list[str]]:
    """One short streamed request; a server that refuses ignore_eos is asked again without it."""
    notes: list[str] = []
    record = await _probe(session, shape, timeout_s)
    if not record.ok and record.error_kind == "http_400" and "ignore_eos" in (record.error or "") and shape.ignore_eos:
        shape = RequestShape(shape.base_url, shape.model, shape.endpoint, shape.output_len, False, shape.api_key)
        notes.append("the server refused ignore_eos: requests may end before --output-len tokens")
        record = await _probe(session, shape, timeout_s)
    if not record.ok:
        raise OperationFailed(f"{shape.url}: a streamed test request failed: {record.error_kind}: {record.error}",
                              hint="is it an OpenAI-compatible server that streams (stream: true)?")
    if record.output_tokens is None:
        notes.append("the server sent no usage in the stream: output tokens are the client's chunk count")
    return shape, notes


# ----------------------------------------------------------------------------
# /metrics
# ----------------------------------------------------------------------------
class MetricsReader:
    """The server's /metrics, or the sum of several servers' (the replicas behind a
    router, which publishes no vLLM metrics of its own): a sample counts only when
    every server answered, so a counter never seems to jump."""

    def __init__(self, session: aiohttp.ClientSession, base_urls: Sequence[str], headers: dict[str, str]):
        self.session, self.headers = session, headers
        self.urls = [url.rstrip("/") + "/metrics" for url in base_urls]
        self.failures = 0

    async def sample(self) -> MetricsSample | None:
        samples = await asyncio.gather(*(self._scrape(url) for url in self.urls))
        if any(s is None for s in samples):
            self.failures += 1
            return None
        present = [s for s in samples if s is not None]
        return present[0] if len(present) == 1 else combine_samples(present)

    async def _scrape(self, url: str) -> MetricsSample | None:
        try:
            async with self.session.get(url, headers=self.headers, timeout=aiohttp.ClientTimeout(total=5)) as r:
                if r.status != 200:
                    return None
                text = await r.text()
            return parse_metrics(text, at=time.perf_counter())
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return None

    async def sample_every(self, interval_s: float, into: list[MetricsSample]) -> None:
        while True:
            sample = await self.sample()
            if sample is not None:
                into.append(sample)
            await asyncio.sleep(interval_s)


# ----------------------------------------------------------------------------
# load shapes
# ----------------------------------------------------------------------------
class PromptSource:
    """Prompts built ahead of the step; a duration-bound step that uses them up gets more."""

    def __init__(self, builder: PromptBuilder, input_len: int):
        self.builder, self.input_len = builder, input_len
        self.ready: deque[Prompt] = deque()

    async def fill(self, count: int) -> None:
        self.ready.extend(await self.builder.prompts(count, self.input_len))

    async def take(self) -> Prompt:
        if not self.ready:
            await self.fill(16)
        return self.ready.popleft()


def arrival_offsets(count: int, rate: float, burstiness: float, rng: random.Random, *, rescale: bool) -> list[float]:
    """Send times from the step's start: gamma intervals (shape = burstiness,
    mean 1/rate; burstiness 1 is Poisson). vLLM rescales the intervals of a
    fixed-count run so the total span is exactly count/rate; so does this."""
    gaps = [rng.gammavariate(burstiness, 1.0 / (rate * burstiness)) for _ in range(count)]
    if rescale and count and sum(gaps) > 0:
        factor = (count / rate) / sum(gaps)
        gaps = [g * factor for g in gaps]
    offsets, t = [], 0.0
    for gap in gaps:
        offsets.append(t)
        t += gap
    return offsets


@dataclass
class StepRun:
    """A step in progress, shared by the load loop, the progress ticker and Ctrl-C."""

    step: LoadStep
    shape: RequestShape
    options: BenchOptions
    session: aiohttp.ClientSession
    source: PromptSource
    stop: asyncio.Event
    records: list[RequestRecord] = field(default_factory=list)
    started: float = 0.0

    def finished(self) -> list[RequestRecord]:
        return [r for r in self.records if r.end is not None]

    def issue_more(self, issued: int) -> bool:
        if self.stop.is_set():
            return False
        if self.options.duration_s is not None:
            return time.perf_counter() - self.started < self.options.duration_s
        return issued < self.options.num_prompts

    async def one(self, prompt: Prompt) -> None:
        record = RequestRecord(prompt.tokens, start=time.perf_counter() - self.started)
        self.records.append(record)
        await send(self.session, self.shape, prompt, record, timeout_s=self.options.request_timeout_s)
        record.end = time.perf_counter() - self.started

    async def closed_loop(self) -> None:
        issued = 0

        async def user() -> None:
            nonlocal issued
            while self.issue_more(issued):
                issued += 1
                await self.one(await self.source.take())

        await asyncio.gather(*(user() for _ in range(self.step.concurrency or 1)))

    async def open_loop(self, rng: random.Random) -> None:
        rate = self.step.request_rate or 1.0
        count = self.options.num_prompts if self.options.duration_s is None else int(rate * self.options.duration_s * 2) + 16
        offsets = arrival_offsets(count, rate, self.step.burstiness, rng, rescale=self.options.duration_s is None)
        gate = asyncio.Semaphore(self.step.max_concurrency) if self.step.max_concurrency else None
        tasks: list[asyncio.Task[None]] = []

        async def gated(prompt: Prompt) -> None:
            if gate is None:
                await self.one(prompt)
                return
            async with gate:
                await self.one(prompt)

        for issued, offset in enumerate(offsets):
            if not self.issue_more(issued):
                break
            prompt = await self.source.take()
            delay = self.started + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(gated(prompt)))
        await asyncio.gather(*tasks)


async def _until_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Run `work`; on stop, cancel it. True when it was stopped."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        task.result()
        return False
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return True


# ----------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------
async def _ticker(run: StepRun, prefix: str, progress: Progress) -> None:
    while True:
        await asyncio.sleep(1.0)
        done = run.finished()
        elapsed = time.perf_counter() - run.started
        tokens = sum(r.output_len for r in done if r.ok) + sum(r.chunks for r in run.records if r.end is None)
        total = f"{run.options.duration_s:g}s" if run.options.duration_s else str(run.options.num_prompts)
        progress.update(f"{prefix}: {len(done)}/{total} done, {elapsed:.0f}s, {tokens / max(elapsed, 1e-9):.1f} output tok/s")


async def _run_step(index: int, total: int, step: LoadStep, shape: RequestShape, options: BenchOptions,
                    session: aiohttp.ClientSession, builder: PromptBuilder, metrics: MetricsReader | None,
                    stop: asyncio.Event, progress: Progress, nodes: int, rng: random.Random) -> StepResult:
    prefix = f"step {index}/{total} {step.label}"
    step_shape = RequestShape(shape.base_url, shape.model, shape.endpoint, step.output_len, shape.ignore_eos, shape.api_key)
    source = PromptSource(builder, step.input_len)
    progress.update(f"{prefix}: building prompts")
    await source.fill((options.num_prompts if options.duration_s is None else 32) + options.warmup)
    run = StepRun(step, step_shape, options, session, source, stop)
    if options.warmup:
        progress.update(f"{prefix}: {options.warmup} warm-up request(s)")
        users = min(options.warmup, step.in_flight_cap or 1)
        warm_step = LoadStep(step.input_len, step.output_len, concurrency=users)
        warm_options = BenchOptions(steps=(), num_prompts=options.warmup, request_timeout_s=options.request_timeout_s)
        warm = StepRun(warm_step, step_shape, warm_options, session, source, stop)
        warm.started = time.perf_counter()
        await _until_stopped(warm.closed_loop(), stop)
    samples: list[MetricsSample] = []
    before = await metrics.sample() if metrics else None
    run.started = time.perf_counter()
    sampler = asyncio.create_task(metrics.sample_every(options.metrics_interval_s, samples)) if metrics else None
    ticker = asyncio.create_task(_ticker(run, prefix, progress))
    try:
        load = run.closed_loop() if step.closed_loop else run.open_loop(rng)
        interrupted = await _until_stopped(load, stop) if not stop.is_set() else True
    finally:
        for task in (ticker, sampler):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (ticker, sampler) if t is not None), return_exceptions=True)
    after = await metrics.sample() if metrics else None
    done = run.finished()
    duration = (max(r.end for r in done if r.end is not None) - min(r.start for r in done)) if done else 0.0
    view = server_view(before, [s for s in samples if s.at > before.at], after) if before and after else None
    result = step_result(step, done, duration=duration, nodes=nodes, percentiles=options.percentiles,
                         slo=options.slo, server=view, interrupted=interrupted)
    wall = time.time() - time.perf_counter()  # perf_counter -> wall clock, for joining node telemetry
    first = min((r.start for r in done), default=0.0)
    result = replace(result, started_at=wall + run.started + first, ended_at=wall + run.started + first + duration)
    progress.done(f"{prefix}: {result.completed} ok, {result.failed} failed in {result.duration:.1f}s, "
                  f"{result.output_throughput:.1f} output tok/s")
    return result


async def _bench(target: Target, options: BenchOptions, progress: Progress, stop: asyncio.Event) -> BenchRun:
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    async with aiohttp.ClientSession(connector=connector) as session:
        headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
        progress.update(f"checking {target.base_url}")
        info = await check_endpoint(session, target, headers)
        shape = RequestShape(target.base_url, info.model, options.endpoint, PROBE_TOKENS, options.ignore_eos, target.api_key)
        shape, notes = await probe_streaming(session, shape, min(options.request_timeout_s, 120.0))
        tokenizer = await choose_tokenizer(options.tokenizer, ServerTokenizer(session, target.base_url, info.model, headers))
        if not tokenizer.exact:
            notes.append(f"prompt lengths are {tokenizer.description}")
        longest = max(s.input_len + s.output_len for s in options.steps)
        if info.max_model_len is not None and longest > info.max_model_len:
            raise InputError(f"input + output length {longest} exceeds the model's max_model_len {info.max_model_len}",
                             hint="lower --input-len/--output-len, or serve with a larger --max-model-len")
        metrics: MetricsReader | None = MetricsReader(session, target.metrics_from or (target.base_url,), headers)
        if metrics is not None and await metrics.sample() is None:
            notes.append("the server has no readable /metrics: the server's view of each step is missing")
            metrics = None
        elif target.metrics_from:
            notes.append(f"the server's view is the sum of {len(target.metrics_from)} servers' /metrics "
                         f"behind the endpoint ({', '.join(target.metrics_from)})")
        run = BenchRun(info, tokenizer.description, tokenizer.exact, shape.ignore_eos, metrics is not None, notes=notes)
        builder = PromptBuilder(tokenizer, options.seed, options.prefix_len)
        rng = random.Random(options.seed)
        for index, step in enumerate(options.steps, 1):
            if stop.is_set():
                break
            result = await _run_step(index, len(options.steps), step, shape, options, session, builder,
                                     metrics, stop, progress, target.nodes, rng)
            run.steps.append(result)
        run.interrupted = stop.is_set()
        if metrics and metrics.failures:
            run.notes.append(f"{metrics.failures} /metrics scrape(s) failed during the run")
        return run


def run_bench(target: Target, options: BenchOptions, progress: Progress,
              on_interrupt: Callable[[], None] | None = None) -> BenchRun:
    """Run every step. Ctrl-C, SIGTERM and SIGHUP end the run early: the step in
    progress is cut, its finished requests are kept, and the run is marked
    interrupted (the caller saves it and exits 130)."""

    async def main() -> BenchRun:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def interrupt() -> None:
            stop.set()
            if on_interrupt:
                on_interrupt()

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, interrupt)
        try:
            return await _bench(target, options, progress, stop)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(signum)

    with asyncio.Runner(loop_factory=_fast_loop()) as runner:
        return runner.run(main())


def _fast_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed (vLLM installs it): the same timing with less
    client CPU per streamed chunk; else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
