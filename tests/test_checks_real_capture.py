"""The parsers and the checker on output captured from a real run.

tests/data/real/ was captured by `kvm-harness boot-test` (default series:
the 6.12 port + instrumentation) in the shadow-paging mode, during
`dirty_log_test -M dirty-log`: the VM's first and second pw_sptes dumps and
the kvmmmu trace up to the second dump's seq (the full trace had 526,382
events; this prefix keeps the sample small).
"""

import gzip
from pathlib import Path

from harness.checks.files import check_files
from harness.checks.parsers.debugfs import parse_dump
from harness.checks.parsers.trace import PageEvent, SpteEvent, parse_trace
from harness.checks.reference.consistency import check

REAL = Path(__file__).parent / "data" / "real"
DUMP = REAL / "shadow-dirty-log.pw_sptes.txt.gz"
FIRST = REAL / "shadow-dirty-log.pw_sptes-first.txt.gz"
TRACE = REAL / "shadow-dirty-log.trace.txt.gz"


def _text(p: Path) -> str:
    return gzip.open(p, "rt").read()


def test_real_dump_parses():
    snap = parse_dump(_text(DUMP), str(DUMP))
    assert snap.complete and not snap.truncated
    assert snap.vm == 0xFFA0000000045000 and snap.seq == 0x12D7
    assert (snap.masks.present, snap.masks.writable, snap.masks.mmu_writable) == (0x800, 0x2, 0x400)
    assert len(snap.pages) == 16 and sum(len(p.sptes) for p in snap.pages) == 4811
    assert any(p.count > 0 for p in snap.pages)
    top = [p for p in snap.pages if p.level == 4]
    assert len(top) == 1 and top[0].count == 1 and top[0].bitmap == 1


def test_real_trace_parses():
    evs = list(parse_trace(_text(TRACE).splitlines()))
    assert len(evs) == 4823
    assert isinstance(evs[0], PageEvent) and evs[0].op == "alloc" and evs[0].seq == 1
    spte = [e for e in evs if isinstance(e, SpteEvent)]
    assert spte and all(e.vm == 0xFFA0000000045000 for e in evs)


def test_real_capture_is_consistent():
    v = check_files([FIRST, DUMP], TRACE)
    assert v.status == "PASS", v.reason
    assert v.counts["pages"] == 16 and v.counts["events"] == 4823 and v.counts["snapshot_comparisons"] == 2


def test_one_flipped_bit_in_the_real_dump_fails_naming_page_and_index():
    text = _text(DUMP).splitlines()
    # Clear bit 0 of the level-4 root's bitmap while its spte 0 stays possibly writable.
    i = next(n for n, line in enumerate(text) if line.startswith("page ") and " level=4 " in line)
    text[i] = text[i].replace("bitmap=0000000000000001,", "bitmap=0000000000000000,").replace("count=1 ", "count=0 ")
    snap = parse_dump("\n".join(text) + "\n", "mutated")
    first = parse_dump(_text(FIRST), str(FIRST))
    evs = list(parse_trace(_text(TRACE).splitlines()))
    v = check([first, snap], evs)
    assert v.status == "FAIL"
    inc = next(x for x in v.inconsistencies if x.idx == 0 and x.level == 4)
    msg = str(inc)
    assert "gfn" in msg and "0x180" in msg and "level" in msg
