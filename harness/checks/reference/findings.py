"""The checker's vocabulary: one violation (`Inconsistency`), the verdict over a capture (`Verdict`),
and the bookkeeping both the dump self-check and the trace replay feed (`Findings`, `CaptureFaults`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from harness.checks.parsers.debugfs import ShadowPage, decode_role
from harness.results import Status

MAX_ERRORS_SHOWN = 5  # capture faults named in the reason (all are counted)
# What a verdict says it examined (Verdict.counts): the one list of its keys.
# Write-protect-all's trace events (FORMAT.md), as TraceStats counts them under these names.
WP_COUNT_KEYS = ("wp_all_enables", "wp_all_disables", "wp_loads", "wp_roots")
COUNT_KEYS = ("snapshots", "vms", "pages", "sptes", "events", "pages_replayed", "snapshot_comparisons",
              "inconsistencies", "capture_faults", "lost_events", *WP_COUNT_KEYS,
              "wp_checks",  # write-protect-all invariants checked: loads and roots replayed, writable links judged
              "wp_dumps",  # v2 dumps (FORMAT.md): the kernel carries write-protect-all's instrumentation
              "pages_left")  # pages the trace allocated and did not free: 0 once every VM was torn down


def new_counts(**given: int) -> dict[str, int]:
    """A verdict's counts: every key of COUNT_KEYS, 0 unless given."""
    unknown = set(given) - set(COUNT_KEYS)
    if unknown:
        raise KeyError(f"not a verdict count: {', '.join(sorted(unknown))}")
    return {k: given.get(k, 0) for k in COUNT_KEYS}


def describe_counts(counts: dict[str, int]) -> str:
    """What a verdict rests on, in words (every verdict's reason ends with it)."""
    return (f"examined {counts['snapshots']} dumps of {counts['vms']} VMs ({counts['pages']} pages,"
            f" {counts['sptes']} sptes) and {counts['events']} trace events ({counts['pages_replayed']}"
            f" pages replayed, {counts['snapshot_comparisons']} dump/replay comparisons)")


@dataclass(slots=True)
class Inconsistency:
    """One violation, with enough context to find it in the dump and the trace without the harness."""

    kind: str
    vm: int
    spt: int
    gfn: int
    role: int
    role_decoded: str
    level: int
    idx: int | None  # spte index, None for a page-level finding
    # level 0 (and spt, gfn, role 0): a finding about the VM itself, such as its write-protect-all indicator
    expected: int | str | None
    actual: int | str | None
    detail: str
    recent_events: list[str] = field(default_factory=list)
    seq: int | None = None  # where in the global seq order it was seen (event seq or dump seq)
    source: str = ""  # dump file and line, or trace line

    def __str__(self) -> str:
        where = f"spte {self.idx}" if self.idx is not None else "page-level"
        at = f" at seq {self.seq:#x}" if self.seq is not None else ""
        src = f" [{self.source}]" if self.source else ""
        if self.level == 0:  # a finding about the VM (its write-protect-all indicator), no page
            text = (f"{self.kind}: VM {self.vm:#x}{at}: expected {self.expected}, actual {self.actual}."
                    f" {self.detail}{src}")
            text += "".join(f"\n    {e}" for e in self.recent_events)
            return text
        text = (f"{self.kind}: VM {self.vm:#x}, page spt={self.spt:#x} gfn={self.gfn:#x} level {self.level}"
                f" (role {self.role:#x}: {self.role_decoded}), {where}{at}: expected {self.expected},"
                f" actual {self.actual}. {self.detail}{src}")
        if self.recent_events:
            text += f"\n  last {len(self.recent_events)} trace events for this " + (
                "spte (and its page's alloc/free):" if self.idx is not None else "page:")
            text += "".join(f"\n    {e}" for e in self.recent_events)
        else:
            text += "\n  (no trace event for this " + ("spte)" if self.idx is not None else "page)")
        return text


@dataclass(slots=True)
class Verdict:
    """The outcome and what it rests on: `counts` says what was examined, so a PASS can be weighed."""

    status: Status
    reason: str
    counts: dict[str, int]
    inconsistencies: list[Inconsistency]

    def __str__(self) -> str:
        lines = [f"{self.status}: {self.reason}"]
        lines += [str(i) for i in self.inconsistencies]
        return "\n".join(lines)


class Findings:
    """Counts every finding, keeps only the first `limit` (a broken kernel can produce millions)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.items: list[Inconsistency] = []
        self.total = 0
        self.by_kind: Counter[str] = Counter()

    def report(self, kind: str) -> bool:
        """Count one finding of `kind`; True if the caller should build it and `keep()` it."""
        self.total += 1
        self.by_kind[kind] += 1
        return self.limit is None or len(self.items) < self.limit

    def keep(self, inc: Inconsistency) -> None:
        self.items.append(inc)


class CaptureFaults:
    """Capture faults: reasons the evidence is incomplete (ERROR). Counted, the first few kept verbatim."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.total = 0

    def add(self, message: str) -> None:
        self.total += 1
        if len(self.messages) < MAX_ERRORS_SHOWN:
            self.messages.append(message)


def page_inconsistency(kind: str, vm: int, page: ShadowPage, idx: int | None, expected: int | str | None,
                       actual: int | str | None, detail: str, seq: int, source: str) -> Inconsistency:
    """An Inconsistency located at a page of a dump."""
    return Inconsistency(kind, vm, page.spt, page.gfn, page.role, decode_role(page.role), page.level, idx,
                         expected, actual, detail, seq=seq, source=source)


def set_bits(x: int) -> Iterator[int]:
    """Indices of the set bits of x, lowest first."""
    while x:
        low = x & -x
        yield low.bit_length() - 1
        x ^= low
