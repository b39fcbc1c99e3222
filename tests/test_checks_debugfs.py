"""The pw_sptes dump parser and the per-dump self-check (synthetic samples; real captures come later)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from devtools.synth import format_dump
from harness.checks.parsers.debugfs import (
    ROLE_FIELDS,
    DumpFormatError,
    Masks,
    ShadowPage,
    Snapshot,
    decode_role,
    parse_dump,
)
from harness.checks.reference.consistency import check_snapshot


def role_field(word: int, name: str) -> int:
    """One field of a role word, by its kernel name (ROLE_FIELDS)."""
    for fname, shift, width in ROLE_FIELDS:
        if fname == name:
            return (word >> shift) & ((1 << width) - 1)
    raise KeyError(name)

DATA = Path(__file__).parent / "data" / "checks"
MASKS = Masks(present=0x800, writable=0x2, mmu_writable=0x400, nonpresent=1 << 63)


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_parse_valid_dump() -> None:
    snap = parse_dump(read("synthetic_dump_valid.txt"), "valid")
    assert (snap.vm, snap.seq, snap.tdp_mmu_pages) == (0xFFFF888004A3C000, 0xE, 0)
    assert snap.masks == MASKS
    assert snap.complete and not snap.truncated and snap.source == "valid"
    assert [p.spt for p in snap.pages] == [0xFFFF888006E30000, 0xFFFF888006E2F000, 0xFFFF888006E2E000,
                                          0xFFFF888006E2D000]
    a = snap.pages[3]
    assert (a.gfn, a.role, a.level, a.invalid, a.unsync, a.count) == (0x12200, 0x3781, 1, False, False, 3)
    assert a.sptes == {0: 0x12345E67, 1: 0x12346E25, 2: 0x12347825, 3: 0x80000000000003F6, 64: 0x12385E67}
    assert a.line_no == 10


def test_bitmap_word_order() -> None:
    """Bit i is bit (i % 64) of word (i / 64), word 0 first."""
    snap = parse_dump(read("synthetic_dump_valid.txt"))
    a = snap.pages[3]
    assert a.bitmap == (1 << 0) | (1 << 1) | (1 << 64)  # words "...0003,...0001,0,..."
    b = snap.pages[2]
    assert b.bitmap == 1 << 511  # word 7 = 8000000000000000
    words = ["0000000000000000"] * 8
    words[5] = "0000000000000004"  # bit 2 of word 5 -> index 322
    text = read("synthetic_dump_valid.txt").replace(
        "count=0 bitmap=" + ",".join(["0000000000000000"] * 8), "count=0 bitmap=" + ",".join(words), 1)
    assert parse_dump(text).pages[0].bitmap == 1 << 322


def test_format_round_trip() -> None:
    text = read("synthetic_dump_valid.txt")
    assert format_dump(parse_dump(text)) == text


def test_bare_zero_hex() -> None:
    snap = parse_dump(read("synthetic_dump_valid.txt").replace("gfn=0x0 ", "gfn=0 "))
    assert snap.pages[2].gfn == 0
    with pytest.raises(DumpFormatError):
        parse_dump(read("synthetic_dump_valid.txt").replace("gfn=0x0 ", "gfn=1 "))


def test_masks_possibly_writable() -> None:
    assert MASKS.possibly_writable(0x12345E67)  # present, W, MMU-writable
    assert MASKS.possibly_writable(0x12346E25)  # present, MMU-writable only (W cleared by dirty logging)
    assert MASKS.possibly_writable(0x827)  # present, W only (a non-leaf spte)
    assert not MASKS.possibly_writable(0x12347825)  # present, read-only
    assert not MASKS.possibly_writable(0x80000000000003F6)  # not present although W is set
    assert not MASKS.possibly_writable(1 << 63)
    assert not MASKS.possibly_writable(0)


def test_decode_role() -> None:
    # role.word of a legacy-TDP level-1 page: direct, ACC_ALL, efer_nx, cr0_wp
    text = decode_role(0x3781)
    assert text.startswith("level=1 direct=1 quadrant=0 access=7(uwx) invalid=0 guest_mode=0 smm=0")
    assert "cr0_wp=1 efer_nx=1" in text and "has_4_byte_gpte=0" in text
    word = 3 | (1 << 4) | (2 << 5) | (5 << 8) | (1 << 11) | (1 << 16) | (1 << 17) | (1 << 18) | (1 << 24)
    text = decode_role(word)
    for part in ("level=3", "direct=0", "quadrant=2", "access=5(u-x)", "invalid=1", "guest_mode=1", "smm=1",
                 "ad_disabled=1", "passthrough=1", "has_4_byte_gpte=1"):
        assert part in text.split(), part
    assert "unused" not in text
    assert "unused_bits=0x80000" in decode_role(1 | 1 << 19)
    assert role_field(word, "quadrant") == 2


VALID = read("synthetic_dump_valid.txt").splitlines()


def replaced(line_no: int, new: str | None) -> str:
    """The valid sample with line `line_no` (1-based) replaced (None: deleted)."""
    lines = list(VALID)
    if new is None:
        del lines[line_no - 1]
    else:
        lines[line_no - 1] = new
    return "\n".join(lines) + "\n"


BITMAP0 = ",".join(["0000000000000000"] * 8)


@pytest.mark.parametrize("line_no,new,reason", [
    (1, "kvm-pw-sptes v3", "first line"),
    (2, "vm ffff888004a3c000", "vm line"),
    (3, "seq 0xzz", "seq line"),
    (4, "masks present=0x800 writable=0x2 nonpresent=0x8000000000000000", "masks line"),
    (5, "tdp_mmu_pages 0x0", "tdp_mmu_pages line"),
    (6, "page spt=0xffff888006e30000 gfn=0x40000 role=0x3781 level=1 invalid=0 count=0 bitmap=" + BITMAP0,
     "malformed page line"),
    (6, "page spt=0xffff888006e30000 gfn=0x40000 role=0x3781 level=1 invalid=0 unsync=0 count=0 bitmap="
     + ",".join(["0000000000000000"] * 7), "malformed page line"),
    (6, "page spt=0xffff888006e30000 gfn=0x40000 role=0x3781 level=1 invalid=0 unsync=0 count=0 bitmap="
     + ",".join(["000000000000000"] * 8), "malformed page line"),
    (11, "spte 0 12345e67", "malformed spte line"),
    (11, "spte 512 0x12345e67", "out of range"),
    (12, "spte 0 0x12346e25", "increasing order"),
    (11, "sptes 0 0x12345e67", "unknown record"),
    (11, "", "unknown record"),
    (16, "end pages=3 sptes=6 truncated=0", "end line disagrees"),
    (16, "end pages=4 sptes=6", "malformed end line"),
])
def test_malformed_line_is_named(line_no: int, new: str, reason: str) -> None:
    with pytest.raises(DumpFormatError) as ei:
        parse_dump(replaced(line_no, new), "dump.txt")
    e = ei.value
    assert e.line_no == line_no and e.line == new and reason in e.reason
    assert f"dump.txt:{line_no}:" in str(e) and isinstance(e, ValueError)


def test_spte_before_page() -> None:
    with pytest.raises(DumpFormatError, match="before any page"):
        parse_dump(replaced(6, "spte 0 0x1"))


def test_text_after_end() -> None:
    with pytest.raises(DumpFormatError) as ei:
        parse_dump("\n".join(VALID) + "\npage junk\n", "d")
    assert ei.value.line_no == len(VALID) + 1 and "after the end line" in ei.value.reason


def test_header_cut_short() -> None:
    with pytest.raises(DumpFormatError, match="before the masks line"):
        parse_dump("\n".join(VALID[:3]) + "\n")
    with pytest.raises(DumpFormatError, match="empty dump"):
        parse_dump("")


def test_truncated_dump() -> None:
    snap = parse_dump(read("synthetic_dump_truncated.txt"))
    assert snap.truncated and snap.complete
    assert len(snap.pages) == 4 and snap.pages[3].sptes == {0: 0x12345E67, 1: 0x12346E25}
    # the last page was cut inside its spte lines (bit 64 has no spte): it is not judged
    assert check_snapshot(snap) == []


def test_incomplete_dump_drops_partial_last_line() -> None:
    snap = parse_dump(read("synthetic_dump_incomplete.txt"))
    assert not snap.complete and not snap.truncated
    assert snap.pages[3].sptes == {0: 0x12345E67, 1: 0x12346E25}  # "spte 2 0x1234" (no newline) dropped
    assert check_snapshot(snap) == []
    # cut at a line boundary: nothing dropped, still incomplete
    snap = parse_dump("\n".join(VALID[:-1]) + "\n")
    assert not snap.complete and len(snap.pages[3].sptes) == 5


def test_end_line_without_newline_is_complete() -> None:
    snap = parse_dump("\n".join(VALID))
    assert snap.complete


def test_check_snapshot_valid() -> None:
    assert check_snapshot(parse_dump(read("synthetic_dump_valid.txt"))) == []


def test_check_snapshot_each_kind() -> None:
    incs = check_snapshot(parse_dump(read("synthetic_dump_broken.txt"), "broken"))
    assert Counter(i.kind for i in incs) == {
        "bit_set_not_writable": 1, "bit_clear_writable": 1, "count_mismatch": 2, "bit_set_nonpresent": 2,
        "count_out_of_range": 1, "duplicate_page": 1}
    by = {(i.kind, i.idx): i for i in incs}
    i = by[("bit_set_not_writable", 1)]
    assert (i.expected, i.actual, i.spt, i.gfn, i.level) == (0, 1, 0xFFFF888006E2D000, 0x12200, 1)
    assert i.source == "broken:6" and i.role_decoded == decode_role(0x3781)
    assert (by[("bit_clear_writable", 2)].expected, by[("bit_clear_writable", 2)].actual) == (1, 0)
    assert {i.idx for i in incs if i.kind == "bit_set_nonpresent"} == {452, 508}
    assert by[("count_out_of_range", None)].actual == -1
    cm = [i for i in incs if i.kind == "count_mismatch"]
    assert {(i.level, i.expected, i.actual) for i in cm} == {(2, 0, 1), (1, 0, -1)}
    text = str(by[("bit_set_not_writable", 1)])
    for part in ("VM 0xffff888004a3c000", "gfn=0x12200", "level=1 direct=1", "spte 1", "expected 0", "actual 1"):
        assert part in text


def test_check_snapshot_count_above_512() -> None:
    page = ShadowPage(0x1000, 0, 0x3781, 1, False, False, 513, 0, {})
    incs = check_snapshot(Snapshot(1, 1, MASKS, 0, [page], False, True))
    assert {i.kind for i in incs} == {"count_out_of_range", "count_mismatch"}
