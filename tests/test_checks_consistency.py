"""The verdict: dump self-checks, trace replay, dump/replay comparison, and what is not a pass."""

from __future__ import annotations

import gzip
import io
import lzma
import random
from collections import Counter
from pathlib import Path

import pytest
from checkers import check_both

from devtools.synth import DEFAULT_MASKS, format_dump, generate
from harness.checks.files import check_files
from harness.checks.parsers.debugfs import Masks, ShadowPage, Snapshot, decode_role, parse_dump
from harness.checks.parsers.trace import PageEvent, SpteEvent, parse_trace
from harness.checks.reference.consistency import Inconsistency, Verdict

DATA = Path(__file__).parent / "data" / "checks"
M = DEFAULT_MASKS  # present=0x800 writable=0x2 mmu_writable=0x400 nonpresent=1<<63
VM = 0xFFFF888004A3C000
VM2 = 0xFFFF888004A4C000
SPT = 0xFFFF888006E2D000
SPT2 = 0xFFFF888006E2E000
NP = 1 << 63
RW = 0x12345E67  # present, writable, MMU-writable
WP = 0x12346E25  # present, MMU-writable (write-protected by dirty logging): still possibly writable
RO = 0x12347825  # present, read-only: not possibly writable
ROLE = 0x3781


def alloc(seq: int, spt: int = SPT, vm: int = VM, count: int = 0, gfn: int = 0x12200) -> PageEvent:
    return PageEvent(seq, vm, spt, gfn, ROLE, 1, "alloc", count, 100 + seq)


def free(seq: int, spt: int = SPT, vm: int = VM, count: int = 0) -> PageEvent:
    return PageEvent(seq, vm, spt, 0x12200, ROLE, 1, "free", count, 100 + seq)


def spte(seq: int, idx: int, old: int, new: int, count: int, spt: int = SPT, vm: int = VM) -> SpteEvent:
    return SpteEvent(seq, vm, spt, 0x12200, ROLE, 1, idx, old, new, count, 100 + seq)


def page(sptes: dict[int, int], spt: int = SPT, count: int | None = None, gfn: int = 0x12200) -> ShadowPage:
    """A self-consistent page unless `count` says otherwise."""
    bitmap = sum(1 << i for i, v in sptes.items() if M.possibly_writable(v))
    return ShadowPage(spt, gfn, ROLE, 1, False, False, bitmap.bit_count() if count is None else count, bitmap,
                      dict(sptes))


def snap(seq: int, pages: list[ShadowPage], vm: int = VM, tdp: int = 0, masks: Masks = M,
         truncated: bool = False, complete: bool = True) -> Snapshot:
    return Snapshot(vm, seq, masks, tdp, pages, truncated, complete, f"dump@{seq}")


EMPTY0 = snap(0, [])  # a dump right after VM creation: gives the masks, no page


def kinds(v: Verdict) -> Counter[str]:
    return Counter(i.kind for i in v.inconsistencies)


# -- whole captures -------------------------------------------------------------------------------------

def test_sample_files_pass() -> None:
    v = check_files([DATA / "synthetic_dump_valid.txt"], DATA / "synthetic_trace_valid.txt")
    assert v.status == "PASS", v
    c = v.counts
    assert (c["snapshots"], c["vms"], c["pages"], c["sptes"], c["events"], c["pages_replayed"],
            c["snapshot_comparisons"]) == (1, 2, 4, 6, 17, 6, 1)
    assert "examined 1 dumps" in v.reason


def test_compressed_files(tmp_path: Path) -> None:
    d = tmp_path / "pw_sptes.txt.gz"
    d.write_bytes(gzip.compress((DATA / "synthetic_dump_valid.txt").read_bytes()))
    t = tmp_path / "trace.xz"  # by magic, not by name
    t.write_bytes(lzma.compress((DATA / "synthetic_trace_valid.txt").read_bytes()))
    assert check_files([d], t).status == "PASS"


def test_lost_sample_file_is_error() -> None:
    v = check_files([DATA / "synthetic_dump_valid.txt"], DATA / "synthetic_trace_lost.txt")
    assert v.status == "ERROR" and "lost trace events" in v.reason and v.counts["lost_events"] == 2


def synth(tmp: bool = False, **kw: int) -> tuple[list[Snapshot], list[SpteEvent | PageEvent]]:
    buf = io.StringIO()
    cap = generate(buf, **{"events": 4000, "pages": 40, "seed": 7, **kw})
    snaps = [parse_dump(t, f"dump{i}") for i, t in enumerate(cap.dumps)]
    return snaps, list(parse_trace(buf.getvalue().splitlines()))


def test_synthetic_capture_passes() -> None:
    snaps, events = synth()
    v = check_both(snaps, events)
    assert v.status == "PASS", v
    c = v.counts
    assert c["events"] == len(events) >= 4000 and c["snapshot_comparisons"] == len(snaps)
    assert c["vms"] == 5 and c["pages"] > 40 and c["sptes"] > 100
    allocs = Counter(e.spt for e in events if isinstance(e, PageEvent) and e.op == "alloc")
    assert c["pages_replayed"] == sum(allocs.values()) and max(allocs.values()) > 1  # spts were reused
    random.Random(1).shuffle(events)  # file order does not matter, seq order does
    assert check_both(snaps, events).status == "PASS"


def test_synthetic_capture_with_a_dropped_event_is_error() -> None:
    snaps, events = synth()
    del events[len(events) // 3]
    v = check_both(snaps, events)
    assert v.status == "ERROR" and "lost trace events" in v.reason


def test_synthetic_capture_with_a_flipped_bit_fails() -> None:
    snaps, events = synth()
    big = max(snaps, key=lambda s: len(s.pages))
    p = big.pages[0]
    i = next(iter(p.sptes))
    p.bitmap ^= 1 << i
    v = check_both(snaps, events)
    assert v.status == "FAIL"
    assert kinds(v)["snapshot_bitmap_mismatch"] == 1 and kinds(v)["count_mismatch"] == 1


# -- the replay ------------------------------------------------------------------------------------------

def test_replay_happy_path_and_dump_at_its_seq() -> None:
    events = [alloc(1), spte(2, 0, NP, RW, 1), spte(3, 1, NP, WP, 2), spte(4, 2, RO, RW, 3),
              spte(5, 0, RW, RO, 2), spte(6, 2, RW, NP, 1)]
    # the dump at seq 3 sees the first three events only; the one at 6 all of them
    snaps = [EMPTY0, snap(3, [page({0: RW, 1: WP})]), snap(6, [page({0: RO, 1: WP})])]
    v = check_both(snaps, events)
    assert v.status == "PASS", v
    assert v.counts["snapshot_comparisons"] == 3 and v.counts["events"] == 6 and v.counts["pages_replayed"] == 1


def test_wrong_old_state() -> None:
    events = [alloc(1), spte(2, 0, NP, RW, 1), spte(3, 1, RW, RO, 1)]  # idx 1 was never made writable
    v = check_both([EMPTY0], events)
    assert v.status == "FAIL" and kinds(v) == {"old_state_mismatch": 1}
    inc = v.inconsistencies[0]
    assert (inc.idx, inc.expected, inc.actual, inc.seq) == (1, 0, 1, 3)
    assert inc.recent_events == [  # its page's alloc/free are shown too: they bound the spte's history
        "seq=0x1 page alloc gfn=0x12200 count=0 [trace line 101]",
        f"seq=0x3 idx=1 old={RW:#x}(pw) -> new={RO:#x}(-) count=1 [trace line 103]"]


def test_event_without_change() -> None:
    events = [alloc(1), spte(2, 0, NP, RW, 1), spte(3, 0, RW, WP, 1)]  # both possibly writable
    v = check_both([EMPTY0], events)
    assert v.status == "FAIL" and kinds(v) == {"no_change_event": 1}


def test_count_mismatch_reported_once_per_drift() -> None:
    events = [alloc(1), spte(2, 0, NP, RW, 2), spte(3, 1, NP, RW, 3), spte(4, 2, NP, RW, 4)]
    v = check_both([EMPTY0], events)
    assert v.status == "FAIL" and kinds(v) == {"event_count_mismatch": 1}
    inc = v.inconsistencies[0]
    assert (inc.seq, inc.expected, inc.actual) == (2, 1, 2)


def test_seq_gap_is_error() -> None:
    events = [alloc(1), spte(2, 0, NP, RW, 1), spte(4, 1, NP, RW, 3)]
    v = check_both([EMPTY0], events)
    assert v.status == "ERROR" and "lost trace events" in v.reason and "seq 0x3..0x3 missing" in v.reason


def test_duplicate_seq_is_error() -> None:
    events = [alloc(1), spte(2, 0, NP, RW, 1), spte(2, 0, NP, RW, 1)]
    v = check_both([EMPTY0], events)
    assert v.status == "ERROR" and "duplicate seq 0x2" in v.reason


def test_ftrace_lost_events_is_error() -> None:
    v = check_both([EMPTY0], [alloc(1), free(2)], lost_events=5)
    assert v.status == "ERROR" and "lost trace events" in v.reason


def test_free_with_bits_set() -> None:
    events = [alloc(1), spte(2, 0, NP, RW, 1), spte(3, 9, NP, WP, 2), free(4, count=2)]
    v = check_both([EMPTY0], events)
    assert v.status == "FAIL" and kinds(v) == {"free_with_bits": 1}
    inc = v.inconsistencies[0]
    assert (inc.idx, inc.expected, inc.actual) == (None, 0, 2) and "0, 9" in inc.detail
    assert [e.split()[0] for e in inc.recent_events] == ["seq=0x1", "seq=0x2", "seq=0x3", "seq=0x4"]


def test_free_count_differs() -> None:
    v = check_both([EMPTY0], [alloc(1), spte(2, 0, NP, RW, 1), spte(3, 0, RW, NP, 0), free(4, count=1)])
    assert v.status == "FAIL" and kinds(v) == {"free_count_mismatch": 1}


def test_spt_reuse_after_free() -> None:
    events = [alloc(1), spte(2, 0, NP, RW, 1), spte(3, 0, RW, NP, 0), free(4), alloc(5, gfn=0x40000),
              spte(6, 7, NP, RW, 1)]
    v = check_both([EMPTY0, snap(6, [page({7: RW}, gfn=0x40000)])], events)
    assert v.status == "PASS", v
    assert v.counts["pages_replayed"] == 2


def test_reuse_after_leaky_free_starts_from_zero() -> None:
    events = [alloc(1), spte(2, 0, NP, RW, 1), free(3, count=1), alloc(4), spte(5, 0, NP, RW, 1)]
    v = check_both([EMPTY0], events)
    assert kinds(v) == {"free_with_bits": 1}  # the new incarnation is not blamed


def test_alloc_count_nonzero_and_double_alloc() -> None:
    v = check_both([EMPTY0], [alloc(1, count=3), alloc(2)])
    assert v.status == "FAIL" and kinds(v) == {"alloc_count_nonzero": 1, "double_alloc": 1}


def test_snapshot_disagrees_with_replay() -> None:
    events = [alloc(1), spte(2, 0, NP, RW, 1)]
    dumped = page({0: RW, 5: RW})  # self-consistent, but bit 5 was never traced
    v = check_both([EMPTY0, snap(2, [dumped])], events)
    assert v.status == "FAIL" and kinds(v) == {"snapshot_bitmap_mismatch": 1, "snapshot_count_mismatch": 1}
    by = {i.kind: i for i in v.inconsistencies}
    b = by["snapshot_bitmap_mismatch"]
    assert (b.idx, b.expected, b.actual, b.seq) == (5, 0, 1, 2)
    c = by["snapshot_count_mismatch"]
    assert (c.expected, c.actual) == (1, 2)


def test_snapshot_missing_a_live_page_with_bits() -> None:
    events = [alloc(1), alloc(2, spt=SPT2), spte(3, 7, NP, RW, 1, spt=SPT2)]
    v = check_both([EMPTY0, snap(3, [page({})])], events)
    assert v.status == "FAIL" and kinds(v) == {"snapshot_page_missing": 1}
    assert v.inconsistencies[0].spt == SPT2


def test_snapshot_may_miss_a_zapped_page_awaiting_free() -> None:
    # Zapped pages leave active_mmu_pages before their free event; with no bits left that is fine.
    events = [alloc(1), alloc(2, spt=SPT2), spte(3, 7, NP, RW, 1, spt=SPT2), spte(4, 7, RW, NP, 0, spt=SPT2)]
    v = check_both([EMPTY0, snap(4, [page({})])], events)
    assert v.status == "PASS", v


def test_other_vm_events_do_not_matter_for_a_dump() -> None:
    events = [alloc(1), alloc(2, vm=VM2), spte(3, 4, NP, RW, 1, vm=VM2), spte(4, 0, NP, RW, 1)]
    v = check_both([EMPTY0, snap(3, [page({})]), snap(4, [page({4: RW})], vm=VM2)], events)
    assert v.status == "PASS", v
    assert v.counts["vms"] == 2


def test_spte_event_for_untraced_page_is_error() -> None:
    v = check_both([EMPTY0], [spte(1, 0, NP, RW, 1), spte(2, 1, NP, RW, 2)])
    assert v.status == "ERROR" and "capture fault" in v.reason and "not allocated in the trace" in v.reason
    assert v.counts["capture_faults"] == 1  # one per page, not per event


def test_dumped_page_not_in_trace_is_error() -> None:
    v = check_both([EMPTY0, snap(1, [page({}), page({}, spt=SPT2)])], [alloc(1)])
    assert v.status == "ERROR" and "capture fault" in v.reason and f"spt={SPT2:#x}" in v.reason


def test_trace_ending_before_a_dump_is_error() -> None:
    v = check_both([EMPTY0, snap(5, [page({0: RW})])], [alloc(1), spte(2, 0, NP, RW, 1)])
    assert v.status == "ERROR" and "past the last replayable event" in v.reason


# -- what is not a pass ----------------------------------------------------------------------------------

def test_tdp_mmu_only_is_skip() -> None:
    v = check_files([DATA / "synthetic_dump_tdp_only.txt"], None)
    assert v.status == "SKIP" and v.reason.startswith("only TDP MMU pages (out of scope)")
    assert check_both([snap(0, [], tdp=12)], []).status == "SKIP"


def test_nothing_is_error() -> None:
    v = check_both([], [])
    assert v.status == "ERROR" and "zero evidence" in v.reason
    v = check_both([snap(0, [])], [])
    assert v.status == "ERROR" and "zero evidence" in v.reason


def test_events_without_dump_is_error() -> None:
    v = check_both([], [alloc(1)])
    assert v.status == "ERROR" and "masks are unknown" in v.reason


def test_truncated_or_incomplete_dump_is_error() -> None:
    assert check_both([snap(0, [page({0: RW})], truncated=True)], []).status == "ERROR"
    v = check_files([DATA / "synthetic_dump_incomplete.txt"], None)
    assert v.status == "ERROR" and "incomplete" in v.reason


def test_proven_inconsistency_beats_capture_fault() -> None:
    bad = page({0: RW}, count=0)
    v = check_both([snap(0, [bad, page({}, spt=SPT2)], truncated=True)], [])
    assert v.status == "FAIL" and "also not judgeable" in v.reason and "truncated" in v.reason


def test_trace_without_pw_events(tmp_path: Path) -> None:
    t = tmp_path / "trace"
    t.write_text("# tracer: nop\n")
    v = check_files([DATA / "synthetic_dump_valid.txt"], t)
    assert v.status == "ERROR" and "tracing off" in v.reason
    assert check_files([DATA / "synthetic_dump_valid.txt"], None).status == "PASS"  # dump-only check


def test_masks_disagree_is_error() -> None:
    other = Masks(M.present, M.writable, 1 << 58, M.nonpresent)
    v = check_both([EMPTY0, snap(0, [], vm=VM2, masks=other), snap(1, [page({})])], [alloc(1)])
    assert v.status == "ERROR" and "masks" in v.reason


def test_malformed_capture_is_error_naming_the_line(tmp_path: Path) -> None:
    d = tmp_path / "dump"
    d.write_text((DATA / "synthetic_dump_valid.txt").read_text().replace("spte 64 ", "spte 6x4 "))
    v = check_files([d], None)
    assert v.status == "ERROR" and f"{d}:15:" in v.reason
    t = tmp_path / "trace"
    t.write_text((DATA / "synthetic_trace_valid.txt").read_text().replace("count=3", "count=x", 1))
    v = check_files([DATA / "synthetic_dump_valid.txt"], t)
    assert v.status == "ERROR" and f"{t}:19:" in v.reason
    v = check_files([tmp_path / "missing"], None)
    assert v.status == "ERROR" and "cannot read" in v.reason


def test_max_reported() -> None:
    pages = [page({i: RW for i in range(10)}, spt=SPT + n * 0x1000, count=0) for n in range(30)]
    v = check_both([snap(0, pages)], [], max_reported=5)
    assert v.status == "FAIL" and len(v.inconsistencies) == 5 and v.counts["inconsistencies"] == 30
    assert "30 inconsistencies (count_mismatch: 30)" in v.reason


def test_inconsistency_message() -> None:
    events = [alloc(1), spte(2, 3, NP, RW, 1), spte(3, 3, RW, NP, 0), spte(4, 3, RO, RW, 1)]
    dumped = ShadowPage(SPT, 0x12200, ROLE, 1, False, False, 1, 1 << 3, {3: RO})  # bit set, spte read-only
    v = check_both([EMPTY0, snap(4, [dumped])], events)
    assert v.status == "FAIL" and kinds(v) == {"bit_set_not_writable": 1}  # the replay agrees with the bit
    inc = v.inconsistencies[0]
    assert isinstance(inc, Inconsistency) and inc.role_decoded == decode_role(ROLE)
    text = str(inc)
    for part in (f"VM {VM:#x}", "gfn=0x12200", "level 1", "level=1 direct=1", "spte 3", "expected 0",
                 "actual 1", "last 4 trace events for this spte", f"seq=0x4 idx=3 old={RO:#x}(-)",
                 "seq=0x1 page alloc"):
        assert part in text, part
    assert text.count("\n    seq=") == 4
    assert str(v).startswith("FAIL: ")


def test_format_dump_of_a_built_snapshot_parses_back() -> None:
    s = snap(7, [page({0: RW, 300: WP, 511: RO})])
    back = parse_dump(format_dump(s), "x")
    assert back.pages[0].bitmap == s.pages[0].bitmap == (1 | 1 << 300)
    assert check_both([back], []).status == "PASS"


@pytest.mark.parametrize("seed", [1, 2])
def test_synth_seeds_pass(seed: int) -> None:
    snaps, events = synth(seed=seed, events=3000, pages=25)
    assert check_both(snaps, events).status == "PASS"


def test_free_of_untraced_page_is_error_and_spt_reusable() -> None:
    events = [free(1), alloc(2), spte(3, 0, NP, RW, 1)]
    v = check_both([EMPTY0, snap(3, [page({0: RW})])], events)
    assert v.status == "ERROR" and "a free event at seq 0x1" in v.reason
    assert v.counts["snapshot_comparisons"] == 2 and v.counts["capture_faults"] == 1


def test_bench_runs_on_a_small_capture(capsys: pytest.CaptureFixture[str]) -> None:
    from devtools.bench import main
    assert main(["--events", "3000", "--pages", "20"]) == 0
    out = capsys.readouterr().out
    assert "events/s" in out and "verdict: PASS" in out
