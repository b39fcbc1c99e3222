"""The trace replay's write-protect-all rules (README.md here, "Write-protect-all": W1-W5), as a part of
replay.Replay: it holds the pages and calls these on the `kvm_mmu_wp_*` events, on the non-leaf sptes of
pages above level 1, and on the events that follow a load."""

from __future__ import annotations

from harness.checks.parsers.trace import AnyEvent, PageEvent, SpteEvent, WpAllEvent, WpLoadEvent, WpRootEvent, where
from harness.checks.reference.findings import Findings, Inconsistency, set_bits
from harness.checks.reference.pagestate import PageState
from harness.checks.spte import PT_PAGE_SIZE_MASK, SPTE_BASE_ADDR_MASK


class Load:
    """A load (kvm_mmu_wp_load) and the non-leaf sptes it still has to write-protect."""

    __slots__ = ("ev", "vm", "pg", "todo")

    def __init__(self, ev: WpLoadEvent, pg: PageState, todo: int) -> None:
        self.ev = ev
        self.vm = ev.vm
        self.pg = pg
        self.todo = todo


class WriteProtectAllRules:
    """Each VM's indicator and the W1-W5 checks; `wp_checks` counts the loads, roots and links judged."""

    findings: Findings

    def wp_init(self, page_offset: int | None) -> None:
        """`page_offset`: PAGE_OFFSET from the v2 dumps, to find the page a non-leaf spte points to."""
        self.page_offset = page_offset
        # vm -> (enabled, generation) of its write-protect-all indicator; a new VM's is zero (kzalloc'd)
        self.wp: dict[int, tuple[bool, int]] = {}
        self.wp_enables: dict[int, tuple[int, int]] = {}  # vm -> (highest enabled generation, its seq)
        # vm -> what its last enable left to protect, while no page of it has been loaded and no vCPU has
        # entered the guest (kvm_mmu_wp_root) since
        self.wp_waiting: dict[int, tuple[WpAllEvent, int, int]] = {}
        # enables that no load or root followed, though there was something to protect
        self.wp_unjudged: list[str] = []
        self.wp_checks = 0  # write-protect-all invariants checked (loads, and writable links of loaded pages)

    # Replay's, which knows the page and the capture
    def _inc(self, kind: str, ev: SpteEvent | PageEvent | WpLoadEvent | WpRootEvent, pg: PageState,
             idx: int | None, expected: int | str | None, actual: int | str | None, detail: str) -> Inconsistency:
        raise NotImplementedError

    def _untraced(self, ev: SpteEvent | PageEvent | WpLoadEvent | WpRootEvent, what: str) -> None:
        raise NotImplementedError

    def _upper(self, ev: SpteEvent, pg: PageState, now: int, pages: dict[int, PageState]) -> None:
        """Keep `upper` (non-leaf bits) and check that a writable link made in a loaded page while
        write-protect-all is enabled points to a loaded (or new) child."""
        bit = 1 << ev.idx
        if not now or ev.new & PT_PAGE_SIZE_MASK:
            pg.upper &= ~bit
            return
        pg.upper |= bit
        enabled, gen = self.wp.get(ev.vm, (False, 0))
        if not enabled or pg.gen != gen or self.page_offset is None:
            return
        child = pages.get((ev.new & SPTE_BASE_ADDR_MASK) + self.page_offset)
        self.wp_checks += 1
        if child is not None and child.gen != gen and self.findings.report("wp_stale_child_writable"):
            self.findings.keep(self._inc(
                "wp_stale_child_writable", ev, pg, ev.idx, f"child at generation {gen:#x}",
                f"child at {child.gen:#x}",
                f"A loaded page links (writable) to child gfn={child.gfn:#x} level {child.level}, which was"
                f" not loaded since write-protect-all was enabled: the child's {child.count} possibly-writable"
                " sptes can be written without a fault, unlogged."))

    def _wp_event(self, ev: WpAllEvent | WpLoadEvent | WpRootEvent, pages: dict[int, PageState]) -> Load | None:
        """Follow the indicator; check a load or a root against the replay; returns the load whose non-leaf
        sptes must now be write-protected, if it has any."""
        if isinstance(ev, WpRootEvent):
            self._root(ev, pages)
            return None
        if isinstance(ev, WpAllEvent):
            self._unloaded(ev.vm)
            if ev.enable:
                self._enable(ev)
                live = [pg.count for pg in pages.values() if pg.count]
                if live:
                    self.wp_waiting[ev.vm] = (ev, len(live), sum(live))
            self.wp[ev.vm] = (ev.enable, ev.gen)
            return None
        self.wp_waiting.pop(ev.vm, None)
        pg = pages.get(ev.spt)
        if pg is None:
            self._untraced(ev, "a write-protect-all load")
            return None
        self.wp_checks += 1
        f = self.findings
        enabled, gen = self.wp.get(ev.vm, (False, 0))
        if (not enabled or ev.gen != gen or ev.old_gen != pg.gen) and f.report("wp_load_generation"):
            f.keep(self._inc("wp_load_generation", ev, pg, None,
                             f"enabled, gen {gen:#x}, page at {pg.gen:#x}",
                             f"{'enabled' if enabled else 'disabled'}, gen {ev.gen:#x}, page at {ev.old_gen:#x}",
                             "A page was loaded against a generation that the VM's indicator does not hold, or"
                             " the page's own generation differs from the replay."))
        if enabled and ev.gen == gen and pg.gen == gen and f.report("wp_load_current_page"):
            f.keep(self._inc("wp_load_current_page", ev, pg, None, f"a page older than {gen:#x}",
                             f"page at {pg.gen:#x}",
                             "A page already at the current generation (loaded, or created, since the enable) was"
                             " loaded again: the kernel's test of which pages are stale is wrong, so it cannot be"
                             " trusted to find the ones that are."))
        self._count_check("wp_load_count_mismatch", ev, pg, "The counter the load walks by")
        pg.gen = ev.gen
        todo = pg.upper & pg.bitmap
        return Load(ev, pg, todo) if todo else None

    def _root(self, ev: WpRootEvent, pages: dict[int, PageState]) -> None:
        """W5: a vCPU enters the guest, while write-protect-all is enabled, only with a root at the current
        generation (loaded, or created, since the enable)."""
        self.wp_waiting.pop(ev.vm, None)
        pg = pages.get(ev.spt)
        if pg is None:
            self._untraced(ev, "a vCPU's root")
            return
        self.wp_checks += 1
        f = self.findings
        enabled, gen = self.wp.get(ev.vm, (False, 0))
        if (not enabled or ev.gen != gen or ev.root_gen != pg.gen) and f.report("wp_root_generation"):
            f.keep(self._inc("wp_root_generation", ev, pg, None,
                             f"enabled, gen {gen:#x}, root at {pg.gen:#x}",
                             f"{'enabled' if enabled else 'disabled'}, gen {ev.gen:#x}, root at {ev.root_gen:#x}",
                             f"vCPU {ev.vcpu} reported its root against a generation that the VM's indicator does"
                             " not hold, or the root's own generation differs from the replay."))
        elif pg.gen != gen and f.report("wp_stale_root"):
            f.keep(self._inc("wp_stale_root", ev, pg, None, f"a root at generation {gen:#x}",
                             f"root at {pg.gen:#x}",
                             f"vCPU {ev.vcpu} enters the guest with a root that was neither loaded nor created"
                             f" since write-protect-all was enabled at {gen:#x}: its {pg.count} possibly-writable"
                             " sptes (and every page below them) are written without a fault, unlogged."))
        self._count_check("wp_root_count_mismatch", ev, pg, "The root's counter")

    def _count_check(self, kind: str, ev: WpLoadEvent | WpRootEvent, pg: PageState, what: str) -> None:
        """`what` (the event's counter) must be the replay's, drift included."""
        if ev.count != pg.count + pg.drift and self.findings.report(kind):
            self.findings.keep(self._inc(kind, ev, pg, None, pg.count + pg.drift, ev.count,
                                         f"{what} differs from the replay (popcount {pg.count})."))

    def _unloaded(self, vm: int) -> None:
        """The VM's last enable, if no load and no root followed it though it had possibly-writable sptes, is
        one that cannot be judged: W1-W4 rest on loads, W5 on the roots vCPUs enter with (a kernel without
        instrumentation 0005 traces none), and a vCPU that ran on after it would have given one or the other."""
        waiting = self.wp_waiting.pop(vm, None)
        if waiting is not None:
            ev, n_pages, n_sptes = waiting
            self.wp_unjudged.append(
                f"write-protect-all was enabled at seq {ev.seq:#x} (VM {ev.vm:#x}, generation {ev.gen:#x}) with"
                f" {n_sptes} possibly-writable sptes in {n_pages} shadow pages, and no page was loaded nor any"
                f" vCPU's root traced after it ({where(ev)})")

    def finish(self) -> None:
        """After `run`: the enables still waiting for a load at the end of the trace are unjudged too."""
        for vm in list(self.wp_waiting):
            self._unloaded(vm)

    def _enable(self, ev: WpAllEvent) -> None:
        """W4: an enable gives the VM a generation that none of its earlier enables had (its indicator starts
        at 0, so the first enable's is at least 1)."""
        top, at = self.wp_enables.get(ev.vm, (0, -1))
        if ev.gen > top:
            self.wp_enables[ev.vm] = (ev.gen, ev.seq)
            return
        if self.findings.report("wp_enable_generation_reused"):
            before = f"the enable at seq {at:#x}" if at >= 0 else "the VM's creation"
            self.findings.keep(Inconsistency(
                "wp_enable_generation_reused", ev.vm, 0, 0, 0, "", 0, None, f"a generation above {top:#x}",
                f"{ev.gen:#x}",
                f"Write-protect-all was enabled at generation {ev.gen:#x}, which {before} already had: every page"
                f" loaded or created at {ev.gen:#x} counts as write-protected, so none of them is, and their"
                " writes go unlogged.", seq=ev.seq, source=where(ev)))

    def _load_step(self, load: Load, ev: AnyEvent) -> Load | None:
        """The next event of a load's VM: it must make one of the load's writable non-leaf sptes read-only."""
        if ev.__class__ is SpteEvent and ev.spt == load.ev.spt and load.todo >> ev.idx & 1:
            load.todo &= ~(1 << ev.idx)
            return load if load.todo else None
        if self.findings.report("wp_load_left_writable"):
            left = list(set_bits(load.todo))
            self.findings.keep(self._inc(
                "wp_load_left_writable", load.ev, load.pg, left[0], "read-only", "writable",
                f"The load did not write-protect the writable non-leaf sptes {', '.join(map(str, left))}"
                f" (the next event of the VM is seq {ev.seq:#x}): writes below them are not logged."))
        return None
