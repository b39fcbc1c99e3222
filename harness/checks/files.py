"""The checker's only contact with the disk: captured files read (gzip, xz; a trace.dat's bytes, or its text by
`trace-cmd report`) and handed to the pure parsers and checkers: the columnar checker first, then, unless it
proved the capture consistent, `consistency.check`, which names what is wrong."""

from __future__ import annotations

import contextlib
import gc
import gzip
import lzma
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from harness import proc
from harness.checks.fast.columnar import check_capture_columns
from harness.checks.parsers.debugfs import DumpFormatError, parse_dump
from harness.checks.parsers.trace import AnyEvent, TraceFormatError, TraceStats, parse_trace
from harness.checks.parsers.tracedat import EventColumns, decode_columns, events_from_columns
from harness.checks.parsers.tracefile import MAGIC
from harness.checks.reference.consistency import check
from harness.checks.reference.findings import Verdict, new_counts
from harness.results import ERROR


def is_trace_dat(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


@contextlib.contextmanager
def _trace_cmd(args: list[str], path: Path, **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """trace-cmd `args` on `path`, in its own process group known to the harness (an interrupted run kills
    it with the rest). Its exit status is checked once the body is done: a failure (or no trace-cmd) raises
    OSError naming the file and trace-cmd's words."""
    exe = shutil.which("trace-cmd")
    if exe is None:
        raise OSError(f"cannot read {path}: trace-cmd is not installed (run `make setup`)")
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen([exe, *args], stderr=err, stdin=subprocess.DEVNULL, start_new_session=True, **popen)
        proc.register_group(p.pid)
        try:
            yield p
        finally:
            if p.stdout is not None:
                p.stdout.close()
            rc = p.wait()
            proc.unregister_group(p.pid)
        if rc != 0:
            err.seek(0)
            words = " ".join(err.read().split())[-300:]
            raise OSError(f"trace-cmd {args[0]} -i {path} failed (exit {rc}): {words}")


@contextlib.contextmanager
def trace_dat_lines(path: Path) -> Iterator[Iterable[str]]:
    """The text of a trace.dat (what `trace-cmd extract` wrote in the guest), by `trace-cmd report`: the
    reference reading (what a person runs), against which the tests check the binary decoder.

    Plugins off (-N): the events print exactly by their own format, whatever the host has installed.
    A report that fails (truncated or corrupt file) raises OSError naming the file and trace-cmd's words,
    after the lines it did give were read: a partial trace is never taken for a whole one.
    """
    with _trace_cmd(["report", "-N", "-i", str(path)], path, stdout=subprocess.PIPE, text=True,
                    errors="replace", bufsize=1 << 20) as p:
        assert p.stdout is not None
        yield p.stdout
        p.stdout.read()  # drain what the caller left, so the exit status is trace-cmd's own


def trace_dat_columns(path: Path, stats: TraceStats) -> EventColumns:
    """The events of a trace.dat (version 7 as the guest's trace-cmd writes it, zstd; or version 6) as
    columns, decoded from its binary records (`tracefile`, `tracedat.decode_columns`). A file that cannot be
    read whole (truncated, corrupt) raises TraceFormatError naming what is missing."""
    return decode_columns(Path(path).read_bytes(), stats)


def trace_dat_events(path: Path, stats: TraceStats) -> list[AnyEvent]:
    """trace_dat_columns() as the checker's event objects."""
    return events_from_columns(trace_dat_columns(path, stats))


def _opener(path: Path) -> Callable[..., IO[Any]]:
    """gzip.open, lzma.open or open, by the file's magic (not its name)."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open
    return open


def read_capture(path: Path) -> bytes:
    """A captured file's bytes, gunzipped or unxz-ed as its magic says."""
    with _opener(path)(path, "rb") as f:
        data: bytes = f.read()
    return data


def open_text(path: Path) -> IO[str]:
    """Open a capture as text, gunzipping or unxz-ing as its magic says."""
    text: IO[str] = _opener(path)(path, "rt", encoding="utf-8", errors="replace")
    return text


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while millions of small acyclic event objects are built: it finds no garbage
    there, and its passes over the growing list cost ~20% of the parse (measured by devtools.bench)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def check_files(snapshot_paths: list[Path], trace_path: Path | None) -> Verdict:
    """check() on captured files; a file that cannot be read or parsed is an ERROR verdict naming it."""
    with gc_paused():
        return _check_files(snapshot_paths, trace_path)


def _check_files(snapshot_paths: list[Path], trace_path: Path | None) -> Verdict:
    empty = new_counts(capture_faults=1)
    try:
        dumps = [(str(p), read_capture(Path(p))) for p in snapshot_paths]
        stats = TraceStats()
        events: list[AnyEvent] = []
        if trace_path is not None and is_trace_dat(Path(trace_path)):
            cols = trace_dat_columns(Path(trace_path), stats)
            # the fast proof first; anything short of a plain PASS is judged (and explained) on objects
            verdict = check_capture_columns(dumps, cols, stats)
            if verdict is not None:
                return verdict
            events = events_from_columns(cols)
        elif trace_path is not None:
            with open_text(Path(trace_path)) as f:
                events = list(parse_trace(f, stats=stats, source=str(trace_path)))
        snapshots = [parse_dump(data.decode("utf-8", "replace"), source=src) for src, data in dumps]
        if trace_path is None:
            return check(snapshots, [])
        return check(snapshots, events, lost_events=stats.lost_events, require_trace=True,
                     wp_counts=stats.wp_counts())
    except (DumpFormatError, TraceFormatError) as e:
        return Verdict(ERROR, f"malformed capture: {e}", empty, [])
    except OSError as e:
        return Verdict(ERROR, f"cannot read capture: {e}", empty, [])
