"""What a report holds, independent of its format."""

from __future__ import annotations

from dataclasses import dataclass, field

# how a verdict or a finding reads: "ok" (green), "warn" (amber), "fail" (red), "info" (grey)
TONES = ("ok", "warn", "fail", "info")


@dataclass(frozen=True)
class Verdict:
    tone: str
    headline: str
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""
    numeric: tuple[bool, ...] = ()  # per column: right-aligned numbers


@dataclass(frozen=True)
class Image:
    png: bytes
    caption: str
    alt: str


@dataclass(frozen=True)
class Finding:
    tone: str
    label: str  # "PASS", "degraded", ...
    subject: str  # node or "(cluster)"
    check: str
    evidence: str
    hint: str | None = None


@dataclass(frozen=True)
class Text:
    lines: tuple[str, ...]


Block = Table | Image | Text | tuple[Finding, ...]


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Report:
    title: str
    command: str  # the command line that produced it
    created: str  # ISO date and time
    metadata: tuple[tuple[str, str], ...]
    verdict: Verdict | None
    sections: tuple[Section, ...]
    notes: tuple[str, ...] = field(default=())
