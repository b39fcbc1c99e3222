"""Decoder of a trace-cmd `trace.dat` (versions 6 and 7) into the checker's events, without text.

Why: `trace-cmd report` formats every event through its print fmt, ~5-15 us per event here, and parsing
that text again costs as much; the events are fixed-size binary records in the ring buffer pages that
trace.dat stores as they were. `tracefile.py` reads the file's header (and decompresses a version-7 file's
CPU data), `ringbuf.py` finds the records, and this reads their fields as numpy columns (`decode_columns`,
for the columnar checker) or as the checker's objects (`decode`, for consistency.check).

Formats, as this reads them:
  * the file: trace-cmd.dat.v6(5) and v7(5), see tracefile.py;
  * each CPU's data: ring buffer pages of the header's page size, as libtraceevent's kbuffer-parse.c reads
    them: u64 timestamp, a long `commit` (its low 27 bits the data size; bit 31 missing events, bit 30 their
    count stored after the data), then records with a u32 header (type_len: 5 bits, time_delta: 27):
    type_len 1..28 has type_len*4 bytes of data, 0 a u32 length (including itself) first, 29 padding,
    30/31 a time extend/stamp (one more u32);
  * each record's fields at the offsets of its event's `format` file (kernel: kernel/trace/trace_events.c),
    so a change of the kernel's struct layout is followed, and a field that went missing is named.
Only little-endian files of 64-bit kernels are read (the guests' kind); anything else raises TraceFormatError.
"""

from __future__ import annotations

from itertools import repeat

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from harness.checks.parsers.ringbuf import RingBufferError, find_records
from harness.checks.parsers.trace import (
    AnyEvent,
    PageEvent,
    SpteEvent,
    TraceFormatError,
    TraceStats,
    WpAllEvent,
    WpLoadEvent,
    WpRootEvent,
)
from harness.checks.parsers.tracefile import EventFormat, read_trace

# The fields each event class is built from, in the class's argument order (FORMAT.md; mmutrace.h).
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "kvm_mmu_pw_spte": ("seq", "vm", "spt", "gfn", "role", "level", "idx", "old_spte", "new_spte", "count"),
    "kvm_mmu_pw_page": ("seq", "vm", "spt", "gfn", "role", "level", "free", "count"),
    "kvm_mmu_wp_all": ("seq", "vm", "enable", "gen"),
    "kvm_mmu_wp_load": ("seq", "vm", "spt", "gfn", "role", "level", "old_gen", "gen", "count"),
    "kvm_mmu_wp_root": ("seq", "vm", "vcpu", "spt", "gfn", "role", "level", "root_gen", "gen", "count"),
}


def record_dtype(fmt: EventFormat, names: tuple[str, ...]) -> np.dtype[np.void]:
    """A numpy record type of `names` at their offsets in a record's data (little-endian, as the file's).
    Raises TraceFormatError naming a missing or undecodable field (another FORMAT.md version)."""
    formats, offsets, end = [], [], 0
    for n in names:
        if n not in fmt.fields:
            raise TraceFormatError(0, fmt.name, f"event {fmt.name} has no field {n!r} (instrumentation of"
                                   " another FORMAT.md version?)")
        off, size, signed = fmt.fields[n]
        if size not in (1, 2, 4, 8):
            raise TraceFormatError(0, fmt.name, f"field {n} of {fmt.name}: offset {off} size {size} not decodable")
        formats.append(f"<{'i' if signed else 'u'}{size}")
        offsets.append(off)
        end = max(end, off + size)
    return np.dtype({"names": list(names), "formats": formats, "offsets": offsets, "itemsize": (end + 3) & ~3})


# Event kinds in EventColumns.kind
SPTE, ALLOC, FREE, WP_ALL, WP_LOAD, WP_ROOT = 0, 1, 2, 3, 4, 5
_U64 = np.uint64
_COLUMNS = ("seq", "vm", "spt", "gfn", "role", "level", "idx", "old", "new", "count", "gen", "old_gen", "enable",
            "vcpu")
_DTYPES = {"seq": np.int64, "level": np.int64, "idx": np.int64, "count": np.int64, "enable": np.uint8,
           "kind": np.uint8, "vcpu": np.int64}
# each event's fields -> the column it fills, where the names differ (a root's generation is its "old" one:
# the one it had before the enable's, if it is stale)
_RENAME = {"old_spte": "old", "new_spte": "new", "root_gen": "old_gen"}
_KIND = {"kvm_mmu_pw_spte": SPTE, "kvm_mmu_wp_all": WP_ALL, "kvm_mmu_wp_load": WP_LOAD, "kvm_mmu_wp_root": WP_ROOT}


class EventColumns:
    """The kvmmmu events of a trace as columns, one row per event, grouped by event (not in seq order).

    `kind` is SPTE, ALLOC, FREE (kvm_mmu_pw_page), WP_ALL, WP_LOAD or WP_ROOT; a column an event does not
    have is 0: `idx`, `old`, `new` are kvm_mmu_pw_spte's; `gen` is kvm_mmu_wp_*'s, `old_gen` the load's
    `old_gen` and the root's `root_gen`, `enable` the wp_all's, `vcpu` the root's. Values are the raw fields
    (FORMAT.md): u64 for addresses and sptes.
    A column is built from the records the first time it is read (the checker reads about half of them).
    """

    def __init__(self, parts: list[tuple[str, npt.NDArray[np.void]]]) -> None:
        self.parts = parts  # (event name, its records), records as a numpy structured array of its fields
        self._built: dict[str, npt.NDArray[np.generic]] = {}
        self.size = sum(rec.size for _, rec in parts)

    def __len__(self) -> int:
        return self.size

    def column(self, col: str) -> npt.NDArray[np.generic]:
        """One column (a name of _COLUMNS, or "kind") for all events."""
        got = self._built.get(col)
        if got is None:
            got = np.empty(self.size, _DTYPES.get(col, _U64))
            pos = 0
            for name, rec in self.parts:
                part = got[pos:pos + rec.size]
                pos += rec.size
                fields = {_RENAME.get(f, f): f for f in EVENT_FIELDS[name]}
                if col == "kind":
                    part[:] = np.where(rec["free"] != 0, FREE, ALLOC) if name == "kvm_mmu_pw_page" else _KIND[name]
                elif col in fields:
                    part[:] = rec[fields[col]]
                else:
                    part[:] = 0
            self._built[col] = got
        return got

    @property
    def kind(self) -> npt.NDArray[np.uint8]:
        return self.column("kind")  # type: ignore[return-value]

    @property
    def seq(self) -> npt.NDArray[np.int64]:
        return self.column("seq")  # type: ignore[return-value]

    @property
    def vm(self) -> npt.NDArray[np.uint64]:
        return self.column("vm")  # type: ignore[return-value]

    @property
    def spt(self) -> npt.NDArray[np.uint64]:
        return self.column("spt")  # type: ignore[return-value]

    @property
    def gfn(self) -> npt.NDArray[np.uint64]:
        return self.column("gfn")  # type: ignore[return-value]

    @property
    def role(self) -> npt.NDArray[np.uint64]:
        return self.column("role")  # type: ignore[return-value]

    @property
    def level(self) -> npt.NDArray[np.int64]:
        return self.column("level")  # type: ignore[return-value]

    @property
    def idx(self) -> npt.NDArray[np.int64]:
        return self.column("idx")  # type: ignore[return-value]

    @property
    def old(self) -> npt.NDArray[np.uint64]:
        return self.column("old")  # type: ignore[return-value]

    @property
    def new(self) -> npt.NDArray[np.uint64]:
        return self.column("new")  # type: ignore[return-value]

    @property
    def count(self) -> npt.NDArray[np.int64]:
        return self.column("count")  # type: ignore[return-value]

    @property
    def gen(self) -> npt.NDArray[np.uint64]:
        return self.column("gen")  # type: ignore[return-value]

    @property
    def old_gen(self) -> npt.NDArray[np.uint64]:
        return self.column("old_gen")  # type: ignore[return-value]

    @property
    def enable(self) -> npt.NDArray[np.uint8]:
        return self.column("enable")  # type: ignore[return-value]

    @property
    def vcpu(self) -> npt.NDArray[np.int64]:
        return self.column("vcpu")  # type: ignore[return-value]


def decode_columns(data: bytes | memoryview, stats: TraceStats | None = None) -> EventColumns:
    """Every kvm_mmu_pw_*/kvm_mmu_wp_* event of a version-6 trace.dat as EventColumns. `stats` gets the
    event counts and ftrace's missing-events marks (lost events). Raises TraceFormatError for a file this
    cannot read whole: a partial trace is never taken for a whole one."""
    st = stats if stats is not None else TraceStats()
    layout, buf = read_trace(data)
    words = np.frombuffer(buf[: len(buf) // 4 * 4], dtype="<u4")
    try:
        recs = find_records(words, layout.cpus, layout.page_size)
    except RingBufferError as e:
        raise TraceFormatError(0, e.where, e.reason) from None
    st.lost_markers += recs.lost_markers
    st.lost_events += recs.lost_events
    etype = words[recs.offsets >> 2] & 0xFFFF
    parts = []
    for name, names in EVENT_FIELDS.items():
        fmt = layout.formats.get(name)
        if fmt is None:
            continue  # a kernel without patch 0004 has no kvm_mmu_wp_*, without 0005 no kvm_mmu_wp_root
        dt = record_dtype(fmt, names)
        mine = etype == fmt.id
        short = np.flatnonzero(mine & (recs.lengths < dt.itemsize))
        if short.size:
            raise TraceFormatError(0, f"record at offset {int(recs.offsets[short[0]])}", f"a {name} record of"
                                   f" {int(recs.lengths[short[0]])} bytes, shorter than its format's {dt.itemsize}")
        if not mine.any():
            parts.append((name, np.zeros(0, dt)))
            continue
        # each record's words, copied row by row from a strided view (no index per word)
        rec = sliding_window_view(words, dt.itemsize // 4)[recs.offsets[mine] >> 2].view(dt).ravel()
        parts.append((name, rec))
        if name == "kvm_mmu_pw_spte":
            bad = np.flatnonzero((rec["idx"] < 0) | (rec["idx"] >= 512))
            if bad.size:
                raise TraceFormatError(0, f"seq={int(rec['seq'][bad[0]]):#x}",
                                       f"spte index {int(rec['idx'][bad[0]])} out of range")
        elif name == "kvm_mmu_wp_all":
            st.wp_all_enables += int(np.count_nonzero(rec["enable"]))
            st.wp_all_disables += int(rec.size - np.count_nonzero(rec["enable"]))
        elif name == "kvm_mmu_wp_load":
            st.wp_loads += rec.size
        elif name == "kvm_mmu_wp_root":
            st.wp_roots += rec.size
    out = EventColumns(parts)
    st.events += len(out)
    return out


def events_from_columns(cols: EventColumns) -> list[AnyEvent]:
    """The checker's event objects (trace.py) for every row of `cols`, grouped by kind (the checker sorts)."""
    def col(name: str, sel: npt.NDArray[np.bool_]) -> list[int]:
        return getattr(cols, name)[sel].tolist()  # type: ignore[no-any-return]

    out: list[AnyEvent] = []
    sel = cols.kind == SPTE
    out += map(SpteEvent, *(col(c, sel) for c in ("seq", "vm", "spt", "gfn", "role", "level", "idx", "old", "new",
                                                  "count")), repeat(0))
    for kind, op in ((ALLOC, "alloc"), (FREE, "free")):
        sel = cols.kind == kind
        out += map(PageEvent, *(col(c, sel) for c in ("seq", "vm", "spt", "gfn", "role", "level")), repeat(op),
                   col("count", sel), repeat(0))
    sel = cols.kind == WP_ALL
    out += map(WpAllEvent, col("seq", sel), col("vm", sel), map(bool, col("enable", sel)), col("gen", sel),
               repeat(0))
    sel = cols.kind == WP_LOAD
    out += map(WpLoadEvent, *(col(c, sel) for c in ("seq", "vm", "spt", "gfn", "role", "level", "old_gen", "gen",
                                                    "count")), repeat(0))
    sel = cols.kind == WP_ROOT
    out += map(WpRootEvent, *(col(c, sel) for c in ("seq", "vm", "vcpu", "spt", "gfn", "role", "level", "old_gen",
                                                    "gen", "count")), repeat(0))
    return out


def decode(data: bytes | memoryview, stats: TraceStats | None = None) -> list[AnyEvent]:
    """Every kvm_mmu_pw_*/kvm_mmu_wp_* event of a version-6 trace.dat as the checker's objects, in no
    particular order (the checker sorts by seq); see decode_columns() for `stats` and the errors."""
    return events_from_columns(decode_columns(data, stats))
