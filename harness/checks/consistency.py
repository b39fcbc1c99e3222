"""The verdict on the possible_writable_spte_bitmap invariant: dump self-checks plus a replay of the trace.

Two independent sources of evidence (README.md in this directory explains why they can be compared):
  * each debugfs dump is the kernel's state at one instant (taken under mmu_lock): the counter must equal
    popcount(bitmap) and bit i must be set exactly when spte i is possibly writable;
  * the trace is every change of that state, numbered by one global gap-free `seq`: replaying it from each
    page's alloc must agree with every event (old state, count), end at zero on free, and reproduce every
    dump exactly at the dump's seq.
What cannot be judged (lost events, a trace that starts late or ends early, a cut-off dump) is an ERROR,
never a PASS; a violation proven by evidence that such a fault does not touch is still a FAIL.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import lzma
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import IO

from harness.checks.debugfs import DumpFormatError, Masks, ShadowPage, Snapshot, decode_role, parse_dump
from harness.checks.trace import (PageEvent, SpteEvent, TraceFormatError, TraceStats, is_trace_dat, parse_trace,
                                  trace_dat_lines)

PASS, FAIL, ERROR, SKIP = "PASS", "FAIL", "ERROR", "SKIP"
RECENT_EVENTS = 6  # trace events shown per inconsistency
MAX_ERRORS_SHOWN = 5  # capture faults named in the reason (all are counted)


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

    status: str  # "PASS" | "FAIL" | "ERROR" | "SKIP"
    reason: str
    counts: dict[str, int]
    inconsistencies: list[Inconsistency]

    def __str__(self) -> str:
        lines = [f"{self.status}: {self.reason}"]
        lines += [str(i) for i in self.inconsistencies]
        return "\n".join(lines)


class _Findings:
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


class _Errors:
    """Capture faults: reasons the evidence is incomplete (ERROR). Counted, the first few kept verbatim."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.total = 0

    def add(self, message: str) -> None:
        self.total += 1
        if len(self.messages) < MAX_ERRORS_SHOWN:
            self.messages.append(message)


def _page_inc(kind: str, vm: int, page: ShadowPage, idx: int | None, expected: int | str | None,
              actual: int | str | None, detail: str, seq: int, source: str) -> Inconsistency:
    return Inconsistency(kind, vm, page.spt, page.gfn, page.role, decode_role(page.role), page.level, idx,
                         expected, actual, detail, seq=seq, source=source)


def _bits(x: int) -> Iterator[int]:
    """Indices of the set bits of x, lowest first."""
    while x:
        low = x & -x
        yield low.bit_length() - 1
        x ^= low


def _self_check(snap: Snapshot, findings: _Findings) -> tuple[int, int]:
    """Check one dump against itself; returns (pages, sptes) examined.

    The last page of a truncated or incomplete dump is skipped: the cut may fall inside its spte lines.
    """
    pm = snap.masks.present
    wm = snap.masks.writable | snap.masks.mmu_writable
    pages = snap.pages
    if (snap.truncated or not snap.complete) and pages:
        pages = pages[:-1]
    src = snap.source or "dump"
    seen: dict[int, int] = {}
    n_sptes = 0
    for page in pages:
        n_sptes += len(page.sptes)
        where = f"{src}:{page.line_no}"
        if page.spt in seen and findings.report("duplicate_page"):
            findings.keep(_page_inc("duplicate_page", snap.vm, page, None, "listed once", "listed twice",
                                    f"The page is also listed at line {seen[page.spt]}.", snap.seq, where))
        seen.setdefault(page.spt, page.line_no)
        count = page.count
        bitmap = page.bitmap
        if not 0 <= count <= 512 and findings.report("count_out_of_range"):
            findings.keep(_page_inc("count_out_of_range", snap.vm, page, None, "0..512", count,
                                    "The page's counter is outside 0..512 (underflow or double count).",
                                    snap.seq, where))
        pop = bitmap.bit_count()
        if count != pop and findings.report("count_mismatch"):
            findings.keep(_page_inc("count_mismatch", snap.vm, page, None, pop, count,
                                    "The counter differs from popcount(bitmap).", snap.seq, where))
        expected = 0
        for i, v in page.sptes.items():
            if v & pm and v & wm:
                expected |= 1 << i
        if expected == bitmap:
            continue
        for i in _bits(expected ^ bitmap):
            listed = page.sptes.get(i)
            if expected >> i & 1:
                kind, exp, act = "bit_clear_writable", 1, 0
                why = f"spte {listed:#x} is possibly writable but its bit is clear."
            elif listed is None:
                kind, exp, act = "bit_set_nonpresent", 0, 1
                why = "The bit is set but the dump lists no spte there (0 or nonpresent)."
            elif not listed & pm:
                kind, exp, act = "bit_set_nonpresent", 0, 1
                why = f"The bit is set but spte {listed:#x} is not present."
            else:
                kind, exp, act = "bit_set_not_writable", 0, 1
                why = f"The bit is set but spte {listed:#x} is present and neither writable nor MMU-writable."
            if findings.report(kind):
                findings.keep(_page_inc(kind, snap.vm, page, i, exp, act, why, snap.seq, where))
    return len(pages), n_sptes


def check_snapshot(snap: Snapshot) -> list[Inconsistency]:
    """Self-consistency of one dump: count == popcount(bitmap), 0 <= count <= 512, and bit i set exactly
    when spte i is possibly writable (never for a non-present spte). Every finding is returned."""
    findings = _Findings(None)
    _self_check(snap, findings)
    return findings.items


class _Page:
    """Replayed state of one shadow page incarnation (from its alloc event)."""

    __slots__ = ("bitmap", "count", "drift", "gfn", "role", "level", "alloc_seq")

    def __init__(self, gfn: int, role: int, level: int, alloc_seq: int, kernel_count: int) -> None:
        self.bitmap = 0
        self.count = 0  # popcount(bitmap), maintained incrementally
        self.drift = kernel_count  # kernel counter - count, as last seen (0 unless already reported)
        self.gfn = gfn
        self.role = role
        self.level = level
        self.alloc_seq = alloc_seq


_NO_SEQ = 1 << 64  # beyond any seq


class _Replay:
    """Replays the trace in seq order and compares with the dumps at their seq."""

    def __init__(self, snapshots: list[Snapshot], findings: _Findings, errors: _Errors) -> None:
        self.findings = findings
        self.errors = errors
        # Comparable dumps only: a cut-off dump misses pages by construction (it is an ERROR already).
        self.snaps = sorted((s for s in snapshots if s.complete and not s.truncated), key=attrgetter("seq"))
        self.masks_by_vm: dict[int, Masks] = {}
        for s in snapshots:
            self.masks_by_vm.setdefault(s.vm, s.masks)
        # The masks are global to a boot: a VM without its own dump uses another VM's.
        self.default_masks = snapshots[0].masks
        self.live: dict[int, dict[int, _Page]] = {}  # vm -> spt -> page
        self.untraced: set[tuple[int, int]] = set()  # (vm, spt) seen in events without their alloc
        self.pages_replayed = 0
        self.comparisons = 0
        self.last_seq = -1  # last seq replayed without a gap

    # -- the hot loop -------------------------------------------------------------------------------------
    def run(self, evs: list[SpteEvent | PageEvent]) -> None:
        """Replay `evs` (sorted by seq); stops at the first gap or duplicate, since after it the state is
        unknown."""
        snaps = self.snaps
        k = 0
        next_snap = snaps[0].seq if snaps else _NO_SEQ
        live = self.live
        cur_vm = -1
        pages: dict[int, _Page] = {}
        pm = wm = 0
        expect = evs[0].seq if evs else 0
        self.last_seq = expect - 1
        for ev in evs:
            seq = ev.seq
            if seq != expect:
                self._seq_fault(ev, expect)
                break
            expect = seq + 1
            while next_snap < seq:  # dumps taken before this event: the replay is exactly at their seq
                self._compare(snaps[k])
                k += 1
                next_snap = snaps[k].seq if k < len(snaps) else _NO_SEQ
            if ev.vm != cur_vm:
                cur_vm = ev.vm
                pages = live.setdefault(cur_vm, {})
                masks = self.masks_by_vm.get(cur_vm, self.default_masks)
                pm = masks.present
                wm = masks.writable | masks.mmu_writable
            if ev.__class__ is SpteEvent:
                pg = pages.get(ev.spt)
                if pg is None:
                    self._untraced(ev, "an spte event")
                    continue
                old = ev.old
                new = ev.new
                idx = ev.idx
                was = 1 if old & pm and old & wm else 0
                now = 1 if new & pm and new & wm else 0
                bm = pg.bitmap
                bit = bm >> idx & 1
                if was == now or bit != was:
                    self._spte_fault(ev, pg, bit, was, now)
                if now:
                    if not bit:
                        pg.bitmap = bm | 1 << idx
                        pg.count += 1
                elif bit:
                    pg.bitmap = bm ^ 1 << idx
                    pg.count -= 1
                if ev.count != pg.count + pg.drift:
                    self._count_fault(ev, pg)
            else:
                self._page_event(ev, pages)  # type: ignore[arg-type]
        self.last_seq = expect - 1
        for snap in snaps[k:]:
            if snap.seq <= self.last_seq:
                self._compare(snap)
            else:
                self.errors.add(f"{snap.source or 'dump'} (VM {snap.vm:#x}) at seq {snap.seq:#x} is past the"
                                f" last replayable event (seq {self.last_seq:#x}): events up to the dump were"
                                " not captured, not compared")

    # -- the rare cases, out of the loop -------------------------------------------------------------------
    def _inc(self, kind: str, ev: SpteEvent | PageEvent, pg: _Page, idx: int | None,
             expected: int | str | None, actual: int | str | None, detail: str) -> Inconsistency:
        return Inconsistency(kind, ev.vm, ev.spt, pg.gfn, pg.role, decode_role(pg.role), pg.level, idx,
                             expected, actual, detail, seq=ev.seq, source=f"trace line {ev.line_no}")

    def _seq_fault(self, ev: SpteEvent | PageEvent, expect: int) -> None:
        if ev.seq < expect:
            self.errors.add(f"lost trace events: duplicate seq {ev.seq:#x} (trace line {ev.line_no});"
                            f" replay stopped there")
        else:
            self.errors.add(f"lost trace events: seq {expect:#x}..{ev.seq - 1:#x} missing"
                            f" ({ev.seq - expect} events, before trace line {ev.line_no}); replay stopped there")

    def _untraced(self, ev: SpteEvent | PageEvent, what: str) -> None:
        key = (ev.vm, ev.spt)
        if key in self.untraced:
            return
        self.untraced.add(key)
        self.errors.add(f"capture fault: {what} at seq {ev.seq:#x} (trace line {ev.line_no}) for VM {ev.vm:#x}"
                        f" page spt={ev.spt:#x} gfn={ev.gfn:#x}, which was not allocated in the trace"
                        " (trace started late?)")

    def _spte_fault(self, ev: SpteEvent, pg: _Page, bit: int, was: int, now: int) -> None:
        f = self.findings
        if was == now and f.report("no_change_event"):
            state = "possibly writable" if was else "not possibly writable"
            f.keep(self._inc("no_change_event", ev, pg, ev.idx, "a change of state", f"{state} -> {state}",
                             f"An event fired without a change of state (old {ev.old:#x}, new {ev.new:#x})."))
        if bit != was and f.report("old_state_mismatch"):
            f.keep(self._inc("old_state_mismatch", ev, pg, ev.idx, bit, was,
                             f"The replayed bit is {bit} but the old spte {ev.old:#x} is"
                             f" {'' if was else 'not '}possibly writable: a change was missed (expected = replayed"
                             " bit, actual = state of old)."))

    def _count_fault(self, ev: SpteEvent, pg: _Page) -> None:
        if self.findings.report("event_count_mismatch"):
            self.findings.keep(self._inc("event_count_mismatch", ev, pg, ev.idx, pg.count + pg.drift, ev.count,
                                         f"The event's counter differs from the replay (popcount {pg.count})."))
        pg.drift = ev.count - pg.count  # follow the kernel from here: report a drift once, not on every event

    def _page_event(self, ev: PageEvent, pages: dict[int, _Page]) -> None:
        f = self.findings
        key = (ev.vm, ev.spt)
        if ev.op == "alloc":
            self.pages_replayed += 1
            self.untraced.discard(key)
            prev = pages.get(ev.spt)
            if prev is not None and f.report("double_alloc"):
                f.keep(self._inc("double_alloc", ev, prev, None, "free before alloc", "alloc while live",
                                 f"The page was allocated again (at seq {prev.alloc_seq:#x} before) without a"
                                 " free event."))
            pg = _Page(ev.gfn, ev.role, ev.level, ev.seq, ev.count)
            pages[ev.spt] = pg
            if ev.count != 0 and f.report("alloc_count_nonzero"):
                f.keep(self._inc("alloc_count_nonzero", ev, pg, None, 0, ev.count,
                                 "A new page's counter must start at 0."))
            return
        dead = pages.get(ev.spt)
        if dead is None:
            self._untraced(ev, "a free event")  # reported once per page
            self.untraced.discard(key)  # the spt may now be reused by a traced alloc
            return
        del pages[ev.spt]
        if dead.count != 0 and f.report("free_with_bits"):
            f.keep(self._inc("free_with_bits", ev, dead, None, 0, dead.count,
                             "The page is freed with bits still set (leaked):"
                             f" {', '.join(map(str, _bits(dead.bitmap)))}."))
        if ev.count != dead.count + dead.drift and f.report("free_count_mismatch"):
            f.keep(self._inc("free_count_mismatch", ev, dead, None, dead.count + dead.drift, ev.count,
                             f"The free event's counter differs from the replay (popcount {dead.count})."))

    def _compare(self, snap: Snapshot) -> None:
        """The replay, which is exactly at snap.seq for snap.vm, must reproduce the dump."""
        self.comparisons += 1
        f = self.findings
        pages = self.live.get(snap.vm, {})
        src = snap.source or "dump"
        dumped: dict[int, ShadowPage] = {}
        for p in snap.pages:
            dumped.setdefault(p.spt, p)
        for spt, p in dumped.items():
            pg = pages.get(spt)
            where = f"{src}:{p.line_no}"
            if pg is None:
                key = (snap.vm, spt)
                if key not in self.untraced:
                    self.untraced.add(key)
                    self.errors.add(f"capture fault: {where} (VM {snap.vm:#x}, seq {snap.seq:#x}) lists page"
                                    f" spt={spt:#x} gfn={p.gfn:#x}, which was not allocated in the trace"
                                    " (trace started late, or an alloc event is missing)")
                continue
            if p.bitmap != pg.bitmap:
                for i in _bits(p.bitmap ^ pg.bitmap):
                    if f.report("snapshot_bitmap_mismatch"):
                        f.keep(_page_inc("snapshot_bitmap_mismatch", snap.vm, p, i, pg.bitmap >> i & 1,
                                         p.bitmap >> i & 1, "The dump's bit differs from the replayed trace"
                                         " (expected = replay, actual = dump).", snap.seq, where))
            if p.count != pg.count + pg.drift and f.report("snapshot_count_mismatch"):
                f.keep(_page_inc("snapshot_count_mismatch", snap.vm, p, None, pg.count + pg.drift, p.count,
                                 f"The dump's counter differs from the counter of the last traced event"
                                 f" (replayed popcount {pg.count}).", snap.seq, where))
        for spt, pg in pages.items():
            # A zapped page leaves active_mmu_pages before it is freed (memslot
            # changes and teardown may drop the lock in between), so a dump may
            # legitimately miss it; by then zapping has cleared all its sptes.
            # Missing with bits still set is a real inconsistency.
            if spt not in dumped and (pg.bitmap or pg.count) and f.report("snapshot_page_missing"):
                f.keep(Inconsistency("snapshot_page_missing", snap.vm, spt, pg.gfn, pg.role, decode_role(pg.role),
                                     pg.level, None, "listed (allocated, not freed, bits set)", "absent",
                                     f"Allocated at seq {pg.alloc_seq:#x}, not freed in the trace and with"
                                     f" {pg.count} possibly-writable sptes replayed, but not in the dump.", seq=snap.seq, source=src))


def _describe(ev: SpteEvent | PageEvent, masks: Masks | None) -> str:
    if isinstance(ev, SpteEvent):
        def pw(v: int) -> str:
            if masks is None:
                return ""
            return "(pw)" if masks.possibly_writable(v) else "(-)"
        return (f"seq={ev.seq:#x} idx={ev.idx} old={ev.old:#x}{pw(ev.old)} -> new={ev.new:#x}{pw(ev.new)}"
                f" count={ev.count} [trace line {ev.line_no}]")
    return f"seq={ev.seq:#x} page {ev.op} gfn={ev.gfn:#x} count={ev.count} [trace line {ev.line_no}]"


def _attach_recent(items: list[Inconsistency], evs: list[SpteEvent | PageEvent],
                   masks_for: dict[int, Masks], default: Masks | None) -> None:
    """Give each kept inconsistency the last trace events of its spte (or page), up to its seq."""
    if not items or not evs:
        return
    wanted: dict[tuple[int, int], list[Inconsistency]] = {}
    for inc in items:
        wanted.setdefault((inc.vm, inc.spt), []).append(inc)
    found: dict[int, list[SpteEvent | PageEvent]] = {id(i): [] for i in items}
    for ev in evs:
        incs = wanted.get((ev.vm, ev.spt))
        if incs is None:
            continue
        for inc in incs:
            if inc.seq is not None and ev.seq > inc.seq:
                continue
            if inc.idx is not None and isinstance(ev, SpteEvent) and ev.idx != inc.idx:
                continue
            lst = found[id(inc)]
            lst.append(ev)
            if len(lst) > RECENT_EVENTS:
                del lst[0]
    for inc in items:
        m = masks_for.get(inc.vm, default)
        inc.recent_events = [_describe(e, m) for e in found[id(inc)]]


def check(snapshots: list[Snapshot], events: Iterable[SpteEvent | PageEvent], *, lost_events: int = 0,
          max_reported: int = 20, require_trace: bool = False) -> Verdict:
    """Judge the invariant on all the evidence of one run.

    `require_trace`: the caller captured a trace, so a trace without any pw event while the dumps show
    shadow pages is a capture fault (tracing was not on), not a snapshot-only check.
    """
    findings = _Findings(max_reported)
    errors = _Errors()
    counts = {"snapshots": len(snapshots), "vms": 0, "pages": 0, "sptes": 0, "events": 0,
              "pages_replayed": 0, "snapshot_comparisons": 0, "inconsistencies": 0, "capture_faults": 0,
              "lost_events": lost_events}
    vms: set[int] = set()
    for snap in snapshots:
        vms.add(snap.vm)
        name = snap.source or f"dump of VM {snap.vm:#x} at seq {snap.seq:#x}"
        if snap.truncated:
            errors.add(f"{name}: dump truncated by the kernel (truncated=1)")
        if not snap.complete:
            errors.add(f"{name}: dump incomplete (no end line)")
        n_pages, n_sptes = _self_check(snap, findings)
        counts["pages"] += n_pages
        counts["sptes"] += n_sptes
    if len({s.masks for s in snapshots}) > 1:
        errors.add("the dumps disagree on the masks (dumps of different boots mixed?)")

    evs = list(events)
    evs.sort(key=attrgetter("seq"))  # ftrace's file order is per-CPU timestamp order, not seq order
    counts["events"] = len(evs)
    vms.update(e.vm for e in evs)
    counts["vms"] = len(vms)
    if lost_events:
        errors.add(f"lost trace events: ftrace reported {lost_events} lost")
    masks_for = {s.vm: s.masks for s in snapshots}
    if evs and snapshots:
        replay = _Replay(snapshots, findings, errors)
        replay.run(evs)
        counts["pages_replayed"] = replay.pages_replayed
        counts["snapshot_comparisons"] = replay.comparisons
    elif evs:
        errors.add("trace events but no dump: the masks are unknown, the trace cannot be replayed")
    elif require_trace and any(s.pages for s in snapshots):
        errors.add("the trace has no kvm_mmu_pw event although the dumps list shadow pages (tracing off?)")

    _attach_recent(findings.items, evs, masks_for, snapshots[0].masks if snapshots else None)
    counts["inconsistencies"] = findings.total
    counts["capture_faults"] = errors.total
    examined = (f"examined {counts['snapshots']} dumps of {counts['vms']} VMs ({counts['pages']} pages,"
                f" {counts['sptes']} sptes) and {counts['events']} trace events ({counts['pages_replayed']}"
                f" pages replayed, {counts['snapshot_comparisons']} dump/replay comparisons)")
    faults = "; ".join(errors.messages) + (f"; and {errors.total - len(errors.messages)} more"
                                           if errors.total > len(errors.messages) else "")
    if findings.total:
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(findings.by_kind.items()))
        reason = f"{findings.total} inconsistencies ({kinds}); {examined}"
        if errors.total:
            reason += f"; also not judgeable: {faults}"
        return Verdict(FAIL, reason, counts, findings.items)
    if errors.total:
        return Verdict(ERROR, f"{faults}; {examined}", counts, [])
    if not snapshots:
        return Verdict(ERROR, f"no dump: zero evidence is not a pass; {examined}", counts, [])
    if counts["pages"] == 0 and counts["events"] == 0:
        if any(s.tdp_mmu_pages > 0 for s in snapshots):
            return Verdict(SKIP, f"only TDP MMU pages (out of scope); {examined}", counts, [])
        return Verdict(ERROR, f"no shadow page and no trace event: zero evidence is not a pass; {examined}",
                       counts, [])
    return Verdict(PASS, f"no inconsistency; {examined}", counts, [])


def open_text(path: Path) -> IO[str]:
    """Open a capture as text, transparently gunzipping or unxz-ing (by magic, not by name)."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while millions of small acyclic event objects are built: it finds no garbage
    there, and its passes over the growing list cost ~20% of the parse (measured by harness.bench)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def check_files(snapshot_paths: list[Path], trace_path: Path | None) -> Verdict:
    """check() on captured files; a file that cannot be read or parsed is an ERROR verdict naming it."""
    with gc_paused():
        return _check_files(snapshot_paths, trace_path)


def _check_files(snapshot_paths: list[Path], trace_path: Path | None) -> Verdict:
    empty = {"snapshots": 0, "vms": 0, "pages": 0, "sptes": 0, "events": 0, "pages_replayed": 0,
             "snapshot_comparisons": 0, "inconsistencies": 0, "capture_faults": 1, "lost_events": 0}
    snapshots: list[Snapshot] = []
    try:
        for p in snapshot_paths:
            with open_text(Path(p)) as f:
                snapshots.append(parse_dump(f.read(), source=str(p)))
        if trace_path is None:
            return check(snapshots, [])
        stats = TraceStats()
        reader = trace_dat_lines if is_trace_dat(Path(trace_path)) else open_text
        with reader(Path(trace_path)) as f:
            events = list(parse_trace(f, stats=stats, source=str(trace_path)))
        return check(snapshots, events, lost_events=stats.lost_events, require_trace=True)
    except (DumpFormatError, TraceFormatError) as e:
        return Verdict(ERROR, f"malformed capture: {e}", empty, [])
    except OSError as e:
        return Verdict(ERROR, f"cannot read capture: {e}", empty, [])
