"""Progress of a long stage (the kernel build: 4 to 9 minutes cold), read from the log the stage writes.

On a terminal one status line is rewritten in place (stderr); anywhere else (CI) one heartbeat line is logged
per interval, so a kept log shows the stage moving without a line per object. The count is of the lines
kbuild prints per step (`  CC      mm/slub.o`), against the count of the last build of the same workspace.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import cache

log = logging.getLogger("kvm-harness")

# kbuild's quiet command lines, one per step: "  CC      arch/x86/kvm/mmu/mmu.o", "  LD      vmlinux",
# "  HOSTCC  scripts/basic/fixdep", "  DESCEND objtool" (scripts/Kbuild.include: quiet_cmd_* "  VERB    target")
KBUILD_STEP = re.compile(rb"^  [A-Z][A-Z0-9_-]* +\S", re.M)
HEARTBEAT_S = 60.0  # without a terminal: one line a minute
STEPS_FILE = "kbuild-steps.json"  # under the cache root: cold builds' step counts
TTY_REFRESH_S = 1.0


def count_steps(path: Path, start: int = 0) -> int:
    """kbuild step lines in `path` from byte `start` on (0 if the file is not there)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            return len(KBUILD_STEP.findall(f.read()))
    except OSError:
        return 0


def describe(done: int, expected: int | None, elapsed_s: float) -> str:
    """'1234 of ~2000 steps (62%), 2m05s' (or without the expected count when there is none)."""
    mins, secs = divmod(int(elapsed_s), 60)
    if expected:
        return f"{done} of ~{expected} steps ({min(99, 100 * done // expected)}%), {mins}m{secs:02d}s"
    return f"{done} steps, {mins}m{secs:02d}s"


def cold_steps(root: Path, key: str) -> int | None:
    """The kbuild steps the last cold build of `key` (kernel version and config base) took, if known."""
    try:
        value = json.loads((root / STEPS_FILE).read_text()).get(key)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def record_cold_steps(root: Path, key: str, steps: int) -> None:
    """Remember a cold build's step count under the cache root (best effort: progress only)."""
    try:
        known = json.loads((root / STEPS_FILE).read_text())
    except (OSError, ValueError):
        known = {}
    known[key] = steps
    try:
        cache.write_json(root / STEPS_FILE, known)
    except OSError as e:
        log.debug("could not record the build's step count: %s", e)


@contextmanager
def watching(label: str, logfile: Path, expected: int | None, tty: bool | None = None) -> Iterator[None]:
    """While the body runs, report `label`'s progress from the kbuild steps appended to `logfile`."""
    tty = sys.stderr.isatty() if tty is None else tty
    start = logfile.stat().st_size if logfile.exists() else 0
    stop = threading.Event()
    t0 = time.monotonic()

    def run() -> None:
        interval = TTY_REFRESH_S if tty else HEARTBEAT_S
        while not stop.wait(interval):
            text = f"{label}: {describe(count_steps(logfile, start), expected, time.monotonic() - t0)}"
            if tty:
                sys.stderr.write(f"\r\x1b[K{text}")
                sys.stderr.flush()
            else:
                log.info("%s", text)

    worker = threading.Thread(target=run, name=f"progress-{label}", daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()
        if tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
