"""Typed errors, one per stage, and the exit codes: of a stage that stopped the run (each error
class's `exit_code`) and of the tests' outcome (`exit_code_for`). Nowhere else maps either.

A harness fault is an ERROR, never a FAIL: only a test that ran and failed
gives exit 1. Everything that stops the run before or around the tests has
its own code so CI and scripts can tell them apart.
"""

from __future__ import annotations

from collections.abc import Sequence

from .results import Status, TestResult, overall

EXIT_OK = 0
EXIT_TEST_FAILED = 1
EXIT_USAGE = 2
EXIT_APPLY = 3
EXIT_SKIPPED = 4  # kselftest convention: everything skipped
EXIT_CONFIG = 5
EXIT_BUILD = 6
EXIT_BOOT = 7
EXIT_INFRA = 8
EXIT_INTERRUPTED = 130


class HarnessError(Exception):
    """Base of every error the harness raises on purpose."""

    exit_code = EXIT_INFRA
    kind = "error"

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message


class UsageError(HarnessError):
    exit_code = EXIT_USAGE
    kind = "usage"


class ApplyError(HarnessError):
    """A patch of a series did not apply, or is not a well-formed patch."""

    exit_code = EXIT_APPLY
    kind = "apply"

    def __init__(self, message: str, *, patch: str = "", files: list[str] | None = None,
                 line: int | None = None, detail: str = "") -> None:
        super().__init__(message, detail=detail)
        self.patch = patch
        self.files = files or []
        self.line = line


class ConfigError(HarnessError):
    exit_code = EXIT_CONFIG
    kind = "config"


class BuildError(HarnessError):
    exit_code = EXIT_BUILD
    kind = "build"


class BootError(HarnessError):
    """The guest did not come up: panic, QEMU exit, SSH deadline."""

    exit_code = EXIT_BOOT
    kind = "boot"


class InfraError(HarnessError):
    """A fault of the host side: QEMU died, accelerator unusable, lost guest."""

    exit_code = EXIT_INFRA
    kind = "infrastructure"


class GuestError(InfraError):
    """The guest stopped answering or a command could not be run."""

    kind = "guest"


class Interrupted(HarnessError):
    exit_code = EXIT_INTERRUPTED
    kind = "interrupted"


# The tests' outcome (results.overall, KCIDB precedence) -> exit code. ERROR is 7 when a VM did
# not boot (BootError's code), else 8: the tests could not be judged.
_EXIT_FOR_STATUS = {Status.PASS: EXIT_OK, Status.FAIL: EXIT_TEST_FAILED, Status.SKIP: EXIT_SKIPPED}


def exit_code_for(results: Sequence[TestResult]) -> int:
    """The run's exit code from its results (no results: ERROR, exit 8)."""
    status = overall(results)
    if status == Status.ERROR:
        return EXIT_BOOT if any(r.failure == "boot" for r in results) else EXIT_INFRA
    return _EXIT_FOR_STATUS[status]
