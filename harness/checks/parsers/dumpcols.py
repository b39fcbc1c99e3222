"""The `pw_sptes` dump (FORMAT.md v1, v2) as columns, and its self-check on them: the fast reading.

Why: a big VM's dump has hundreds of thousands of `spte` lines; `debugfs.parse_dump` builds an object and
a dict entry for each, which costs more than the whole trace replay on columns. This reads the spte lines
all at once (numpy over the bytes: they are fixed-width, `spte %d 0x%016llx`) and only the page lines one by
one. It reads exactly the dumps parse_dump() reads as complete and untruncated, with the same values, and
gives up (None) on anything else, so that parse_dump() judges it: a malformed line, a short hex value a
kernel never prints, a cut-off or truncated dump. Giving up is never a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from harness.checks.parsers.debugfs import END_RE, PAGE_RE, SP_ENTRIES, DumpFormatError, Masks, WpAll, parse_header

_HEX_LUT = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_LUT[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX_LUT[_c] = 10 + _i
_NL, _SPACE = 10, 32


@dataclass(slots=True)
class DumpColumns:
    """One complete dump of one VM: the header's values, one row per page, one row per listed spte.

    `bits[row, i]` is bit i of the page's bitmap; `wp_gen` is 0 in a v1 dump (`wp_all` None); `row` of an
    spte is its page's row.
    """

    source: str
    vm: int
    seq: int
    masks: Masks
    tdp_mmu_pages: int
    wp_all: WpAll | None
    spt: npt.NDArray[np.uint64]
    gfn: npt.NDArray[np.uint64]
    level: npt.NDArray[np.int64]
    count: npt.NDArray[np.int64]
    wp_gen: npt.NDArray[np.uint64]
    bits: npt.NDArray[np.bool_]
    row: npt.NDArray[np.int64]
    idx: npt.NDArray[np.int64]
    value: npt.NDArray[np.uint64]


def _hex_u64(chars: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint64] | None:
    """Rows of 16 hex digits -> their values; None if any is not a hex digit."""
    nib = _HEX_LUT[chars]
    if nib.size and int(nib.max()) == 255:
        return None
    pairs = (nib[:, 0::2] << 4) | nib[:, 1::2]
    return np.ascontiguousarray(pairs).view(">u8").ravel().astype(np.uint64)


def parse_dump_columns(data: bytes, source: str = "") -> DumpColumns | None:
    """A dump's bytes as DumpColumns, or None where parse_dump() must judge the text (see the module)."""
    if not data.endswith(b"\n"):
        return None
    buf = np.frombuffer(data, np.uint8)
    nl = np.flatnonzero(buf == _NL)
    starts = np.concatenate([np.zeros(1, np.int64), nl[:-1] + 1])
    head_text = data[: int(nl[min(6, nl.size - 1)])].decode("utf-8", "replace").split("\n")
    try:
        head = parse_header(head_text, source)
    except DumpFormatError:
        return None
    if nl.size < head.lines + 1:
        return None
    last = data[int(starts[-1]): int(nl[-1])].decode("ascii", "replace")
    end = END_RE.fullmatch(last)
    if end is None or end[3] != "0":
        return None
    body = np.arange(head.lines, nl.size - 1)
    first = buf[starts[body]]
    is_page = first == ord("p")
    is_spte = first == ord("s")
    if not (is_page | is_spte).all():
        return None
    pages = body[is_page]
    sl = body[is_spte]
    s0, s1 = starts[sl], nl[sl]
    ndig = s1 - s0 - 24  # `spte ` + digits + ` 0x` + 16 hex digits
    if sl.size and (int(ndig.min()) < 1 or int(ndig.max()) > 3):
        return None
    # fixed-width fields, copied row by row from strided views of the bytes (no index per byte)
    window = sliding_window_view(buf, 8)[np.minimum(s0, buf.size - 8)]
    digits = window[:, 5:8].astype(np.int16) - ord("0")
    used = np.arange(3) < ndig[:, None]
    if not ((window[:, :5] == np.frombuffer(b"spte ", np.uint8)).all()
            and ((digits >= 0) & (digits <= 9) | ~used).all()):
        return None
    sep = sliding_window_view(buf, 3)[s1 - 19]
    if not (sep == np.frombuffer(b" 0x", np.uint8)).all():
        return None
    two = digits[:, 0] * 10 + digits[:, 1]
    idx = np.where(ndig == 1, digits[:, 0], np.where(ndig == 2, two, two * 10 + digits[:, 2])).astype(np.int64)
    value = _hex_u64(sliding_window_view(buf, 16)[s1 - 16])
    if value is None or (idx >= SP_ENTRIES).any():
        return None
    page_of_line = np.cumsum(is_page) - 1
    row = page_of_line[is_spte]
    if (row < 0).any():
        return None
    same = row[1:] == row[:-1]
    if (same & (idx[1:] <= idx[:-1])).any():
        return None
    n = pages.size
    if int(end[1]) != n or int(end[2]) != sl.size:
        return None
    spt = np.zeros(n, np.uint64)
    gfn = np.zeros(n, np.uint64)
    level = np.zeros(n, np.int64)
    count = np.zeros(n, np.int64)
    wp_gen = np.zeros(n, np.uint64)
    bitmap_text = np.zeros((n, 128), np.uint8)
    for r, ln in enumerate(pages.tolist()):
        line = data[int(starts[ln]): int(nl[ln])]
        m = PAGE_RE.fullmatch(line.decode("ascii", "replace"))
        if m is None or (m[8] is None) == head.v2:
            return None
        try:
            spt[r], gfn[r], level[r], count[r] = int(m[1], 16), int(m[2], 16), int(m[4]), int(m[7])
        except OverflowError:  # a count or level no int64 holds: parse_dump reads it, consistency.check judges
            return None
        if m[8] is not None:
            wp_gen[r] = int(m[8], 16)
        bitmap_text[r] = np.frombuffer(m[9].replace(",", "").encode(), np.uint8)
    words = _hex_u64(bitmap_text.reshape(-1, 16))
    assert words is not None  # PAGE_RE took only hex digits
    bits = np.unpackbits(words.reshape(n, 8).astype("<u8").view(np.uint8), axis=1, bitorder="little").view(bool)
    return DumpColumns(source, head.vm, head.seq, head.masks, head.tdp_mmu_pages, head.wp_all, spt, gfn, level,
                       count, wp_gen, bits, row, idx, value)
