"""The binary capture path: a real trace.dat written by `trace-cmd extract` in the guest.

tests/data/real/shadow-perf-2M.trace.dat: shadow paging, `dirty_log_perf_test -v 1 -b 2M -i 2 -g`, 1058 events.
"""

import shutil
from pathlib import Path

from harness import capture
from harness.checks.files import check_files, is_trace_dat, trace_dat_lines
from harness.checks.trace import PageEvent, SpteEvent, TraceStats, parse_trace
from harness.lanes import check_capture
from harness.modes import MODES

REAL = Path(__file__).parent / "data" / "real"
DAT = REAL / "shadow-perf-2M.trace.dat"
EVENTS = 1058


def _events(path: Path) -> list[SpteEvent | PageEvent]:
    with trace_dat_lines(path) as lines:
        return list(parse_trace(lines, stats=TraceStats(), source=str(path)))


def test_a_real_trace_dat_gives_every_event_in_one_gap_free_sequence():
    assert is_trace_dat(DAT) and not is_trace_dat(REAL / "shadow-dirty-log.trace.txt.gz")
    evs = _events(DAT)
    assert len(evs) == EVENTS
    seqs = sorted(e.seq for e in evs)
    assert seqs == list(range(seqs[0], seqs[0] + EVENTS))
    assert {type(e) for e in evs} == {SpteEvent, PageEvent}
    assert all(0 <= e.idx < 512 for e in evs if isinstance(e, SpteEvent))


def test_a_truncated_trace_dat_is_an_error_not_a_short_trace(tmp_path):
    cut = tmp_path / "trace.dat"
    cut.write_bytes(DAT.read_bytes()[:200_000])
    assert _events(cut) == []  # trace-cmd itself says nothing and exits 0 ...
    cap = capture.Captured(tmp_path, snapshots=[REAL / "shadow-dirty-log.pw_sptes.txt.gz"], trace=cut,
                           ring_entries=EVENTS)
    res = check_capture("kvm.shadow.x", MODES["shadow"], cap, "")
    # ... so the count the guest's ring buffer held is what catches it
    assert res.status == "ERROR" and f"ring buffer held {EVENTS}" in res.reason and str(cut) in res.reason


def test_without_trace_cmd_the_verdict_says_so(tmp_path, monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "trace-cmd" else real_which(name))
    v = check_files([REAL / "shadow-dirty-log.pw_sptes.txt.gz"], DAT)
    assert v.status == "ERROR" and "trace-cmd is not installed" in v.reason
