"""The lanes' handling of a livelock (harness/lanes.py), with stand-ins at the VM seam: which VM each attempt
runs in, what is stopped, what the book keeps. The real livelock is in test_integration_livelock.py; these
are the branches a real kernel cannot be made to take on demand (a TDP MMU livelock under TCG comes when it
comes: docs/steady.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness import lanes as lanes_mod
from harness.modes import MODES, MmuMode
from harness.request import RunOptions
from harness.results import FAIL, PASS, TestResult
from harness.schedule import BackgroundChecks, ResultBook, Timings
from harness.vm import Accel
from harness.workloads import Workload


@dataclass
class FakeSession:
    mode: MmuMode
    name: str
    stopped: list[str] = field(default_factory=list)

    def stop(self, fast: bool = False) -> None:
        self.stopped.append(self.name)


@dataclass
class FakePrepared:
    accel: Accel


W = Workload("dirty_log_test", "clear-log", ("-M", "clear-log"), 240.0)


def _lanes(tmp_path: Path, accel: str, outcomes: list[str], boots: list[str | None]):
    """Lanes whose attempts give `outcomes` in turn ("pass" or "livelock") and whose fresh VMs are `boots`
    (a name, or None for a VM that does not boot). Returns (lanes, the VM names each attempt ran in)."""
    opts = RunOptions(consistency="off")
    ln = lanes_mod.Lanes(FakePrepared(Accel(accel, "max", "test")), opts, tmp_path, Timings(),  # type: ignore[arg-type]
                         ResultBook(list(MODES)), BackgroundChecks())
    ran_in: list[str] = []
    stopped: list[str] = []

    def attempt(s, w, check, attempt=1):
        ran_in.append(s.name)
        out = outcomes[len(ran_in) - 1]
        if out == "pass":
            return [TestResult(w.path(s.mode.name), PASS, 30.0)]
        return [TestResult(w.path(s.mode.name), FAIL, 14.0, reason="livelock: 60,000 page faults in 12 s",
                           failure="livelock", evidence={"livelock": {"seconds": 12.0}},
                           artifacts=[f"forensics/{s.name}-{attempt}"])]

    def start_session(mode):
        name = boots.pop(0)
        if name is None:
            return lanes_mod.Started(None, why_not="boot failed (deadline)")
        return lanes_mod.Started(FakeSession(mode, name, stopped), check=False)  # type: ignore[arg-type]

    ln.attempt = attempt  # type: ignore[method-assign]
    ln.start_session = start_session  # type: ignore[method-assign]
    return ln, ran_in, stopped


def test_a_tdp_mmu_livelock_under_tcg_is_retried_in_a_fresh_vm_and_reported_flaky(tmp_path):
    ln, ran_in, stopped = _lanes(tmp_path, "tcg", ["livelock", "pass"], ["tdp_mmu-2"])
    first = FakeSession(MODES["tdp_mmu"], "tdp_mmu", stopped)
    res, s, _ = ln.run_cell(first, W, False, 0)  # type: ignore[arg-type]
    assert ran_in == ["tdp_mmu", "tdp_mmu-2"] and stopped == ["tdp_mmu"]
    assert s is not None and s.name == "tdp_mmu-2", "the lane goes on in the fresh VM"  # type: ignore[attr-defined]
    assert res.status == PASS and res.evidence["flaky"] is True and res.reason.startswith("flaky: passed on retry")
    assert res.artifacts == ["forensics/tdp_mmu-1"], "the first attempt's evidence is kept"
    assert [r.status for r in ln.book.ordered()] == [PASS]


@pytest.mark.parametrize("mode,accel", [("shadow", "tcg"), ("tdp_legacy", "tcg"), ("tdp_mmu", "kvm")])
def test_a_livelock_where_the_series_runs_or_on_hardware_is_a_fail_the_first_time(tmp_path, mode, accel):
    ln, ran_in, stopped = _lanes(tmp_path, accel, ["livelock", "pass"], ["never-booted"])
    first = FakeSession(MODES[mode], mode, stopped)
    res, s, _ = ln.run_cell(first, W, False, 0)  # type: ignore[arg-type]
    assert ran_in == [mode] and stopped == [] and s is first, "no retry: the lane itself takes a fresh VM next"
    assert res.status == FAIL and res.failure == "livelock"


def test_livelocked_twice_is_a_fail_and_a_fresh_vm_that_does_not_boot_leaves_the_first_verdict(tmp_path):
    ln, ran_in, _ = _lanes(tmp_path, "tcg", ["livelock", "livelock"], ["tdp_mmu-2"])
    res, s, _ = ln.run_cell(FakeSession(MODES["tdp_mmu"], "tdp_mmu"), W, False, 0)  # type: ignore[arg-type]
    assert ran_in == ["tdp_mmu", "tdp_mmu-2"] and res.status == FAIL and res.failure == "livelock"
    assert res.reason.startswith("failed twice; livelock") and res.evidence["first_attempt"]["failure"] == "livelock"
    assert res.artifacts == ["forensics/tdp_mmu-1", "forensics/tdp_mmu-2-2"]

    ln, ran_in, _ = _lanes(tmp_path, "tcg", ["livelock"], [None])
    res, s, _ = ln.run_cell(FakeSession(MODES["tdp_mmu"], "tdp_mmu"), W, False, 0)  # type: ignore[arg-type]
    assert ran_in == ["tdp_mmu"] and s is None and res.status == FAIL
    assert res.reason.endswith("; not retried: a fresh VM boot failed (deadline)")
