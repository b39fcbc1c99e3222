"""Synthetic, self-consistent captures: a small simulation of the kernel side of FORMAT.md v1.

Shared by the tests and `devtools.bench`, so the benchmark measures exactly the input the checker accepts
(a synthetic capture must give PASS). It models what the instrumented mmu.c does: shadow pages allocated
and freed (spt addresses reused), sptes faulted in, zapped, write-protected and made writable again, one
event per change of possibly-writable state, and dumps taken at a seq. It is not a model of KVM's policy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TextIO

from harness.checks.parsers.debugfs import HEADER, HEADER_V2, Masks, ShadowPage, Snapshot
from harness.checks.parsers.trace import PageEvent, SpteEvent, format_event

# x86-64 6.12 with NPT or shadow paging (AMD, this project's machines): SPTE_MMU_PRESENT_MASK = BIT(11),
# PT_WRITABLE_MASK = BIT(1), DEFAULT_SPTE_MMU_WRITABLE = BIT(10), SHADOW_NONPRESENT_VALUE = BIT(63).
DEFAULT_MASKS = Masks(present=1 << 11, writable=1 << 1, mmu_writable=1 << 10, nonpresent=1 << 63)
HOST_WRITABLE = 1 << 9  # DEFAULT_SPTE_HOST_WRITABLE
_P, _U, _A, _D = 1 << 0, 1 << 2, 1 << 5, 1 << 6  # x86 PTE bits: present, user, accessed, dirty

_WORD = (1 << 64) - 1


def format_dump(snap: Snapshot) -> str:
    """Render a Snapshot exactly as the kernel side prints it (FORMAT.md; instrumentation patch 0002, and
    v2 when the snapshot has write-protect-all's indicator)."""
    m = snap.masks
    v2 = snap.wp_all is not None
    out = [HEADER_V2 if v2 else HEADER, f"vm {snap.vm:#x}", f"seq {snap.seq:#x}",
           f"masks present={m.present:#x} writable={m.writable:#x} mmu_writable={m.mmu_writable:#x}"
           f" nonpresent={m.nonpresent:#x}", f"tdp_mmu_pages {snap.tdp_mmu_pages}"]
    if snap.wp_all is not None:
        out.append(f"wp_all indicator={snap.wp_all.indicator:#x} page_offset={snap.wp_all.page_offset:#x}")
    n_sptes = 0
    for p in snap.pages:
        words = ",".join(f"{(p.bitmap >> (64 * w)) & _WORD:016x}" for w in range(8))
        gen = f" wp_gen={p.wp_gen or 0:#x}" if v2 else ""
        out.append(f"page spt={p.spt:#x} gfn={p.gfn:#x} role={p.role:#x} level={p.level}"
                   f" invalid={int(p.invalid)} unsync={int(p.unsync)} count={p.count}{gen} bitmap={words}")
        for i in sorted(p.sptes):
            out.append(f"spte {i} {p.sptes[i]:#018x}")  # the kernel prints 0x%016llx
        n_sptes += len(p.sptes)
    if snap.complete:
        out.append(f"end pages={len(snap.pages)} sptes={n_sptes} truncated={int(snap.truncated)}")
    return "\n".join(out) + "\n"


def ftrace_line(body: str, *, comm: str = "qemu-system-x86", pid: int = 4242, cpu: int = 0,
                ts: float = 1.0) -> str:
    """An event body behind the usual ftrace prefix (`trace` file format)."""
    return f"{comm[:16]:>16}-{pid:<7} [{cpu:03d}] d..1. {ts:12.6f}: {body}\n"


FTRACE_HEADER = """# tracer: nop
#
# entries-in-buffer/entries-written: {n}/{n}   #P:2
#
#                                _-----=> irqs-off/BH-disabled
#                               / _----=> need-resched
#                              | / _---=> hardirq/softirq
#                              || / _--=> preempt-depth
#                              ||| / _-=> migrate-disable
#                              |||| /     delay
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
"""


@dataclass(slots=True)
class _SimPage:
    spt: int
    gfn: int
    role: int
    level: int
    window: int  # first index of the page's populated window
    fill: int  # width of the window: how many sptes this page tends to hold
    sptes: dict[int, int] = field(default_factory=dict)
    bitmap: int = 0
    count: int = 0


@dataclass(slots=True)
class _SimVM:
    vm: int
    role_base: int
    comm: str
    pid: int
    cpu: int
    target: int  # live pages to keep
    pages: dict[int, _SimPage] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # spts, for O(1) random choice
    pos: dict[int, int] = field(default_factory=dict)
    alive: bool = True


@dataclass(slots=True)
class SynthCapture:
    """What generate() wrote: the trace went to the stream; the dumps are returned as texts."""

    dumps: list[str]
    events: int
    trace_lines: int
    big_vm_pages: int
    big_vm_sptes: int
    big_dump_index: int  # index in `dumps` of the final dump of the big VM


class _Sim:
    def __init__(self, out: TextIO, seed: int, masks: Masks, mean_fill: float, disorder: float) -> None:
        self.out = out
        self.rng = random.Random(seed)
        self.m = masks
        self.pw_mask = masks.writable | masks.mmu_writable
        self.mean_fill = mean_fill
        self.disorder = disorder
        self.seq = 0
        self.lines = 0
        self.ts = 100.0
        self.next_spt = 0xFFFF888100000000
        self.free_spts: list[int] = []
        self.held: tuple[_SimVM, str] | None = None
        self.vms: list[_SimVM] = []

    # -- output -----------------------------------------------------------------------------------------
    def _write(self, vm: _SimVM, body: str) -> None:
        self.ts += 0.000001 * (1 + self.rng.random())
        self.out.write(ftrace_line(body, comm=vm.comm, pid=vm.pid, cpu=vm.cpu, ts=self.ts))
        self.lines += 1

    def _emit(self, vm: _SimVM, ev: SpteEvent | PageEvent) -> None:
        """Write one event; now and then swap it with the previous one of another VM, as ftrace's
        per-CPU merge does, so the checker cannot rely on file order."""
        text = format_event(ev)
        held = self.held
        if held is None:
            self.held = (vm, text)
            return
        if held[0] is not vm and self.rng.random() < self.disorder:
            self._write(vm, text)  # the later event lands first in the file
            return
        self._write(held[0], held[1])
        self.held = (vm, text)
        if self.rng.random() < 0.002:  # other events share the trace
            self._write(vm, f"kvm_exit: vcpu 0 reason EXIT_NPF rip 0x{self.rng.getrandbits(20):x}"
                            " info1 0x0000000100000014 info2 0x0000000000000000 intr_info 0x00000000"
                            " error_code 0x00000000")

    def flush(self) -> None:
        if self.held is not None:
            self._write(self.held[0], self.held[1])
            self.held = None

    # -- pages ------------------------------------------------------------------------------------------
    def alloc(self, vm: _SimVM) -> _SimPage:
        rng = self.rng
        if self.free_spts and rng.random() < 0.7:
            spt = self.free_spts.pop(rng.randrange(len(self.free_spts)))  # an address reused after free
        else:
            spt = self.next_spt
            self.next_spt += 0x1000
        level = 1 if rng.random() < 0.9 else rng.choice((2, 2, 2, 3, 4))
        gfn = rng.getrandbits(24) << (9 * level)
        fill = min(512, max(1, int(rng.expovariate(1.0 / self.mean_fill)) + 1))
        page = _SimPage(spt, gfn, vm.role_base | level, level, rng.randrange(512), fill)
        vm.pages[spt] = page
        vm.pos[spt] = len(vm.order)
        vm.order.append(spt)
        self.seq += 1
        self._emit(vm, PageEvent(self.seq, vm.vm, spt, gfn, page.role, level, "alloc", 0, 0))
        return page

    def free(self, vm: _SimVM, page: _SimPage) -> None:
        for idx in list(page.sptes):
            self.set_spte(vm, page, idx, None)
        self.seq += 1
        self._emit(vm, PageEvent(self.seq, vm.vm, page.spt, page.gfn, page.role, page.level, "free",
                                 page.count, 0))
        del vm.pages[page.spt]
        i = vm.pos.pop(page.spt)
        last = vm.order.pop()
        if last != page.spt:
            vm.order[i] = last
            vm.pos[last] = i
        self.free_spts.append(page.spt)

    def random_page(self, vm: _SimVM) -> _SimPage | None:
        if not vm.order:
            return None
        return vm.pages[vm.order[self.rng.randrange(len(vm.order))]]

    # -- sptes ------------------------------------------------------------------------------------------
    def make_spte(self, page: _SimPage, idx: int, state: str) -> int:
        """A plausible spte: 'ro' (not MMU-writable), 'wp' (MMU-writable, W clear), 'rw'."""
        m = self.m
        if page.level > 1 and state != "ro":  # non-leaf: make_nonleaf_spte() always sets PT_WRITABLE_MASK
            return m.present | _P | m.writable | _U | _A | (self.rng.getrandbits(28) << 12)
        v = m.present | _P | _U | _A | ((page.gfn + idx) << 12 & 0xFFFFFFFFFF000)
        if state == "wp":
            v |= HOST_WRITABLE | m.mmu_writable
        elif state == "rw":
            v |= HOST_WRITABLE | m.mmu_writable | m.writable | _D
        return v

    def set_spte(self, vm: _SimVM, page: _SimPage, idx: int, new: int | None) -> None:
        """Change spte idx (None = zap to nonpresent); emit an event iff its possibly-writable state changes."""
        m = self.m
        old = page.sptes.get(idx, m.nonpresent)
        value = m.nonpresent if new is None else new
        was = bool(old & m.present and old & self.pw_mask)
        now = bool(value & m.present and value & self.pw_mask)
        if new is None:
            page.sptes.pop(idx, None)
        else:
            page.sptes[idx] = value
        if was == now:
            return
        if now:
            page.bitmap |= 1 << idx
            page.count += 1
        else:
            page.bitmap &= ~(1 << idx)
            page.count -= 1
        self.seq += 1
        self._emit(vm, SpteEvent(self.seq, vm.vm, page.spt, page.gfn, page.role, page.level, idx, old, value,
                                 page.count, 0))

    def populate(self, vm: _SimVM, page: _SimPage) -> None:
        for k in range(page.fill):
            idx = (page.window + k) % 512
            state = "ro" if self.rng.random() < 0.35 else ("rw" if self.rng.random() < 0.5 else "wp")
            self.set_spte(vm, page, idx, self.make_spte(page, idx, state))

    def churn(self, vm: _SimVM) -> None:
        """One step of a running guest: fault-in, zap, (un)protect, silent updates, page zap/alloc."""
        rng = self.rng
        r = rng.random()
        if r < 0.02 or len(vm.pages) < vm.target // 2:
            if len(vm.pages) >= vm.target:
                page = self.random_page(vm)
                if page is not None:
                    self.free(vm, page)
            page = self.alloc(vm)
            self.populate(vm, page)
            return
        page = self.random_page(vm)
        if page is None:
            return
        if r < 0.03:  # write-protect the whole page (pt_protect: MMU-writable cleared too)
            for idx, v in list(page.sptes.items()):
                if v & self.pw_mask:
                    self.set_spte(vm, page, idx, v & ~self.pw_mask)
            return
        idx = (page.window + rng.randrange(page.fill)) % 512
        old = page.sptes.get(idx)
        if old is None:
            self.set_spte(vm, page, idx, self.make_spte(page, idx, rng.choice(("ro", "wp", "rw", "rw"))))
        elif r < 0.35:
            self.set_spte(vm, page, idx, None)
        elif r < 0.75:
            if old & self.pw_mask:
                self.set_spte(vm, page, idx, old & ~self.pw_mask)  # write tracking: not possibly writable
            else:
                self.set_spte(vm, page, idx, self.make_spte(page, idx, "rw"))
        else:  # no change of state: W toggled on an MMU-writable spte, or A/D bits; no event
            self.set_spte(vm, page, idx, old ^ (self.m.writable if old & self.m.mmu_writable else _A))

    # -- dumps ------------------------------------------------------------------------------------------
    def dump(self, vm: _SimVM, tdp_mmu_pages: int = 0) -> str:
        pages = [ShadowPage(p.spt, p.gfn, p.role, p.level, False, False, p.count, p.bitmap, dict(p.sptes))
                 for p in vm.pages.values()]
        return format_dump(Snapshot(vm.vm, self.seq, self.m, tdp_mmu_pages, pages, False, True))


def generate(out: TextIO, *, events: int = 1_000_000, pages: int = 10_000, vms: int = 4, seed: int = 20241125,
             mean_fill: float | None = None, disorder: float = 0.01, masks: Masks = DEFAULT_MASKS,
             header: bool = True) -> SynthCapture:
    """Write a trace of at least `events` pw events to `out` and return the dumps taken along the way.

    VM 0 is "big": it ends with exactly `pages` live shadow pages (legacy TDP roles) and is dumped at the
    end; the other VMs are small shadow-paging VMs that churn (alloc/free, spt reuse), dumped at the start,
    halfway and at the end; the last small VM is destroyed halfway (all its pages freed). One more dump
    shows a TDP-MMU-only VM (tdp_mmu_pages > 0, no shadow page, no event). `mean_fill` is the mean number
    of populated sptes per page; by default it is chosen so that populating the big VM takes ~40% of the
    events (~60 sptes/page for 1 M events over 10,000 pages).
    """
    if mean_fill is None:
        mean_fill = max(1.0, min(512.0, 0.4 * events / max(1, pages) / 0.65))
    sim = _Sim(out, seed, masks, mean_fill, disorder)
    rng = sim.rng
    tdp_role = (1 << 7) | (7 << 8) | (1 << 12) | (1 << 13)  # direct, ACC_ALL, efer_nx, cr0_wp
    shadow_role = (7 << 8) | (1 << 12) | (1 << 13)  # indirect (shadows a guest page table)
    base_vm = 0xFFFF888004A3C000
    for i in range(max(1, vms)):
        target = pages if i == 0 else max(4, pages // 50)
        sim.vms.append(_SimVM(base_vm + i * 0x10000, tdp_role if i == 0 else shadow_role,
                              "qemu-system-x86" if i else "dirty_log_perf_", 3000 + i, i % 2, target))
    big = sim.vms[0]
    small = sim.vms[1:]
    if header:
        out.write(FTRACE_HEADER.format(n=events))
    dumps = [sim.dump(v) for v in sim.vms]  # right after VM creation: no page yet
    tdp_only = 0xFFFF888009990000
    dumps.append(format_dump(Snapshot(tdp_only, 0, masks, 37, [], False, True)))
    est_pop = pages * mean_fill * 0.65
    p_pop = 1.0 if est_pop >= events else pages / (pages + (events - est_pop) / 0.6)
    halfway_done = False
    while sim.seq < events or len(big.pages) < pages:
        if len(big.pages) < pages and (sim.seq >= events or rng.random() < p_pop):
            sim.populate(big, sim.alloc(big))
        elif small and rng.random() < 0.5:
            vm = small[rng.randrange(len(small))]
            if vm.alive:
                sim.churn(vm)
        elif big.pages:
            sim.churn(big)
            while len(big.pages) > pages:
                page = sim.random_page(big)
                assert page is not None
                sim.free(big, page)
        if not halfway_done and sim.seq >= events // 2:
            halfway_done = True
            dumps += [sim.dump(v) for v in small]
            if len(small) > 1:  # destroy the last small VM: every page zapped and freed
                doomed = small[-1]
                for page in list(doomed.pages.values()):
                    sim.free(doomed, page)
                doomed.alive = False
    sim.flush()
    big_index = len(dumps)
    dumps.append(sim.dump(big))
    dumps += [sim.dump(v) for v in small if v.alive]
    return SynthCapture(dumps=dumps, events=sim.seq, trace_lines=sim.lines, big_vm_pages=len(big.pages),
                        big_vm_sptes=sum(len(p.sptes) for p in big.pages.values()), big_dump_index=big_index)
