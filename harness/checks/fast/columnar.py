"""The checker on columns (numpy): proves a capture consistent fast, or hands it to the object checker.

Why: a real capture holds millions of events; `consistency.check` replays them one Python object at a
time (~1 us each). This makes the same judgement with whole-array operations, in seq order by sorting
rather than by walking: it returns the PASS verdict `consistency.check` would return, with the same counts,
or None as soon as anything is not plainly consistent (an inconsistency, a capture fault, a dump it cannot
read, zero evidence). None is never a verdict: the caller then runs `consistency.check`, which names what
is wrong with its events around it. So this only has to be exact where it says PASS, and the tests hold it
to that against consistency.check on real and synthetic captures, clean and broken (README.md here).

How each rule of README.md is made on columns:
  * seq: sorted, the events must be seq[0], seq[0]+1, ... (no gap, no duplicate);
  * a page incarnation is a run of its (vm, spt) events in seq order starting at an alloc and ending at a
    free (or the end): a group that starts otherwise, an alloc while live, an event after a free, are None;
  * per incarnation, the running popcount (cumulative sum of +1/-1 for each spte event's change) must
    equal every event's `count` (spte events, loads; 0 at alloc and at free, with no bit left);
  * per (incarnation, index), in seq order, the old states must be 0, 1, 0, ... and each new state the other;
  * at each dump: the last state of every (incarnation, index) of the dump's VM at the dump's seq, placed
    on the dump's rows by incarnation, equals the dump's bitmap, and each dumped page is live then;
  * write-protect-all (generations, loads, writable links to children) only touches pages above level 1
    and a few events: those run through a small loop (`_WpReplay`) in seq order.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from harness.checks.fast.wpcols import WpReplay
from harness.checks.parsers.dumpcols import DumpColumns, parse_dump_columns
from harness.checks.parsers.trace import TraceStats
from harness.checks.parsers.tracedat import ALLOC, FREE, SPTE, WP_ALL, EventColumns
from harness.checks.reference.findings import Verdict, describe_counts, new_counts
from harness.checks.spte import PT_PAGE_SIZE_MASK, SPTE_BASE_ADDR_MASK
from harness.results import PASS

I64 = npt.NDArray[np.int64]
_KEY_SHIFT = 52  # key = vm index << 52 | spt >> 12: spt is a page address, its page number is < 2**52
_BIG = np.iinfo(np.int64).max


def _page_keys(vm: I64 | int, spt: npt.NDArray[np.uint64]) -> I64 | None:
    """A page's key, vm index << 52 | its page number: one int64 that sorts by VM, then page. None if an
    spt is not page-aligned (two pages would then share a key)."""
    if ((spt & np.uint64(0xFFF)) != 0).any():
        return None
    keys: I64 = (vm << _KEY_SHIFT) | (spt >> np.uint64(12)).astype(np.int64)
    return keys


def _self_check(d: DumpColumns, pm: int, wm: int) -> int | None:
    """A dump against itself (consistency.self_check, wp_self_check); the writable links judged, or None."""
    if np.unique(d.spt).size != d.spt.size or ((d.count < 0) | (d.count > 512)).any():
        return None
    if not np.array_equal(d.bits.sum(axis=1), d.count):
        return None
    v = d.value
    pw = ((v & np.uint64(pm)) != 0) & ((v & np.uint64(wm)) != 0)
    expected = np.zeros_like(d.bits)
    expected[d.row[pw], d.idx[pw]] = True
    if not np.array_equal(expected, d.bits):
        return None
    wp = d.wp_all
    if wp is None or not wp.enabled:
        return 0
    both = np.uint64(d.masks.present | d.masks.writable)
    link = (((v & both) == both) & ((v & np.uint64(PT_PAGE_SIZE_MASK)) == 0) & (d.level[d.row] != 1)
            & (d.wp_gen[d.row] == np.uint64(wp.gen)))
    child = (v[link] & np.uint64(SPTE_BASE_ADDR_MASK)) + np.uint64(wp.page_offset)
    child = child[child >= np.uint64(wp.page_offset)]  # a sum past 2**64 wrapped: no page is there (as in ints)
    order = np.argsort(d.spt)
    at = np.minimum(np.searchsorted(d.spt, child, sorter=order), d.spt.size - 1)
    rows = order[at] if d.spt.size else at
    found = d.spt[rows] == child if d.spt.size else np.zeros(0, bool)
    if (d.wp_gen[rows[found]] != np.uint64(wp.gen)).any():
        return None
    return int(found.sum())


def check_capture_columns(dumps: list[tuple[str, bytes]], ev: EventColumns, stats: TraceStats) -> Verdict | None:
    """check_columns() on dumps as their files hold them, (source, bytes) each: None also when a dump is not
    one dumpcols reads (parse_dump then judges it)."""
    parsed = [parse_dump_columns(data, src) for src, data in dumps]
    return check_columns([d for d in parsed if d is not None], ev, stats) if None not in parsed else None


def check_columns(dumps: list[DumpColumns], ev: EventColumns, stats: TraceStats) -> Verdict | None:
    """consistency.check's PASS verdict on these dumps and events, or None (see the module)."""
    n = len(ev)
    if not dumps or n == 0 or stats.lost_events or stats.lost_markers or len({d.masks for d in dumps}) > 1:
        return None
    masks = dumps[0].masks
    pm, wm = np.uint64(masks.present), np.uint64(masks.writable | masks.mmu_writable)
    counts = new_counts(snapshots=len(dumps), events=n, **stats.wp_counts())
    for d in dumps:
        links = _self_check(d, int(pm), int(wm))
        if links is None:
            return None
        counts["wp_checks"] += links
        counts["pages"] += int(d.spt.size)
        counts["wp_dumps"] += d.wp_all is not None
        counts["sptes"] += int(d.value.size)
    order = np.argsort(ev.seq, kind="stable")
    seq_sorted = ev.seq[order]
    first_seq = int(seq_sorted[0])
    if int(seq_sorted[-1]) - first_seq != n - 1 or (np.diff(seq_sorted) != 1).any():
        return None

    heads = np.concatenate([ev.vm[:1], ev.vm[1:][ev.vm[1:] != ev.vm[:-1]]])
    vms = np.unique(heads)
    vm_idx = np.searchsorted(vms, ev.vm).astype(np.int64)
    counts["vms"] = len(set(vms.tolist()) | {d.vm for d in dumps})
    if vms.size >= 1 << (64 - _KEY_SHIFT - 1):
        return None
    kind = ev.kind
    page_ev = np.flatnonzero(kind != WP_ALL)
    page_keys = _page_keys(vm_idx[page_ev], ev.spt[page_ev])
    if page_keys is None:
        return None
    key = np.zeros(n, np.int64)
    key[page_ev] = page_keys
    # page events in (key, seq) order
    pk = order[kind[order] != WP_ALL]
    pk = pk[np.argsort(key[pk], kind="stable")]
    k, kk, cnt = key[pk], kind[pk], ev.count[pk]
    start = np.ones(pk.size, bool)
    start[1:] = k[1:] != k[:-1]
    is_alloc, is_free = kk == ALLOC, kk == FREE
    prev_free = np.zeros(pk.size, bool)
    prev_free[1:] = is_free[:-1]
    if ((start | prev_free) != is_alloc).any():  # a page's events begin at an alloc and end at a free
        return None
    inc = np.cumsum(is_alloc) - 1
    n_inc = int(is_alloc.sum())
    counts["pages_replayed"] = n_inc
    counts["pages_left"] = n_inc - int(is_free.sum())
    sp = np.flatnonzero(kk == SPTE)
    rows_sp = pk[sp]  # the spte events, in (key, seq) order
    old, new = ev.old[rows_sp], ev.new[rows_sp]
    now = ((new & pm) != 0) & ((new & wm) != 0)
    if (now == (((old & pm) != 0) & ((old & wm) != 0))).any():
        return None  # an event without a change of state
    delta = np.zeros(pk.size, np.int64)
    delta[sp] = np.where(now, 1, -1)
    running = np.cumsum(delta)
    running -= running[np.flatnonzero(is_alloc)][inc]  # the alloc's delta is 0
    if (cnt != running).any() or (running[is_free] != 0).any():  # counts after each change, at loads
        return None
    # per (incarnation, index) in seq order the new states alternate from 1 (old states from 0: old != new)
    group = inc[sp] * 512 + ev.idx[rows_sp]
    by_bit = np.argsort(group, kind="stable")
    g2, now2 = group[by_bit], now[by_bit]
    first = np.ones(g2.size, bool)
    first[1:] = g2[1:] != g2[:-1]
    if not now2[first].all() or (now2[1:] == now2[:-1])[~first[1:]].any():
        return None

    alloc_at = pk[is_alloc]
    inc_key = k[is_alloc]
    inc_alloc_seq = ev.seq[alloc_at]
    inc_free_seq = np.full(n_inc, _BIG, np.int64)
    inc_free_seq[inc[is_free]] = ev.seq[pk[is_free]]
    wp = WpReplay.run(ev, order, vm_idx, (pk, inc, rows_sp, now), ev.level[alloc_at], dumps)
    if wp is None:
        return None
    counts["wp_checks"] += wp.checks

    seq2 = ev.seq[rows_sp[by_bit]]
    for d in dumps:
        if not _compare(d, vms, inc_key, inc_alloc_seq, inc_free_seq, g2, seq2, now2, wp, first_seq + n - 1):
            return None
    counts["snapshot_comparisons"] = len(dumps)
    if counts["pages"] == 0 and not ((kind == SPTE) | (kind == ALLOC) | (kind == FREE)).any():
        return None  # no shadow-MMU evidence: consistency.check decides between SKIP and ERROR
    return Verdict(PASS, f"no inconsistency; {describe_counts(counts)}", counts, [])


def _compare(d: DumpColumns, vms: npt.NDArray[np.uint64], inc_key: I64, alloc_seq: I64, free_seq: I64,
             g2: I64, seq2: I64, now2: npt.NDArray[np.bool_], wp: WpReplay, last_seq: int) -> bool:
    """The replay at the dump's seq reproduces the dump (Replay._compare): each dumped page is a live
    incarnation with the same bitmap and generation, and no other incarnation of the VM has a bit set."""
    s = d.seq
    if s > last_seq:
        return False
    at = int(np.searchsorted(vms, np.uint64(d.vm)))
    if at == vms.size or int(vms[at]) != d.vm or inc_key.size == 0:
        return d.spt.size == 0
    keys = _page_keys(at, d.spt)
    if keys is None:
        return False
    lo = np.searchsorted(inc_key, keys, "left")
    cand = np.searchsorted(inc_key, keys, "right") - 1
    while True:  # the last incarnation of the page allocated by the dump's seq (a page has few)
        back = (cand >= lo) & (alloc_seq[np.maximum(cand, 0)] > s)
        if not back.any():
            break
        cand = np.where(back, cand - 1, cand)
    if (cand < lo).any() or (free_seq[cand] <= s).any():
        return False
    # this VM's (incarnation, index) groups: incarnations of one VM are consecutive (the key leads with it)
    i0, i1 = np.searchsorted(inc_key >> _KEY_SHIFT, [at, at + 1])
    a, b = np.searchsorted(g2, [i0 * 512, i1 * 512])
    g, sq, st = g2[a:b], seq2[a:b], now2[a:b]
    upto = sq <= s
    nxt = np.zeros(g.size, bool)
    nxt[:-1] = upto[1:] & (g[1:] == g[:-1])
    last = upto & ~nxt & st
    row_of = np.full(i1 - i0, -1, np.int64)
    row_of[cand - i0] = np.arange(cand.size)
    set_g = g[last]
    rows = row_of[set_g // 512 - i0]
    if (rows < 0).any():  # bits replayed on a page the dump does not list
        return False
    replayed = np.zeros_like(d.bits)
    replayed[rows, set_g % 512] = True
    if not np.array_equal(replayed, d.bits):
        return False
    return d.wp_all is None or np.array_equal(wp.gen_at(cand, s), d.wp_gen)
