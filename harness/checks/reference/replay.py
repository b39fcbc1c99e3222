"""The trace replay: every page's possible-writable state rebuilt from the `kvm_mmu_pw_*` events in seq
order, compared with every event and with each dump at the dump's seq (README.md here says why exactly).
Write-protect-all's events (`kvm_mmu_wp_*`) take part in the same sequence; the replay follows each VM's
indicator and each page's generation and checks the invariants of README.md's "Write-protect-all" (their
rules are wpreplay.py's)."""

from __future__ import annotations

from operator import attrgetter

from harness.checks.parsers.debugfs import Masks, ShadowPage, Snapshot, decode_role
from harness.checks.parsers.trace import AnyEvent, PageEvent, SpteEvent, WpLoadEvent, WpRootEvent, where
from harness.checks.reference.findings import CaptureFaults, Findings, Inconsistency, page_inconsistency, set_bits
from harness.checks.reference.pagestate import PageState
from harness.checks.reference.wpreplay import Load, WriteProtectAllRules

_NO_SEQ = 1 << 64  # beyond any seq


class Replay(WriteProtectAllRules):
    """Replays the trace in seq order and compares with the dumps at their seq."""

    def __init__(self, snapshots: list[Snapshot], findings: Findings, errors: CaptureFaults) -> None:
        self.findings = findings
        self.errors = errors
        # Comparable dumps only: a cut-off dump misses pages by construction (it is an ERROR already).
        self.snaps = sorted((s for s in snapshots if s.complete and not s.truncated), key=attrgetter("seq"))
        self.masks_by_vm: dict[int, Masks] = {}
        for s in snapshots:
            self.masks_by_vm.setdefault(s.vm, s.masks)
        # The masks are global to a boot: a VM without its own dump uses another VM's.
        self.default_masks = snapshots[0].masks
        self.live: dict[int, dict[int, PageState]] = {}  # vm -> spt -> page
        self.untraced: set[tuple[int, int]] = set()  # (vm, spt) seen in events without their alloc
        self.pages_replayed = 0
        self.comparisons = 0
        self.last_seq = -1  # last seq replayed without a gap
        offsets = {s.wp_all.page_offset for s in snapshots if s.wp_all is not None}
        # PAGE_OFFSET, to find the page a non-leaf spte points to (dump v2); None: W3 is not checked
        self.wp_init(offsets.pop() if len(offsets) == 1 else None)

    # -- the hot loop -------------------------------------------------------------------------------------
    def run(self, evs: list[AnyEvent]) -> None:
        """Replay `evs` (sorted by seq); stops at the first gap or duplicate, since after it the state is
        unknown."""
        snaps = self.snaps
        k = 0
        next_snap = snaps[0].seq if snaps else _NO_SEQ
        live = self.live
        cur_vm = -1
        pages: dict[int, PageState] = {}
        pm = wm = 0
        pending: dict[int, Load] = {}  # vm -> its load whose non-leaf sptes must be the VM's next events
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
            if pending and ev.vm in pending:
                load = self._load_step(pending.pop(ev.vm), ev)
                if load is not None:
                    pending[ev.vm] = load
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
                if pg.level > 1:
                    self._upper(ev, pg, now, pages)
            elif ev.__class__ is PageEvent:  # `__class__ is`: faster than isinstance in the hot loop
                self._page_event(ev, pages)
            else:
                # mypy narrows `__class__ is` but not by elimination
                load = self._wp_event(ev, pages)  # type: ignore[arg-type]
                if load is not None:
                    pending[ev.vm] = load
        self.last_seq = expect - 1
        for snap in snaps[k:]:
            if snap.seq <= self.last_seq:
                self._compare(snap)
            else:
                self.errors.add(f"{snap.source or 'dump'} (VM {snap.vm:#x}) at seq {snap.seq:#x} is past the"
                                f" last replayable event (seq {self.last_seq:#x}): events up to the dump were"
                                " not captured, not compared")

    # -- the rare cases, out of the loop -------------------------------------------------------------------
    def _inc(self, kind: str, ev: SpteEvent | PageEvent | WpLoadEvent | WpRootEvent, pg: PageState,
             idx: int | None, expected: int | str | None, actual: int | str | None, detail: str) -> Inconsistency:
        return Inconsistency(kind, ev.vm, ev.spt, pg.gfn, pg.role, decode_role(pg.role), pg.level, idx,
                             expected, actual, detail, seq=ev.seq, source=where(ev))

    def _seq_fault(self, ev: AnyEvent, expect: int) -> None:
        if ev.seq < expect:
            self.errors.add(f"lost trace events: duplicate seq {ev.seq:#x} ({where(ev)});"
                            f" replay stopped there")
        else:
            self.errors.add(f"lost trace events: seq {expect:#x}..{ev.seq - 1:#x} missing"
                            f" ({ev.seq - expect} events, before seq {ev.seq:#x}, {where(ev)}); replay stopped there")

    def _untraced(self, ev: SpteEvent | PageEvent | WpLoadEvent | WpRootEvent, what: str) -> None:
        key = (ev.vm, ev.spt)
        if key in self.untraced:
            return
        self.untraced.add(key)
        self.errors.add(f"capture fault: {what} at seq {ev.seq:#x} ({where(ev)}) for VM {ev.vm:#x}"
                        f" page spt={ev.spt:#x} gfn={ev.gfn:#x}, which was not allocated in the trace"
                        " (trace started late?)")

    def _spte_fault(self, ev: SpteEvent, pg: PageState, bit: int, was: int, now: int) -> None:
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

    def _count_fault(self, ev: SpteEvent, pg: PageState) -> None:
        if self.findings.report("event_count_mismatch"):
            self.findings.keep(self._inc("event_count_mismatch", ev, pg, ev.idx, pg.count + pg.drift, ev.count,
                                         f"The event's counter differs from the replay (popcount {pg.count})."))
        pg.drift = ev.count - pg.count  # follow the kernel from here: report a drift once, not on every event

    def _page_event(self, ev: PageEvent, pages: dict[int, PageState]) -> None:
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
            pg = PageState(ev.gfn, ev.role, ev.level, ev.seq, ev.count, self.wp.get(ev.vm, (False, 0))[1])
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
                             f" {', '.join(map(str, set_bits(dead.bitmap)))}."))
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
                for i in set_bits(p.bitmap ^ pg.bitmap):
                    if f.report("snapshot_bitmap_mismatch"):
                        f.keep(page_inconsistency("snapshot_bitmap_mismatch", snap.vm, p, i, pg.bitmap >> i & 1,
                                         p.bitmap >> i & 1, "The dump's bit differs from the replayed trace"
                                         " (expected = replay, actual = dump).", snap.seq, where))
            if p.wp_gen is not None and p.wp_gen != pg.gen and f.report("snapshot_wp_gen_mismatch"):
                f.keep(page_inconsistency("snapshot_wp_gen_mismatch", snap.vm, p, None, pg.gen, p.wp_gen,
                                          "The dump's page generation differs from the replayed one (its alloc"
                                          " and loads).", snap.seq, where))
            if p.count != pg.count + pg.drift and f.report("snapshot_count_mismatch"):
                f.keep(page_inconsistency("snapshot_count_mismatch", snap.vm, p, None, pg.count + pg.drift, p.count,
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
                                     f" {pg.count} possibly-writable sptes replayed, but not in the dump.",
                                     seq=snap.seq, source=src))
