"""Kernel health: scan console/dmesg text for the reports a maintainer treats as bugs.

Pure functions over text. Each finding carries its kind, the line, and an
excerpt (the report's following lines), so the result shows the evidence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# (kind, pattern). Order matters only for naming: the first match names a line.
PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("panic", re.compile(r"Kernel panic - not syncing")),
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
