"""One shadow page incarnation as the trace replay rebuilds it (replay.py, and its write-protect-all rules in
wpreplay.py)."""

from __future__ import annotations


class PageState:
    """Replayed state of one shadow page incarnation (from its alloc event)."""

    __slots__ = ("bitmap", "count", "drift", "gfn", "role", "level", "alloc_seq", "upper", "gen")

    def __init__(self, gfn: int, role: int, level: int, alloc_seq: int, kernel_count: int, gen: int) -> None:
        self.bitmap = 0
        self.upper = 0  # the set bits whose spte is a non-leaf (only pages of level > 1 have any)
        self.gen = gen  # sp->wp_all_gen: the generation at alloc, then at each load
        self.count = 0  # popcount(bitmap), maintained incrementally
        self.drift = kernel_count  # kernel counter - count, as last seen (0 unless already reported)
        self.gfn = gfn
        self.role = role
        self.level = level
        self.alloc_seq = alloc_seq
