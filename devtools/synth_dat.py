"""A trace.dat (version 6, uncompressed) written from events, for the tests and `devtools.bench`.

The layout is the one `tracedat.decode` reads (trace-cmd.dat.v6(5) and the ring buffer pages of
kbuffer-parse.c); the event formats are those of a real 6.12 kernel with the instrumentation (copied from
`events/kvmmmu/*/format` of a boot-test guest, FORMAT.md v2 with patch 0005). `trace-cmd convert` turns the
result into the version-7, zstd file a guest writes, so the benchmark can time the whole path from what the
guest gives.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from harness.checks.parsers.trace import AnyEvent, PageEvent, SpteEvent, WpAllEvent, WpLoadEvent

PAGE_SIZE = 4096
_COMMON = ("\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
           "\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n"
           "\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n"
           "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n")
# event -> (id, size of the record's data, [(C type, name, offset, size, signed)])
EVENTS: dict[str, tuple[int, int, list[tuple[str, str, int, int, int]]]] = {
    "kvm_mmu_pw_spte": (119, 76, [
        ("u64", "seq", 8, 8, 0), ("unsigned long", "vm", 16, 8, 0), ("unsigned long", "spt", 24, 8, 0),
        ("u64", "gfn", 32, 8, 0), ("u32", "role", 40, 4, 0), ("u8", "level", 44, 1, 0), ("int", "idx", 48, 4, 1),
        ("u64", "old_spte", 56, 8, 0), ("u64", "new_spte", 64, 8, 0), ("unsigned int", "count", 72, 4, 0)]),
    "kvm_mmu_pw_page": (118, 52, [
        ("u64", "seq", 8, 8, 0), ("unsigned long", "vm", 16, 8, 0), ("unsigned long", "spt", 24, 8, 0),
        ("u64", "gfn", 32, 8, 0), ("u32", "role", 40, 4, 0), ("u8", "level", 44, 1, 0), ("bool", "free", 45, 1, 0),
        ("unsigned int", "count", 48, 4, 0)]),
    "kvm_mmu_wp_all": (117, 40, [
        ("u64", "seq", 8, 8, 0), ("unsigned long", "vm", 16, 8, 0), ("bool", "enable", 24, 1, 0),
        ("u64", "gen", 32, 8, 0)]),
    "kvm_mmu_wp_load": (116, 68, [
        ("u64", "seq", 8, 8, 0), ("unsigned long", "vm", 16, 8, 0), ("unsigned long", "spt", 24, 8, 0),
        ("u64", "gfn", 32, 8, 0), ("u32", "role", 40, 4, 0), ("u8", "level", 44, 1, 0),
        ("u64", "old_gen", 48, 8, 0), ("u64", "gen", 56, 8, 0), ("unsigned int", "count", 64, 4, 0)]),
    "kvm_mmu_wp_root": (115, 76, [
        ("u64", "seq", 8, 8, 0), ("unsigned long", "vm", 16, 8, 0), ("unsigned int", "vcpu", 24, 4, 0),
        ("unsigned long", "spt", 32, 8, 0), ("u64", "gfn", 40, 8, 0), ("u32", "role", 48, 4, 0),
        ("u8", "level", 52, 1, 0), ("u64", "root_gen", 56, 8, 0), ("u64", "gen", 64, 8, 0),
        ("unsigned int", "count", 72, 4, 0)]),
}
# The TP_printk of each event (mmutrace.h, FORMAT.md): `trace-cmd report` of a synthetic file prints events
# exactly as of a real one, which the tests use to check this writer independently of the decoder.
_H = "seq=0x%llx vm=0x%lx"
PRINT_FMT = {
    "kvm_mmu_pw_spte": f'"{_H} spt=0x%lx gfn=0x%llx role=0x%x level=%u idx=%d old=0x%llx new=0x%llx count=%u",'
                       " REC->seq, REC->vm, REC->spt, REC->gfn, REC->role, REC->level, REC->idx, REC->old_spte,"
                       " REC->new_spte, REC->count",
    "kvm_mmu_pw_page": f'"{_H} spt=0x%lx gfn=0x%llx role=0x%x level=%u op=%s count=%u", REC->seq, REC->vm, REC->spt,'
                       ' REC->gfn, REC->role, REC->level, REC->free ? "free" : "alloc", REC->count',
    "kvm_mmu_wp_all": f'"{_H} enable=%d gen=0x%llx", REC->seq, REC->vm, REC->enable, REC->gen',
    "kvm_mmu_wp_load": f'"{_H} spt=0x%lx gfn=0x%llx role=0x%x level=%u old_gen=0x%llx gen=0x%llx count=%u", REC->seq,'
                       " REC->vm, REC->spt, REC->gfn, REC->role, REC->level, REC->old_gen, REC->gen, REC->count",
    "kvm_mmu_wp_root": f'"{_H} vcpu=%u spt=0x%lx gfn=0x%llx role=0x%x level=%u root_gen=0x%llx gen=0x%llx count=%u",'
                       " REC->seq, REC->vm, REC->vcpu, REC->spt, REC->gfn, REC->role, REC->level, REC->root_gen,"
                       " REC->gen, REC->count",
}
HEADER_PAGE = ("\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n"
               "\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;\n"
               "\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;\n"
               "\tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;\n")
HEADER_EVENT = ("# compressed entry header\n\ttype_len    :    5 bits\n\ttime_delta  :   27 bits\n"
                "\tarray       :   32 bits\n\n\tpadding     : type == 29\n\ttime_extend : type == 30\n"
                "\ttime_stamp : type == 31\n\tdata max type_len  == 28\n")
_CODES = {(1, 0): "B", (2, 0): "H", (4, 0): "I", (4, 1): "i", (8, 0): "Q"}


def format_text(name: str) -> str:
    """The `format` file of one event, as the kernel prints it."""
    ident, _, fields = EVENTS[name]
    body = "".join(f"\tfield:{t} {n};\toffset:{o};\tsize:{s};\tsigned:{g};\n" for t, n, o, s, g in fields)
    return f"name: {name}\nID: {ident}\nformat:\n{_COMMON}{body}\nprint fmt: {PRINT_FMT[name]}\n"


def _record(ev: AnyEvent) -> bytes:
    values: tuple[int | bool, ...]
    if isinstance(ev, SpteEvent):
        name, values = "kvm_mmu_pw_spte", (ev.seq, ev.vm, ev.spt, ev.gfn, ev.role, ev.level, ev.idx, ev.old, ev.new,
                                           ev.count)
    elif isinstance(ev, PageEvent):
        name, values = "kvm_mmu_pw_page", (ev.seq, ev.vm, ev.spt, ev.gfn, ev.role, ev.level, ev.op == "free",
                                           ev.count)
    elif isinstance(ev, WpAllEvent):
        name, values = "kvm_mmu_wp_all", (ev.seq, ev.vm, ev.enable, ev.gen)
    elif isinstance(ev, WpLoadEvent):
        name, values = "kvm_mmu_wp_load", (ev.seq, ev.vm, ev.spt, ev.gfn, ev.role, ev.level, ev.old_gen, ev.gen,
                                           ev.count)
    else:
        name, values = "kvm_mmu_wp_root", (ev.seq, ev.vm, ev.vcpu, ev.spt, ev.gfn, ev.role, ev.level, ev.root_gen,
                                           ev.gen, ev.count)
    ident, size, fields = EVENTS[name]
    data = bytearray(size)
    struct.pack_into("<HBBi", data, 0, ident, 0, 0, 4242)
    for (_, _, off, sz, signed), v in zip(fields, values, strict=True):
        struct.pack_into("<" + _CODES[(sz, signed)], data, off, int(v))
    return struct.pack("<I", (size // 4) | 1 << 5) + bytes(data)  # type_len = size/4, time_delta 1


def write_trace_dat(events: Iterable[AnyEvent], cpus: int = 2) -> bytes:
    """Events spread round-robin over `cpus` ring buffers, in pages of PAGE_SIZE, as a v6 trace.dat."""
    per_cpu: list[list[bytes]] = [[] for _ in range(cpus)]
    for i, ev in enumerate(events):
        per_cpu[i % cpus].append(_record(ev))
    data: list[bytes] = []
    for records in per_cpu:
        pages, page, used = [], bytearray(), 0
        for rec in [*records, b""]:
            if not rec or used + len(rec) > PAGE_SIZE - 16:
                if used:
                    pages.append(struct.pack("<QQ", 1000, used) + bytes(page) + bytes(PAGE_SIZE - 16 - used))
                page, used = bytearray(), 0
            page += rec
            used += len(rec)
        data.append(b"".join(pages))

    def sized(n: int, payload: bytes) -> bytes:
        return struct.pack("<Q" if n == 8 else "<I", len(payload)) + payload

    head = bytearray(b"\x17\x08\x44tracing6\0" + bytes([0, 8]) + struct.pack("<I", PAGE_SIZE))
    head += b"header_page\0" + sized(8, HEADER_PAGE.encode()) + b"header_event\0" + sized(8, HEADER_EVENT.encode())
    head += struct.pack("<I", 0)  # no ftrace formats
    head += struct.pack("<I", 1) + b"kvmmmu\0" + struct.pack("<I", len(EVENTS))
    head += b"".join(sized(8, format_text(n).encode()) for n in EVENTS)
    head += sized(4, b"") + sized(4, b"") + sized(8, b"")  # kallsyms, printk formats, cmdlines
    head += struct.pack("<I", cpus) + b"options  \0" + struct.pack("<H", 0) + b"flyrecord\0"
    start = -(-(len(head) + 16 * cpus) // PAGE_SIZE) * PAGE_SIZE
    offsets, off = [], start
    for d in data:
        offsets.append((off, len(d)))
        off += len(d)
    head += b"".join(struct.pack("<QQ", o, s) for o, s in offsets)
    return bytes(head) + bytes(start - len(head)) + b"".join(data)
