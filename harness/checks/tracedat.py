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
import struct
from collections.abc import Callable
from dataclasses import dataclass

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
COMMIT_MASK = (1 << 27) - 1
MISSING_EVENTS = 1 << 31
MISSING_STORED = 1 << 30
TYPE_PADDING, TYPE_TIME_EXTEND, TYPE_TIME_STAMP = 29, 30, 31

# The fields each event class is built from, in the class's argument order (FORMAT.md; mmutrace.h).
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "kvm_mmu_pw_spte": ("seq", "vm", "spt", "gfn", "role", "level", "idx", "old_spte", "new_spte", "count"),
    "kvm_mmu_pw_page": ("seq", "vm", "spt", "gfn", "role", "level", "free", "count"),
    "kvm_mmu_wp_all": ("seq", "vm", "enable", "gen"),
    "kvm_mmu_wp_load": ("seq", "vm", "spt", "gfn", "role", "level", "old_gen", "gen", "count"),
}
_FIELD_RE = re.compile(r"\tfield:[^;]*?(\w+)(?:\[\d*\])?;\toffset:(\d+);\tsize:(\d+);\tsigned:([01]);")
_CODES = {(1, 0): "B", (1, 1): "b", (2, 0): "H", (2, 1): "h", (4, 0): "I", (4, 1): "i", (8, 0): "Q", (8, 1): "q"}


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


def record_struct(fmt: EventFormat, names: tuple[str, ...]) -> struct.Struct:
    """A Struct that unpacks `names` (in that order) from a record's data; their offsets must increase in
    that order (they do in mmutrace.h). Raises TraceFormatError naming a missing or unusable field."""
    code, pos = "<", 0
    for n in names:
        if n not in fmt.fields:
            raise TraceFormatError(0, fmt.name, f"event {fmt.name} has no field {n!r} (instrumentation of"
                                   " another FORMAT.md version?)")
        off, size, signed = fmt.fields[n]
        c = _CODES.get((size, int(signed)))
        if c is None or off < pos:
            raise TraceFormatError(0, fmt.name, f"field {n} of {fmt.name}: offset {off} size {size} not decodable")
        code += "x" * (off - pos) + c
        pos = off + size
    return struct.Struct(code)


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


def _decoders(formats: dict[str, EventFormat],
              st: TraceStats) -> dict[int, Callable[[memoryview, int], AnyEvent]]:
    """Event id -> a function (buffer, data offset) -> event, for the events this trace has other than
    kvm_mmu_pw_spte (decode() does that one inline); the write-protect-all ones are counted in `st` as they
    are decoded."""
    out: dict[int, Callable[[memoryview, int], AnyEvent]] = {}
    for name, names in EVENT_FIELDS.items():
        fmt = formats.get(name)
        if fmt is None or name == "kvm_mmu_pw_spte":
            continue  # a kernel without patch 0004 has no kvm_mmu_wp_*
        unpack = record_struct(fmt, names).unpack_from
        if name == "kvm_mmu_pw_page":
            def page(b: memoryview, d: int, u: Callable[..., tuple[int, ...]] = unpack) -> AnyEvent:
                s, vm, spt, gfn, role, level, free, count = u(b, d)
                return PageEvent(s, vm, spt, gfn, role, level, "free" if free else "alloc", count, 0)
            out[fmt.id] = page
        elif name == "kvm_mmu_wp_all":
            def wp_all(b: memoryview, d: int, u: Callable[..., tuple[int, ...]] = unpack) -> AnyEvent:
                s, vm, enable, gen = u(b, d)
                if enable:
                    st.wp_all_enables += 1
                else:
                    st.wp_all_disables += 1
                return WpAllEvent(s, vm, bool(enable), gen, 0)
            out[fmt.id] = wp_all
        else:
            def wp_load(b: memoryview, d: int, u: Callable[..., tuple[int, ...]] = unpack) -> AnyEvent:
                st.wp_loads += 1
                seq, vm, spt, gfn, role, level, old_gen, gen, count = u(b, d)
                return WpLoadEvent(seq, vm, spt, gfn, role, level, old_gen, gen, count, 0)
            out[fmt.id] = wp_load
    return out


def decode(data: bytes | memoryview, stats: TraceStats | None = None) -> list[AnyEvent]:
    """Every kvm_mmu_pw_*/kvm_mmu_wp_* event of a version-6 trace.dat, CPU by CPU (not in seq order: the
    checker sorts). `stats` gets the event counts and ftrace's missing-events marks (lost events).
    Raises TraceFormatError for a file this cannot read whole: a partial trace is never taken for a whole one.
    """
    st = stats if stats is not None else TraceStats()
    buf = memoryview(data)
    layout = read_layout(buf)
    decoders = _decoders(layout.formats, st)
    # kvm_mmu_pw_spte is nearly every event: decoded inline, without a call per event
    spte_fmt = layout.formats.get("kvm_mmu_pw_spte")
    spte_id = spte_fmt.id if spte_fmt is not None else -1
    spte_unpack = record_struct(spte_fmt, EVENT_FIELDS["kvm_mmu_pw_spte"]).unpack_from if spte_fmt else None
    spte = SpteEvent
    words = buf[: len(buf) // 4 * 4].cast("I")
    halves = buf[: len(buf) // 2 * 2].cast("H")
    events: list[AnyEvent] = []
    append = events.append
    get = decoders.get
    ps = layout.page_size
    for off, size in layout.cpus:
        for page in range(off, off + size - ps + 1, ps):
            commit = words[(page >> 2) + 2] | words[(page >> 2) + 3] << 32
            p = page + 16
            end = p + (commit & COMMIT_MASK)
            if end > page + ps:
                raise TraceFormatError(0, f"page at {page:#x}", f"ring buffer page commit {commit & COMMIT_MASK}"
                                       f" beyond the page size {ps}")
            if commit & MISSING_EVENTS:
                st.lost_markers += 1
                if commit & MISSING_STORED:
                    st.lost_events += words[end >> 2] | words[(end >> 2) + 1] << 32
            while p < end:
                h = words[p >> 2]
                tl = h & 31
                if 0 < tl <= 28:
                    d = p + 4
                    p = d + tl * 4
                elif tl == 0:
                    d = p + 8
                    p = d + ((words[(p >> 2) + 1] - 4 + 3) & ~3)
                elif tl == TYPE_PADDING:
                    if h >> 5 == 0:  # padding to the end of the page
                        break
                    p += 4 + words[(p >> 2) + 1]
                    continue
                else:  # a time extend or stamp: one more word, no data
                    p += 8
                    continue
                etype = halves[d >> 1]
                if etype == spte_id:
                    seq, vm, spt, gfn, role, level, idx, old, new, count = spte_unpack(buf, d)  # type: ignore[misc]
                    if not 0 <= idx < 512:
                        raise TraceFormatError(0, f"seq={seq:#x}", f"spte index {idx} out of range")
                    append(spte(seq, vm, spt, gfn, role, level, idx, old, new, count, 0))
                    continue
                dec = get(etype)
                if dec is not None:
                    append(dec(buf, d))
            if p > end:
                raise TraceFormatError(0, f"page at {page:#x}", "a record runs past the page's data")
    st.events += len(events)
    return events
