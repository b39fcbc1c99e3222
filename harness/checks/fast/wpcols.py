"""Write-protect-all's invariants for the columnar checker: a loop over the few events they concern.

README.md here ("Write-protect-all") defines W1-W5 and `replay.py` checks them on objects. They depend on
each page's generation, on which of a page's bits are non-leaf (only pages above level 1 have any), and on
the order of a VM's events right after a load. So this walks, in seq order, only the page allocs and frees,
the kvm_mmu_wp_* events and the spte events of pages above level 1 (~1% of a real capture's events); the
bit bookkeeping of every page was already proven by columnar.py. An event of the VM that the walk skips
(a level-1 spte event) is seen by its place: the event after a load must be the VM's very next one.
Any violation gives None: the caller then runs the object checker, which names it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from harness.checks.parsers.dumpcols import DumpColumns
from harness.checks.parsers.tracedat import ALLOC, FREE, SPTE, WP_ALL, WP_LOAD, WP_ROOT, EventColumns
from harness.checks.spte import PT_PAGE_SIZE_MASK, SPTE_BASE_ADDR_MASK

I64 = npt.NDArray[np.int64]


class WpReplay:
    """Each incarnation's generation at its alloc and its loads; `checks` as Replay.wp_checks counts them."""

    def __init__(self, gen0: list[int], loads: list[tuple[int, int, int]], checks: int) -> None:
        self.gen0 = np.array(gen0, np.uint64)
        self.loads = loads  # (incarnation, seq, generation), in seq order
        self.checks = checks

    def gen_at(self, incs: I64, seq: int) -> npt.NDArray[np.uint64]:
        """The generation of each incarnation in `incs` once the events up to `seq` are replayed."""
        gens = self.gen0[incs] if incs.size else np.zeros(0, np.uint64)
        place = {c: j for j, c in enumerate(incs.tolist())}
        for inc, at, gen in self.loads:
            if at > seq:
                break
            j = place.get(inc)
            if j is not None:
                gens[j] = gen
        return gens

    @classmethod
    def run(cls, ev: EventColumns, order: I64, vm_idx: I64,
            pages: tuple[I64, I64, I64, npt.NDArray[np.bool_]], inc_level: I64,
            dumps: list[DumpColumns]) -> WpReplay | None:
        """Replay write-protect-all over `ev` (`order`: its rows in seq order; `vm_idx`: each row's VM as a
        small number; `pages`: the rows of page events, their incarnations, the rows of spte events and
        their new states, as columnar.py found them). None at the first violation of W1-W5."""
        n_inc = inc_level.size
        kind = ev.kind
        if not ((kind == WP_ALL) | (kind == WP_LOAD) | (kind == WP_ROOT)).any():
            return cls([0] * n_inc, [], 0)
        offsets = {d.wp_all.page_offset for d in dumps if d.wp_all is not None}
        page_offset = offsets.pop() if len(offsets) == 1 else None
        pk, inc_pk, rows_sp, now_sp = pages
        inc_of = np.full(kind.size, -1, np.int64)
        inc_of[pk] = inc_pk
        now = np.zeros(kind.size, np.int8)
        now[rows_sp] = now_sp
        k = kind[order]
        inc = inc_of[order]
        upper_page = np.zeros(k.size, bool)
        sp = k == SPTE
        upper_page[sp] = inc_level[inc[sp]] > 1
        walked = (k != SPTE) | upper_page
        # Before a VM's first write-protect-all event nothing is judged: the events up to the first one of the
        # whole capture only build the state the loop starts from, which numpy gives at once (_state_at).
        is_wp = (k == WP_ALL) | (k == WP_LOAD) | (k == WP_ROOT)
        first = int(np.argmax(is_wp))
        live, bits = _state_at(order[:first], k[:first], inc[:first], walked[:first], ev, vm_idx, now, inc_level)
        rows = order[first:][walked[first:]]
        # the seq of each event's previous event of the same VM, and each VM's last seq
        by_vm = order[np.argsort(vm_idx[order].astype(np.int16), kind="stable")]
        prev = np.full(kind.size, -1, np.int64)
        same = vm_idx[by_vm[1:]] == vm_idx[by_vm[:-1]]
        prev[by_vm[1:][same]] = ev.seq[by_vm[:-1][same]]
        last_of_vm = {int(vm_idx[r]): int(ev.seq[r]) for r in by_vm[np.r_[~same, True]].tolist()}

        cols = [a[rows].tolist() for a in (kind, ev.seq, vm_idx, inc_of, ev.spt, ev.idx, now, ev.new, ev.gen,
                                           ev.old_gen, ev.enable, prev)]
        gen = [0] * n_inc  # as replayed so far
        gen0 = [0] * n_inc  # at alloc
        level = inc_level.tolist()
        wp: dict[int, tuple[bool, int]] = {}  # vm -> (enabled, generation)
        top: dict[int, int] = {}  # vm -> the highest generation an enable gave it (W4)
        waiting: set[int] = set()  # VMs with live pages whose last enable no load has followed yet
        pending: dict[int, list[int]] = {}  # vm -> [seq of its last event, incarnation, bits to protect]
        loads: list[tuple[int, int, int]] = []
        checks = 0
        for kd, seq, vm, i, spt, idx, now, new, g, old_gen, enable, before in zip(*cols, strict=True):
            if pending and vm in pending:
                p = pending[vm]
                if kd != SPTE or i != p[1] or not p[2] >> idx & 1 or before != p[0]:
                    return None  # wp_load_left_writable
                p[0] = seq
                p[2] &= ~(1 << idx)
                if not p[2]:
                    del pending[vm]
            if kd == SPTE:
                b = bits[i]
                bit = 1 << idx
                if not now:
                    b[0] &= ~bit
                    b[1] &= ~bit
                    continue
                b[0] |= bit
                if new & PT_PAGE_SIZE_MASK:
                    b[1] &= ~bit
                    continue
                b[1] |= bit
                enabled, cur = wp.get(vm, (False, 0))
                if not enabled or gen[i] != cur or page_offset is None:
                    continue
                checks += 1
                child = live.get((vm, (new & SPTE_BASE_ADDR_MASK) + page_offset))
                if child is not None and gen[child] != cur:
                    return None  # wp_stale_child_writable
                continue
            if kd == ALLOC:
                live[(vm, spt)] = i
                gen[i] = gen0[i] = wp.get(vm, (False, 0))[1]
                if level[i] > 1:
                    bits[i] = [0, 0]
            elif kd == FREE:
                del live[(vm, spt)]
            elif kd == WP_ROOT:
                checks += 1
                enabled, cur = wp.get(vm, (False, 0))
                if not enabled or g != cur or old_gen != gen[i] or gen[i] != cur:
                    return None  # wp_root_generation, wp_stale_root
                waiting.discard(vm)
            elif kd == WP_ALL:
                if vm in waiting:
                    return None  # an enable no load followed: the reference says whether it is judged
                if enable:
                    if any(live_vm == vm for live_vm, _ in live):
                        waiting.add(vm)
                    if g <= top.get(vm, 0):
                        return None  # wp_enable_generation_reused
                    top[vm] = g
                wp[vm] = (bool(enable), g)
            else:
                checks += 1
                enabled, cur = wp.get(vm, (False, 0))
                if not enabled or g != cur or old_gen != gen[i]:
                    return None  # wp_load_generation
                if gen[i] == cur:
                    return None  # wp_load_current_page
                waiting.discard(vm)
                gen[i] = g
                loads.append((i, seq, g))
                upper = bits.get(i)
                todo = upper[0] & upper[1] if upper is not None else 0
                if todo:
                    pending[vm] = [seq, i, todo]
        for vm, p in pending.items():
            if last_of_vm[vm] != p[0]:
                return None  # the load's VM went on without protecting them
        if waiting:
            return None
        return cls(gen0, loads, checks)


def _state_at(pre: I64, k: npt.NDArray[np.uint8], inc: I64, walked: npt.NDArray[np.bool_], ev: EventColumns,
              vm_idx: I64, now: npt.NDArray[np.int8],
              inc_level: I64) -> tuple[dict[tuple[int, int], int], dict[int, list[int]]]:
    """The loop's state after the rows `pre` (seq order, no write-protect-all event among them; `k`, `inc`,
    `walked` their kinds, incarnations and whether the loop would walk them): the live pages, (vm, spt) ->
    incarnation, and each live page above level 1's [bitmap, non-leaf bits], as the loop would leave them."""
    alloc = k == ALLOC
    freed = inc[k == FREE]
    alive = alloc & ~np.isin(inc, freed)
    rows = pre[alive]
    live = dict(zip(zip(vm_idx[rows].tolist(), ev.spt[rows].tolist(), strict=True), inc[alive].tolist(),
                    strict=True))
    upper = inc[alive][inc_level[inc[alive]] > 1]
    bits: dict[int, list[int]] = {i: [0, 0] for i in upper.tolist()}
    sp = (k == SPTE) & walked
    sp &= np.isin(inc, upper)
    if not sp.any():
        return live, bits
    r = pre[sp]
    group = inc[sp] * 512 + ev.idx[r]
    by = np.argsort(group, kind="stable")  # within a group, seq order
    g = group[by]
    last = np.ones(g.size, bool)
    last[:-1] = g[1:] != g[:-1]
    g, r = g[last], r[by][last]
    state = now[r] != 0
    leaf = (ev.new[r] & np.uint64(PT_PAGE_SIZE_MASK)) != 0
    row_of = {i: j for j, i in enumerate(upper.tolist())}
    mat = np.zeros((2, upper.size, 512), bool)
    rr = np.array([row_of[i] for i in (g // 512).tolist()], np.int64)
    mat[0, rr, g % 512] = state
    mat[1, rr, g % 512] = state & ~leaf
    packed = np.packbits(mat, axis=2, bitorder="little")
    for j, i in enumerate(upper.tolist()):
        bits[i] = [int.from_bytes(packed[0, j].tobytes(), "little"), int.from_bytes(packed[1, j].tobytes(), "little")]
    return live, bits
