"""The OpenAI-compatible endpoint as a client sees it: health, models, one
completion. Standard library only (urllib); an API key, when the playbook
forwards one, goes in a header and nowhere else."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sparkctl.inventory import Inventory
    from sparkctl.playbook import Playbook


@dataclass(frozen=True)
class HttpReply:
    status: int | None  # None: no HTTP answer at all (refused, timed out)
    body: bytes
    error: str | None
    elapsed_s: float

    def json(self) -> object:
        return json.loads(self.body.decode("utf-8"))


@dataclass(frozen=True)
class Member:
    """A server behind the one endpoint (a replica behind the router), as the
    controller reaches it: readiness waits for each, not only for the router."""

    label: str  # "replica 1"
    node: str  # the node it serves from
    url: str

    def to_dict(self) -> dict[str, str]:
        return {"label": self.label, "node": self.node, "url": self.url}


def recorded_members(value: object) -> tuple[Member, ...]:
    """The members `up` recorded in the state file; anything malformed is left out
    (a hand-edited or older state file must not break `status`)."""
    if not isinstance(value, list):
        return ()
    return tuple(Member(item["label"], item["node"], item["url"]) for item in value
                 if isinstance(item, dict) and all(isinstance(item.get(k), str) for k in ("label", "node", "url")))


class Endpoint:
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 5.0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, payload: object | None = None, *, timeout_s: float | None = None) -> HttpReply:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s) as response:
                return HttpReply(response.status, response.read(), None, time.monotonic() - started)
        except urllib.error.HTTPError as exc:
            return HttpReply(exc.code, exc.read() or b"", f"HTTP {exc.code}", time.monotonic() - started)
        except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return HttpReply(None, b"", str(reason), time.monotonic() - started)

    def at(self, base_url: str) -> Endpoint:
        """The same client (API key, timeout) for another server: a replica behind this endpoint."""
        return Endpoint(base_url, api_key=self.api_key, timeout_s=self.timeout_s)

    def health(self) -> HttpReply:
        return self.request("GET", "/health")

    def model_ids(self) -> tuple[HttpReply, list[str]]:
        reply = self.request("GET", "/v1/models")
        ids: list[str] = []
        if reply.status == 200:
            try:
                ids = [entry["id"] for entry in reply.json()["data"]]  # type: ignore[index]
            except (ValueError, KeyError, TypeError):
                pass
        return reply, ids

    def complete(self, model: str, prompt: str = "Hello", max_tokens: int = 4, timeout_s: float = 120.0) -> HttpReply:
        payload = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        return self.request("POST", "/v1/completions", payload, timeout_s=timeout_s)

    def chat(self, model: str, message: str, max_tokens: int = 32, timeout_s: float = 120.0) -> HttpReply:
        payload = {
            "model": model,
            "messages": [{"role": "user", "content": message}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        return self.request("POST", "/v1/chat/completions", payload, timeout_s=timeout_s)


def endpoint_url(inventory: Inventory, playbook: Playbook) -> str:
    """Where a client on the controller reaches the head's HTTP server."""
    host = playbook.host
    if host in {"0.0.0.0", "::", ""}:
        host = inventory.head.host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{playbook.port}"
