"""What a benchmark run asks for: the load steps, the request shape and the
limits, as typed values parsed from the command line's text.

Every parser here raises InputError (exit 2) naming the flag, never ValueError; the
numbers in the lists follow sparkctl.argtypes, like every other numeric flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sparkctl.argtypes import flag_value, number_list, positive_float, positive_int
from sparkctl.errors import InputError

ENDPOINTS = ("completions", "chat")
SLO_METRICS = ("ttft", "tpot", "e2el")


@dataclass(frozen=True)
class LoadStep:
    """One row of the report: a load shape at one prompt length.

    Closed loop: `concurrency` requests are kept in flight, `request_rate` is None.
    Open loop: arrivals at `request_rate` per second (gamma intervals with shape
    `burstiness`; 1.0 is Poisson), at most `max_concurrency` in flight (None: no cap).
    """

    input_len: int
    output_len: int
    concurrency: int | None = None
    request_rate: float | None = None
    burstiness: float = 1.0
    max_concurrency: int | None = None

    @property
    def closed_loop(self) -> bool:
        return self.request_rate is None

    @property
    def in_flight_cap(self) -> int | None:
        return self.concurrency if self.closed_loop else self.max_concurrency

    @property
    def label(self) -> str:
        load = f"c={self.concurrency}" if self.closed_loop else f"rate={self.request_rate:g}/s"
        if not self.closed_loop and self.max_concurrency:
            load += f" cap={self.max_concurrency}"
        return f"{load} in={self.input_len} out={self.output_len}"


@dataclass(frozen=True)
class Slo:
    """Service-level objectives in milliseconds, as vLLM's --goodput takes them."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.e2el_ms))

    def met(self, ttft_ms: float, tpot_ms: float, e2el_ms: float) -> bool:
        return all(
            limit is None or value <= limit
            for value, limit in ((ttft_ms, self.ttft_ms), (tpot_ms, self.tpot_ms), (e2el_ms, self.e2el_ms))
        )

    def to_dict(self) -> dict[str, float | None]:
        return {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "e2el_ms": self.e2el_ms}


@dataclass(frozen=True)
class BenchOptions:
    steps: tuple[LoadStep, ...]
    num_prompts: int = 64
    duration_s: float | None = None  # when set, each step runs this long instead of num_prompts
    warmup: int = 2
    request_timeout_s: float = 600.0
    endpoint: str = "completions"
    seed: int = 0
    prefix_len: int = 0
    tokenizer: str | None = None
    percentiles: tuple[float, ...] = (99.0,)
    slo: Slo = field(default_factory=Slo)
    metrics_interval_s: float = 0.5
    ignore_eos: bool = True


# ----------------------------------------------------------------------------
# parsing the command line's text
# ----------------------------------------------------------------------------
def int_list(flag: str, text: str | None) -> tuple[int, ...]:
    """`1,4,16`: whole numbers of 1 or more."""
    return () if text is None else number_list(flag, positive_int, text)


def float_list(flag: str, text: str | None) -> tuple[float, ...]:
    """`0.5,2`: numbers above 0."""
    return () if text is None else number_list(flag, positive_float, text)


def parse_slo(text: str | None) -> Slo:
    """`ttft=500,tpot=50,e2el=3000` (milliseconds)."""
    if not text:
        return Slo()
    values: dict[str, float] = {}
    for part in text.split(","):
        name, sep, number = part.strip().partition("=")
        name = name.strip().lower().removesuffix("_ms")
        if not sep or name not in SLO_METRICS:
            raise InputError(f"--slo takes ttft=MS,tpot=MS,e2el=MS, got {part.strip()!r}")
        values[name] = flag_value("--slo", positive_float, number.strip())
    return Slo(values.get("ttft"), values.get("tpot"), values.get("e2el"))


def parse_percentiles(text: str | None) -> tuple[float, ...]:
    chosen = {99.0}  # vLLM's default, always reported
    if text:
        for value in float_list("--percentiles", text):
            if value >= 100:
                raise InputError(f"--percentiles: {value:g} is out of range (0 < p < 100)")
            chosen.add(value)
    return tuple(sorted(chosen))


def build_steps(
    *,
    concurrency: tuple[int, ...],
    request_rates: tuple[float, ...],
    input_lens: tuple[int, ...],
    output_len: int,
    burstiness: float,
    max_concurrency: int | None,
) -> tuple[LoadStep, ...]:
    """Closed-loop steps first, then open-loop ones, for every prompt length in turn."""
    if not concurrency and not request_rates:
        concurrency = (1, 2, 4, 8)
    steps: list[LoadStep] = []
    for input_len in input_lens:
        steps += [LoadStep(input_len, output_len, concurrency=c) for c in concurrency]
        steps += [
            LoadStep(input_len, output_len, request_rate=r, burstiness=burstiness, max_concurrency=max_concurrency)
            for r in request_rates
        ]
    return tuple(steps)
