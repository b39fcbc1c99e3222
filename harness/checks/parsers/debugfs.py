"""Parser of the instrumentation's debugfs dump (`pw_sptes`, FORMAT.md v1 and v2).

The dump is the kernel's own view of every shadow page's possible-writable bitmap, taken atomically under
the VM's mmu_lock. This module only turns the text into values and refuses anything that does not follow
the contract to the letter: a parser that guesses would let a kernel-side formatting bug look like a pass
or a fail of the invariant. The checks themselves live in `consistency.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

HEADER = "kvm-pw-sptes v1"
HEADER_V2 = "kvm-pw-sptes v2"  # + write-protect-all: the `wp_all` line and each page's `wp_gen`
WP_ALL_ENABLE = 1 << 63  # WP_ALL_ENABLE_MASK of the port (patch 0003); the generation is the other bits
SP_ENTRIES = 512  # KVM_MMU_SP_ENTRY_NR: sptes per shadow page, bits per bitmap

# union kvm_mmu_page_role in arch/x86/include/asm/kvm_host.h (6.12): (name, first bit, width).
# Listed in the order a reader wants them, not in bit order.
ROLE_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("level", 0, 4),
    ("direct", 7, 1),
    ("quadrant", 5, 2),
    ("access", 8, 3),
    ("invalid", 11, 1),
    ("guest_mode", 17, 1),
    ("smm", 24, 8),
    ("ad_disabled", 16, 1),
    ("cr0_wp", 13, 1),
    ("efer_nx", 12, 1),
    ("passthrough", 18, 1),
    ("has_4_byte_gpte", 4, 1),
    ("smep_andnot_wp", 14, 1),
    ("smap_andnot_wp", 15, 1),
)
ROLE_UNUSED_MASK = 0x1F << 19  # the anonymous `unsigned :5` between passthrough and smm


def decode_role(word: int) -> str:
    """`sp->role.word` as `level=1 direct=0 ... access=7(uwx)`: a raw hex word means nothing to a reader.

    Access bits are ACC_EXEC_MASK=1, ACC_WRITE_MASK=2, ACC_USER_MASK=4 (mmu_internal.h / mmu.h).
    """
    parts = []
    for name, shift, width in ROLE_FIELDS:
        value = (word >> shift) & ((1 << width) - 1)
        if name == "access":
            flags = ("u" if value & 4 else "-") + ("w" if value & 2 else "-") + ("x" if value & 1 else "-")
            parts.append(f"access={value}({flags})")
        else:
            parts.append(f"{name}={value}")
    if word & ROLE_UNUSED_MASK or word >> 32:
        parts.append(f"unused_bits=0x{word & (ROLE_UNUSED_MASK | ~0xFFFFFFFF):x}")
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Masks:
    """The spte masks of this boot (dump header); they define "possibly writable"."""

    present: int  # SPTE_MMU_PRESENT_MASK
    writable: int  # PT_WRITABLE_MASK
    mmu_writable: int  # shadow_mmu_writable_mask
    nonpresent: int  # SHADOW_NONPRESENT_VALUE

    def possibly_writable(self, spte: int) -> bool:
        """FORMAT.md: present and (writable or MMU-writable), i.e. the kernel's is_possible_writable_spte()."""
        return bool(spte & self.present) and bool(spte & (self.writable | self.mmu_writable))


@dataclass(slots=True)
class ShadowPage:
    """One `page` record with its `spte` lines; `sptes` holds only the indices the dump listed."""

    spt: int
    gfn: int
    role: int
    level: int
    invalid: bool
    unsync: bool
    count: int  # the kernel's counter, as it holds it (may be out of range if the kernel is wrong)
    bitmap: int  # 512-bit int: bit i <-> spte i
    sptes: dict[int, int] = field(default_factory=dict)
    line_no: int = 0  # line of the `page` record in its dump, for messages
    wp_gen: int | None = None  # sp->wp_all_gen (v2 only)


@dataclass(frozen=True, slots=True)
class WpAll:
    """The VM's write-protect-all indicator (`kvm->arch.mmu_wp_all_indicator`) and the kernel's PAGE_OFFSET."""

    indicator: int
    page_offset: int

    @property
    def enabled(self) -> bool:
        return bool(self.indicator & WP_ALL_ENABLE)

    @property
    def gen(self) -> int:
        return self.indicator & ~WP_ALL_ENABLE


@dataclass(slots=True)
class Snapshot:
    """One dump of one VM. `truncated`/`complete` are kept, not raised: they are an ERROR of the run."""

    vm: int
    seq: int
    masks: Masks
    tdp_mmu_pages: int
    pages: list[ShadowPage]
    truncated: bool
    complete: bool
    source: str = ""
    wp_all: WpAll | None = None  # v2 only


class DumpFormatError(ValueError):
    """The dump does not follow FORMAT.md (v1 or v2); names the file and the line so the kernel side can be fixed."""

    def __init__(self, source: str, line_no: int, line: str, reason: str) -> None:
        self.source = source
        self.line_no = line_no
        self.line = line
        self.reason = reason
        shown = line if len(line) <= 200 else line[:200] + "..."
        super().__init__(f"{source or '<dump>'}:{line_no}: {reason}: {shown!r}")


# 0x-prefixed hex, or a bare "0" (what a user-space %#llx prints for zero); int(x, 16) takes both.
_HEX = r"(0x[0-9a-fA-F]{1,16}|0)"
_VM_RE = re.compile(r"vm " + _HEX)
_SEQ_RE = re.compile(r"seq " + _HEX)
_MASKS_RE = re.compile(
    rf"masks present={_HEX} writable={_HEX} mmu_writable={_HEX} nonpresent={_HEX}"
)
_TDP_RE = re.compile(r"tdp_mmu_pages (\d+)")
PAGE_RE = re.compile(
    rf"page spt={_HEX} gfn={_HEX} role=(0x[0-9a-fA-F]{{1,8}}|0) level=(\d+) invalid=([01]) unsync=([01])"
    rf" count=(-?\d+)(?: wp_gen={_HEX})? bitmap=((?:[0-9a-fA-F]{{16}},){{7}}[0-9a-fA-F]{{16}})"
)
_WP_ALL_RE = re.compile(rf"wp_all indicator={_HEX} page_offset={_HEX}")
_SPTE_RE = re.compile(r"spte (\d{1,3}) " + _HEX)
END_RE = re.compile(r"end pages=(\d+) sptes=(\d+) truncated=([01])")

# The header after its first line, in order: (name for messages, pattern).
_HEADER = (("vm", _VM_RE), ("seq", _SEQ_RE), ("masks", _MASKS_RE), ("tdp_mmu_pages", _TDP_RE))


@dataclass(frozen=True, slots=True)
class Header:
    """A dump's lines before its first page: `v2` says which FORMAT.md version; `lines` how many there are."""

    v2: bool
    vm: int
    seq: int
    masks: Masks
    tdp_mmu_pages: int
    wp_all: WpAll | None
    lines: int


def parse_header(lines: list[str], source: str = "") -> Header:
    """The header of a dump from its first lines (at least 5, 6 for v2; more are ignored).
    Raises DumpFormatError naming the line that does not follow FORMAT.md."""
    def fail(idx: int, reason: str) -> DumpFormatError:
        return DumpFormatError(source, idx + 1, lines[idx] if idx < len(lines) else "", reason)

    if not lines:
        raise DumpFormatError(source, 1, "", "empty dump")
    if lines[0] not in (HEADER, HEADER_V2):
        raise fail(0, f"first line must be {HEADER!r} or {HEADER_V2!r}")
    v2 = lines[0] == HEADER_V2
    fields: list[re.Match[str]] = []
    names = [*_HEADER, ("wp_all", _WP_ALL_RE)] if v2 else list(_HEADER)
    for i, (name, pattern) in enumerate(names, start=1):
        if i >= len(lines):
            raise DumpFormatError(source, i + 1, "", f"dump ends before the {name} line")
        m = pattern.fullmatch(lines[i])
        if m is None:
            raise fail(i, f"expected the {name} line")
        fields.append(m)
    vm, seq, mg, tdp = fields[:4]
    masks = Masks(int(mg[1], 16), int(mg[2], 16), int(mg[3], 16), int(mg[4], 16))
    wp_all = WpAll(int(fields[4][1], 16), int(fields[4][2], 16)) if v2 else None
    return Header(v2, int(vm[1], 16), int(seq[1], 16), masks, int(tdp[1]), wp_all, 1 + len(names))


def _bitmap_from_words(text: str) -> int:
    """`w0,w1,...,w7` (word 0 = bits 0..63 first) -> one int; reversing makes word 7 the most significant."""
    return int("".join(reversed(text.split(","))), 16)


def parse_dump(text: str, source: str = "") -> Snapshot:
    """Parse one `pw_sptes` dump.

    A file that does not end with an `end` line is returned with complete=False (a cut-off read); a final
    line without its newline is then dropped, since it may be cut in the middle of a number. Everything
    else that does not match FORMAT.md raises DumpFormatError.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
        while lines and lines[-1] == "":  # tolerate trailing empty lines, nothing else
            lines.pop()
    elif lines and not END_RE.fullmatch(lines[-1]):
        lines.pop()  # partial last line of an incomplete read
        # (the dump is then incomplete: no end line can follow)

    def fail(idx: int, reason: str) -> DumpFormatError:
        return DumpFormatError(source, idx + 1, lines[idx] if idx < len(lines) else "", reason)

    head = parse_header(lines, source)
    v2 = head.v2
    first = head.lines

    pages: list[ShadowPage] = []
    page: ShadowPage | None = None
    sptes: dict[int, int] = {}
    last_idx = -1
    n_sptes = 0
    truncated = False
    complete = False
    spte_match = _SPTE_RE.fullmatch
    n = len(lines)
    for i in range(first, n):
        line = lines[i]
        if line.startswith("spte "):
            m = spte_match(line)
            if m is None:
                raise fail(i, "malformed spte line (expected 'spte <decimal idx> 0x<hex>')")
            if page is None:
                raise fail(i, "spte line before any page line")
            idx = int(m[1])
            if idx >= SP_ENTRIES:
                raise fail(i, f"spte index {idx} out of range 0..{SP_ENTRIES - 1}")
            if idx <= last_idx:
                raise fail(i, f"spte index {idx} not in increasing order (previous {last_idx})")
            last_idx = idx
            sptes[idx] = int(m[2], 16)
            n_sptes += 1
        elif line.startswith("page "):
            m = PAGE_RE.fullmatch(line)
            if m is None or (m[8] is None) == v2:
                raise fail(i, "malformed page line" + (" (v2: wp_gen required)" if v2 else ""))
            level = int(m[4])
            sptes = {}
            last_idx = -1
            page = ShadowPage(
                spt=int(m[1], 16), gfn=int(m[2], 16), role=int(m[3], 16), level=level,
                invalid=m[5] == "1", unsync=m[6] == "1", count=int(m[7]),
                bitmap=_bitmap_from_words(m[9]), sptes=sptes, line_no=i + 1,
                wp_gen=None if m[8] is None else int(m[8], 16),
            )
            pages.append(page)
        elif line.startswith("end "):
            m = END_RE.fullmatch(line)
            if m is None:
                raise fail(i, "malformed end line")
            if i != n - 1:
                raise DumpFormatError(source, i + 2, lines[i + 1], "text after the end line")
            truncated = m[3] == "1"
            if not truncated and (int(m[1]) != len(pages) or int(m[2]) != n_sptes):
                raise fail(i, f"end line disagrees with the records: {len(pages)} pages, {n_sptes} sptes")
            complete = True
        else:
            raise fail(i, "unknown record (expected page, spte or end)")
    return Snapshot(vm=head.vm, seq=head.seq, masks=head.masks, tdp_mmu_pages=head.tdp_mmu_pages, pages=pages,
                    truncated=truncated, complete=complete, source=source, wp_all=head.wp_all)
