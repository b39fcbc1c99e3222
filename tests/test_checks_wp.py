"""Write-protect-all's invariants (harness/checks/README.md, "Write-protect-all"): the replay of its trace
events and the check of a v2 dump, on small hand-made captures in the shapes of FORMAT.md v2.

The scenario: a root R (level 4) links child C (level 3), which maps a 1G page. Write-protect-all is
enabled, R is loaded (its writable link to C becomes read-only), then a write loads C and makes the link
writable again. Each mutation of that story is one bug of the port's kind.
"""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from checkers import check_both

from devtools.synth import DEFAULT_MASKS as M
from harness.checks.files import check_files, trace_dat_lines
from harness.checks.parsers.debugfs import ShadowPage, Snapshot, WpAll, parse_dump
from harness.checks.parsers.trace import (
    AnyEvent,
    PageEvent,
    SpteEvent,
    WpAllEvent,
    WpLoadEvent,
    WpRootEvent,
    parse_trace,
)
from harness.checks.reference.consistency import Verdict, check_snapshot

VM = 0xFFFF888004A3C000
PAGE_OFFSET = 0xFFFF888000000000
PA_R, PA_C = 0x6E2D000, 0x6E2E000
R, C = PAGE_OFFSET + PA_R, PAGE_OFFSET + PA_C
NP = 1 << 63
LINK_W = PA_C | 0x800 | 0x27  # present, writable, user, accessed: a writable non-leaf spte to C
LINK_RO = PA_C | 0x800 | 0x25  # the same, write-protected by a load
HUGE_WP = 0x40000000 | 0x800 | 0x400 | 0xA5  # a 1G leaf (PS), MMU-writable, W clear: possibly writable
ON = 1 << 63


def ev(kind: str, *a: int) -> AnyEvent:
    """One event with seq 0 (renumbered by `story`)."""
    if kind == "alloc":
        spt, level = a
        return PageEvent(0, VM, spt, 0, 0x1700 | level, level, "alloc", 0, 0)
    if kind == "spte":
        spt, level, idx, old, new, count = a
        return SpteEvent(0, VM, spt, 0, 0x1700 | level, level, idx, old, new, count, 0)
    if kind == "all":
        enable, gen = a
        return WpAllEvent(0, VM, bool(enable), gen, 0)
    if kind == "root":
        vcpu, spt, level, root_gen, gen, count = a
        return WpRootEvent(0, VM, vcpu, spt, 0, 0x1700 | level, level, root_gen, gen, count, 0)
    spt, level, old_gen, gen, count = a
    return WpLoadEvent(0, VM, spt, 0, 0x1700 | level, level, old_gen, gen, count, 0)


def story(*drop: int, **change: AnyEvent) -> list[AnyEvent]:
    """The correct sequence, with the events at the given positions dropped or changed; seq 1, 2, ..."""
    evs: list[AnyEvent] = [
        ev("alloc", R, 4),                          # 0
        ev("alloc", C, 3),                          # 1
        ev("spte", R, 4, 0, NP, LINK_W, 1),         # 2: R links C, writable
        ev("spte", C, 3, 7, NP, HUGE_WP, 1),        # 3: C maps a 1G page
        ev("all", 1, 1),                            # 4: enable, generation 1
        ev("load", R, 4, 0, 1, 1),                  # 5: the root is loaded ...
        ev("spte", R, 4, 0, LINK_W, LINK_RO, 0),    # 6: ... its link becomes read-only
        ev("load", C, 3, 0, 1, 1),                  # 7: a write below: C is loaded (its leaf keeps MMU-writable)
        ev("spte", R, 4, 0, LINK_RO, LINK_W, 1),    # 8: then the link is writable again
    ]
    for k, e in change.items():
        evs[int(k.lstrip("_"))] = e
    out = [e for i, e in enumerate(evs) if i not in drop]
    return [replace(e, seq=i, line_no=100 + i) for i, e in enumerate(out, 1)]


def dump(seq: int, r_gen: int, c_gen: int, link: int = LINK_W, indicator: int = ON | 1) -> Snapshot:
    pages = [ShadowPage(R, 0, 0x1704, 4, False, False, 1 if M.possibly_writable(link) else 0,
                        1 if M.possibly_writable(link) else 0, {0: link}, 10, r_gen),
             ShadowPage(C, 0, 0x1703, 3, False, False, 1, 1 << 7, {7: HUGE_WP}, 12, c_gen)]
    return Snapshot(VM, seq, M, 0, pages, False, True, f"dump@{seq}", WpAll(indicator, PAGE_OFFSET))


EMPTY = Snapshot(VM, 0, M, 0, [], False, True, "dump@0", WpAll(0, PAGE_OFFSET))


def kinds(v: Verdict) -> Counter[str]:
    return Counter(i.kind for i in v.inconsistencies)


def test_the_correct_story_passes_and_counts_its_checks() -> None:
    v = check_both([EMPTY, dump(9, 1, 1)], story())
    assert v.status == "PASS", v
    # two loads replayed, the writable link of event 8 judged, and the same link in the dump
    assert v.counts["wp_checks"] == 4


def test_a_load_that_leaves_a_link_writable_fails_naming_the_spte() -> None:
    v = check_both([EMPTY], story(6, _8=ev("spte", R, 4, 0, LINK_RO, LINK_W, 1)))  # the load cleared nothing
    assert kinds(v)["wp_load_left_writable"] == 1, v
    inc = next(i for i in v.inconsistencies if i.kind == "wp_load_left_writable")
    assert (inc.spt, inc.idx, inc.level, inc.seq) == (R, 0, 4, 6)
    assert "seq 0x7" in inc.detail  # the event that came instead
    assert any("kvm_mmu_wp_load" in e for e in inc.recent_events)


def test_a_writable_link_to_a_child_not_loaded_fails() -> None:
    v = check_both([EMPTY], story(7))  # C is never loaded before the link becomes writable
    assert kinds(v) == {"wp_stale_child_writable": 1}, v
    inc = v.inconsistencies[0]
    assert (inc.spt, inc.idx, inc.expected, inc.actual) == (R, 0, "child at generation 0x1", "child at 0x0")
    assert "gfn=0x0 level 3" in inc.detail and "1 possibly-writable" in inc.detail


def test_the_same_link_in_a_dump_fails() -> None:
    incs = check_snapshot(dump(9, 1, 0))
    assert [(i.kind, i.spt, i.idx) for i in incs] == [("wp_snapshot_stale_child_writable", R, 0)]
    assert f"spt={C:#x}" in incs[0].detail
    # read-only link, a page not at the current generation, or write-protect-all disabled: nothing to judge
    assert check_snapshot(dump(9, 1, 0, link=LINK_RO)) == []
    assert check_snapshot(dump(9, 0, 0)) == []
    assert check_snapshot(dump(9, 1, 0, indicator=1)) == []


def test_a_load_against_the_wrong_generation_or_count_fails() -> None:
    v = check_both([EMPTY], story(_5=ev("load", R, 4, 0, 2, 1)))  # gen 2, but the indicator holds 1
    assert kinds(v)["wp_load_generation"] == 1, v
    v = check_both([EMPTY], story(4, _5=ev("load", R, 4, 0, 0, 1)))  # loaded while never enabled
    assert kinds(v)["wp_load_generation"] >= 1, v
    v = check_both([EMPTY], story(_5=ev("load", R, 4, 0, 1, 0)))  # walks by a counter the replay does not hold
    assert kinds(v)["wp_load_count_mismatch"] == 1, v


def test_a_load_of_a_page_already_at_the_current_generation_fails() -> None:
    # W1: C is loaded twice; the second load finds it at generation 1 already, yet says it was stale
    evs = story()
    again = [*evs, replace(ev("load", C, 3, 1, 1, 1), seq=10, line_no=110)]
    v = check_both([EMPTY], again)
    assert kinds(v) == {"wp_load_current_page": 1}, v
    inc = v.inconsistencies[0]
    assert (inc.spt, inc.level, inc.seq, inc.expected, inc.actual) == (C, 3, 10, "a page older than 0x1", "page at 0x1")
    # a page created after the enable is at its generation from the start: loading it is the same fault
    late = [*evs, replace(ev("alloc", C + 0x1000, 3), seq=10, line_no=110),
            replace(ev("load", C + 0x1000, 3, 1, 1, 0), seq=11, line_no=111)]
    assert kinds(check_both([EMPTY], late)) == {"wp_load_current_page": 1}


def test_an_enable_that_does_not_advance_the_generation_fails() -> None:
    # W4: the first enable must leave generation 0 (a new VM's), and each later one pass every earlier one
    v = check_both([EMPTY], story(5, 6, 7, _4=ev("all", 1, 0), _8=ev("spte", R, 4, 0, LINK_W, LINK_RO, 0)))
    assert kinds(v)["wp_enable_generation_reused"] == 1, v
    inc = next(i for i in v.inconsistencies if i.kind == "wp_enable_generation_reused")
    assert (inc.vm, inc.level, inc.seq, inc.actual) == (VM, 0, 5, "0x0") and "the VM's creation" in inc.detail
    assert str(inc).startswith(f"wp_enable_generation_reused: VM {VM:#x} at seq 0x5: expected a generation above")
    # enable 1, disable, enable 1 again: the second enable reuses the first's generation
    evs = story()
    cycle = [*evs, *(replace(e, seq=10 + i, line_no=110 + i)
                     for i, e in enumerate([ev("all", 0, 1), ev("all", 1, 1)]))]
    v = check_both([EMPTY], cycle)
    assert kinds(v) == {"wp_enable_generation_reused": 1}, v
    inc = v.inconsistencies[0]
    assert "the enable at seq 0x5" in inc.detail and inc.expected == "a generation above 0x1"
    assert any("enable=1 gen=0x1" in e for e in inc.recent_events), inc.recent_events
    # ... and enable 2 is right, once a vCPU reloads its root
    cycle[-1] = replace(cycle[-1], gen=2)
    reload = [replace(ev("load", R, 4, 1, 2, 1), seq=12, line_no=112), replace(ev("spte", R, 4, 0, LINK_W, LINK_RO, 0),
                                                                            seq=13, line_no=113)]
    assert check_both([EMPTY], [*cycle, *reload]).status == "PASS"


def test_an_enable_that_no_load_follows_is_not_judged() -> None:
    # the enable of the story, and then nothing: the VM had a writable link and a 1G page to protect
    v = check_both([EMPTY], story(5, 6, 7, 8))
    assert v.status == "SKIP" and v.reason.startswith("write-protect-all not judged: write-protect-all was enabled"
                                                       " at seq 0x5"), v
    assert ("with 2 possibly-writable sptes in 2 shadow pages, and no page was loaded nor any vCPU's root traced"
            " after it") in v.reason
    # the same when a disable comes first, or a second enable (each enable is waited for on its own)
    off = [*story(5, 6, 7, 8), replace(ev("all", 0, 1), seq=6, line_no=106)]
    assert check_both([EMPTY], off).status == "SKIP"
    # nothing to protect at the enable: nothing to judge, nothing missed
    bare = [replace(e, seq=i, line_no=100 + i) for i, e in enumerate([ev("alloc", R, 4), ev("all", 1, 1)], 1)]
    assert check_both([EMPTY], bare).status == "PASS"


def numbered(evs: list[AnyEvent]) -> list[AnyEvent]:
    return [replace(e, seq=i, line_no=100 + i) for i, e in enumerate(evs, 1)]


def test_a_vcpu_entering_with_its_reloaded_root_passes() -> None:
    # W5: after the enable, vCPU 0 reloads R (a load) and enters with it, at generation 1
    evs = story()
    ok = numbered([*evs[:7], ev("root", 0, R, 4, 1, 1, 0), *evs[7:]])
    v = check_both([EMPTY, dump(10, 1, 1)], ok)
    assert v.status == "PASS" and v.counts["wp_checks"] == 5, v
    # a root created after the enable is at the generation from the start
    new_root = R + 0x2000
    fresh = numbered([*evs[:5], ev("alloc", new_root, 4), ev("root", 1, new_root, 4, 1, 1, 0)])
    v = check_both([EMPTY], fresh)
    assert v.status == "PASS" and v.counts["wp_checks"] == 1, v


def test_a_vcpu_entering_with_a_stale_root_fails() -> None:
    # W5: the enable, then vCPU 0 enters with R as it was: never loaded, its writable link to C intact
    v = check_both([EMPTY], numbered([*story()[:5], ev("root", 0, R, 4, 0, 1, 1)]))
    assert kinds(v) == {"wp_stale_root": 1}, v
    inc = v.inconsistencies[0]
    assert (inc.spt, inc.level, inc.seq, inc.expected, inc.actual) == (R, 4, 6, "a root at generation 0x1",
                                                                     "root at 0x0")
    assert inc.detail.startswith("vCPU 0 enters the guest with a root that was neither loaded nor created")
    # the root's own generation or the indicator's not as replayed; a counter the replay does not hold
    v = check_both([EMPTY], numbered([*story()[:5], ev("root", 0, R, 4, 1, 1, 1)]))
    assert kinds(v) == {"wp_root_generation": 1}, v
    v = check_both([EMPTY], numbered([*story()[:7], ev("root", 0, R, 4, 1, 2, 0)]))
    assert kinds(v) == {"wp_root_generation": 1}, v
    v = check_both([EMPTY], numbered([*story()[:7], ev("root", 0, R, 4, 1, 1, 3)]))
    assert kinds(v) == {"wp_root_count_mismatch": 1}, v


def test_a_root_event_judges_an_enable_that_no_load_followed() -> None:
    # the enable of the story, then vCPU 0 enters with a new root and does nothing more: judged, not SKIP
    new_root = R + 0x2000
    evs = numbered([*story()[:5], ev("alloc", new_root, 4), ev("root", 0, new_root, 4, 1, 1, 0)])
    assert check_both([EMPTY], evs).status == "PASS"
    assert check_both([EMPTY], evs[:6]).status == "SKIP"


def test_a_root_event_reads_back_from_its_trace_line() -> None:
    line = ("  dirty_log_enable-812   [001] .....   101.250001: kvm_mmu_wp_root: seq=0x1c9 vm=0xffa0000000045000"
            " vcpu=3 spt=0xff1100000a16f000 gfn=0x0 role=0x1704 level=4 root_gen=0x1 gen=0x1 count=1\n")
    (e,) = list(parse_trace([line]))
    assert e == WpRootEvent(0x1C9, 0xFFA0000000045000, 3, 0xFF1100000A16F000, 0, 0x1704, 4, 1, 1, 1, 1)
    from harness.checks.parsers.trace import format_event
    assert line.split(": ", 1)[1].strip() == format_event(e)


def test_wp_events_are_part_of_the_sequence() -> None:
    evs = story()
    del evs[4]  # the enable's seq is missing: events were lost
    v = check_both([EMPTY], evs)
    assert v.status == "ERROR" and "seq 0x5..0x5 missing" in v.reason


def test_a_v2_dump_round_trips() -> None:
    text = "\n".join([
        "kvm-pw-sptes v2", f"vm {VM:#x}", "seq 0x9",
        "masks present=0x800 writable=0x2 mmu_writable=0x400 nonpresent=0x8000000000000000",
        "tdp_mmu_pages 0", f"wp_all indicator={ON | 1:#x} page_offset={PAGE_OFFSET:#x}",
        f"page spt={R:#x} gfn=0x0 role=0x1704 level=4 invalid=0 unsync=0 count=1 wp_gen=0x1 bitmap="
        + ",".join(["0000000000000001"] + ["0" * 16] * 7),
        f"spte 0 {LINK_W:#018x}",
        f"page spt={C:#x} gfn=0x0 role=0x1703 level=3 invalid=0 unsync=0 count=1 wp_gen=0x0 bitmap="
        + ",".join(["0000000000000080"] + ["0" * 16] * 7),
        f"spte 7 {HUGE_WP:#018x}",
        "end pages=2 sptes=2 truncated=0", ""])
    s = parse_dump(text, "v2")
    assert s.wp_all is not None and s.wp_all.enabled and s.wp_all.gen == 1
    assert [p.wp_gen for p in s.pages] == [1, 0]
    assert [i.kind for i in check_snapshot(s)] == ["wp_snapshot_stale_child_writable"]


# -- a real capture: shadow paging, dirty_log_enable_test -c 2 -m 64 -v 2 (kvm.shadow.dirty_log_enable_test of
# `make boot-test`, 2026-11-30): the guest's trace.dat and its three dumps (the last one taken while
# write-protect-all was enabled at generation 2)

REAL = Path(__file__).parent / "data" / "real" / "shadow-enable-test"
DUMPS = sorted(REAL.glob("pw_sptes.*.txt.gz"))


def test_the_real_capture_passes_on_write_protect_all_evidence() -> None:
    v = check_files(DUMPS, REAL / "trace.dat")
    assert v.status == "PASS", v
    c = v.counts
    assert (c["wp_all_enables"], c["wp_all_disables"], c["wp_loads"]) == (2, 2, 76)
    assert c["wp_checks"] == 187 and c["events"] == 33156  # == the ring buffer's entries (ring-stats.txt)


def _real_trace_text(tmp_path: Path, edit: Callable[[list[str]], None]) -> Path:
    with trace_dat_lines(REAL / "trace.dat") as f:
        lines = list(f)
    edit(lines)
    out = tmp_path / "trace.txt"
    out.write_text("".join(lines))
    return out


def test_a_load_against_another_generation_in_the_real_trace_fails(tmp_path: Path) -> None:
    def edit(lines: list[str]) -> None:
        i = next(i for i, line in enumerate(lines) if "kvm_mmu_wp_load:" in line)
        lines[i] = lines[i].replace(" gen=0x1 ", " gen=0x3 ")
    v = check_files(DUMPS, _real_trace_text(tmp_path, edit))
    assert v.status == "FAIL" and kinds(v)["wp_load_generation"] >= 1, v
    first = next(i for i in v.inconsistencies if i.kind == "wp_load_generation")
    assert (first.seq, first.level, first.actual) == (0x155626, 4, "enabled, gen 0x3, page at 0x0")


def test_a_second_enable_at_the_first_ones_generation_in_the_real_trace_fails(tmp_path: Path) -> None:
    def edit(lines: list[str]) -> None:
        enables = [i for i, line in enumerate(lines) if "kvm_mmu_wp_all:" in line and "enable=1" in line]
        assert len(enables) == 2 and " gen=0x2" in lines[enables[1]]
        lines[enables[1]] = lines[enables[1]].replace(" gen=0x2", " gen=0x1")
    v = check_files(DUMPS, _real_trace_text(tmp_path, edit))
    assert v.status == "FAIL" and kinds(v)["wp_enable_generation_reused"] == 1, v


def test_a_load_of_a_current_page_in_the_real_trace_fails(tmp_path: Path) -> None:
    # the second load of the real trace, repeated right after itself (seq renumbered after it): a page that
    # the first one made current is loaded again
    def edit(lines: list[str]) -> None:
        import re
        i = next(i for i, line in enumerate(lines) if "kvm_mmu_wp_load:" in line)
        seq = int(re.search(r"seq=(0x[0-9a-f]+)", lines[i]).group(1), 16)
        def bump(line: str) -> str:
            m = re.search(r"seq=(0x[0-9a-f]+)", line)
            return line if m is None or int(m.group(1), 16) <= seq else \
                line.replace(m.group(0), f"seq={int(m.group(1), 16) + 1:#x}")
        lines[:] = [bump(line) for line in lines]
        again = lines[i].replace(f"seq={seq:#x}", f"seq={seq + 1:#x}").replace(" old_gen=0x0", " old_gen=0x1")
        lines.insert(i + 1, again)
    v = check_files(DUMPS, _real_trace_text(tmp_path, edit))
    assert v.status == "FAIL" and kinds(v)["wp_load_current_page"] == 1, v


def test_a_stale_child_below_a_writable_link_in_the_real_dump_fails(tmp_path: Path) -> None:
    text = gzip.decompress(DUMPS[-1].read_bytes()).decode()
    snap = parse_dump(text)
    assert snap.wp_all is not None and snap.wp_all.enabled and snap.wp_all.gen == 2
    # a writable non-leaf spte of a page at generation 2: its child must be at generation 2 too
    by_pa = {p.spt - snap.wp_all.page_offset: p for p in snap.pages}
    child = next(by_pa[v & 0xFFFFFFFFFF000] for p in snap.pages if p.level > 1 and p.wp_gen == 2
                 for v in p.sptes.values() if v & 0x802 == 0x802 and not v & 0x80 and v & 0xFFFFFFFFFF000 in by_pa)
    stale = tmp_path / "pw_sptes.3.txt"
    stale.write_text("\n".join(line.replace("wp_gen=0x2", "wp_gen=0x1") if line.startswith(f"page spt={child.spt:#x} ")
                               else line for line in text.split("\n")))
    v = check_files([*DUMPS[:-1], stale], REAL / "trace.dat")
    assert v.status == "FAIL", v
    assert kinds(v)["wp_snapshot_stale_child_writable"] >= 1 and kinds(v)["snapshot_wp_gen_mismatch"] == 1, v


def test_tdp_mmu_mode_with_only_a_disable_is_still_out_of_scope() -> None:
    # kvm.tdp_mmu.*: kvm_mmu_write_protect_all_pages(kvm, false) runs when logging stops, nothing else
    tdp = Snapshot(VM, 4, M, 40, [], False, True, "dump@4", WpAll(1, PAGE_OFFSET))
    v = check_both([tdp], [WpAllEvent(3, VM, False, 0, 1), WpAllEvent(4, VM, False, 0, 2)])
    assert v.status == "SKIP" and "only TDP MMU pages" in v.reason, v
    assert check_both([replace(tdp, tdp_mmu_pages=0)], [WpAllEvent(3, VM, False, 0, 1)]).status == "ERROR"


# -- real captures of instrumentation 0005 (kvm_mmu_wp_root), dirty_log_enable_test -c 2 -m 64 -v 2, 2026-12-03:
# the default series in shadow mode, and the wp-stale-root-kept mutant in tdp_legacy (its selftest lost a write)

ROOTS = Path(__file__).parent / "data" / "real" / "shadow-enable-test-roots"
STALE = Path(__file__).parent / "data" / "real" / "tdp_legacy-stale-root"


def test_the_real_capture_with_roots_passes_on_them() -> None:
    v = check_files(sorted(ROOTS.glob("pw_sptes.*.txt.gz")), ROOTS / "trace.dat")
    assert v.status == "PASS", v
    c = v.counts
    # two enables, each followed by both vCPUs' entries on the reloaded root
    assert (c["wp_all_enables"], c["wp_loads"], c["wp_roots"], c["wp_checks"]) == (2, 76, 4, 194)
    assert c["events"] == 33164


def test_the_real_stale_root_mutant_fails_naming_each_vcpu() -> None:
    v = check_files(sorted(STALE.glob("pw_sptes.*.txt.gz")), STALE / "trace.dat")
    assert v.status == "FAIL" and kinds(v) == {"wp_stale_root": 2}, v
    assert v.counts["wp_loads"] == 0 and v.counts["wp_roots"] == 2
    first, second = v.inconsistencies
    assert (first.level, first.seq, first.actual) == (5, 0x84D51, "root at 0x0")
    assert first.detail.startswith("vCPU 0 ") and second.detail.startswith("vCPU 1 ")
    assert any("kvm_mmu_wp_root:" in e and "root_gen=0x0 gen=0x1" in e for e in first.recent_events)


def test_the_same_capture_without_its_root_events_is_not_judged(tmp_path: Path) -> None:
    # as a kernel without instrumentation 0005 would give it: the enable, then no load and no root; neither a
    # PASS nor a FAIL. The root events go, and every seq after them (the dump's too) closes up.
    import re
    with trace_dat_lines(STALE / "trace.dat") as f:
        lines = list(f)
    roots = [int(re.search(r"seq=(0x[0-9a-f]+)", x).group(1), 16) for x in lines if "kvm_mmu_wp_root:" in x]
    assert len(roots) == 2

    def closed_up(seq: int) -> int:
        return seq - sum(r < seq for r in roots)

    def renumber(line: str) -> str:
        m = re.search(r"seq=(0x[0-9a-f]+)", line)
        return line if m is None else line.replace(m.group(0), f"seq={closed_up(int(m.group(1), 16)):#x}")
    text = tmp_path / "trace.txt"
    text.write_text("".join(renumber(x) for x in lines if "kvm_mmu_wp_root:" not in x))
    dump_text = gzip.decompress((STALE / "pw_sptes.1.txt.gz").read_bytes()).decode()
    seq = int(re.search(r"^seq (0x[0-9a-f]+)$", dump_text, re.M).group(1), 16)
    dump = tmp_path / "pw_sptes.1.txt"
    dump.write_text(dump_text.replace(f"\nseq {seq:#x}\n", f"\nseq {closed_up(seq):#x}\n"))
    v = check_files([dump], text)
    assert v.status == "SKIP" and v.reason.startswith("write-protect-all not judged"), v
