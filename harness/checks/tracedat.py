"""Decoder of a trace-cmd `trace.dat` (file version 6, uncompressed) into the checker's events, without text.

Why: `trace-cmd report` formats every event through its print fmt, ~5-15 us per event here, and parsing
that text again costs as much; the events are fixed-size binary records in the ring buffer pages that
trace.dat stores as they were. The guest writes version 7 (zstd): `files.py` has `trace-cmd convert` make
it version 6 without compression (trace-cmd's own decompression, ~0.7 us per event), and this decodes it.

Formats, as this reads them:
  * the file: trace-cmd.dat.v6(5) (trace-cmd's Documentation/trace-cmd/trace-cmd.dat.v6.5.txt): header,
    header_page, header_event, ftrace and event format files, kallsyms, printk formats, cmdlines, CPU count,
    options, then `flyrecord` with each CPU's offset and size;
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

import re
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from harness.checks.ringbuf import RingBufferError, find_records
from harness.checks.trace import (
    AnyEvent,
    PageEvent,
    SpteEvent,
    TraceFormatError,
    TraceStats,
    WpAllEvent,
    WpLoadEvent,
)

MAGIC = b"\x17\x08\x44tracing"
SYSTEM = "kvmmmu"

# The fields each event class is built from, in the class's argument order (FORMAT.md; mmutrace.h).
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "kvm_mmu_pw_spte": ("seq", "vm", "spt", "gfn", "role", "level", "idx", "old_spte", "new_spte", "count"),
    "kvm_mmu_pw_page": ("seq", "vm", "spt", "gfn", "role", "level", "free", "count"),
    "kvm_mmu_wp_all": ("seq", "vm", "enable", "gen"),
    "kvm_mmu_wp_load": ("seq", "vm", "spt", "gfn", "role", "level", "old_gen", "gen", "count"),
}
_FIELD_RE = re.compile(r"\tfield:[^;]*?(\w+)(?:\[\d*\])?;\toffset:(\d+);\tsize:(\d+);\tsigned:([01]);")


@dataclass(frozen=True, slots=True)
class EventFormat:
    """One event's `format` file: its id and the fields (name -> (offset, size, signed))."""

    name: str
    id: int
    fields: dict[str, tuple[int, int, bool]]


def parse_format(text: str) -> EventFormat:
    """`events/<system>/<event>/format` -> EventFormat; raises TraceFormatError if it has no name or ID."""
    name = re.search(r"^name: (\S+)$", text, re.M)
    ident = re.search(r"^ID: (\d+)$", text, re.M)
    if name is None or ident is None:
        raise TraceFormatError(0, text[:200], "event format without a name or an ID")
    fields = {m[1]: (int(m[2]), int(m[3]), m[4] == "1") for m in _FIELD_RE.finditer(text)}
    return EventFormat(name[1], int(ident[1]), fields)


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


class _Reader:
    """Sequential reads of the file's header part."""

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.buf):
            raise TraceFormatError(0, what, f"trace.dat ends inside its {what} (offset {self.pos})")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def u(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "little")

    def cstring(self, what: str) -> str:
        end = bytes(self.buf[self.pos:self.pos + 4096]).find(b"\0")
        if end < 0:
            raise TraceFormatError(0, what, f"unterminated {what} at offset {self.pos}")
        return bytes(self.take(end + 1, what)[:-1]).decode("ascii", "replace")

    def expect(self, word: bytes, what: str) -> None:
        got = bytes(self.take(len(word), what))
        if got != word:
            raise TraceFormatError(0, repr(got), f"expected {word!r} ({what}) at offset {self.pos - len(word)}")


@dataclass(slots=True)
class Layout:
    """What the header says: page size, the kvmmmu formats, each CPU's (offset, size) of ring buffer pages."""

    page_size: int
    formats: dict[str, EventFormat]
    cpus: list[tuple[int, int]]


def read_layout(buf: memoryview) -> Layout:
    """Walk a version-6 header (trace-cmd.dat.v6(5)); raises TraceFormatError for anything else."""
    r = _Reader(buf)
    r.expect(MAGIC, "magic")
    version = r.cstring("version")
    if version != "6":
        raise TraceFormatError(0, version, f"trace.dat version {version}: only 6 is decoded (convert it first)")
    endian, long_size = r.u(1, "endianness"), r.u(1, "long size")
    if endian != 0 or long_size != 8:
        raise TraceFormatError(0, version, "only little-endian traces of 64-bit user space are decoded")
    page_size = r.u(4, "page size")
    r.expect(b"header_page\0", "header_page")
    header_page = bytes(r.take(r.u(8, "header_page size"), "header_page")).decode()
    if "local_t commit;\toffset:8;\tsize:8;" not in header_page:
        raise TraceFormatError(0, header_page[:200], "ring buffer pages without an 8-byte commit at offset 8")
    r.expect(b"header_event\0", "header_event")
    r.take(r.u(8, "header_event size"), "header_event")
    for _ in range(r.u(4, "ftrace format count")):
        r.take(r.u(8, "ftrace format size"), "ftrace format")
    formats: dict[str, EventFormat] = {}
    for _ in range(r.u(4, "event system count")):
        system = r.cstring("system name")
        for _ in range(r.u(4, "event count")):
            text = bytes(r.take(r.u(8, "format size"), "event format")).decode("utf-8", "replace")
            if system == SYSTEM:
                f = parse_format(text)
                formats[f.name] = f
    r.take(r.u(4, "kallsyms size"), "kallsyms")
    r.take(r.u(4, "printk formats size"), "printk formats")
    r.take(r.u(8, "cmdlines size"), "cmdlines")
    n_cpus = r.u(4, "CPU count")
    word = bytes(r.take(10, "section"))
    if word == b"options  \0":
        while (option := r.u(2, "option id")) != 0:
            r.take(r.u(4, f"option {option} size"), f"option {option}")
        word = bytes(r.take(10, "section"))
    if word != b"flyrecord\0":
        raise TraceFormatError(0, repr(word), "no flyrecord section (a latency trace?)")
    cpus = [(r.u(8, "CPU data offset"), r.u(8, "CPU data size")) for _ in range(n_cpus)]
    for off, size in cpus:
        if off + size > len(buf) or off % 8:
            raise TraceFormatError(0, f"offset {off} size {size}", "CPU data outside the file (truncated?)")
    return Layout(page_size, formats, cpus)


# Event kinds in EventColumns.kind
SPTE, ALLOC, FREE, WP_ALL, WP_LOAD = 0, 1, 2, 3, 4
_U64 = np.uint64


_COLUMNS = ("seq", "vm", "spt", "gfn", "role", "level", "idx", "old", "new", "count", "gen", "old_gen", "enable")
_DTYPES = {"seq": np.int64, "level": np.int64, "idx": np.int64, "count": np.int64, "enable": np.uint8,
           "kind": np.uint8}
# each event's fields -> the column it fills, where the names differ
_RENAME = {"old_spte": "old", "new_spte": "new"}
_KIND = {"kvm_mmu_pw_spte": SPTE, "kvm_mmu_wp_all": WP_ALL, "kvm_mmu_wp_load": WP_LOAD}


class EventColumns:
    """The kvmmmu events of a trace as columns, one row per event, grouped by event (not in seq order).

    `kind` is SPTE, ALLOC, FREE (kvm_mmu_pw_page), WP_ALL or WP_LOAD; a column an event does not have is 0:
    `idx`, `old`, `new` are kvm_mmu_pw_spte's; `gen` is kvm_mmu_wp_all's and kvm_mmu_wp_load's, `old_gen`
    the load's, `enable` the wp_all's. Values are the raw fields (FORMAT.md): u64 for addresses and sptes.
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


def decode_columns(data: bytes | memoryview, stats: TraceStats | None = None) -> EventColumns:
    """Every kvm_mmu_pw_*/kvm_mmu_wp_* event of a version-6 trace.dat as EventColumns. `stats` gets the
    event counts and ftrace's missing-events marks (lost events). Raises TraceFormatError for a file this
    cannot read whole: a partial trace is never taken for a whole one."""
    st = stats if stats is not None else TraceStats()
    buf = memoryview(data)
    layout = read_layout(buf)
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
            continue  # a kernel without patch 0004 has no kvm_mmu_wp_*
        dt = record_dtype(fmt, names)
        # each record's words, copied row by row from a strided view (no index per word)
        rec = sliding_window_view(words, dt.itemsize // 4)[recs.offsets[etype == fmt.id] >> 2].view(dt).ravel()
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
    return out


def decode(data: bytes | memoryview, stats: TraceStats | None = None) -> list[AnyEvent]:
    """Every kvm_mmu_pw_*/kvm_mmu_wp_* event of a version-6 trace.dat as the checker's objects, in no
    particular order (the checker sorts by seq); see decode_columns() for `stats` and the errors."""
    return events_from_columns(decode_columns(data, stats))
