"""One finding type and one severity vocabulary for everything sparkctl judges:
preflight checks, the NCCL and vLLM log readers, `ray start` logs, explain's
rules, `status`'s verdict and nccl-probe's verdict checks.

Inside sparkctl there is only `Severity`. Each command's `--json` output is a
contract for scripts and keeps the words it always printed; the translations from
`Severity` to those words live here, one function per vocabulary, so the mapping
is written once:

- `check_status`: `check`'s PASS / WARN / FAIL;
- `level`: the `level` key of `doctor` (NCCL and vLLM logs), `nccl-probe`'s
  transport findings and `explain`: error / warning / info;
- `probe_status`: `nccl-probe`'s verdict checks: ok / degraded / warning / not-judged.

Why one flat type with optional fields, not a base plus one subclass per domain:
every domain's finding is the same sentence (what was found, how serious, the line or
fact that proves it, what to do, on which node), and renderers, sorting and "the worst
of these" then work on any of them. The domain extras map onto it: a check's catalogue
id is its `code`, a log finding's raw line is its `evidence`, Ray's "fatal" (the node
will not join by waiting) is `ERROR` against `WARNING`, explain's fix is its `hint`. The
one field only one domain fills today is `predicted_gain` (explain's model); it is
optional because a gain is a property any finding could have once something can
predict it, and a wrapper type for one string would split every list of findings.

This module imports nothing from sparkctl: every layer may use it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable


class Severity(enum.Enum):
    """How serious a finding is, ranked: OK < INFO < WARNING < ERROR."""

    OK = "ok"  # verified and fine (a check that passed)
    INFO = "info"  # worth knowing, nothing to fix (or: could not be judged)
    WARNING = "warning"  # works, but slower or more fragile than it should
    ERROR = "error"  # broken, or will break: fix before trusting the cluster

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Severity.OK: 0, Severity.INFO: 1, Severity.WARNING: 2, Severity.ERROR: 3}


@dataclass(frozen=True)
class Finding:
    code: str  # stable id: a check's catalogue id ("rdma.twins-active") or a rule's code ("socket-fallback")
    severity: Severity
    message: str  # what was found, one sentence
    evidence: str | None = None  # the log line, measurement or fact that shows it
    hint: str | None = None  # what to do about it
    node: str | None = None  # the node it concerns; None: the cluster, or a log as a whole
    predicted_gain: str | None = None  # what fixing it is predicted to gain, where a model can say


def worst(findings: Iterable[Finding]) -> Severity:
    return max((f.severity for f in findings), key=lambda s: s.rank, default=Severity.OK)


def most_severe_first(findings: Iterable[Finding]) -> list[Finding]:
    """Stable: findings of one severity keep the order their rules gave them."""
    return sorted(findings, key=lambda f: -f.severity.rank)


# ---------------------------------------------------------------- the words each output shows
CHECK_STATUSES = ("PASS", "WARN", "FAIL")
_CHECK_STATUS = {Severity.OK: "PASS", Severity.INFO: "PASS", Severity.WARNING: "WARN", Severity.ERROR: "FAIL"}
_PROBE_STATUS = {Severity.OK: "ok", Severity.INFO: "not-judged", Severity.WARNING: "warning",
                 Severity.ERROR: "degraded"}


def check_status(severity: Severity) -> str:
    """`check`'s word. A check is never merely informational: INFO reads as PASS."""
    return _CHECK_STATUS[severity]


def level(severity: Severity) -> str:
    """The `level` key of log findings and explain's findings: the severity's own name."""
    return severity.value


def probe_status(severity: Severity) -> str:
    """nccl-probe's verdict checks: a check that could not be judged is INFO."""
    return _PROBE_STATUS[severity]
