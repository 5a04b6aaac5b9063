"""One streamed request against an OpenAI-compatible endpoint, timed the way
`vllm bench serve` times it (time.perf_counter on the client, per SSE chunk).

Definitions (vLLM's names):
- a token chunk: a chunk whose choice carries generated output. Its text may be
  empty (a byte-fallback token that completes no character yet is still a
  token); a chat stream's opening role-only chunk and a closing chunk with only
  a finish reason are not token chunks (vLLM's client counts the role chunk);
- TTFT: send -> the first token chunk;
- ITL: the gaps between consecutive token chunks after the first;
- E2EL: send -> the last chunk that carries a choice;
- output tokens: the server's `usage.completion_tokens` (stream_options.include_usage);
  the client's own count is the number of token chunks (one token per chunk
  unless the server batches tokens, as speculative decoding does).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass(frozen=True)
class Prompt:
    text: str
    tokens: int  # prompt length in tokens, as the prompt builder counted it


@dataclass
class RequestRecord:
    """What one request did. Times are seconds; `start` is relative to the step's start."""

    prompt_len: int
    start: float = 0.0
    end: float | None = None  # when the answer (or the failure) came; None: still in flight
    ok: bool = False
    error_kind: str | None = None  # http_<status> | timeout | connection | server_error | protocol
    error: str | None = None
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    e2el: float | None = None
    output_tokens: int | None = None  # the server's usage count
    server_prompt_tokens: int | None = None
    chunks: int = 0  # token chunks seen by the client

    @property
    def output_len(self) -> int:
        """Tokens produced: the server's count, else the client's."""
        return self.output_tokens if self.output_tokens is not None else self.chunks

    @property
    def tpot(self) -> float | None:
        """(E2EL - TTFT) / (output tokens - 1), for requests with more than one token."""
        n = self.output_len
        if not self.ok or n <= 1 or self.ttft is None or self.e2el is None:
            return None
        return (self.e2el - self.ttft) / (n - 1)


@dataclass(frozen=True)
class RequestShape:
    """What every request of a run sends besides its prompt."""

    base_url: str
    model: str
    endpoint: str  # completions | chat
    output_len: int
    ignore_eos: bool = True
    api_key: str | None = None

    @property
    def url(self) -> str:
        path = "/v1/chat/completions" if self.endpoint == "chat" else "/v1/completions"
        return self.base_url.rstrip("/") + path

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def payload(self, prompt: str, *, output_len: int | None = None) -> dict[str, Any]:
        tokens = self.output_len if output_len is None else output_len
        body: dict[str, Any] = {
            "model": self.model,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
            body["max_completion_tokens"] = tokens
        else:
            body["prompt"] = prompt
            body["max_tokens"] = tokens
        if self.ignore_eos:
            body["ignore_eos"] = True  # every request produces exactly output_len tokens
        return body


def _is_token(choice: dict[str, Any], chat: bool) -> bool:
    if chat:
        delta = choice.get("delta") or {}
        text = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning") or ""
        if not text and ("role" in delta or choice.get("finish_reason")):
            return False  # the opening role announcement, or a bare finish marker
        return True
    return bool(choice.get("text")) or not choice.get("finish_reason")


async def send(session: aiohttp.ClientSession, shape: RequestShape, prompt: Prompt, record: RequestRecord,
               *, timeout_s: float, output_len: int | None = None) -> RequestRecord:
    """Send one streamed request and fill `record`; never raises for what the
    server or the network does (that is an error kind on the record)."""
    chat = shape.endpoint == "chat"
    sent = time.perf_counter()
    last_token = 0.0
    try:
        async with session.post(shape.url, json=shape.payload(prompt.text, output_len=output_len),
                                headers=shape.headers(), timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            if response.status != 200:
                body = (await response.read())[:300].decode("utf-8", "replace")
                record.error_kind, record.error = f"http_{response.status}", body.strip() or response.reason
                return record
            async for line in response.content:
                now = time.perf_counter()
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue  # blank separators and SSE comments
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk and not chunk.get("choices"):
                    record.error_kind, record.error = "server_error", str(chunk["error"])[:300]
                    return record
                choices = chunk.get("choices")
                if choices:
                    record.e2el = now - sent
                    if _is_token(choices[0], chat):
                        if record.ttft is None:
                            record.ttft = now - sent
                        else:
                            record.itl.append(now - last_token)
                        last_token = now
                        record.chunks += 1
                usage = chunk.get("usage")
                if usage:
                    record.output_tokens = usage.get("completion_tokens")
                    record.server_prompt_tokens = usage.get("prompt_tokens")
    except TimeoutError:
        record.error_kind, record.error = "timeout", f"no complete answer within {timeout_s:g}s"
        return record
    except (aiohttp.ClientError, OSError) as exc:
        record.error_kind, record.error = "connection", f"{type(exc).__name__}: {exc}"[:300]
        return record
    except (ValueError, UnicodeDecodeError, AttributeError, TypeError) as exc:
        record.error_kind, record.error = "protocol", f"not an OpenAI-compatible stream: {exc}"[:300]
        return record
    if record.ttft is None:
        record.error_kind, record.error = "protocol", "the stream ended without a generated token"
        return record
    record.ok = True
    return record
