"""Result objects shared by the run and every report writer.

Statuses follow KernelCI (KCIDB v4 `status`): FAIL is a test that ran and found a bug; ERROR is
a fault around it (harness, guest, timeout); SKIP has a reason.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Literal


class Status(enum.StrEnum):
    """A test's outcome. A str, so it prints, compares and serialises as "PASS" etc."""

    PASS = "PASS"
    FAIL = "FAIL"
    ERROR = "ERROR"
    SKIP = "SKIP"


PASS, FAIL, ERROR, SKIP = Status.PASS, Status.FAIL, Status.ERROR, Status.SKIP

# Why a test did not simply run to its end: read by the retry policy, the lanes (a fresh VM after a
# timeout, a livelock or a lost guest) and the exit code (a boot failure is exit 7, other errors exit 8).
# "livelock": the watchdog (guestcheck/livelock.py) stopped a test whose vCPUs faulted without progress.
Failure = Literal["timeout", "guest_lost", "boot", "health", "livelock"]


@dataclass
class TestResult:
    __test__ = False  # not a pytest test class
    path: str                      # dot-separated, e.g. kvm.shadow.dirty_log_test.dirty-log
    status: Status
    duration_s: float = 0.0
    reason: str = ""               # one line: why FAIL/ERROR/SKIP
    output: str = ""               # what the test printed (tail)
    command: str = ""
    failure: Failure | None = None
    evidence: dict[str, object] = field(default_factory=dict)  # for humans and KCIDB misc: counts, findings
    artifacts: list[str] = field(default_factory=list)

    @property
    def timed_out(self) -> bool:
        return self.failure == "timeout"

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["timed_out"] = self.timed_out  # results.json has always carried it
        return d


def overall(results: Iterable[TestResult]) -> Status:
    """KCIDB precedence: FAIL > ERROR > PASS > SKIP (all skipped is SKIP)."""
    statuses = {r.status for r in results}
    for s in (FAIL, ERROR, PASS, SKIP):
        if s in statuses:
            return s
    return ERROR  # nothing ran: zero evidence is not a pass


def counts(results: Iterable[TestResult]) -> dict[Status, int]:
    """How many results have each status, every status present (0 where none)."""
    out = dict.fromkeys(Status, 0)
    for r in results:
        out[r.status] += 1
    return out


@dataclass
class RunResult:
    """A guest command's end: its status, output and time (guest.Guest.run)."""

    cmd: str
    rc: int | None          # None: timed out, or stopped by a watcher (`stopped`)
    stdout: str
    stderr: str
    seconds: float
    stopped: str = ""       # why a watcher stopped it before its end

    @property
    def timed_out(self) -> bool:
        return self.rc is None and not self.stopped
