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
# The report headers the kernel prints, as its format strings spell them in 6.1, 6.12 and since v6.19 (the file
# named on each line), matched at the start of a message (after the timestamp). Specific kinds come first; a
# `WARNING: ` or `BUG: ` banner that none of them names is still a report (the catch-alls at the end), so a
# new message under a known banner is never missed. (kind, pattern); the first match names a line.
PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("panic", re.compile(r"Kernel panic - not syncing")),  # kernel/panic.c panic()
    ("kasan", re.compile(r"BUG: KASAN: ")),  # mm/kasan/report.c
    ("kfence", re.compile(r"BUG: KFENCE: ")),  # mm/kfence/report.c
    ("ubsan", re.compile(r"UBSAN: ")),  # lib/ubsan.c ubsan_prologue(): "UBSAN: %s in %s:%d:%d"
    # kernel/watchdog.c (pr_fmt "watchdog: "): "BUG: soft lockup - CPU#%d stuck for %us! [%s:%d]"
    ("soft-lockup", re.compile(r"(?:watchdog: )?BUG: soft lockup - CPU#\d+ stuck")),
    # kernel/watchdog.c (6.12), kernel/watchdog_hld.c (6.1, pr_fmt "NMI watchdog: "):
    # "Watchdog detected hard LOCKUP on cpu %d"
    ("hard-lockup", re.compile(r"(?:NMI watchdog: |watchdog: )?Watchdog detected hard LOCKUP on cpu \d+")),
    # kernel/rcu/tree_stall.h (pr_fmt "rcu: "): "INFO: %s detected stalls on CPUs/tasks:",
    # "INFO: %s self-detected stall on CPU"; tree_exp.h (the same pr_fmt): "INFO: %s detected expedited stalls
    # on CPUs/tasks: {" and "... detected expedited stalls, but suppressed full report due to a stuck CSD-lock.";
    # tasks.h (update.c, no pr_fmt): "INFO: rcu_tasks detected stalls on tasks:", also rcu_tasks_trace's
    ("rcu-stall", re.compile(r"(?:rcu: )?INFO: \S+ (?:self-)?detected (?:expedited )?stalls?(?: on|, but)")),
    # mm/kmemleak.c (pr_fmt "kmemleak: "): "%d new suspected memory leaks (see /sys/kernel/debug/kmemleak)"
    ("kmemleak", re.compile(r"kmemleak: \d+ new suspected memory leaks")),
    # kernel/locking/lockdep.c: "INFO: trying to register non-static key." (a lock used without its init)
    ("lockdep", re.compile(r"INFO: trying to register non-static key")),
    # kernel/hung_task.c: "INFO: task %s:%d blocked for more than %ld seconds."
    ("hung-task", re.compile(r"INFO: task \S+:\d+ blocked for more than \d+ seconds")),
    # kernel/locking/lockdep.c: the headers of its reports (all "WARNING: " banners without an "at <func>")
    ("lockdep", re.compile(r"WARNING: (?:possible circular locking dependency|possible recursive locking"
                           r"|inconsistent lock state|suspicious RCU usage|bad unlock balance|held lock freed"
                           r"|lock held when returning to user space|possible irq lock inversion"
                           r"|\S+-safe -> \S+-unsafe lock order|chain_key collision|Nested lock was not taken"
                           r"|lock held by current task)")),
    # kernel/panic.c __warn(): 6.1 and 6.12 "WARNING: CPU: %d PID: %d at %s:%d %pS" (or "at %pS" without a
    # file); since v6.19 "WARNING: %s:%d at %pS, CPU#%d: %s/%d" (or "WARNING: at %pS, CPU#%d: %s/%d")
    ("warning", re.compile(r"WARNING: (?:CPU: \d+ PID: \d+ at |(?:\S+:\d+ )?at \S+, CPU#\d+: |at )")),
    # lib/bug.c report_bug(): "kernel BUG at %s:%u!", "Kernel BUG at %pB [verbose debug info unavailable]"
    ("bug", re.compile(r"[Kk]ernel BUG at ")),
    # arch/x86/kernel/dumpstack.c __die_header(): "%s: %04lx [#%d]%s%s%s%s%s" ("Oops: general protection fault,
    # ...: 0000 [#1] PREEMPT SMP NOPTI"; 6.1 without the "Oops: "). The "[#n]" die counter is what tells it
    # from user space's "traps: prog[pid] general protection fault ip:... sp:... error:0"
    ("oops", re.compile(r"(?!traps: )[^\[]*: [0-9a-f]{4} \[#\d+\]")),
    # mm/slub.c __slab_bug(): "BUG %s (%s): %pV", the cache and print_tainted() ("Not tainted" or "Tainted: ..."):
    # "BUG kmalloc-64 (Tainted: G    B             ): Poison overwritten"; no colon after BUG, so not the catch-all's
    ("slub", re.compile(r"BUG \S+ \((?:Not tainted|Tainted: [^)]*)\): ")),
    ("bug", re.compile(r"BUG: ")),  # any other BUG banner (NULL pointer dereference, Bad page state, ...)
    ("warning", re.compile(r"WARNING: ")),  # any other WARNING banner (the unwinder's, a new spelling)
]
_END = re.compile(r"---\[ end trace|---\[ end Kernel panic")
# "[   12.345678] " (dmesg, console) and an optional "<4>" log level (dmesg -r, /dev/kmsg readers). On a serial
# console a kernel message may start in the middle of a line that user space was writing: a header is looked
# for at the start of the line and after every timestamp in it.
_TS = re.compile(r"(?:<\d>)?\[\s*\d+\.\d+\]\s?")


@dataclass(frozen=True)
class Finding:
    kind: str
    line: str
    excerpt: str
    where: str = ""   # e.g. "console-shadow.log:123"

    def summary(self) -> str:
        return f"{self.kind}: {self.line.strip()}" + (f" ({self.where})" if self.where else "")


def scan(text: str, source: str = "", excerpt_lines: int = 25) -> list[Finding]:
    """Every report in `text` (a kernel log: dmesg or a serial console, one message per line, each after its
    `[seconds]` timestamp), each with up to `excerpt_lines` lines of its body. A report is recognised by its
    header at the start of a message (PATTERNS), never by words in the middle of a line."""
    lines = text.splitlines()
    found: list[Finding] = []
    skip_until = -1
    for i, line in enumerate(lines):
        if i <= skip_until:
            continue
        hit = _header(line)
        if hit is None:
            continue
        kind, body = hit
        end = min(len(lines), i + excerpt_lines)
        for j in range(i + 1, end):
            if _END.search(lines[j]):
                end = j + 1
                break
        found.append(Finding(kind, body, "\n".join(lines[i:end]), f"{source}:{i + 1}" if source else ""))
        # A report's own body (e.g. "BUG:" inside a panic dump) is not a second report.
        skip_until = end - 1
    return found


def _header(line: str) -> tuple[str, str] | None:
    """(kind, the message from its header on) if a report header starts the line or follows a timestamp."""
    starts = [0, *(m.end() for m in _TS.finditer(line))]
    for pos in starts:
        for kind, pat in PATTERNS:
            if pat.match(line, pos):
                return kind, line[pos:]
    return None


# kernel/panic.c taint_flags[] (6.1, 6.12): bit -> (letter, what it means). /proc/sys/kernel/tainted is their sum.
TAINT_FLAGS = {
    0: ("P", "proprietary module"), 1: ("F", "forced module load"), 2: ("S", "CPU out of spec"),
    3: ("R", "forced module unload"), 4: ("M", "machine check"), 5: ("B", "bad page"), 6: ("U", "user request"),
    7: ("D", "kernel died: Oops or BUG"), 8: ("A", "ACPI table overridden"), 9: ("W", "kernel warning"),
    10: ("C", "staging driver"), 11: ("I", "firmware workaround"), 12: ("O", "out-of-tree module"),
    13: ("E", "unsigned module"), 14: ("L", "soft lockup"), 15: ("K", "live patched"), 16: ("X", "auxiliary"),
    17: ("T", "struct randomization"), 18: ("N", "in-kernel test"),
}
# The taints a kernel bug sets (machine check, bad page, died, warning, soft lockup); loading a module sets others.
BUG_TAINTS = (1 << 4) | (1 << 5) | (1 << 7) | (1 << 9) | (1 << 14)


def taint_finding(before: int, after: int, where: str = "") -> Finding | None:
    """A finding when the kernel gained a bug taint between two reads of /proc/sys/kernel/tainted: the
    kernel's own record that it reported a bug, whatever the report's wording (or if its lines were lost)."""
    new = after & ~before & BUG_TAINTS
    if not new:
        return None
    flags = ", ".join(f"{letter} ({what})" for bit, (letter, what) in TAINT_FLAGS.items() if new >> bit & 1)
    return Finding("taint", f"the kernel became tainted: {flags}",
                   f"/proc/sys/kernel/tainted went from {before} to {after}", where)


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
