"""What a report holds, independent of its format."""

from __future__ import annotations

from dataclasses import dataclass, field

from sparkctl.findings import Finding, Severity

# how a verdict or a finding reads: "ok" (green), "warn" (amber), "fail" (red), "info" (grey)
TONES = ("ok", "warn", "fail", "info")
_TONE = {Severity.OK: "ok", Severity.INFO: "info", Severity.WARNING: "warn", Severity.ERROR: "fail"}


def tone(severity: Severity) -> str:
    return _TONE[severity]


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
class FindingRow:
    """A finding as a report's table shows it: a view of `sparkctl.findings.Finding`
    with the word its command's output uses for the severity (`of` builds it)."""

    tone: str
    label: str  # "PASS", "degraded", ...
    subject: str  # node or "(cluster)"
    check: str
    evidence: str
    hint: str | None = None

    @classmethod
    def of(cls, finding: Finding, label: str) -> FindingRow:
        # a finding without evidence (a verdict check) shows its message in that column
        text = finding.evidence if finding.evidence is not None else finding.message
        return cls(tone(finding.severity), label, finding.node or "(cluster)", finding.code, text, finding.hint)


@dataclass(frozen=True)
class Text:
    lines: tuple[str, ...]


Block = Table | Image | Text | tuple[FindingRow, ...]


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
