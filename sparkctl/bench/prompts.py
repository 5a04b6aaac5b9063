"""Prompts of a known length in tokens, unique unless a shared prefix is asked for.

Each prompt is random English words, cut to the wanted number of tokens by a
tokenizer and decoded back (vLLM's random dataset does the same with token ids).
The tokenizer is, in order of preference: the server's own `/tokenize` and
`/detokenize` (vLLM has both), a local tokenizer named with --tokenizer (the
`tokenizers` package), or an approximation of one token per word, which the
report names as such. Every prompt of a run draws fresh words from one seeded
generator, so no two prompts share a prefix-cache block unless --prefix-len says so.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from sparkctl.bench.client import Prompt
from sparkctl.errors import InputError

WORDS = (
    "the of and to in is was for on are with as his they at be this from have or by one had not but what all were "
    "when we there can an your which their said if do will each about how up out them then she many some so these "
    "would other into has more her two like him see time could no make than first been its who now people my made "
    "over did down only way find use may water long little very after words called just where most know get through "
    "back much before go good new write our used me man too any day same right look think also around another came "
    "come work three word must because does part even place well such here take why things help put years different "
    "away again off went old number great tell men say small every found still between name should home big give air "
    "line set own under read last never us left end along while might next sound below saw something thought both few "
    "those always looked show large often together asked house world going want school important until form food keep "
    "children feet land side without boy once animals life enough took sometimes four head above kind began almost live "
    "page got earth need far hand high year mother light parts country father let night following picture being study "
    "second eyes soon times story boys since white days ever paper hard near sentence better best across during today "
    "others however sure means knew try told young miles sun ways thing whole hear example heard several change answer "
    "room sea against top turned learn point city play toward five using himself usually river"
).split()


class Tokenizer(Protocol):
    description: str  # how prompt lengths were counted, for the report
    exact: bool

    async def encode(self, text: str) -> list[int]: ...

    async def decode(self, ids: list[int]) -> str: ...


class WordTokenizer:
    """One token per word of WORDS: the approximation used when nothing better exists."""

    description = "approximate: one token per word (no /tokenize on the server and no --tokenizer)"
    exact = False
    _index = {w: i for i, w in enumerate(WORDS)}

    async def encode(self, text: str) -> list[int]:
        return [self._index.get(w, 0) for w in text.split()]

    async def decode(self, ids: list[int]) -> str:
        return " ".join(WORDS[i % len(WORDS)] for i in ids)


class ServerTokenizer:
    """vLLM's /tokenize and /detokenize (no special tokens, as vLLM's benchmark counts)."""

    exact = True

    def __init__(self, session: aiohttp.ClientSession, base_url: str, model: str, headers: dict[str, str]):
        self.session, self.base_url, self.model, self.headers = session, base_url.rstrip("/"), model, headers
        self.description = f"the server's /tokenize ({self.base_url})"

    async def _post(self, path: str, body: dict[str, object]) -> dict[str, object]:
        async with self.session.post(self.base_url + path, json=body, headers=self.headers,
                                     timeout=aiohttp.ClientTimeout(total=30)) as response:
            if response.status != 200:
                raise LookupError(f"{path}: HTTP {response.status}")
            data = await response.json(content_type=None)
        if not isinstance(data, dict):
            raise LookupError(f"{path}: not a JSON object")
        return data

    async def encode(self, text: str) -> list[int]:
        data = await self._post("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False})
        tokens = data.get("tokens")
        if not isinstance(tokens, list):
            raise LookupError("/tokenize: no token list")
        return [int(t) for t in tokens]

    async def decode(self, ids: list[int]) -> str:
        data = await self._post("/detokenize", {"model": self.model, "tokens": ids})
        return str(data.get("prompt", ""))


class LocalTokenizer:
    """A tokenizer.json (a file, or a model folder holding one), read with `tokenizers`."""

    exact = True

    def __init__(self, source: str):
        try:
            from tokenizers import Tokenizer as HfTokenizer
        except ImportError:
            raise InputError("--tokenizer needs the `tokenizers` package",
                             hint="pip install 'sparkctl[tokenizer]' (or pip install tokenizers)") from None
        path = os.path.join(source, "tokenizer.json") if os.path.isdir(source) else source
        if not os.path.isfile(path):
            raise InputError(f"--tokenizer: no tokenizer.json at {path}",
                             hint="give a model folder that has tokenizer.json, or the file itself")
        try:
            self._tokenizer = HfTokenizer.from_file(path)
        except Exception as exc:  # noqa: BLE001 - the library raises its own exception types
            raise InputError(f"--tokenizer: cannot read {path}: {exc}") from None
        self.description = f"the tokenizer at {path}"

    async def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    async def decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids))


async def choose_tokenizer(local: str | None, server: ServerTokenizer) -> Tokenizer:
    """--tokenizer when given; else the server's, when it answers; else words."""
    if local:
        return LocalTokenizer(local)
    try:
        await server.encode("hello world")
        return server
    except (TimeoutError, LookupError, aiohttp.ClientError, ValueError):
        return WordTokenizer()


@dataclass
class PromptBuilder:
    tokenizer: Tokenizer
    seed: int
    prefix_len: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._prefix: str | None = None

    def _words(self, tokens: int) -> str:
        # Words are a token or more each; 20% spare keeps the cut inside the text.
        return " ".join(self._rng.choice(WORDS) for _ in range(int(tokens * 1.2) + 8))

    async def _cut(self, words: str, tokens: int) -> str:
        ids = (await self.tokenizer.encode(words))[:tokens]
        return await self.tokenizer.decode(ids)

    async def prompts(self, count: int, input_len: int, *, parallel: int = 8) -> list[Prompt]:
        """`count` fresh prompts; the words are drawn in order, so the set depends on the seed alone."""
        if self._prefix is None:
            self._prefix = await self._cut(self._words(self.prefix_len), self.prefix_len) if self.prefix_len else ""
        body_len = max(input_len - self.prefix_len, 1)
        gate = asyncio.Semaphore(parallel)
        drawn = [self._words(body_len) for _ in range(count)]

        async def one(words: str) -> Prompt:
            async with gate:
                body = await self._cut(words, body_len)
                text = f"{self._prefix} {body.lstrip()}" if self._prefix else body
                return Prompt(text, len(await self.tokenizer.encode(text)))

        return list(await asyncio.gather(*(one(w) for w in drawn)))
