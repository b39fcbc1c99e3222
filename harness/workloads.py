"""The workloads: KVM selftests as test cases in each MMU mode (modes.py), plus the
`--workload-cmd` testing hook, and what their output says (kselftest exit codes; perf.py has the
timings of dirty_log_perf_test)."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import ClassVar

from .errors import UsageError


@dataclass(frozen=True)
class Workload:
    """A KVM selftest run as one test case; its path is kvm.<mode>.<test>[.<variant>]."""

    test: str                   # selftest binary
    variant: str                # e.g. the dirty-log mode
    argv: tuple[str, ...]
    timeout_s: float
    # It enables dirty logging on a memslot the guest has already written: write-protect-all has pages to
    # protect, so in a mode that reaches the shadow MMU its rules must be judged (verdicts.consistency_verdict).
    logs_populated_memory: bool = False
    checks_consistency: ClassVar[bool] = True   # the bitmap is checked on what it did

    def path(self, mode: str) -> str:
        return f"kvm.{mode}.{self.test}" + (f".{self.variant}" if self.variant else "")

    def command(self) -> str:
        # Absolute path: the selftests open their own ELF through argv[0].
        return " ".join((f"/bin/{self.test}",) + self.argv)


@dataclass(frozen=True)
class CommandWorkload:
    """A testing hook (--workload-cmd NAME=CMD): any guest shell command run as a test.

    Used by the fault tests to simulate a hang (`sleep 600`) or a victim for
    a killed QEMU; its path is kvm.<mode>.cmd.<NAME>, it has the per-test
    timeout and no consistency check.
    """

    variant: str
    cmd: str
    timeout_s: float
    test: str = "cmd"
    checks_consistency: ClassVar[bool] = False
    logs_populated_memory: ClassVar[bool] = False

    def path(self, mode: str) -> str:
        return f"kvm.{mode}.cmd.{self.variant}"

    def command(self) -> str:
        return self.cmd


AnyWorkload = Workload | CommandWorkload
_COMMAND_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def parse_workload_cmd(spec: str) -> tuple[str, str]:
    """NAME=CMD -> (NAME, CMD); a UsageError naming the problem otherwise."""
    name, sep, cmd = spec.partition("=")
    if not sep or not _COMMAND_NAME.match(name) or not cmd.strip():
        raise UsageError(f"--workload-cmd wants NAME=COMMAND (NAME of letters, digits, - or _): {spec!r}")
    return name, cmd


@dataclass
class WorkloadPlan:
    iterations: int = 5
    interval_ms: int = 10
    # 128 MiB: ~6 s per mode under TCG (256 MiB took ~12 s); -g still write-protects it all at once
    perf_bytes: str = "128M"
    perf_iterations: int = 3
    timeout_s: float = 240.0
    log_modes: tuple[str, ...] = ("dirty-log", "clear-log", "dirty-ring")
    # dirty_log_enable_test: enable/disable cycles and memslot MiB (kernel-patches/dirty-log-enable-selftest)
    enable_cycles: int = 2
    enable_mb: int = 64
    only: tuple[str, ...] = field(default_factory=tuple)   # substrings of test paths to keep
    commands: tuple[tuple[str, str], ...] = ()              # --workload-cmd (NAME, CMD), after the selftests

    def workloads(self) -> list[Workload]:
        out = [Workload("dirty_log_test", m, ("-M", m, "-i", str(self.iterations), "-I", str(self.interval_ms)),
                        self.timeout_s) for m in self.log_modes]
        # -g: manual protect off, so enabling dirty logging write-protects all
        # memory at once: the path the series under test speeds up.
        out.append(Workload("dirty_log_perf_test", "", ("-v", "1", "-b", self.perf_bytes,
                                                        "-i", str(self.perf_iterations), "-g"), self.timeout_s,
                            logs_populated_memory=True))
        # Checks the content of the dirty log after a flags-only enable: the path write-protect-all takes.
        out.append(Workload("dirty_log_enable_test", "", ("-c", str(self.enable_cycles), "-m", str(self.enable_mb),
                                                          "-v", "2"), self.timeout_s, logs_populated_memory=True))
        return out

    def selected(self, mode: str, available: Collection[str] | None = None) -> list[AnyWorkload]:
        """What runs in `mode`, in order: the selftests (those in `available`, the build's, when given),
        then the hook's commands, as --only filters them."""
        tests = [w for w in self.workloads() if available is None or w.test in available]
        every: list[AnyWorkload] = [*tests, *(CommandWorkload(n, c, self.timeout_s) for n, c in self.commands)]
        return [w for w in every if not self.only or any(o in w.path(mode) for o in self.only)]


# kselftest exit codes
KSFT_PASS, KSFT_SKIP = 0, 4

def skip_reason(output: str) -> str:
    for line in reversed(output.splitlines()):
        if "SKIP" in line or "skip" in line.lower():
            return line.strip()[:200]
    return "selftest exited 4 (KSFT_SKIP)"
