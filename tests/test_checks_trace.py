"""The kvm_mmu_pw_* trace parser (synthetic samples in the `trace` file format)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.checks.parsers.trace import (
    PageEvent,
    SpteEvent,
    TraceFormatError,
    TraceStats,
    WpAllEvent,
    WpLoadEvent,
    format_event,
    parse_trace,
)


def parse_trace_lost(lines) -> int:
    """Total N of ftrace's `CPU:c [LOST N EVENTS]` markers, as parse_trace counts them."""
    st = TraceStats()
    for _ in parse_trace(lines, stats=st):
        pass
    return st.lost_events

DATA = Path(__file__).parent / "data" / "checks"
VM = 0xFFFF888004A3C000
SPTE_BODY = ("kvm_mmu_pw_spte: seq=0x1a2c vm=0xffff888004a3c000 spt=0xffff888006e2d000 gfn=0x0 role=0x10c2a"
             " level=4 idx=3 old=0x8000000000000000 new=0x80000000012370e7 count=4")
PAGE_BODY = ("kvm_mmu_pw_page: seq=0x1a2d vm=0xffff888004a3c000 spt=0xffff888006e2e000 gfn=0x200 role=0x10c29"
             " level=3 op=alloc count=0")
PREFIX = "  dirty_log_test-123     [001] .....    12.345678: "


def test_parse_sample_trace() -> None:
    with open(DATA / "synthetic_trace_valid.txt") as f:
        stats = TraceStats()
        events = list(parse_trace(f, stats=stats))
    assert len(events) == 17 and stats.events == 17 and stats.lines == 30 and stats.lost_events == 0
    assert sum(isinstance(e, PageEvent) for e in events) == 7
    assert [e.seq for e in events[:5]] == [1, 2, 3, 5, 4]  # file order, not seq order
    e = events[3]
    assert e == SpteEvent(seq=5, vm=VM, spt=0xFFFF888006E2D000, gfn=0x12200, role=0x3781, level=1, idx=1,
                          old=1 << 63, new=0x12346E25, count=2, line_no=16)
    free = [e for e in events if isinstance(e, PageEvent) and e.op == "free"]
    assert len(free) == 1 and free[0].spt == 0xFFFF888006E30000 and free[0].count == 0


def test_format_examples_with_ftrace_prefix() -> None:
    spte, page = parse_trace([PREFIX + SPTE_BODY + "\n", PREFIX + PAGE_BODY + "\n"])
    assert spte == SpteEvent(0x1A2C, VM, 0xFFFF888006E2D000, 0, 0x10C2A, 4, 3, 1 << 63, 0x80000000012370E7, 4, 1)
    assert page == PageEvent(0x1A2D, VM, 0xFFFF888006E2E000, 0x200, 0x10C29, 3, "alloc", 0, 2)
    assert format_event(spte) == SPTE_BODY and format_event(page) == PAGE_BODY


def test_other_prefixes() -> None:
    """trace_pipe text, trace-cmd report and no prefix at all: the parser keys on the event name."""
    lines = [SPTE_BODY,
             "qemu-system-x86-4242  [000]  1234.567890: " + SPTE_BODY,
             "  CPU 0/KVM-5150    [001] d..2.  99.000001: " + PAGE_BODY + "   \n"]
    assert [e.seq for e in parse_trace(lines)] == [0x1A2C, 0x1A2C, 0x1A2D]


def test_bare_zero_hex() -> None:
    """`trace-cmd report` formats %#llx in user space, where zero prints as "0" instead of "0x0"."""
    (e,) = parse_trace([SPTE_BODY.replace("gfn=0x0", "gfn=0")])
    assert e.gfn == 0
    with pytest.raises(TraceFormatError):
        list(parse_trace([SPTE_BODY.replace("gfn=0x0", "gfn=00")]))


def test_ignores_comments_and_other_lines() -> None:
    lines = ["# tracer: nop\n", "#  kvm_mmu_pw_spte: seq=junk\n", "\n",
             PREFIX + "kvm_exit: vcpu 0 reason EXIT_NPF rip 0x401234\n",
             PREFIX + "kvm_mmu_pw_log_possible_writable <-mmu_spte_set\n",  # a function-tracer mention
             "kvm_mmu_pw_helper-77 [000] ..... 1.0: " + SPTE_BODY]  # the name in the task name, then the event
    assert [e.seq for e in parse_trace(lines)] == [0x1A2C]


@pytest.mark.parametrize("body,reason", [
    (SPTE_BODY.replace(" idx=3", ""), "malformed"),
    (SPTE_BODY.replace("count=4", "count=four"), "malformed"),
    (SPTE_BODY.replace("seq=0x1a2c", "seq=1a2c"), "malformed"),
    (SPTE_BODY + " extra=1", "malformed"),
    (SPTE_BODY.replace("idx=3", "idx=512"), "out of range"),
    (PAGE_BODY.replace("op=alloc", "op=move"), "malformed"),
])
def test_malformed_event_is_named(body: str, reason: str) -> None:
    lines = ["# tracer: nop\n", PREFIX + PAGE_BODY + "\n", PREFIX + body + "\n"]
    with pytest.raises(TraceFormatError) as ei:
        list(parse_trace(lines, source="trace.txt"))
    assert ei.value.line_no == 3 and reason in ei.value.reason and isinstance(ei.value, ValueError)
    assert "trace.txt:3:" in str(ei.value) and body[:40] in str(ei.value)


def test_streaming() -> None:
    """Events come out as lines go in: a generator over a huge file never holds it."""
    def lines():  # type: ignore[no-untyped-def]
        yield PREFIX + PAGE_BODY
        raise AssertionError("read too far")
    it = parse_trace(lines())
    assert next(it).seq == 0x1A2D


def test_lost_markers() -> None:
    with open(DATA / "synthetic_trace_lost.txt") as f:
        assert parse_trace_lost(f) == 2
    lines = ["CPU:1 [LOST 123 EVENTS]\n", PREFIX + SPTE_BODY, "CPU:0 [LOST 7 EVENTS]",
             "##### CPU 1 buffer started ####"]
    assert parse_trace_lost(lines) == 130
    stats = TraceStats()
    assert len(list(parse_trace(lines, stats=stats))) == 1
    assert (stats.lost_events, stats.lost_markers, stats.overrun_markers) == (130, 2, 1)


# --- write-protect-all's events (FORMAT.md v2): in the seq sequence, counted --------------------------------

WP_LINES = [
    # as `trace-cmd report -N` prints them (padded event name), with a pw event between
    "  dirty_log_perf_-95    [001]    52.131:  kvm_mmu_wp_all:       seq=0xe vm=0xffffc90000b91000 enable=1 gen=0x1\n",
    "  dirty_log_perf_-97    [000]    52.140:  kvm_mmu_wp_load:      seq=0xf vm=0xffffc90000b91000"
    " spt=0xffff888106b0e000 gfn=0x0 role=0x1904 level=4 old_gen=0 gen=0x1 count=2\n",
    "  dirty_log_perf_-97    [000]    52.141:  kvm_mmu_pw_spte:      seq=0x10 vm=0xffffc90000b91000"
    " spt=0xffff888106b0e000 gfn=0x0 role=0x1904 level=4 idx=0 old=0x106b0f827 new=0x106b0f825 count=1\n",
    "  dirty_log_perf_-95    [001]    60.002:  kvm_mmu_wp_all:       seq=0x11 vm=0xffffc90000b91000 enable=0 gen=0x1\n",
]


def test_write_protect_all_events_are_counted_and_checked():
    st = TraceStats()
    events = list(parse_trace(WP_LINES, stats=st))
    assert [type(e) for e in events] == [WpAllEvent, WpLoadEvent, SpteEvent, WpAllEvent]
    assert [e.seq for e in events] == [0xE, 0xF, 0x10, 0x11]
    assert events[1].old_gen == 0 and events[1].gen == 1 and events[1].count == 2
    assert (events[0].enable, events[3].enable) == (True, False)
    assert (st.wp_all_enables, st.wp_all_disables, st.wp_loads) == (1, 1, 1)
    # format_event prints what the kernel prints: the event name unpadded, zero as 0x0
    assert [format_event(e) for e in events] == [
        re.sub(r":\s+", ": ", line[line.index("kvm_mmu_"):].rstrip(), count=1).replace("old_gen=0 ", "old_gen=0x0 ")
        for line in WP_LINES]
    bad = WP_LINES[1].replace(" count=2", " count=two")
    with pytest.raises(TraceFormatError, match="malformed kvm_mmu_wp event"):
        list(parse_trace([bad], stats=TraceStats()))
    # v1's wp events had no seq: they would leave holes in the sequence, so they are refused by name
    old = WP_LINES[0].replace("seq=0xe ", "")
    with pytest.raises(TraceFormatError, match="malformed kvm_mmu_wp event"):
        list(parse_trace([old]))
