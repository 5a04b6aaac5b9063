"""A local OpenAI-compatible streaming server with known timing, for testing
and benchmarking the load generator (never a stand-in for vLLM where vLLM can run).

It streams `max_tokens` one-word chunks: the first after --ttft-ms, the next
every --itl-ms (0: as fast as it can), then a usage chunk and [DONE], in the
shape vLLM sends. /v1/models, /version, /tokenize, /detokenize (one token per
word), /timing (the medians of the TTFT and TPOT it really produced) and /metrics (vLLM's current metric names, or the older ones with
--old-metrics) are served so every path of `sparkctl bench` has something real
to talk to. Faults on request: --fail-every N answers every Nth request with
HTTP 500; --refuse-ignore-eos answers 400 to requests that send ignore_eos;
--api-key K wants `Authorization: Bearer K`; --no-tokenize serves no /tokenize.

Run: python -m tests.stream_server --port 0   (prints `listening on PORT`)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time

from aiohttp import web

WORD = "tok"


def _chunk(kind: str, chat: bool, *, last: bool) -> bytes:
    text = f" {WORD}"
    choice: dict[str, object] = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
    if last:
        choice["finish_reason"] = "length"
    return b"data: " + json.dumps({"object": kind, "choices": [choice]}).encode() + b"\n\n"


class Counters:
    def __init__(self) -> None:
        self.requests = 0
        self.running = 0
        self.generation_tokens = 0
        self.prompt_tokens = 0
        self.success = 0
        self.ttfts: list[float] = []
        self.tpots: list[float] = []


def make_app(*, ttft_ms: float, itl_ms: float, model: str, fail_every: int = 0, refuse_ignore_eos: bool = False,
             api_key: str | None = None, old_metrics: bool = False, tokenize_endpoints: bool = True,
             jitter_ms: float = 0.0) -> web.Application:
    counters = Counters()
    rng = random.Random(0)

    @web.middleware
    async def auth(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if api_key and request.headers.get("Authorization") != f"Bearer {api_key}":
            return web.json_response({"error": "unauthorized"}, status=401)
        return await handler(request)

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model", "max_model_len": 100000}]})

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"version": "stream-server"})

    async def tokenize(request: web.Request) -> web.Response:
        body = await request.json()
        words = str(body.get("prompt", "")).split()
        return web.json_response({"tokens": list(range(len(words))), "count": len(words), "words": words})

    async def detokenize(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"prompt": " ".join(WORD for _ in body.get("tokens", []))})

    async def metrics(_: web.Request) -> web.Response:
        kv = "vllm:gpu_cache_usage_perc" if old_metrics else "vllm:kv_cache_usage_perc"
        labels = f'{{engine="0",model_name="{model}"}}'
        text = (
            f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{labels} {counters.running}\n"
            f"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{labels} 0\n"
            f"# TYPE {kv} gauge\n{kv}{labels} {min(counters.running / 100, 1.0)}\n"
            f"# TYPE vllm:generation_tokens counter\nvllm:generation_tokens_total{labels} {counters.generation_tokens}\n"
            f"# TYPE vllm:prompt_tokens counter\nvllm:prompt_tokens_total{labels} {counters.prompt_tokens}\n"
            f"# TYPE vllm:request_success counter\nvllm:request_success_total{labels} {counters.success}\n"
        )
        return web.Response(text=text, content_type="text/plain")

    async def complete(request: web.Request) -> web.StreamResponse:
        arrived = time.perf_counter()
        body = await request.json()
        counters.requests += 1
        if refuse_ignore_eos and "ignore_eos" in body:
            return web.json_response({"error": {"message": "unknown field: ignore_eos"}}, status=400)
        if fail_every and counters.requests % fail_every == 0:
            return web.json_response({"error": {"message": "injected failure"}}, status=500)
        chat = "messages" in body
        tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        prompt = body["messages"][-1]["content"] if chat else body.get("prompt", "")
        prompt_tokens = len(str(prompt).split())
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        counters.running += 1
        counters.prompt_tokens += prompt_tokens
        try:
            kind = "chat.completion.chunk" if chat else "text_completion"
            if chat:  # vLLM's chat streams start with a role-only chunk
                first = {"object": kind, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
                await response.write(b"data: " + json.dumps(first).encode() + b"\n\n")
            chunks = [_chunk(kind, chat, last=i == tokens - 1) for i in range(tokens)]
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}
            tail = b"data: " + json.dumps({"object": kind, "choices": [], "usage": usage}).encode() + b"\n\ndata: [DONE]\n\n"
            if not ttft_ms and not itl_ms:  # instant: the whole stream in one write, so the client is the bottleneck
                counters.generation_tokens += tokens
                await response.write(b"".join(chunks) + tail)
            else:
                # each chunk at its own deadline from the start, so sleep overshoot does not add up
                written = []
                # a per-request spread of the first token keeps closed-loop users from moving in lockstep
                first = ttft_ms + (rng.uniform(-jitter_ms, jitter_ms) if jitter_ms else 0.0)
                for i, chunk in enumerate(chunks):
                    delay = arrived + (first + i * itl_ms) / 1000 - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await response.write(chunk)
                    written.append(time.perf_counter())
                    counters.generation_tokens += 1
                await response.write(tail)
                # what the server really did, from the request's arrival: the truth a client is judged against
                counters.ttfts.append(written[0] - arrived)
                if len(written) > 1:
                    counters.tpots.append((written[-1] - written[0]) / (len(written) - 1))
            counters.success += 1
        finally:
            counters.running -= 1
        return response

    async def timing(_: web.Request) -> web.Response:
        """Medians of what the server did since the last call (ms), then forget them."""
        data = {"requests": len(counters.ttfts),
                "median_ttft_ms": statistics.median(counters.ttfts) * 1000 if counters.ttfts else None,
                "median_tpot_ms": statistics.median(counters.tpots) * 1000 if counters.tpots else None}
        counters.ttfts.clear()
        counters.tpots.clear()
        return web.json_response(data)

    app = web.Application(middlewares=[auth])
    app.router.add_get("/timing", timing)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/version", version)
    if tokenize_endpoints:
        app.router.add_post("/tokenize", tokenize)
        app.router.add_post("/detokenize", detokenize)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/completions", complete)
    app.router.add_post("/v1/chat/completions", complete)
    return app


async def serve(port: int, **settings: object) -> None:
    runner = web.AppRunner(make_app(**settings), access_log=None)  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"listening on {bound}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--itl-ms", type=float, default=0.0)
    parser.add_argument("--model", default="stream")
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--refuse-ignore-eos", action="store_true")
    parser.add_argument("--api-key")
    parser.add_argument("--old-metrics", action="store_true")
    parser.add_argument("--no-tokenize", action="store_true", help="no /tokenize and /detokenize")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="spread each request's TTFT by up to this much")
    a = parser.parse_args()
    try:
        import uvloop  # as fast a server as this machine allows, when installed

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(a.port, ttft_ms=a.ttft_ms, itl_ms=a.itl_ms, model=a.model, fail_every=a.fail_every,
                          refuse_ignore_eos=a.refuse_ignore_eos, api_key=a.api_key, old_metrics=a.old_metrics,
                              tokenize_endpoints=not a.no_tokenize, jitter_ms=a.jitter_ms))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
