"""What a test's evidence is, as values: how the capture is taken (CaptureSettings), the files it left
(Captured), and the name of a test's directory (safe_name). No I/O: the verdicts read these, capture.py
and forensics.py fill them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class CaptureSettings:
    buffer_kb_per_cpu: int = 65536
    # 2 s: each dump is built under the VM's mmu_lock (the vCPU's faults wait) and costs the guest
    # ~0.3 s under TCG; at 0.5 s the dumps slowed a shadow dirty_log_test by a third, at 1 s by a
    # quarter. A 20 s workload still gets ~8 dumps, and the trace replay checks every event between.
    snapshot_interval_s: float = 2.0


@dataclass
class Captured:
    """A test's capture once fetched from the guest: its dumps and trace.dat under `dir`, the ring buffer's
    own counts (ring-stats.txt), dumps whose VM vanished mid-read, and why the capture failed, if it did."""

    dir: Path
    snapshots: list[Path] = field(default_factory=list)
    trace: Path | None = None
    ring_lost: int = 0
    ring_entries: int | None = None
    vanished: int = 0
    error: str = ""


def safe_name(path: str) -> str:
    """A test path as a file or directory name: anything but letters, digits, `_`, `.` and `-` becomes `_`."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", path)
