"""The columnar checker against the object checker: PASS only where consistency.check passes, with the
same counts, and actually PASS on clean captures (else check_files would be slow for nothing).

Broken captures are made by mutating clean ones (synthetic, and the real write-protect-all capture) the
ways a kernel bug or a capture fault would: a state, a count, an index, an event lost or renumbered, a
dump's bit, count or generation, a load's generation. Whatever the mutation, either the columnar checker
hands over (None) or both say PASS with the same counts; and where consistency.check does not say PASS,
the columnar checker must have handed over.
"""

from __future__ import annotations

import functools
import gzip
import io
import random
from dataclasses import replace
from pathlib import Path

import pytest
from checkers import check_both, columnar_verdict

from devtools.synth import DEFAULT_MASKS as M
from devtools.synth import generate
from harness.checks.files import check_files, trace_dat_columns
from harness.checks.parsers.debugfs import ShadowPage, Snapshot, WpAll, parse_dump
from harness.checks.parsers.trace import (
    AnyEvent,
    PageEvent,
    SpteEvent,
    TraceStats,
    WpAllEvent,
    WpLoadEvent,
    parse_trace,
)
from harness.checks.parsers.tracedat import events_from_columns
from harness.results import PASS

REAL = Path(__file__).parent / "data" / "real" / "shadow-enable-test"


@functools.cache
def _synthetic() -> tuple[list[Snapshot], list[AnyEvent]]:
    buf = io.StringIO()
    cap = generate(buf, events=6000, pages=60, seed=7)
    return [parse_dump(t, f"dump{i}") for i, t in enumerate(cap.dumps)], list(parse_trace(buf.getvalue().splitlines()))


@functools.cache
def _real() -> tuple[list[Snapshot], list[AnyEvent]]:
    snaps = [parse_dump(gzip.decompress(p.read_bytes()).decode(), p.name) for p in sorted(REAL.glob("pw_sptes.*"))]
    return snaps, events_from_columns(trace_dat_columns(REAL / "trace.dat", TraceStats()))


def _fresh(capture: tuple[list[Snapshot], list[AnyEvent]]) -> tuple[list[Snapshot], list[AnyEvent]]:
    """A copy to break: mutate() changes pages in place and replaces events (which are never changed)."""
    snaps, events = capture
    return [replace(s, pages=[replace(p) for p in s.pages]) for s in snaps], list(events)


def synthetic() -> tuple[list[Snapshot], list[AnyEvent]]:
    """A synthetic capture (devtools.synth)."""
    return _fresh(_synthetic())


def real() -> tuple[list[Snapshot], list[AnyEvent]]:
    """The real capture of test_checks_wp (shadow paging, dirty_log_enable_test)."""
    return _fresh(_real())


@pytest.mark.parametrize("capture", [synthetic, real])
def test_a_clean_capture_passes_on_columns_as_on_objects(capture) -> None:
    snaps, events = capture()
    fast = columnar_verdict(snaps, events)
    assert fast is not None and fast.status == PASS
    assert check_both(snaps, events, wp_counts={k: fast.counts[k] for k in
                                                ("wp_all_enables", "wp_all_disables", "wp_loads")}).status == PASS


def test_check_files_takes_the_columnar_verdict_on_a_real_trace_dat(monkeypatch) -> None:
    import harness.checks.files as files

    taken = []
    real_check = files.check_capture_columns
    monkeypatch.setattr(files, "check_capture_columns", lambda *a: taken.append(real_check(*a)) or taken[-1])
    v = check_files(sorted(REAL.glob("pw_sptes.*")), REAL / "trace.dat")
    assert v.status == PASS and taken and taken[0] is v
    assert v.counts["wp_checks"] == 187 and v.counts["wp_loads"] == 76


def _renumber(events: list[AnyEvent]) -> list[AnyEvent]:
    order = sorted(events, key=lambda e: e.seq)
    first = order[0].seq
    return [replace(e, seq=first + i) for i, e in enumerate(order)]


MUTATIONS = ("old", "new", "count", "index", "drop", "drop-renumber", "dup-seq", "alloc", "bit", "dump-count",
             "dump-gen", "load-gen", "load-count", "upper", "enable-gen", "load-current")


def mutate(rng: random.Random, snaps: list[Snapshot], events: list[AnyEvent], kind: str | None = None) -> str:
    """Break the capture in place one way (`kind`, else chosen by rng); returns what was done."""
    spte_at = [i for i, e in enumerate(events) if isinstance(e, SpteEvent)]
    i = rng.choice(spte_at)
    e = events[i]
    assert isinstance(e, SpteEvent)
    how = MUTATIONS[rng.randrange(1 << 30) % len(MUTATIONS)] if kind is None else kind
    if how == "old":
        events[i] = replace(e, old=e.new)
    elif how == "new":
        events[i] = replace(e, new=e.old)
    elif how == "count":
        events[i] = replace(e, count=e.count + rng.choice([1, 2]))
    elif how == "index":
        events[i] = replace(e, idx=e.idx ^ 1)
    elif how in ("drop", "drop-renumber"):
        del events[i]
        if how == "drop-renumber":
            events[:] = _renumber(events)
    elif how == "dup-seq":
        events[i] = replace(e, seq=events[spte_at[0]].seq)
    elif how == "alloc":
        allocs = [j for j, x in enumerate(events) if isinstance(x, PageEvent) and x.op == "alloc"]
        del events[rng.choice(allocs)]
        events[:] = _renumber(events)
    elif how in ("bit", "dump-count", "dump-gen"):
        s = rng.choice([s for s in snaps if s.pages])
        p = rng.choice(s.pages)
        if how == "bit":
            p.bitmap ^= 1 << rng.randrange(512)
        elif how == "dump-count" or s.wp_all is None:  # a v1 dump has no generation to break
            p.count += 1
        else:
            p.wp_gen = (p.wp_gen or 0) + 1
    else:
        loads = [j for j, x in enumerate(events) if isinstance(x, WpLoadEvent)]
        if how == "upper":  # a write-protected non-leaf spte made writable again right after its load
            ups = [j for j, x in enumerate(events) if isinstance(x, SpteEvent) and x.level > 1 and x.old & 2]
            if not ups:
                return "none"
            j = rng.choice(ups)
            x = events[j]
            events[j] = replace(x, new=x.old, old=x.new | 2) if isinstance(x, SpteEvent) else x
        elif how == "enable-gen":  # an enable at a generation the VM had (W4)
            ens = [j for j, x in enumerate(events) if isinstance(x, WpAllEvent) and x.enable]
            if not ens:
                return "none"
            j = rng.choice(ens)
            x = events[j]
            assert isinstance(x, WpAllEvent)
            events[j] = replace(x, gen=x.gen - 1)
        elif how == "load-current" and loads:  # a load of a page that is current already (W1)
            j = rng.choice(loads)
            x = events[j]
            assert isinstance(x, WpLoadEvent)
            events[j] = replace(x, old_gen=x.gen)
        elif loads:
            j = rng.choice(loads)
            x = events[j]
            assert isinstance(x, WpLoadEvent)
            events[j] = replace(x, gen=x.gen + 1) if how == "load-gen" else replace(x, count=x.count + 1)
        else:
            events[i] = replace(e, count=e.count + 1)
    return how


@pytest.mark.parametrize("capture", [synthetic, real])
@pytest.mark.parametrize("seed", range(2 * len(MUTATIONS)))
def test_a_broken_capture_is_never_a_columnar_pass_alone(capture, seed: int) -> None:
    snaps, events = capture()
    how = mutate(random.Random(seed), snaps, events, MUTATIONS[seed % len(MUTATIONS)])
    ref = check_both(snaps, events)  # asserts: a columnar PASS is a PASS with the same counts
    if ref.status != PASS:
        assert columnar_verdict(snaps, events) is None, how


def test_a_leaf_event_between_a_load_and_its_protection_is_seen() -> None:
    """A load's non-leaf sptes must be the VM's next events: anything of the VM in between is a failure, even
    an event the columnar loop does not walk (a level-1 spte's)."""
    snaps, events = real()
    evs = sorted(events, key=lambda e: e.seq)
    at = next(i for i, e in enumerate(evs) if isinstance(e, WpLoadEvent) and isinstance(evs[i + 1], SpteEvent)
              and evs[i + 1].level > 1)
    leaf = next(e for e in evs[at:] if isinstance(e, SpteEvent) and e.level == 1 and e.vm == evs[at].vm)
    moved = [e for e in evs if e is not leaf]
    moved.insert(at + 1, leaf)
    moved = _renumber([replace(e, seq=i) for i, e in enumerate(moved)])
    ref = check_both(snaps, moved)
    assert ref.status != PASS and columnar_verdict(snaps, moved) is None


def test_another_vms_wp_event_does_not_end_a_loads_check() -> None:
    """Two VMs' events interleave in seq: a load's check lasts until its own VM's next events."""
    snaps, events = real()
    evs = sorted(events, key=lambda e: e.seq)
    at = next(i for i, e in enumerate(evs) if isinstance(e, WpLoadEvent) and isinstance(evs[i + 1], SpteEvent)
              and evs[i + 1].level > 1)
    other = WpAllEvent(0, 0xFFA0000000999000, False, 0, 0)
    leaf = next(e for e in evs[at:] if isinstance(e, SpteEvent) and e.level == 1 and e.vm == evs[at].vm)
    moved = [e for e in evs if e is not leaf]
    moved[at + 1:at + 1] = [other, leaf]
    moved = _renumber([replace(e, seq=i) for i, e in enumerate(moved)])
    ref = check_both(snaps, moved)
    assert ref.status == "FAIL" and "wp_load_left_writable" in ref.reason, ref


def test_bench_run_compares_both_checkers_on_a_runs_captures(tmp_path: Path, capsys) -> None:
    from devtools.bench import compare_run

    cap = tmp_path / "capture" / "kvm.shadow.dirty_log_enable_test"
    (cap / "snapshots").mkdir(parents=True)
    (cap / "trace.dat").write_bytes((REAL / "trace.dat").read_bytes())
    for p in sorted(REAL.glob("pw_sptes.*")):
        (cap / "snapshots" / p.name).write_bytes(p.read_bytes())
    assert compare_run(tmp_path) == 0
    row = capsys.readouterr().out.splitlines()[-1].split()
    assert row[0] == cap.name and row[1] == "33,156" and row[3] == "PASS" and row[-1] == "yes"
    assert compare_run(tmp_path / "nothing") == 2


def test_what_a_review_found_hands_over_or_agrees() -> None:
    """Three captures found by reading both checkers side by side (session 7)."""
    vm, po = 0xFFFF888004A3C000, 0xFFFF888000000000
    r, c = po + 0x6E2D000, 0x6E2E000
    # a writable link whose child address, added to PAGE_OFFSET, passes 2**64: no page is there, nothing judged
    link = (2**64 - po + c) | 0x800 | 0x2
    evs: list[AnyEvent] = [PageEvent(1, vm, r, 0, 0x1704, 4, "alloc", 0, 0),
                           PageEvent(2, vm, c, 0, 0x1703, 3, "alloc", 0, 0),
                           SpteEvent(3, vm, r, 0, 0x1704, 4, 0, 0, link, 1, 0)]
    snap = Snapshot(vm, 3, M, 0, [ShadowPage(r, 0, 0x1704, 4, False, False, 1, 1, {0: link}, 10, 0),
                                  ShadowPage(c, 0, 0x1703, 3, False, False, 0, 0, {}, 12, 0)],
                    False, True, "d", WpAll(1 << 63, po))
    assert check_both([snap], evs).counts["wp_checks"] == 0
    assert columnar_verdict([snap], evs) is not None
    # a trace with no page event at all, and a dump listing a page: the reference's capture fault
    lonely = Snapshot(vm, 1, M, 0, [ShadowPage(0x5000, 0, 0x1701, 1, False, False, 0, 0, {}, 6)], False, True, "d")
    assert check_both([lonely], [WpAllEvent(1, vm, True, 1, 0)]).status == "ERROR"
    # a counter no int64 holds
    huge = Snapshot(vm, 1, M, 0, [ShadowPage(0x5000, 0, 0x1701, 1, False, False, 2**70, 0, {}, 6)], False, True, "d")
    assert check_both([huge], [PageEvent(1, vm, 0x5000, 0, 0x1701, 1, "alloc", 0, 0)]).status == "FAIL"
