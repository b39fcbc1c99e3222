"""The header of a trace-cmd `trace.dat`, versions 6 and 7: what tracedat.py needs to read its records.

Formats, as this reads them (trace-cmd's Documentation/trace-cmd/trace-cmd.dat.v6.5.txt and v7.5.txt):
  * version 6: header, header_page, header_event, ftrace and event format files, kallsyms, printk formats,
    cmdlines, CPU count, options, then `flyrecord` with each CPU's offset and size;
  * version 7 (what the guest's `trace-cmd extract` writes): the header names a compression ("zstd" and
    "none" are read; Debian's trace-cmd writes no other) and the first options section; sections (u16 id,
    u16 flags, u32 description, u64 size; bit 0 of the flags: compressed, then u32 compressed size, u32
    size) are found through options: HEADER_INFO (16), EVENT_FORMATS (18), BUFFER (3: the flyrecord section,
    page size, each CPU's offset and size), DONE (0: the next options section). A CPU's data is a u32 chunk
    count, then chunks (u32 compressed size, u32 size, the data), each a whole number of ring buffer pages.
Version 7's CPU data is decompressed here, in memory, with python-zstandard: the ring buffer pages then lie
exactly as in a version-6 file. A file cut anywhere, or whose chunks do not decompress to their stated size,
raises TraceFormatError naming what is missing: a partial trace is never taken for a whole one. Only
little-endian files of 64-bit user space are read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import zstandard

from harness.checks.parsers.trace import TraceFormatError

MAGIC = b"\x17\x08\x44tracing"
SYSTEM = "kvmmmu"
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


def _header_info(r: _Reader) -> None:
    """header_page and header_event: the ring buffer page must carry an 8-byte commit at offset 8."""
    r.expect(b"header_page\0", "header_page")
    header_page = bytes(r.take(r.u(8, "header_page size"), "header_page")).decode()
    if "local_t commit;\toffset:8;\tsize:8;" not in header_page:
        raise TraceFormatError(0, header_page[:200], "ring buffer pages without an 8-byte commit at offset 8")
    r.expect(b"header_event\0", "header_event")
    r.take(r.u(8, "header_event size"), "header_event")


def _event_formats(r: _Reader) -> dict[str, EventFormat]:
    """The event systems' format files; only the kvmmmu ones are kept."""
    formats: dict[str, EventFormat] = {}
    for _ in range(r.u(4, "event system count")):
        system = r.cstring("system name")
        for _ in range(r.u(4, "event count")):
            text = bytes(r.take(r.u(8, "format size"), "event format")).decode("utf-8", "replace")
            if system == SYSTEM:
                f = parse_format(text)
                formats[f.name] = f
    return formats


def _start(buf: memoryview) -> tuple[_Reader, str, int]:
    r = _Reader(buf)
    r.expect(MAGIC, "magic")
    version = r.cstring("version")
    if version not in ("6", "7"):
        raise TraceFormatError(0, version, f"trace.dat version {version}: only 6 and 7 are read")
    endian, long_size = r.u(1, "endianness"), r.u(1, "long size")
    if endian != 0 or long_size != 8:
        raise TraceFormatError(0, version, "only little-endian traces of 64-bit user space are decoded")
    return r, version, r.u(4, "page size")


def _read_v6(r: _Reader, page_size: int) -> Layout:
    """The rest of a version-6 header (trace-cmd.dat.v6(5)), after _start()."""
    _header_info(r)
    for _ in range(r.u(4, "ftrace format count")):
        r.take(r.u(8, "ftrace format size"), "ftrace format")
    formats = _event_formats(r)
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
        if off + size > len(r.buf) or off % 8:
            raise TraceFormatError(0, f"offset {off} size {size}", "CPU data outside the file (truncated?)")
    return Layout(page_size, formats, cpus)


# version-7 section and option ids (trace-cmd.dat.v7(5))
OPT_DONE, OPT_BUFFER, OPT_HEADER_INFO, OPT_EVENT_FORMATS, OPT_BUFFER_TEXT = 0, 3, 16, 18, 22


class _Sections:
    """A version-7 file's sections, decompressed as their flags say."""

    def __init__(self, buf: memoryview, compression: str) -> None:
        self.buf = buf
        self.inflate: Callable[[memoryview, int], bytes]
        if compression == "zstd":
            zd = zstandard.ZstdDecompressor()
            self.inflate = lambda data, size: zd.decompress(data, max_output_size=size)
        elif compression == "none":
            self.inflate = lambda data, size: bytes(data)
        else:
            raise TraceFormatError(0, compression, f"trace.dat compressed with {compression!r}: not readable here")

    def unpack(self, r: _Reader, what: str) -> bytes:
        """One compressed block at r: u32 compressed size, u32 size, the data."""
        packed, size = r.u(4, f"{what} compressed size"), r.u(4, f"{what} size")
        try:
            out = self.inflate(r.take(packed, what), size)
        except zstandard.ZstdError as e:
            raise TraceFormatError(0, what, f"{what} does not decompress: {e}") from None
        if len(out) != size:
            raise TraceFormatError(0, what, f"{what} decompresses to {len(out)} bytes, not {size}")
        return out

    def section(self, offset: int, want: int, what: str) -> _Reader:
        """The body of the section at `offset`, whose id must be `want`."""
        r = _Reader(self.buf)
        r.pos = offset
        sid, flags = r.u(2, f"{what} section id"), r.u(2, f"{what} section flags")
        r.u(4, "section description")
        size = r.u(8, f"{what} section size")
        if sid != want:
            raise TraceFormatError(0, what, f"the {what} section at offset {offset} has id {sid}, not {want}")
        if flags & 1:
            return _Reader(memoryview(self.unpack(r, f"{what} section")))
        return _Reader(r.take(size, f"{what} section"))


def _read_v7(r: _Reader, page_size: int) -> tuple[Layout, bytes]:
    compression = r.cstring("compression name")
    r.cstring("compression version")
    sections = _Sections(r.buf, compression)
    offset = r.u(8, "first options section offset")
    where: dict[int, int] = {}
    buffer: bytes | None = None
    while offset:
        opts = sections.section(offset, 0, "options")
        offset = 0
        while opts.pos < len(opts.buf):
            oid, data = opts.u(2, "option id"), opts.take(opts.u(4, "option size"), "option")
            if oid == OPT_DONE:
                offset = int.from_bytes(data[:8], "little")
                break
            if oid in (OPT_HEADER_INFO, OPT_EVENT_FORMATS):
                where[oid] = int.from_bytes(data[:8], "little")
            elif oid == OPT_BUFFER_TEXT:
                raise TraceFormatError(0, "BUFFER_TEXT", "a latency trace, not a flyrecord one")
            elif oid == OPT_BUFFER and buffer is None:
                buffer = bytes(data)  # the first is the top instance's (trace-cmd extract writes only it)
    if set(where) != {OPT_HEADER_INFO, OPT_EVENT_FORMATS}:
        raise TraceFormatError(0, "options", "no HEADER_INFO or EVENT_FORMATS option (truncated?)")
    _header_info(sections.section(where[OPT_HEADER_INFO], OPT_HEADER_INFO, "HEADER_INFO"))
    formats = _event_formats(sections.section(where[OPT_EVENT_FORMATS], OPT_EVENT_FORMATS, "EVENT_FORMATS"))
    cpus: list[tuple[int, int, int]] = []
    if buffer is not None:  # trace-cmd writes none for a trace without data (the options chain ended at DONE)
        b = _Reader(memoryview(buffer))
        b.u(8, "flyrecord offset")
        b.cstring("instance name")
        b.cstring("trace clock")
        page_size = b.u(4, "buffer page size") or page_size
        cpus = [(b.u(4, "CPU id"), b.u(8, "CPU data offset"), b.u(8, "CPU data size"))
                for _ in range(b.u(4, "CPUs"))]
    pieces: list[bytes] = []
    layout: list[tuple[int, int]] = []
    at = 0
    for cpu, off, size in cpus:
        d = _Reader(r.buf)
        d.pos = off
        if off + size > len(r.buf):
            raise TraceFormatError(0, f"CPU {cpu}", f"CPU {cpu}'s data ends beyond the file (truncated?)")
        if compression == "none":
            chunks = [bytes(d.take(size, f"CPU {cpu} data"))]
        else:
            chunks = [sections.unpack(d, f"CPU {cpu} chunk") for _ in range(d.u(4, f"CPU {cpu} chunk count"))]
        n = sum(map(len, chunks))
        pieces += chunks
        layout.append((at, n))
        at += n
    return Layout(page_size, formats, layout), b"".join(pieces)


def read_trace(data: bytes | memoryview) -> tuple[Layout, memoryview]:
    """A trace.dat of version 6 or 7 -> its Layout and the buffer its CPU offsets point into (the file
    itself for version 6, the decompressed CPU data for version 7). Raises TraceFormatError."""
    buf = memoryview(data)
    r, version, page_size = _start(buf)
    if version == "6":
        return _read_v6(r, page_size), buf
    layout, cpu_data = _read_v7(r, page_size)
    return layout, memoryview(cpu_data)
