"""Kernel health: scan console/dmesg text for the reports a maintainer treats as bugs.

Pure functions over text. Each finding carries its kind, the line, and an
excerpt (the report's following lines), so the result shows the evidence.
Also the console helpers the reports need: printable text, its last line,
a panic's excerpt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PANIC_RE = re.compile(r"Kernel panic - not syncing.*")
# (kind, pattern). Order matters only for naming: the first match names a line.
PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("panic", PANIC_RE),
    ("kasan", re.compile(r"BUG: KASAN: ")),
    ("ubsan", re.compile(r"UBSAN: ")),
    ("soft-lockup", re.compile(r"watchdog: BUG: soft lockup|BUG: soft lockup")),
    ("hard-lockup", re.compile(r"Watchdog detected hard LOCKUP")),
    ("rcu-stall", re.compile(r"rcu: INFO: \S+ (?:self-)?detected stalls?")),
    ("hung-task", re.compile(r"INFO: task \S+ blocked for more than \d+ seconds")),
    ("lockdep", re.compile(r"WARNING: (?:possible circular locking dependency|possible recursive locking"
                           r"|inconsistent lock state|suspicious RCU usage|bad unlock balance)")),
    ("bug", re.compile(r"kernel BUG at |BUG: (?!KASAN)")),
    ("oops", re.compile(r"Oops: |general protection fault")),
    ("warning", re.compile(r"WARNING: CPU: \d+ PID: \d+ at |WARNING: at ")),
]
_END = re.compile(r"---\[ end trace|---\[ end Kernel panic")
_TS = re.compile(r"^\[\s*\d+\.\d+\]\s?")


@dataclass(frozen=True)
class Finding:
    kind: str
    line: str
    excerpt: str
    where: str = ""   # e.g. "console-shadow.log:123"

    def summary(self) -> str:
        return f"{self.kind}: {self.line.strip()}" + (f" ({self.where})" if self.where else "")


def scan(text: str, source: str = "", excerpt_lines: int = 25) -> list[Finding]:
    """Every report in `text`, each with up to `excerpt_lines` lines of its body."""
    lines = text.splitlines()
    found: list[Finding] = []
    skip_until = -1
    for i, line in enumerate(lines):
        if i <= skip_until:
            continue
        body = _TS.sub("", line)
        for kind, pat in PATTERNS:
            if pat.search(body):
                end = min(len(lines), i + excerpt_lines)
                for j in range(i + 1, end):
                    if _END.search(lines[j]):
                        end = j + 1
                        break
                found.append(Finding(kind, body, "\n".join(lines[i:end]), f"{source}:{i + 1}" if source else ""))
                # A report's own body (e.g. "BUG:" inside a panic dump) is not a second report.
                skip_until = end - 1
                break
    return found


def describe(findings: list[Finding]) -> str:
    """The findings as one reason line."""
    return "; ".join(f.summary() for f in findings)


# Terminal escapes and control characters a console may carry (a shell's
# cursor query, say): invalid in XML reports, noise anywhere else.
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


def printable(text: str) -> str:
    return _CONTROL.sub("", text)


def last_line(console: str) -> str:
    lines = [ln.strip() for ln in printable(console).splitlines() if ln.strip()]
    return repr(lines[-1][:200]) if lines else "(console empty)"


def panic_excerpt(console: str, before: int = 5, after: int = 30) -> str:
    """The panic line with a few lines before it (the cause) and its backtrace after."""
    lines = printable(console).splitlines()
    for i, line in enumerate(lines):
        if PANIC_RE.search(line):
            return "\n".join(lines[max(0, i - before):i + after])
    return ""
