"""The two checkers on one capture: `consistency.check` (objects) and `columnar.check_columns` (numpy).

The columnar checker may only say PASS where consistency.check says PASS with the same counts and reason;
anything else it must hand over (None). `check_both` holds every test that uses it to that: each capture a
test builds by hand is also written as the kernel writes it (dumps as FORMAT.md text, events as a
trace.dat) and given to the columnar checker.
"""

from __future__ import annotations

from collections.abc import Iterable

from devtools.synth import format_dump
from devtools.synth_dat import write_trace_dat
from harness.checks.fast.columnar import check_capture_columns
from harness.checks.parsers.debugfs import Snapshot
from harness.checks.parsers.trace import AnyEvent, TraceStats, format_event
from harness.checks.parsers.tracedat import decode_columns, events_from_columns
from harness.checks.reference.consistency import check
from harness.checks.reference.findings import WP_COUNT_KEYS, Verdict
from harness.results import PASS


def columnar_verdict(snapshots: list[Snapshot], events: list[AnyEvent]) -> Verdict | None:
    """The columnar checker's verdict on the capture as files would hold it; None also where the capture
    cannot be written as the kernel writes it (a test's value a u32 field cannot hold, say)."""
    if not events:
        return None
    try:
        data = write_trace_dat(events)
    except (OverflowError, ValueError):  # struct.error is a ValueError
        return None
    stats = TraceStats()
    cols = decode_columns(data, stats)
    if sorted(map(format_event, events_from_columns(cols))) != sorted(map(format_event, events)):
        return None  # the trace.dat cannot carry this test's values as given
    return check_capture_columns([(s.source, format_dump(s).encode()) for s in snapshots], cols, stats)


def check_both(snapshots: list[Snapshot], events: Iterable[AnyEvent], **kw: object) -> Verdict:
    """consistency.check(snapshots, events, **kw), after asserting that the columnar checker agrees."""
    evs = list(events)
    ref = check(snapshots, evs, **kw)  # type: ignore[arg-type]
    fast = None if kw.get("lost_events") else columnar_verdict(snapshots, evs)
    if fast is not None:
        assert ref.status == PASS, f"columnar PASS where consistency.check says {ref}"
        # a test that gives no wp_counts gets none in its counts; the trace.dat's are what the columns say
        given = set(WP_COUNT_KEYS) if "wp_counts" in kw else set()
        same = [k for k in ref.counts if k not in WP_COUNT_KEYS or k in given]
        assert [fast.counts[k] for k in same] == [ref.counts[k] for k in same] and fast.reason == ref.reason
    return ref
