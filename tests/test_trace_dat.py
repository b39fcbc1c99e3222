"""The binary capture path: a real trace.dat written by `trace-cmd extract` in the guest, read from its records
(`tracefile` + `tracedat.decode`) and, as a reference, from the text of `trace-cmd report`.

tests/data/real/shadow-perf-2M.trace.dat: shadow paging, `dirty_log_perf_test -v 1 -b 2M -i 2 -g`, 1058 events.
"""

import io
import shutil
import subprocess
from pathlib import Path

import pytest

from devtools.synth import generate
from devtools.synth_dat import write_trace_dat
from harness import capture
from harness.checks.files import check_files, is_trace_dat, trace_dat_events, trace_dat_lines
from harness.checks.parsers.trace import (
    AnyEvent,
    PageEvent,
    SpteEvent,
    TraceFormatError,
    TraceStats,
    WpAllEvent,
    WpLoadEvent,
    format_event,
    parse_trace,
)
from harness.checks.parsers.tracedat import decode
from harness.lanes import check_capture
from harness.modes import MODES

REAL = Path(__file__).parent / "data" / "real"
DAT = REAL / "shadow-perf-2M.trace.dat"
EVENTS = 1058


def _events(path: Path) -> list[AnyEvent]:
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
    assert _events(cut) == []  # `trace-cmd report` itself says nothing and exits 0 ...
    cap = capture.Captured(tmp_path, snapshots=[REAL / "shadow-dirty-log.pw_sptes.txt.gz"], trace=cut,
                           ring_entries=EVENTS)
    res = check_capture("kvm.shadow.x", MODES["shadow"], cap, "")
    # ... the count the guest's ring buffer held catches it, and the binary reader names the cut
    assert res.status == "ERROR" and f"ring buffer held {EVENTS}" in res.reason and str(cut) in res.reason
    assert "malformed capture" in res.reason and "trace.dat ends inside" in res.reason


def test_a_version_7_file_cut_anywhere_is_refused():
    """The guest's trace.dat (version 7, zstd) is read by the harness itself: wherever a copy stops short
    (a section, the options, a CPU's chunks), decoding raises instead of giving fewer events."""
    data = (REAL / "shadow-enable-test" / "trace.dat").read_bytes()
    assert len(decode(data)) == 33156
    # the file ends with the STRINGS section (id 15, compressed: the sections' descriptions, not read)
    strings = data.rfind(b"\x0f\x00\x01\x00")
    assert strings > len(data) - 300
    for cut in [*range(20, strings, strings // 23), strings - 1]:
        with pytest.raises(TraceFormatError):
            decode(data[:cut])
    assert len(decode(data[:strings])) == 33156


def test_the_binary_decoder_gives_what_trace_cmd_report_prints():
    """Issue 15 item 4: trace.dat is read from its records, not from the text of `trace-cmd report`; on two
    real files (one with write-protect-all's events) both paths give exactly the same events."""
    for path in (DAT, REAL / "shadow-enable-test" / "trace.dat"):
        st = TraceStats()
        binary = trace_dat_events(path, st)
        text = _events(path)
        assert sorted(map(format_event, binary)) == sorted(map(format_event, text)), path
        assert st.events == len(text) and st.lost_events == 0
    assert (st.wp_all_enables, st.wp_all_disables, st.wp_loads) == (2, 2, 76)


def test_a_synthetic_trace_dat_is_what_trace_cmd_reads_too(tmp_path):
    """synth_dat writes what tracedat decodes, and trace-cmd (convert to version 7, then report) agrees."""
    buf = io.StringIO()
    generate(buf, events=3000, pages=50, seed=7)
    buf.seek(0)
    evs = [*parse_trace(buf), WpAllEvent(10**6, 1, True, 3, 0),
           WpLoadEvent(10**6 + 1, 1, 0xFF11000000001000, 5, 0x1704, 4, 2, 3, 1, 0)]
    v6 = tmp_path / "v6.dat"
    v6.write_bytes(write_trace_dat(evs, cpus=3))
    assert sorted(map(format_event, decode(v6.read_bytes()))) == sorted(map(format_event, evs))
    for compression in ("zstd", "none"):  # the guest's, and a version 7 without compression
        v7 = tmp_path / f"v7-{compression}.dat"
        subprocess.run(["trace-cmd", "convert", "--file-version", "7", "--compression", compression, "-i", str(v6),
                        "-o", str(v7)], check=True, capture_output=True)
        assert sorted(map(format_event, _events(v7))) == sorted(map(format_event, evs))
        assert sorted(map(format_event, trace_dat_events(v7, TraceStats()))) == sorted(map(format_event, evs))


def test_a_trace_without_events_decodes_to_none(tmp_path):
    """The TDP MMU mode's captures can hold no kvmmmu event at all (a CPU without data, in version 7 too)."""
    v6 = tmp_path / "empty.v6.dat"
    v6.write_bytes(write_trace_dat([]))
    v7 = tmp_path / "empty.dat"
    subprocess.run(["trace-cmd", "convert", "--file-version", "7", "--compression", "zstd", "-i", str(v6),
                    "-o", str(v7)], check=True, capture_output=True, stdin=subprocess.DEVNULL)
    for path in (v6, v7):
        st = TraceStats()
        assert decode(path.read_bytes(), st) == [] and st.events == 0


def test_the_decoder_refuses_what_it_cannot_read_whole():
    good = write_trace_dat([SpteEvent(1, 1, 0x1000, 0, 0x1301, 1, 3, 1 << 63, 0xE67, 1, 0)])
    with pytest.raises(TraceFormatError, match="compressed with 'header_page': not readable"):
        decode(good.replace(b"tracing6", b"tracing7", 1))  # a version-6 body under a version-7 label
    with pytest.raises(TraceFormatError, match="version 8: only 6 and 7"):
        decode(good.replace(b"tracing6", b"tracing8", 1))
    with pytest.raises(TraceFormatError, match="ends inside"):
        decode(good[:300])
    with pytest.raises(TraceFormatError, match="outside the file"):
        decode(good[:-4096])
    # a record shorter than its event's format says is not read past its end
    short = good.replace(b"\tfield:unsigned int count;\toffset:72;", b"\tfield:unsigned int count;\toffset:76;", 1)
    with pytest.raises(TraceFormatError, match="kvm_mmu_pw_spte record of 76 bytes, shorter than its format's 80"):
        decode(short)
    bad_idx = write_trace_dat([SpteEvent(1, 1, 0x1000, 0, 0x1301, 1, 600, 1 << 63, 0xE67, 1, 0)])
    with pytest.raises(TraceFormatError, match="spte index 600 out of range"):
        decode(bad_idx)
    # a kernel whose pw_spte event lost a field (another FORMAT.md version) is named, not misread
    renamed = good.replace(b"field:u64 old_spte;", b"field:u64 old_sptx;", 1)
    with pytest.raises(TraceFormatError, match="has no field 'old_spte'"):
        decode(renamed)


def test_the_binary_trace_needs_no_trace_cmd_on_the_host(monkeypatch):
    """trace.dat is read by the harness itself (tracefile.py): the verdict is the same without trace-cmd."""
    with_it = check_files([REAL / "shadow-dirty-log.pw_sptes.txt.gz"], DAT)
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "trace-cmd" else real_which(name))
    without = check_files([REAL / "shadow-dirty-log.pw_sptes.txt.gz"], DAT)
    assert (without.status, without.reason) == (with_it.status, with_it.reason)
