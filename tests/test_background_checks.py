"""Consistency verdicts computed beside the next workload: filled in place, never lost, errors named."""

import threading

from harness.pipeline import BackgroundChecks, exit_code
from harness.results import ERROR, FAIL, PASS, TestResult


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
    assert exit_code(results) == 1


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
