"""The run's decisions on plain values (harness/verdicts.py): no VM, no SSH."""

from pathlib import Path

from harness import capture
from harness.checks.reference.findings import Verdict, new_counts
from harness.errors import exit_code_for
from harness.guest import RunResult
from harness.guestcheck.health import scan
from harness.modes import MODES, parse_facts
from harness.report import ktap
from harness.results import ERROR, FAIL, PASS, SKIP, TestResult
from harness.verdicts import (
    Observation,
    boot_verdict,
    consistency_verdict,
    merge_attempts,
    workload_verdict,
    worth_a_retry,
)
from harness.workloads import WorkloadPlan


def _w(status, reason="", failure=None, output=""):
    return TestResult("kvm.tdp_mmu.dirty_log_test.clear-log", status, reason=reason, failure=failure, output=output)


# dirty_log_test's own failures, as test_util.c's test_assert() prints them (6.12).
SYNC_SHUTDOWN = """==== Test Assertion Failure ====
  dirty_log_test.c:262: get_ucall(vcpu, NULL) == UCALL_SYNC
  pid=81 tid=83 errno=4 - Interrupted system call
     1\t0x0000000000402a5e: default_after_vcpu_run at dirty_log_test.c:262
  Invalid guest sync status: exit_reason=SHUTDOWN
"""
PAGE_MISSING = """==== Test Assertion Failure ====
  dirty_log_test.c:561: test_bit_le(page, bmap)
  pid=81 tid=81 errno=0 - Success
     1\t0x0000000000402f13: vm_dirty_log_verify at dirty_log_test.c:561
  Page 31744 should have its dirty bit set in this iteration but it is missing
"""


def _c(status, reason=""):
    return TestResult("kvm.tdp_mmu.dirty_log_test.clear-log.consistency", status, reason=reason)


def test_only_a_known_infrastructure_failure_is_retried():
    retries = 1
    assert worth_a_retry(_w(FAIL, "exit 254: Invalid guest sync status", output=SYNC_SHUTDOWN), retries)
    # a page missing from the dirty log is the kernel's bug the first time it shows (issue 15)
    assert not worth_a_retry(_w(FAIL, "exit 254: ... it is missing", output=PAGE_MISSING), retries)
    assert not worth_a_retry(_w(FAIL, "exit 1: something else", output="unknown failure\n"), retries)
    # 6.12's dirty_log_test race in dirty-ring mode, as a real run printed it (TDP MMU mode)
    stale = (REAL / "tdp_mmu-dirty-ring-stale-value.txt").read_text()
    assert worth_a_retry(_w(FAIL, "exit 254: ... Set page 65484 value 1 incorrect (iteration=4)", output=stale), retries)
    # the same L2 shutdown through TEST_ASSERT_KVM_EXIT_REASON, as a real CI run printed it
    shutdown = (REAL / "tdp_mmu-enable-test-shutdown.txt").read_text()
    assert worth_a_retry(_w(FAIL, "exit 254: ... got: 8 (SHUTDOWN)", output=shutdown), retries)
    assert not worth_a_retry(_w(FAIL, "exit 254", output=shutdown.replace("8 (SHUTDOWN)", "17 (INTERNAL_ERROR)")),
                             retries)
    assert not worth_a_retry(_w(FAIL, "kernel reported: warning", failure="health"), retries)
    assert not worth_a_retry(_w(ERROR, "timeout", failure="timeout"), retries)
    assert not worth_a_retry(_w(PASS), retries)
    assert not worth_a_retry(_w(FAIL, "x", output=SYNC_SHUTDOWN), 0)


def test_flaky_pass_keeps_the_first_attempt():
    merged = merge_attempts([_w(FAIL, "exit 254: SHUTDOWN"), _c(PASS, "ok1")], [_w(PASS), _c(PASS, "ok2")])
    assert merged[0].status == PASS and merged[0].evidence["flaky"] is True
    assert merged[0].reason == "flaky: passed on retry; first attempt: exit 254: SHUTDOWN"
    assert merged[0].evidence["first_attempt"]["status"] == FAIL
    assert merged[1].reason == "ok2" and merged[1].evidence["first_attempt_verdict"]["status"] == PASS
    assert "# flaky: passed on retry" in ktap.render(merged)


def test_failing_twice_is_a_fail_and_a_consistency_fail_always_stands():
    merged = merge_attempts([_w(FAIL, "a"), _c(FAIL, "bits")], [_w(FAIL, "b"), _c(PASS, "ok")])
    assert merged[0].status == FAIL and merged[0].reason.startswith("failed twice")
    assert merged[1].status == FAIL and merged[1].reason == "bits"


# --- the boot, workload and consistency verdicts: plain values in, results out, no VM ----------------------------

REAL = Path(__file__).parent / "data" / "real"
WARN_DMESG = (REAL / "dmesg-mutant-warn.txt").read_text()
# modes.FACTS_SCRIPT's output as a real shadow-mode guest printed it (values from a run's fingerprint).
FACTS_SHADOW = """vendor=kvm_amd
dev_kvm=1
nested=1
tdp=0
tdp_mmu=N
release=6.12.117+
cpus=2
instrumented=1
kvm_line=[    1.523600] kvm_amd: Nested Virtualization enabled
kvm_line=[    1.523700] kvm_amd: Nested Paging disabled
"""


def test_boot_verdict_pass_records_the_fingerprint():
    res = boot_verdict("kvm.shadow.boot", MODES["shadow"], parse_facts(FACTS_SHADOW), [], 1.73, 2)
    assert res.status == PASS and res.reason == "" and res.duration_s == 1.73
    fp = res.evidence["fingerprint"]
    assert fp["tdp"] == "N" and fp["instrumented"] is True and fp["guest_kernel"] == "6.12.117+"


def test_boot_verdict_kernel_report_is_fail_mode_not_reached_is_error():
    facts = parse_facts(FACTS_SHADOW)
    warn = scan(WARN_DMESG, "dmesg-shadow.txt")
    assert boot_verdict("b", MODES["shadow"], facts, warn, 1.0, 2).status == FAIL
    wrong = boot_verdict("b", MODES["tdp_legacy"], facts, [], 1.0, 2)
    assert wrong.status == ERROR and wrong.reason.startswith("MMU mode not reached: npt=N")
    no_kvm = boot_verdict("b", MODES["shadow"], parse_facts(FACTS_SHADOW.replace("dev_kvm=1", "dev_kvm=0")),
                          [], 1.0, 2)
    assert no_kvm.status == FAIL and "/dev/kvm missing" in no_kvm.reason
    one_cpu = boot_verdict("b", MODES["shadow"], facts, [], 1.0, 4)
    assert one_cpu.status == ERROR and "brought up 2 CPU(s) of the 4" in one_cpu.reason


def _obs(rc, out="", dmesg="", **kw):
    run = RunResult("/bin/dirty_log_test -M dirty-log", rc, out, "", 12.5)
    return Observation("kvm.shadow.dirty_log_test.dirty-log", "dirty_log_test", run.cmd, 240, "shadow", 12.5, run,
                       dmesg=dmesg, **kw)


def test_workload_verdict_from_the_kselftest_exit_code():
    assert workload_verdict(_obs(0, "ok\n")).status == PASS
    skip = workload_verdict(_obs(4, "1..0 # SKIP no dirty ring support\n"))
    assert skip.status == SKIP and "no dirty ring" in skip.reason
    fail = workload_verdict(_obs(254, SYNC_SHUTDOWN))
    assert fail.status == FAIL and fail.reason.endswith("|   Invalid guest sync status: exit_reason=SHUTDOWN")
    assert fail.failure is None and worth_a_retry(fail, 1)
    lost_write = workload_verdict(_obs(254, PAGE_MISSING))
    assert lost_write.status == FAIL and "should have its dirty bit set" in lost_write.reason
    assert not worth_a_retry(lost_write, 1)


def test_a_kernel_warning_fails_a_passing_workload_and_is_never_retried():
    res = workload_verdict(_obs(0, "ok\n", dmesg=WARN_DMESG))
    assert res.status == FAIL and res.failure == "health" and not worth_a_retry(res, 1)
    assert res.reason.startswith("kernel reported: warning: WARNING: CPU: 0 PID: 83 at ../src/arch/x86/kvm/mmu/mmu.c:522")
    assert "mmu_log_possible_writable_spte" in res.output


def test_a_bug_taint_without_a_known_report_still_fails_the_workload():
    # the kernel set W (512) during the test, but its log holds no report in a form the scanner knows
    res = workload_verdict(_obs(0, "ok\n", dmesg="[ 9.1] a message in a spelling no scanner knows\n", taint=(0, 512)))
    assert res.status == FAIL and res.failure == "health" and not worth_a_retry(res, 1)
    assert res.reason == "kernel reported: taint: the kernel became tainted: W (kernel warning) (dmesg-shadow.txt)"
    # a known report names itself; the taint it set adds nothing
    both = workload_verdict(_obs(0, "ok\n", dmesg=WARN_DMESG, taint=(0, 512)))
    assert [h.split(":")[0] for h in both.evidence["health"]] == ["warning", "warning"]
    # taints a kernel bug does not set (a module, O/E) are no finding; a taint already there before is not new
    assert workload_verdict(_obs(0, "ok\n", taint=(0, 4096 | 8192))).status == PASS
    assert workload_verdict(_obs(0, "ok\n", taint=(512, 512))).status == PASS


def test_timeout_and_lost_guest_are_errors_unless_the_kernel_crashed():
    t = workload_verdict(_obs(None, "partial", console="[ 9.1] still running\n"))
    assert t.status == ERROR and t.failure == "timeout" and t.timed_out
    assert t.reason.startswith("timeout after 240 s (--timeout); forensics in forensics/")
    assert t.output.endswith("[console since the test started ends: '[ 9.1] still running']")
    lost = Observation("kvm.shadow.cmd.x", "cmd", "x", 240, "shadow", 3.0, None, lost="SSH connection lost",
                       qemu_alive=False, qemu_end="killed by SIGKILL", console="", console_tail="tail")
    res = workload_verdict(lost)
    assert res.status == ERROR and res.failure == "guest_lost" and res.output == "tail"
    assert res.reason == "lost the guest: SSH connection lost; QEMU killed by SIGKILL"
    lost.console = "[ 5.0] Kernel panic - not syncing: Fatal exception\n"
    crashed = workload_verdict(lost)
    assert crashed.status == FAIL and crashed.reason.startswith("panic: Kernel panic - not syncing")
    assert exit_code_for([TestResult("kvm.shadow.boot", PASS), t]) == 8


def _verdict(status, events=10):
    return Verdict(status, f"{status.lower()} reason", new_counts(events=events, pages=2), [])


def test_consistency_verdict_errors_on_incomplete_evidence():
    cap = capture.Captured(Path("/cap"), ring_entries=10)
    assert consistency_verdict("p", MODES["shadow"], cap, "", _verdict(PASS)).status == PASS
    short = consistency_verdict("p", MODES["shadow"], cap, "", _verdict(PASS, events=9))
    assert short.status == ERROR and "the trace gave 9 events but the guest's ring buffer held 10" in short.reason
    # write-protect-all's events are among `events` (FORMAT.md v2: replayed with the rest), not added again
    wp = Verdict(PASS, "ok", new_counts(events=10, pages=2, wp_all_enables=1, wp_loads=2), [])
    assert consistency_verdict("p", MODES["shadow"], cap, "", wp).status == PASS
    lossy = capture.Captured(Path("/cap"), ring_lost=3, ring_entries=10)
    assert consistency_verdict("p", MODES["shadow"], lossy, "", _verdict(PASS)).status == ERROR
    assert consistency_verdict("p", MODES["shadow"], lossy, "", _verdict(FAIL)).status == FAIL  # a finding stands
    assert consistency_verdict("p", MODES["shadow"], None, "instrumentation missing", None).reason == \
        "instrumentation missing"


def test_a_skip_is_an_error_where_the_mode_reaches_the_patched_code():
    cap = capture.Captured(Path("/cap"), ring_entries=10)
    tdp_only = Verdict(SKIP, "only TDP MMU pages (out of scope)", new_counts(events=10), [])
    assert consistency_verdict("p", MODES["tdp_mmu"], cap, "", tdp_only).status == SKIP
    res = consistency_verdict("p", MODES["shadow"], cap, "", tdp_only)
    assert res.status == ERROR and res.reason.startswith("mode shadow should reach the patched code")
    # the checker's own SKIP on shadow pages (write-protect-all not judged) stays a SKIP with its reason
    unjudged = _verdict(SKIP)
    assert consistency_verdict("p", MODES["shadow"], cap, "", unjudged).status == SKIP


def test_write_protect_all_must_be_judged_where_the_workload_logs_memory_it_wrote():
    cap = capture.Captured(Path("/cap"), ring_entries=10)
    v2 = Verdict(PASS, "no inconsistency", new_counts(events=10, pages=2, wp_dumps=3), [])
    res = consistency_verdict("p", MODES["tdp_legacy"], cap, "", v2, logs_populated_memory=True)
    assert res.status == SKIP and res.reason.startswith("write-protect-all not judged: the workload starts dirty"), res
    assert res.reason.endswith("; no inconsistency")
    # with an enable traced it is the checker's to say; dirty_log_test (logging from the memslot's creation),
    # a v1 kernel (the bitmap alone) or tdp_mmu (out of scope) have nothing of the kind to judge
    enabled = Verdict(PASS, "ok", new_counts(events=10, pages=2, wp_dumps=3, wp_all_enables=1), [])
    assert consistency_verdict("p", MODES["shadow"], cap, "", enabled, logs_populated_memory=True).status == PASS
    assert consistency_verdict("p", MODES["shadow"], cap, "", v2).status == PASS
    v1 = Verdict(PASS, "ok", new_counts(events=10, pages=2), [])
    assert consistency_verdict("p", MODES["shadow"], cap, "", v1, logs_populated_memory=True).status == PASS
    assert consistency_verdict("p", MODES["tdp_mmu"], cap, "", v2, logs_populated_memory=True).status == PASS
    plan = WorkloadPlan()
    assert {w.test for w in plan.workloads() if w.logs_populated_memory} == {"dirty_log_perf_test",
                                                                            "dirty_log_enable_test"}


def test_no_shadow_mmu_evidence_is_a_skip_where_the_mode_never_reaches_it():
    # kvm.tdp_mmu.dirty_log_enable_test in a real run: the VM lived 2.2 s, under the 2 s dump interval plus its
    # start, so no dump; the trace held only write-protect-all's two disables (FORMAT.md v2)
    cap = capture.Captured(Path("/cap"), ring_entries=2)
    no_dump = Verdict(ERROR, "trace events but no dump: the masks are unknown, the trace cannot be replayed",
                      new_counts(events=2, vms=1, wp_all_disables=2), [])
    res = consistency_verdict("p", MODES["tdp_mmu"], cap, "", no_dump)
    assert res.status == SKIP and res.reason.startswith("mode tdp_mmu does not reach the patched code; trace events")
    # where the mode does reach it, the same lack of evidence stays an ERROR
    assert consistency_verdict("p", MODES["shadow"], cap, "", no_dump).status == ERROR
    # and an incomplete capture stays an ERROR in any mode
    assert consistency_verdict("p", MODES["tdp_mmu"], capture.Captured(Path("/cap"), ring_entries=5), "",
                               no_dump).status == ERROR


def test_a_stopped_workloads_capture_is_judged_and_says_how_far_it_got():
    from harness.verdicts import stopped_consistency
    cap = capture.Captured(Path("/cap"), ring_entries=120)
    clean = Verdict(PASS, "no inconsistency", new_counts(events=120, snapshots=4, pages=9, pages_left=0), [])
    workload = TestResult("p", ERROR, reason="timeout after 240 s (--timeout)", failure="timeout")
    res = stopped_consistency(consistency_verdict("p", MODES["shadow"], cap, "", clean), workload,
                              "workload timed out")
    assert res.status == ERROR and res.reason.startswith(
        "workload timed out; the capture up to then judged PASS: 120 trace events, 4 dumps, its VMs torn down"), res
    assert workload.reason.endswith("; the capture up to then judged PASS: 120 trace events, 4 dumps, its VMs torn"
                                    " down")
    # no teardown in the trace: said
    half = Verdict(PASS, "no inconsistency", new_counts(events=120, snapshots=1, pages=9, pages_left=7), [])
    res = stopped_consistency(consistency_verdict("p", MODES["shadow"], cap, "", half),
                              TestResult("p", ERROR), "workload timed out")
    assert "7 shadow pages never freed (no teardown seen)" in res.reason
    # an inconsistency is a FAIL, whatever stopped the workload
    bad = Verdict(FAIL, "2 inconsistencies", new_counts(events=120, pages=9, inconsistencies=2), [])
    res = stopped_consistency(consistency_verdict("p", MODES["shadow"], cap, "", bad), TestResult("p", ERROR),
                              "workload stopped by the livelock watchdog")
    assert res.status == FAIL and res.reason == ("2 inconsistencies (workload stopped by the livelock watchdog:"
                                                 " its capture judged to its end)")
    # no capture: an ERROR that says why
    res = stopped_consistency(consistency_verdict("p", MODES["shadow"], None, "no capture", None),
                              TestResult("p", ERROR), "workload timed out")
    assert res.status == ERROR and res.reason == "workload timed out; no capture"


def test_a_stopped_test_says_where_its_threads_were():
    import gzip

    from harness.verdicts import add_threads
    text = gzip.decompress((Path(__file__).parent / "data" / "real" / "sysrq" /
                            "tdp_legacy-dirty-ring-exit-loop.sysrq-tw.txt.gz").read_bytes()).decode()
    res = TestResult("p", ERROR, reason="timeout after 240 s (--timeout)")
    add_threads(res, text, "dirty_log_test")
    assert res.reason.startswith("timeout after 240 s (--timeout); its threads then: pid 1498 R in kvm_mmu_page_fault")
    assert "(the MMU's fault path)" in res.evidence["threads"]
    quiet = TestResult("p", ERROR, reason="r")
    add_threads(quiet, text, "sleep-forever")
    assert quiet.reason == "r" and "threads" not in quiet.evidence
    # gone before the forensics: how it ended instead
    gone = TestResult("p", FAIL, reason="livelock")
    add_threads(gone, text, "dirty_log_enable_test", "exit 254: Wanted KVM exit reason: 2 (IO), got: 8 (SHUTDOWN)")
    assert gone.reason == ("livelock; it ended by itself before its forensics (exit 254: Wanted KVM exit reason: 2"
                           " (IO), got: 8 (SHUTDOWN))")
