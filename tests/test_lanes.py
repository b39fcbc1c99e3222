"""The lanes (harness/lanes.py) with stand-ins at the VM seam, in seconds: how the cells of a matrix are
spread over VMs, what follows a test that hangs or a VM that does not boot, and the retry of a known
infrastructure signature. Each stand-in VM has a name; the tests say which VM ran what and which were
stopped. (The livelock's own branches: test_lanes_livelock.py.)"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from harness import lanes as lanes_mod
from harness.modes import MODES, MmuMode
from harness.request import RunOptions
from harness.results import ERROR, FAIL, PASS, TestResult
from harness.schedule import BackgroundChecks, ResultBook, Timings
from harness.vmspec import Accel
from harness.workloads import Workload

SHUTDOWN = ("==== Test Assertion Failure ====\n  Invalid guest sync status: exit_reason=SHUTDOWN\n")


@dataclass
class FakeSession:
    mode: MmuMode
    name: str
    stops: list[tuple[str, bool]] = field(default_factory=list)

    def stop(self, fast: bool = False) -> None:
        self.stops.append((self.name, fast))


@dataclass
class FakePrepared:
    accel: Accel


def work(n: int) -> list[Workload]:
    return [Workload(f"test{i}", "", (), 60.0) for i in range(n)]


class Rig:
    """Lanes whose VMs boot as `boots` says per mode (a name per VM, None: that VM does not boot) and whose
    attempts give `outcome(vm name, workload, attempt)`: "pass", "timeout", "shutdown" (a FAIL with the
    infrastructure signature) or "fail"."""

    def __init__(self, tmp_path: Path, vms: int, boots: dict[str, list[str | None]],
                 outcome: dict[tuple[str, int], str] | None = None) -> None:
        self.lock = threading.Lock()
        self.ran: list[tuple[str, str, int]] = []   # (vm, workload path, attempt)
        self.stops: list[tuple[str, bool]] = []
        self.booted: list[str] = []
        self.outcome = outcome or {}
        self.boots = boots
        opts = RunOptions(consistency="off", vms=vms)
        self.lanes = lanes_mod.Lanes(FakePrepared(Accel("tcg", "max", "test")), opts, tmp_path,  # type: ignore[arg-type]
                                     Timings(), ResultBook(list(MODES)), BackgroundChecks())
        self.lanes.attempt = self.attempt  # type: ignore[method-assign]
        self.lanes.start_session = self.start_session  # type: ignore[method-assign]

    def start_session(self, mode: MmuMode) -> lanes_mod.Started:
        with self.lock:
            name = self.boots[mode.name].pop(0)
        if name is None:
            return lanes_mod.Started(None, why_not="boot failed (deadline)")
        self.booted.append(name)
        return lanes_mod.Started(FakeSession(mode, name, self.stops), check=False)  # type: ignore[arg-type]

    def attempt(self, s: FakeSession, w: Workload, check: bool, attempt: int = 1) -> list[TestResult]:
        path = w.path(s.mode.name)
        with self.lock:
            self.ran.append((s.name, path, attempt))
            n = sum(1 for _, p, _ in self.ran if p == path)
        what = self.outcome.get((path, n), "pass")
        if what == "timeout":
            return [TestResult(path, ERROR, 60.0, reason="timeout after 60 s", failure="timeout")]
        if what == "shutdown":
            return [TestResult(path, FAIL, 3.0, reason="exit 254", output=SHUTDOWN)]
        if what == "fail":
            return [TestResult(path, FAIL, 3.0, reason="page 0 is missing from the dirty log: a lost write")]
        return [TestResult(path, PASS, 3.0)]

    def run(self, cells: list[lanes_mod.Cell]) -> list[TestResult]:
        self.lanes.run(cells)
        return self.lanes.book.ordered()


def cells(modes: list[str], ws: list[Workload]) -> list[lanes_mod.Cell]:
    return [lanes_mod.Cell(m, w) for m in modes for w in ws]


def test_two_vms_run_every_cell_once_and_the_book_keeps_plan_order(tmp_path):
    rig = Rig(tmp_path, vms=2, boots={"shadow": ["shadow"], "tdp_mmu": ["tdp_mmu"]})
    res = rig.run(cells(["shadow", "tdp_mmu"], work(3)))
    paths = [f"kvm.{m}.test{i}" for m in ("shadow", "tdp_mmu") for i in range(3)]
    assert [r.path for r in res] == paths and all(r.status == PASS for r in res)
    assert sorted(p for _, p, _ in rig.ran) == sorted(paths), "each cell once"
    assert {vm for vm, p, _ in rig.ran if ".shadow." in p} == {"shadow"}, "a VM runs tests of its own mode"
    assert sorted(rig.booted) == ["shadow", "tdp_mmu"] and sorted(rig.stops) == [("shadow", False), ("tdp_mmu", False)]


def test_one_vm_runs_the_modes_in_turn_stopping_each_before_the_next(tmp_path):
    rig = Rig(tmp_path, vms=1, boots={"shadow": ["shadow"], "tdp_legacy": ["tdp_legacy"]})
    rig.run(cells(["shadow", "tdp_legacy"], work(2)))
    assert [vm for vm, _, _ in rig.ran] == ["shadow", "shadow", "tdp_legacy", "tdp_legacy"]
    assert rig.stops == [("shadow", False), ("tdp_legacy", False)]


def test_a_test_that_times_out_is_followed_by_a_fresh_vm_for_the_rest(tmp_path):
    rig = Rig(tmp_path, vms=1, boots={"shadow": ["shadow", "shadow-2"]},
              outcome={("kvm.shadow.test1", 1): "timeout"})
    res = rig.run(cells(["shadow"], work(3)))
    assert [(vm, p) for vm, p, _ in rig.ran] == [("shadow", "kvm.shadow.test0"), ("shadow", "kvm.shadow.test1"),
                                                  ("shadow-2", "kvm.shadow.test2")]
    assert rig.stops == [("shadow", True), ("shadow-2", False)], "the hung VM is stopped at once, not shut down"
    assert [r.status for r in res] == [PASS, ERROR, PASS] and res[1].failure == "timeout"


def test_a_vm_that_does_not_boot_leaves_its_modes_tests_not_run_and_the_others_go_on(tmp_path):
    rig = Rig(tmp_path, vms=1, boots={"shadow": [None], "tdp_mmu": ["tdp_mmu"]})
    res = rig.run(cells(["shadow", "tdp_mmu"], work(2)))
    by = {r.path: r for r in res}
    assert [by[f"kvm.shadow.test{i}"].reason for i in range(2)] == ["not run: boot failed (deadline)"] * 2
    assert all(by[f"kvm.tdp_mmu.test{i}"].status == PASS for i in range(2))
    assert [vm for vm, _, _ in rig.ran] == ["tdp_mmu", "tdp_mmu"]


def test_a_known_infrastructure_signature_is_retried_once_in_the_same_vm(tmp_path):
    rig = Rig(tmp_path, vms=1, boots={"tdp_mmu": ["tdp_mmu"]},
              outcome={("kvm.tdp_mmu.test0", 1): "shutdown"})
    (res,) = rig.run(cells(["tdp_mmu"], work(1)))
    assert rig.ran == [("tdp_mmu", "kvm.tdp_mmu.test0", 1), ("tdp_mmu", "kvm.tdp_mmu.test0", 2)]
    assert res.status == PASS and res.evidence["flaky"] is True


def test_a_selftests_own_verdict_is_a_fail_the_first_time(tmp_path):
    rig = Rig(tmp_path, vms=1, boots={"shadow": ["shadow"]}, outcome={("kvm.shadow.test0", 1): "fail"})
    (res,) = rig.run(cells(["shadow"], work(1)))
    assert len(rig.ran) == 1 and res.status == FAIL


def test_with_retries_off_even_the_signature_is_a_fail(tmp_path):
    rig = Rig(tmp_path, vms=1, boots={"tdp_mmu": ["tdp_mmu"]}, outcome={("kvm.tdp_mmu.test0", 1): "shutdown"})
    rig.lanes.opts.retries = 0
    (res,) = rig.run(cells(["tdp_mmu"], work(1)))
    assert len(rig.ran) == 1 and res.status == FAIL
