"""Benchmark of the pw-bitmap checker on a synthetic capture: `python -m devtools.bench [--events N] [--pages N]`;
with `--run DIR`, both checkers on every capture of a real run, timed and compared.

The end-to-end figure is the one a run pays: from a trace.dat as the guest writes it (version 7, zstd:
the synthetic events are written as version 6 by synth_dat and made version 7 by `trace-cmd convert`)
and the dumps' text to the verdict, through check_files: the trace.dat read and decompressed, its records
decoded to columns, the dumps read to columns, the columnar check (checks/README.md).

Why: a real run traces millions of spte changes and dumps thousands of pages; the check must stay a small
part of a run. Each stage is timed separately (the object path's text parse, replay and dump parse; the
columnar path's decode, dump parse and check; the whole check_files) so a slow figure points at its stage.
The data come from devtools.synth with a fixed seed and are checked for PASS first: a benchmark of
input the checker rejects would measure nothing. Synthetic captures model no write-protect-all: the
trace.dat ends with one enable, so that the columnar checker's write-protect-all loop walks the ~11% of events
it concerns, and the real capture in tests/data/real/shadow-enable-test-roots (when at hand) is timed too.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from devtools.synth import SynthCapture, generate
from devtools.synth_dat import write_trace_dat
from harness.checks.fast.columnar import check_capture_columns
from harness.checks.files import check_files, gc_paused, read_capture, trace_dat_columns
from harness.checks.parsers.debugfs import parse_dump
from harness.checks.parsers.dumpcols import parse_dump_columns
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
from harness.checks.reference.consistency import check, check_snapshot
from harness.checks.reference.findings import Verdict
from harness.results import PASS

T = TypeVar("T")
REAL_CAPTURE = Path(__file__).resolve().parent.parent / "tests" / "data" / "real" / "shadow-enable-test-roots"


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    """Time fn() under the GC policy check_files() uses, so the stages add up to the whole."""
    gc.collect()
    with gc_paused():
        t0 = time.perf_counter()
        result = fn()
        return result, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devtools.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="trace events to generate (default 1e6)")
    ap.add_argument("--pages", type=int, default=10_000, help="pages in the big VM's dump (default 10000)")
    ap.add_argument("--fill", type=float, default=None,
                    help="mean populated sptes per page (default: ~40%% of the events populate the big VM)")
    ap.add_argument("--seed", type=int, default=20241125)
    ap.add_argument("--real", type=Path, default=REAL_CAPTURE,
                    help="a real capture directory (trace.dat, pw_sptes.*) to time too (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=5, help="end-to-end runs, the median reported (default 5)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files and print their directory")
    ap.add_argument("--run", type=Path, default=None,
                    help="instead: both checkers on every capture of a run directory, timed and compared")
    args = ap.parse_args(argv)
    if args.run is not None:
        return compare_run(args.run)

    tmp = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    trace_path = tmp / "trace.txt"
    (cap, t_gen) = _timed(lambda: _generate(trace_path, args))
    dump_paths = []
    for i, text in enumerate(cap.dumps):
        p = tmp / f"pw_sptes.{i}.txt"
        p.write_text(text)
        dump_paths.append(p)
    big_text = cap.dumps[cap.big_dump_index]

    # 1. trace parse: lines -> events
    def parse() -> list[AnyEvent]:
        with open(trace_path) as f:
            return list(parse_trace(f))
    events, t_parse = _timed(parse)
    # 2. replay: check() on parsed events and the small dumps only (the big dump is timed in 3.)
    small = [parse_dump(t, f"dump{i}") for i, t in enumerate(cap.dumps) if i != cap.big_dump_index]
    verdict_replay, t_replay = _timed(lambda ev=events: check(small, ev))  # type: ignore[misc]
    # 3. one big dump: parse, then self-check
    big, t_dump_parse = _timed(lambda: parse_dump(big_text, "big"))
    incs, t_dump_check = _timed(lambda: check_snapshot(big))
    # 4. all of it from the files, as the pipeline calls it: the text trace, then the guest's trace.dat
    dat_path = tmp / "trace.dat"
    # The trace.dat ends with a write-protect-all enable (of the last event's VM) and one load: the columnar
    # checker's write-protect-all loop then walks every event it concerns (page events, sptes above level
    # 1), as on a real capture, and no link after it is judged against a generation (the synthetic links
    # are not real).
    _write_guest_trace_dat([*events, *_enable_and_load(events)], dat_path)
    del events  # the memory of a million events, before the next stages
    verdict_text, t_all_text = _timed(lambda: check_files(dump_paths, trace_path))
    stats = TraceStats()
    cols, t_decode = _timed(lambda: trace_dat_columns(dat_path, stats))
    big_cols, t_big_cols = _timed(lambda: parse_dump_columns(big_text.encode(), "big"))
    raw = [(str(p), p.read_bytes()) for p in dump_paths]
    fast, t_columns = _timed(lambda: check_capture_columns(raw, cols, stats))
    # end to end, as a run pays it: the median of several, since one figure on a shared machine is noise
    ends = [_timed(lambda: check_files(dump_paths, dat_path)) for _ in range(args.repeat)]
    verdict = ends[0][0]
    t_all = statistics.median(t for _, t in ends)
    real = _real_capture(args.real, args.repeat)

    ok = (verdict.status == PASS and verdict_text.status == PASS and verdict_replay.status == PASS and not incs
          and big_cols is not None and fast is not None and fast.counts == verdict.counts)
    n_ev = cap.events
    n_lines = cap.trace_lines
    rows = [
        ("generate (synth, not the checker)", t_gen, f"{n_ev:,} events, {n_lines:,} trace lines"),
        ("trace text parse (to objects)", t_parse, f"{n_lines / t_parse:,.0f} lines/s"),
        ("object replay (consistency.check: sort, replay, small dumps)", t_replay, f"{n_ev / t_replay:,.0f} events/s"),
        ("dump parse to objects (big VM)", t_dump_parse,
         f"{cap.big_vm_pages / t_dump_parse:,.0f} pages/s, {cap.big_vm_sptes / t_dump_parse:,.0f} sptes/s"),
        ("dump self-check (big VM)", t_dump_check,
         f"{cap.big_vm_pages / t_dump_check:,.0f} pages/s, {cap.big_vm_sptes / t_dump_check:,.0f} sptes/s"),
        ("dump parse + check (big VM)", t_dump_parse + t_dump_check,
         f"{cap.big_vm_pages / (t_dump_parse + t_dump_check):,.0f} pages/s"),
        ("check_files, text trace", t_all_text, f"{n_ev / t_all_text:,.0f} events/s"),
        ("trace.dat (v7, zstd): read + decode to columns", t_decode, f"{n_ev / t_decode:,.0f} events/s"),
        ("dump parse to columns (big VM)", t_big_cols, f"{cap.big_vm_pages / t_big_cols:,.0f} pages/s,"
         f" {cap.big_vm_sptes / t_big_cols:,.0f} sptes/s"),
        ("dumps to columns + columnar check (all)", t_columns, f"{n_ev / t_columns:,.0f} events/s"),
        (f"check_files, trace.dat (end to end, median of {args.repeat})", t_all,
         f"{n_ev / t_all:,.0f} events/s end to end (runs: {', '.join(f'{t:.3f}' for _, t in ends)} s)"),
    ]
    if real is not None:
        n_real, t_real, v_real = real
        ok = ok and v_real.status == PASS
        rows.append((f"check_files, the real capture (median of {args.repeat})", t_real,
                     f"{n_real / t_real:,.0f} events/s ({n_real:,} events, {v_real.counts['wp_loads']} loads,"
                     f" {v_real.counts['wp_checks']} write-protect-all checks)"))
    print(f"machine: nproc {len(os.sched_getaffinity(0))} ({os.cpu_count()} CPUs), {_cpu_model()},"
          f" Python {platform.python_version()} ({platform.python_implementation()})")
    print(f"data: {n_ev:,} events over {verdict.counts['pages_replayed']:,} page lifetimes in"
          f" {verdict.counts['vms']} VMs; big dump {cap.big_vm_pages:,} pages, {cap.big_vm_sptes:,} sptes"
          f" ({cap.big_vm_sptes / max(1, cap.big_vm_pages):.0f}/page, {len(big_text) / 2**20:.1f} MiB);"
          f" {len(cap.dumps)} dumps; seed {args.seed}")
    w = max(len(r[0]) for r in rows)
    print(f"{'stage':<{w}}  {'seconds':>8}  rate")
    for name, secs, rate in rows:
        print(f"{name:<{w}}  {secs:8.3f}  {rate}")
    print(f"verdict: {verdict.status}: {verdict.reason}")
    if args.keep:
        print(f"files kept in {tmp}")
    else:
        for p in [*dump_paths, trace_path, dat_path]:
            p.unlink()
        tmp.rmdir()
    if not ok:
        print("error: the synthetic capture did not PASS; the figures above are not meaningful", file=sys.stderr)
        return 1
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def compare_run(run: Path) -> int:
    """The columnar and the object checker on every `capture/*/` of a run directory (`boot-test`'s): each
    one's verdict and seconds, and whether they agree (the columnar one must PASS with the object one's counts
    and reason, or hand over). Exit 1 if they disagree anywhere, 2 if the directory has no capture."""
    caps = sorted(d for d in (run / "capture").glob("*") if (d / "trace.dat").is_file())
    if not caps:
        print(f"error: no capture/*/trace.dat under {run}", file=sys.stderr)
        return 2
    bad = 0
    print(f"{'capture':<46} {'events':>9} {'dumps':>5}  columnar        objects         agree")
    for d in caps:
        dumps = sorted((d / "snapshots").glob("*"))
        raw = [(str(p), read_capture(p)) for p in dumps]
        fast, t_fast = _timed(functools.partial(_columnar_on, d / "trace.dat", raw))
        ref, t_ref = _timed(functools.partial(_objects_on, d / "trace.dat", raw))
        agree = fast is None or (ref.status == PASS and (fast.counts, fast.reason) == (ref.counts, ref.reason))
        bad += not agree
        print(f"{d.name:<46} {ref.counts['events']:>9,} {len(dumps):>5}  {fast.status if fast else 'hands over':<10}"
              f" {t_fast:5.2f}s {ref.status:<8} {t_ref:5.2f}s  {'yes' if agree else 'NO'}")
    return 1 if bad else 0


def _columnar_on(trace: Path, raw: list[tuple[str, bytes]]) -> Verdict | None:
    stats = TraceStats()
    return check_capture_columns(raw, trace_dat_columns(trace, stats), stats)


def _objects_on(trace: Path, raw: list[tuple[str, bytes]]) -> Verdict:
    stats = TraceStats()
    evs = events_from_columns(trace_dat_columns(trace, stats))
    return check([parse_dump(data.decode("utf-8", "replace"), src) for src, data in raw], evs,
                 lost_events=stats.lost_events, require_trace=True,
                 wp_counts=stats.wp_counts())


def _real_capture(where: Path, repeat: int) -> tuple[int, float, Verdict] | None:
    """check_files on a real capture, `repeat` times: (events, median seconds, verdict); None without one."""
    dumps = sorted(where.glob("pw_sptes.*"))
    if not (where / "trace.dat").is_file() or not dumps:
        return None
    runs = [_timed(lambda: check_files(dumps, where / "trace.dat")) for _ in range(repeat)]
    return runs[0][0].counts["events"], statistics.median(t for _, t in runs), runs[0][0]


def _enable_and_load(events: list[AnyEvent]) -> list[AnyEvent]:
    """A write-protect-all enable of the last event's VM, then the load of one of its live level-1 pages, as
    a vCPU running on after the enable does (an enable that no load follows is not judged: it is a SKIP)."""
    last = max(events, key=lambda e: e.seq)
    live: dict[int, SpteEvent | PageEvent] = {}
    for e in events:
        if isinstance(e, (SpteEvent, PageEvent)) and e.vm == last.vm and e.level == 1:
            if isinstance(e, PageEvent) and e.op == "free":
                live.pop(e.spt, None)
            elif e.spt not in live or live[e.spt].seq < e.seq:
                live[e.spt] = e
    page = max(live.values(), key=lambda e: e.seq)
    return [WpAllEvent(last.seq + 1, last.vm, True, 1, 0),
            WpLoadEvent(last.seq + 2, last.vm, page.spt, page.gfn, page.role, 1, 0, 1, page.count, 0)]


def _write_guest_trace_dat(events: list[AnyEvent], path: Path) -> None:
    """The events as the guest's `trace-cmd extract` writes them: trace.dat version 7, zstd-compressed."""
    v6 = path.with_suffix(".v6.dat")
    v6.write_bytes(write_trace_dat(events))
    subprocess.run(["trace-cmd", "convert", "--file-version", "7", "--compression", "zstd", "-i", str(v6),
                    "-o", str(path)], check=True, capture_output=True, stdin=subprocess.DEVNULL)
    v6.unlink()


def _generate(path: Path, args: argparse.Namespace) -> SynthCapture:
    with open(path, "w") as f:
        return generate(f, events=args.events, pages=args.pages, mean_fill=args.fill, seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
