from harness.pipeline import RunRequest, _merge_attempts, _worth_a_retry
from harness.report import ktap
from harness.results import ERROR, FAIL, PASS, TestResult


def _w(status, reason="", **ev):
    return TestResult("kvm.tdp_mmu.dirty_log_test.clear-log", status, reason=reason, evidence=dict(ev))


def _c(status, reason=""):
    return TestResult("kvm.tdp_mmu.dirty_log_test.clear-log.consistency", status, reason=reason)


def test_only_a_selftests_own_failure_is_retried():
    req = RunRequest()
    assert _worth_a_retry(_w(FAIL, "exit 254: Invalid guest sync status"), req)
    assert not _worth_a_retry(_w(FAIL, "kernel reported: warning", health=["warning: ..."]), req)
    assert not _worth_a_retry(_w(ERROR, "timeout"), req)
    assert not _worth_a_retry(_w(PASS), req)
    assert not _worth_a_retry(_w(FAIL, "x"), RunRequest(retries=0))


def test_flaky_pass_keeps_the_first_attempt():
    merged = _merge_attempts([_w(FAIL, "exit 254: SHUTDOWN"), _c(PASS, "ok1")], [_w(PASS), _c(PASS, "ok2")])
    assert merged[0].status == PASS and merged[0].evidence["flaky"] is True
    assert "flaky: passed on retry; first attempt: exit 254: SHUTDOWN" == merged[0].reason
    assert merged[0].evidence["first_attempt"]["status"] == FAIL
    assert merged[1].reason == "ok2" and merged[1].evidence["first_attempt_verdict"]["status"] == PASS
    assert "# flaky: passed on retry" in ktap.render(merged)


def test_failing_twice_is_a_fail_and_a_consistency_fail_always_stands():
    merged = _merge_attempts([_w(FAIL, "a"), _c(FAIL, "bits")], [_w(FAIL, "b"), _c(PASS, "ok")])
    assert merged[0].status == FAIL and merged[0].reason.startswith("failed twice")
    assert merged[1].status == FAIL and merged[1].reason == "bits"
