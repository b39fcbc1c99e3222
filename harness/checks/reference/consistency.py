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

from collections.abc import Iterable
from operator import attrgetter

from harness.checks.parsers.debugfs import Masks, Snapshot
from harness.checks.parsers.trace import AnyEvent, PageEvent, SpteEvent, WpAllEvent, format_event, where
from harness.checks.reference.findings import (
    CaptureFaults,
    Findings,
    Inconsistency,
    Verdict,
    describe_counts,
    new_counts,
    page_inconsistency,
    set_bits,
)
from harness.checks.reference.replay import Replay
from harness.checks.spte import PT_PAGE_SIZE_MASK, SPTE_BASE_ADDR_MASK
from harness.results import ERROR, FAIL, PASS, SKIP

RECENT_EVENTS = 6  # trace events shown per inconsistency


def self_check(snap: Snapshot, findings: Findings) -> tuple[int, int]:
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
            findings.keep(page_inconsistency("duplicate_page", snap.vm, page, None, "listed once", "listed twice",
                                    f"The page is also listed at line {seen[page.spt]}.", snap.seq, where))
        seen.setdefault(page.spt, page.line_no)
        count = page.count
        bitmap = page.bitmap
        if not 0 <= count <= 512 and findings.report("count_out_of_range"):
            findings.keep(page_inconsistency("count_out_of_range", snap.vm, page, None, "0..512", count,
                                    "The page's counter is outside 0..512 (underflow or double count).",
                                    snap.seq, where))
        pop = bitmap.bit_count()
        if count != pop and findings.report("count_mismatch"):
            findings.keep(page_inconsistency("count_mismatch", snap.vm, page, None, pop, count,
                                    "The counter differs from popcount(bitmap).", snap.seq, where))
        expected = 0
        for i, v in page.sptes.items():
            if v & pm and v & wm:
                expected |= 1 << i
        if expected == bitmap:
            continue
        for i in set_bits(expected ^ bitmap):
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
                findings.keep(page_inconsistency(kind, snap.vm, page, i, exp, act, why, snap.seq, where))
    return len(pages), n_sptes


def wp_self_check(snap: Snapshot, findings: Findings) -> int:
    """Write-protect-all's invariant on one dump (v2, README.md "Write-protect-all"): while it is enabled,
    a writable non-leaf spte of a page at the current generation points to a child at that generation.
    Returns the number of such links checked (0 for a v1 dump or while disabled)."""
    wp = snap.wp_all
    if wp is None or not wp.enabled:
        return 0
    gen = wp.gen
    present_writable = snap.masks.present | snap.masks.writable
    by_spt = {p.spt: p for p in snap.pages}
    src = snap.source or "dump"
    checked = 0
    for page in snap.pages:
        if page.level == 1 or page.wp_gen != gen:
            continue
        for i, v in page.sptes.items():
            if v & present_writable != present_writable or v & PT_PAGE_SIZE_MASK:
                continue
            child = by_spt.get((v & SPTE_BASE_ADDR_MASK) + wp.page_offset)
            if child is None:  # not listed (a cut-off dump): nothing to judge
                continue
            checked += 1
            if child.wp_gen != gen and findings.report("wp_snapshot_stale_child_writable"):
                findings.keep(page_inconsistency(
                    "wp_snapshot_stale_child_writable", snap.vm, page, i, f"child at generation {gen:#x}",
                    f"child at {child.wp_gen:#x}",
                    f"spte {v:#x} of a page at the current generation is a writable link to child"
                    f" spt={child.spt:#x} gfn={child.gfn:#x} level {child.level}, which was not loaded since"
                    f" write-protect-all was enabled (its {child.count} possibly-writable sptes can be written"
                    " without a fault, unlogged).", snap.seq, f"{src}:{page.line_no}"))
    return checked


def check_snapshot(snap: Snapshot) -> list[Inconsistency]:
    """Self-consistency of one dump: count == popcount(bitmap), 0 <= count <= 512, and bit i set exactly
    when spte i is possibly writable (never for a non-present spte); for a v2 dump also wp_self_check().
    Every finding is returned."""
    findings = Findings(None)
    self_check(snap, findings)
    wp_self_check(snap, findings)
    return findings.items


def _describe(ev: AnyEvent, masks: Masks | None) -> str:
    if isinstance(ev, SpteEvent):
        def pw(v: int) -> str:
            if masks is None:
                return ""
            return "(pw)" if masks.possibly_writable(v) else "(-)"
        return (f"seq={ev.seq:#x} idx={ev.idx} old={ev.old:#x}{pw(ev.old)} -> new={ev.new:#x}{pw(ev.new)}"
                f" count={ev.count} [{where(ev)}]")
    if isinstance(ev, PageEvent):
        return f"seq={ev.seq:#x} page {ev.op} gfn={ev.gfn:#x} count={ev.count} [{where(ev)}]"
    return f"{format_event(ev)} [{where(ev)}]"


def _attach_recent(items: list[Inconsistency], evs: list[AnyEvent],
                   masks_for: dict[int, Masks], default: Masks | None) -> None:
    """Give each kept inconsistency the last trace events of its spte (or page, or for a VM-level one the
    VM's write-protect-all enables and disables), up to its seq."""
    if not items or not evs:
        return
    wanted: dict[tuple[int, int], list[Inconsistency]] = {}
    for inc in items:
        wanted.setdefault((inc.vm, inc.spt), []).append(inc)
    found: dict[int, list[AnyEvent]] = {id(i): [] for i in items}
    for ev in evs:
        # a VM-level finding (level 0) is told with its VM's enables and disables
        incs = wanted.get((ev.vm, 0) if isinstance(ev, WpAllEvent) else (ev.vm, ev.spt))
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


def check(snapshots: list[Snapshot], events: Iterable[AnyEvent], *, lost_events: int = 0,
          max_reported: int = 20, require_trace: bool = False,
          wp_counts: dict[str, int] | None = None) -> Verdict:
    """Judge the invariant on all the evidence of one run.

    `require_trace`: the caller captured a trace, so a trace without any pw event while the dumps show
    shadow pages is a capture fault (tracing was not on), not a snapshot-only check. `wp_counts`: the
    write-protect-all events the trace held (TraceStats), reported in the counts as they are.
    """
    findings = Findings(max_reported)
    errors = CaptureFaults()
    counts = new_counts(snapshots=len(snapshots), lost_events=lost_events, **(wp_counts or {}))
    vms: set[int] = set()
    for snap in snapshots:
        vms.add(snap.vm)
        name = snap.source or f"dump of VM {snap.vm:#x} at seq {snap.seq:#x}"
        if snap.truncated:
            errors.add(f"{name}: dump truncated by the kernel (truncated=1)")
        if not snap.complete:
            errors.add(f"{name}: dump incomplete (no end line)")
        n_pages, n_sptes = self_check(snap, findings)
        counts["wp_checks"] += wp_self_check(snap, findings)
        counts["pages"] += n_pages
        counts["sptes"] += n_sptes
        counts["wp_dumps"] += snap.wp_all is not None
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
    unjudged: list[str] = []
    if evs and snapshots:
        replay = Replay(snapshots, findings, errors)
        replay.run(evs)
        replay.finish()
        unjudged = replay.wp_unjudged
        counts["pages_replayed"] = replay.pages_replayed
        counts["pages_left"] = sum(len(pages) for pages in replay.live.values())
        counts["snapshot_comparisons"] = replay.comparisons
        counts["wp_checks"] += replay.wp_checks
    elif evs:
        errors.add("trace events but no dump: the masks are unknown, the trace cannot be replayed")
    elif require_trace and any(s.pages for s in snapshots):
        errors.add("the trace has no kvm_mmu_pw event although the dumps list shadow pages (tracing off?)")

    _attach_recent(findings.items, evs, masks_for, snapshots[0].masks if snapshots else None)
    counts["inconsistencies"] = findings.total
    counts["capture_faults"] = errors.total
    examined = describe_counts(counts)
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
    # write-protect-all's enable/disable events alone (TDP MMU mode calls the disable too) are no evidence
    if counts["pages"] == 0 and not any(e.__class__ is SpteEvent or e.__class__ is PageEvent for e in evs):
        if any(s.tdp_mmu_pages > 0 for s in snapshots):
            return Verdict(SKIP, f"only TDP MMU pages (out of scope); {examined}", counts, [])
        return Verdict(ERROR, f"no shadow page and no pw trace event: zero evidence is not a pass; {examined}",
                       counts, [])
    if unjudged:
        more = f" (and {len(unjudged) - 1} more such enables)" if len(unjudged) > 1 else ""
        return Verdict(SKIP, f"write-protect-all not judged: {unjudged[0]}{more}; the bookkeeping has no"
                             f" inconsistency; {examined}", counts, [])
    return Verdict(PASS, f"no inconsistency; {examined}", counts, [])
