"""Sharing the run's workloads between VM lanes: who takes what, results back in plan order; the
consistency verdicts computed beside the next workload: filled in place, never lost, errors named."""

import threading

import pytest

from harness.errors import UsageError, exit_code_for
from harness.results import ERROR, FAIL, PASS, TestResult
from harness.schedule import (
    BackgroundChecks,
    ResultBook,
    Timings,
    WorkQueue,
    auto_lanes,
    covered_seconds,
    mem_available,
    memory_bytes,
)

GiB = 1 << 30


def _plan() -> dict[str, list[str]]:
    return {"shadow": ["s0", "s1", "s2"], "tdp_legacy": ["l0", "l1"], "tdp_mmu": ["m0", "m1"]}


def test_one_lane_runs_everything_in_plan_order():
    q = WorkQueue(_plan())
    taken, mode = [], None
    while (it := q.take(0, mode)) is not None:
        taken.append(it.workload)
        mode = it.mode
    assert taken == ["s0", "s1", "s2", "l0", "l1", "m0", "m1"]


def test_a_second_lane_starts_on_a_mode_nobody_runs_then_shares_the_last_one():
    q = WorkQueue(_plan())
    a = q.take(0, None)
    b = q.take(1, None)
    assert (a.workload, b.workload) == ("s0", "l0")        # two modes, two first boots
    assert q.take(1, "tdp_legacy").workload == "l1"        # B stays on its VM
    assert q.take(1, "tdp_legacy").workload == "m0"        # tdp_mmu: nobody on it yet
    assert q.take(0, "shadow").workload == "s1"
    assert q.take(0, "shadow").workload == "s2"
    assert q.take(0, "shadow").workload == "m1"            # A joins tdp_mmu for its last test
    assert q.take(0, "tdp_mmu") is None and q.take(1, "tdp_mmu") is None
    assert len(q) == 0


def test_drain_hands_back_a_modes_remaining_work_only():
    q = WorkQueue(_plan())
    q.take(0, None)
    gone = q.drain("shadow")
    assert [it.workload for it in gone] == ["s1", "s2"] and [it.index for it in gone] == [1, 2]
    assert q.take(0, "shadow").workload == "l0"


def test_lanes_taking_at_once_take_each_workload_exactly_once():
    q = WorkQueue({m: list(range(200)) for m in ("a", "b", "c")})
    got: list[tuple[str, int]] = []
    lock = threading.Lock()

    def lane(n: int) -> None:
        mode = None
        while (it := q.take(n, mode)) is not None:
            with lock:
                got.append((it.mode, it.workload))
            mode = it.mode
    threads = [threading.Thread(target=lane, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted((m, i) for m in "abc" for i in range(200))


def test_results_come_back_in_plan_order_whatever_order_the_lanes_finish_in():
    book = ResultBook(["shadow", "tdp_mmu"])
    book.add("tdp_mmu", 1, [TestResult("kvm.tdp_mmu.b", PASS)])
    book.add("shadow", 1, [TestResult("kvm.shadow.b", PASS), TestResult("kvm.shadow.b.consistency", PASS)])
    book.add("tdp_mmu", 0, [TestResult("kvm.tdp_mmu.a", FAIL)])
    book.add_boot("tdp_mmu", [TestResult("kvm.tdp_mmu.boot", PASS)])
    book.add("shadow", 0, [TestResult("kvm.shadow.a", PASS)])
    book.add_boot("shadow", [TestResult("kvm.shadow.boot", PASS)])
    assert [r.path for r in book.ordered()] == [
        "kvm.shadow.boot", "kvm.shadow.a", "kvm.shadow.b", "kvm.shadow.b.consistency",
        "kvm.tdp_mmu.boot", "kvm.tdp_mmu.a", "kvm.tdp_mmu.b"]
    assert [book.next_boot("shadow"), book.next_boot("shadow"), book.next_boot("tdp_mmu")] == [1, 2, 1]


def test_overhead_counts_wall_time_when_no_workload_ran():
    assert covered_seconds([]) == 0
    assert covered_seconds([(0, 10), (20, 25)]) == 15
    assert covered_seconds([(0, 10), (5, 12), (11, 13), (2, 3)]) == 13    # overlapping lanes count once
    t = Timings()
    t.workload_ran(100.0, 110.0)
    t.workload_ran(105.0, 120.0)
    t.add("capture_s", 1.25)
    t.add("capture_s", 1.25)
    t.append("ssh_ready_s", 1.7)
    t.put("fingerprint", "shadow-2", {"cpus": 2})
    assert covered_seconds(t.intervals) == 20
    assert t == {"capture_s": 2.5, "ssh_ready_s": [1.7], "fingerprint": {"shadow-2": {"cpus": 2}}}


def test_auto_lanes_one_per_cpu_as_memory_and_work_allow():
    assert auto_lanes(2, 20 * GiB, 3 * GiB, 12) == (2, "2 host CPUs")
    n, why = auto_lanes(8, 9 * GiB, 3 * GiB, 12)
    assert n == 2 and "MiB available" in why                  # 4 GiB per 3G guest
    assert auto_lanes(8, 64 * GiB, 3 * GiB, 3) == (3, "3 workload(s)")
    assert auto_lanes(1, None, 3 * GiB, 12) == (1, "1 host CPUs")
    assert auto_lanes(4, 1 * GiB, 3 * GiB, 12)[0] == 1         # never zero


def test_memory_sizes_and_meminfo():
    assert memory_bytes("3G") == 3 * GiB
    assert memory_bytes("3072M") == memory_bytes("3072") == 3 * GiB
    with pytest.raises(UsageError, match="--memory"):
        memory_bytes("lots")
    assert mem_available("MemTotal: 100 kB\nMemAvailable:   2048 kB\n") == 2 << 20
    assert mem_available("MemTotal: 100 kB\n") is None


def test_a_retry_waits_only_for_its_own_two_verdicts():
    checks = BackgroundChecks()
    gate = threading.Event()
    other = TestResult("other.consistency", ERROR, reason="not checked yet")
    first = TestResult("a.consistency", ERROR, reason="not checked yet")
    second = TestResult("a.consistency", ERROR, reason="not checked yet")
    checks.submit(first, lambda: TestResult("a.consistency", FAIL, reason="bits"))
    checks.submit(second, lambda: TestResult("a.consistency", PASS))
    checks.submit(other, lambda: (gate.wait(5), TestResult("other.consistency", PASS))[1])
    checks.wait_for([first, second])
    assert (first.status, second.status) == (FAIL, PASS)
    assert other.reason == "not checked yet"         # another lane's check is left to finish()
    gate.set()
    checks.finish()
    checks.close()
    assert other.status == PASS


# --- BackgroundChecks -----------------------------------------------------------------------------------

def test_verdicts_fill_their_placeholders_in_place_and_decide_the_exit_code():
    checks = BackgroundChecks()
    results = [TestResult("a", PASS), TestResult("a.consistency", ERROR, reason="not checked yet"),
               TestResult("b", PASS), TestResult("b.consistency", ERROR, reason="not checked yet")]
    checks.submit(results[1], lambda: TestResult("a.consistency", PASS, reason="no inconsistency"))
    checks.submit(results[3], lambda: TestResult("b.consistency", FAIL, reason="count_mismatch at spte 7"))
    checks.finish()
    checks.close()
    assert [r.path for r in results] == ["a", "a.consistency", "b", "b.consistency"]
    assert (results[1].status, results[3].status) == (PASS, FAIL)
    assert results[3].reason == "count_mismatch at spte 7"
    assert exit_code_for(results) == 1


def test_a_crashing_check_is_an_error_naming_the_cause():
    checks = BackgroundChecks()
    ph = TestResult("a.consistency", ERROR, reason="not checked yet")

    def boom() -> TestResult:
        raise ValueError("bad dump")
    checks.submit(ph, boom)
    checks.finish()
    checks.close()
    assert ph.status == ERROR and ph.reason == "consistency check crashed: ValueError: bad dump"


def test_an_interrupted_run_does_not_wait_for_checks_not_started():
    checks = BackgroundChecks()
    gate = threading.Event()
    first = TestResult("a.consistency", ERROR, reason="not checked yet")
    second = TestResult("b.consistency", ERROR, reason="not checked yet")
    checks.submit(first, lambda: (gate.wait(5), TestResult("a.consistency", PASS))[1])
    checks.submit(second, lambda: TestResult("b.consistency", PASS))
    threading.Timer(0.2, gate.set).start()  # the running check ends only after finish() has begun
    checks.finish(interrupted=True)
    checks.close()
    assert first.status == PASS  # the running check is waited for (its trace-cmd is killed by the run)
    assert second.status == ERROR and second.reason == "not checked: the run was interrupted first"
