"""Result objects shared by the pipeline and every report writer.

Statuses follow KernelCI: FAIL is a test that ran and found a bug; ERROR is
a fault around it (harness, guest, timeout); SKIP has a reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

PASS, FAIL, ERROR, SKIP = "PASS", "FAIL", "ERROR", "SKIP"


@dataclass
class TestResult:
    __test__ = False  # not a pytest test class
    path: str                      # dot-separated, e.g. kvm.shadow.dirty_log_test.dirty-log
    status: str
    duration_s: float = 0.0
    reason: str = ""               # one line: why FAIL/ERROR/SKIP
    output: str = ""               # what the test printed (tail)
    command: str = ""
    timed_out: bool = False
    evidence: dict[str, object] = field(default_factory=dict)  # counts, findings, fingerprint
    artifacts: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def overall(results: list[TestResult]) -> str:
    """KCIDB precedence: FAIL > ERROR > PASS > SKIP (all skipped is SKIP)."""
    statuses = {r.status for r in results}
    for s in (FAIL, ERROR, PASS, SKIP):
        if s in statuses:
            return s
    return ERROR  # nothing ran: zero evidence is not a pass
