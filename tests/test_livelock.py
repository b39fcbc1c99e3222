"""The livelock watchdog's judgement (harness/guestcheck/livelock.py) and what the run makes of it (verdicts):
no VM. Real samples come from the guests' /sys/kernel/debug/kvm of real runs (tests/data/real/livelock/)."""

import gzip
import json
from pathlib import Path

import pytest

from harness.guest import RunResult
from harness.guestcheck.livelock import (
    Livelock,
    Policy,
    Repeat,
    Sample,
    growth,
    judge,
    parse_sample,
    record,
    repeats,
    resolve,
    samples_of,
)
from harness.modes import MODES
from harness.results import FAIL, PASS, TestResult
from harness.verdicts import Observation, livelock_retry, merge_attempts, workload_verdict

REAL = Path(__file__).parent / "data" / "real" / "livelock"


def _samples(path: Path) -> list[Sample]:
    return samples_of(json.loads(path.read_text()))


def _first_livelock(samples: list[Sample], policy: Policy) -> tuple[int, Livelock] | None:
    """Replays the lanes' loop: the judgement after each new sample, the first livelock found."""
    for i in range(1, len(samples) + 1):
        found = judge(samples[:i], policy)
        if found is not None:
            return i, found
    return None


def test_a_sample_line_parses_and_anything_else_is_no_sample():
    s = parse_sample("t=123.45 pf_taken=10 pf_fixed=3 pf_spurious=- io_exits=7\n")
    assert s is not None and s.t == 123.45 and s.counters == {"pf_taken": 10, "pf_fixed": 3, "io_exits": 7}
    assert parse_sample("") is None
    assert parse_sample("sh: cd: can't cd to /sys/kernel/debug/kvm") is None
    assert parse_sample("t=abc pf_taken=1") is None


def _s(t, taken, fixed=0, io=0, spurious=0):
    return Sample(t, {"pf_taken": taken, "pf_fixed": fixed, "io_exits": io, "pf_spurious": spurious,
                      "pf_emulate": 0, "mmio_exits": 0, "halt_exits": 0, "exits": taken + io})


def test_faults_without_progress_for_the_window_are_a_livelock():
    p = Policy(window_s=10, min_faults=1000)
    spin = [_s(t, 100 + 5000 * t, fixed=50, io=9, spurious=5000 * t) for t in range(0, 14, 2)]
    found = judge(spin, p)
    assert found is not None and found.seconds == 12 and found.delta["pf_taken"] == 60000
    assert found.kind == "fault loop" and "pf_spurious 60,000" in found.reason()
    assert found.reason().startswith("livelock (fault loop): 60,000 page faults in 12 s")
    assert judge(spin[:5], p) is None          # 8 s: not yet


def test_progress_of_any_kind_restarts_the_window():
    p = Policy(window_s=10, min_faults=1000)
    # faults that fix sptes: a slow population of new memory, however long
    assert judge([_s(t, 5000 * t, fixed=5000 * t) for t in range(0, 60, 2)], p) is None
    # faults, and a ucall now and then: a test that gets on
    assert judge([_s(t, 5000 * t, io=t // 6) for t in range(0, 60, 2)], p) is None
    # a VM destroyed: its counts leave the sums, and the next VM's faults start a new window
    gone = [_s(t, 5000 * t) for t in range(0, 8, 2)] + [_s(t, 5000 * (t - 8)) for t in range(8, 16, 2)]
    assert judge(gone, p) is None


def test_an_idle_guest_or_a_blocked_vcpu_is_not_a_livelock():
    p = Policy(window_s=10, min_faults=1000)
    assert judge([_s(t, 777, fixed=700) for t in range(0, 60, 2)], p) is None
    assert judge([_s(t, 777 + 10 * t) for t in range(0, 60, 2)], p) is None   # a few faults: not spinning
    assert judge([_s(t, 5000 * t) for t in range(0, 60, 2)], Policy(window_s=0)) is None  # watchdog off


def test_the_faults_that_repeat_are_named_from_the_trace():
    trace = "\n".join(
        [" dirty_log_test-85 [001] d..1. 51.2: kvm_page_fault: vcpu 0 rip 0x402000 address 0x0000000010a3f000 "
         "error_code 0x100000007"] * 40
        + [" dirty_log_test-85 [001] d..1. 51.3: kvm_page_fault: vcpu 0 rip 0x402010 address 0x0000000000001000 "
           "error_code 0x100000004"] * 2)
    top = repeats(trace)
    assert [r.count for r in top] == [40, 2] and top[0].total == 42
    assert top[0].describe() == ("vCPU 0 faults at 0x0000000010a3f000 (error code 0x100000007, rip 0x402000) "
                                 "40 times of 42")
    assert repeats("no events") == []


def _obs(stopped="", rc=None):
    obs = Observation("kvm.tdp_mmu.dirty_log_test.clear-log", "dirty_log_test", "/bin/dirty_log_test -M clear-log",
                      240, "tdp_mmu-2", 14.2, RunResult("x", rc, "Test iterations: 5\n", "", 14.2, stopped))
    obs.livelock = Livelock(50.0, 12.0, {"pf_taken": 60000, "pf_spurious": 60000})
    return obs


def test_a_livelock_is_a_fail_named_as_such_with_its_evidence():
    res = workload_verdict(_obs(stopped="livelock: 60,000 page faults in 12 s with no progress"))
    assert res.status == FAIL and res.failure == "livelock" and not res.timed_out
    assert res.reason.startswith("livelock: 60,000 page faults in 12 s")
    assert "stopped by the watchdog 14 s into the test" in res.reason
    assert "forensics/kvm.tdp_mmu.dirty_log_test.clear-log/" in res.reason
    assert res.evidence["livelock"]["delta"]["pf_taken"] == 60000
    second = _obs(stopped="livelock: ...")
    second.attempt = 2
    assert "forensics/kvm.tdp_mmu.dirty_log_test.clear-log.attempt2/" in workload_verdict(second).reason


@pytest.mark.parametrize("mode,accel,retried", [("tdp_mmu", "tcg", True), ("tdp_mmu", "kvm", False),
                                                ("shadow", "tcg", False), ("tdp_legacy", "tcg", False)])
def test_only_a_livelock_under_tcg_in_a_mode_the_series_does_not_reach_is_retried(mode, accel, retried):
    res = TestResult(f"kvm.{mode}.dirty_log_test.clear-log", FAIL, reason="livelock: ...", failure="livelock",
                     evidence={"livelock": {"kind": "fault loop"}})
    assert livelock_retry(res, MODES[mode], accel, retries=1) is retried
    # an exit loop never reaches the fault path where write-protect-all lives: retried under TCG in any mode
    exit_loop = TestResult(res.path, FAIL, failure="livelock", evidence={"livelock": {"kind": "exit loop"}})
    assert livelock_retry(exit_loop, MODES[mode], accel, retries=1) is (accel == "tcg")
    # a fault loop at L1's own text (the TCG state corruption of docs/steady.md): retried under TCG in any mode;
    # the same loop at the guest's own code is not
    at_l1 = {"kind": "fault loop", "repeats": [{"rip": "0xffffffff813cf46c", "l1_text": "__svm_vcpu_run+0x9c",
                                                "event": "#PF (error code 0x10)"}]}
    tcg_bug = TestResult(res.path, FAIL, failure="livelock", evidence={"livelock": at_l1})
    assert livelock_retry(tcg_bug, MODES[mode], accel, retries=1) is (accel == "tcg")
    own = {"kind": "fault loop", "repeats": [{"rip": "0x402a10", "l1_text": "", "event": ""}]}
    spin = TestResult(res.path, FAIL, failure="livelock", evidence={"livelock": own})
    assert livelock_retry(spin, MODES[mode], accel, retries=1) is retried
    assert not livelock_retry(res, MODES[mode], accel, retries=0)
    other = TestResult(res.path, FAIL, reason="exit 254", failure=None)
    assert not livelock_retry(other, MODES[mode], accel, retries=1)


def test_a_livelock_that_passes_in_a_fresh_vm_is_flaky_and_keeps_its_evidence():
    first = TestResult("kvm.tdp_mmu.dirty_log_test.clear-log", FAIL, reason="livelock: 60,000 page faults",
                       failure="livelock", evidence={"livelock": {"seconds": 12}},
                       artifacts=["forensics/kvm.tdp_mmu.dirty_log_test.clear-log"])
    second = TestResult(first.path, PASS, 40.0)
    merged = merge_attempts([first], [second])
    assert merged[0].status == PASS and merged[0].evidence["flaky"] is True
    assert merged[0].reason.startswith("flaky: passed on retry; first attempt: livelock")
    assert merged[0].evidence["first_attempt"]["livelock"] == {"seconds": 12}
    assert merged[0].artifacts == ["forensics/kvm.tdp_mmu.dirty_log_test.clear-log"]


@pytest.mark.parametrize("name", sorted(p.name for p in REAL.glob("*.json")) if REAL.exists() else [])
def test_real_samples_are_judged_as_they_were(name):
    """Each kept kvm-counters.json: the livelock is found where the run found it, with the same growth;
    and the samples of a run that progressed are never a livelock."""
    rec = json.loads((REAL / name).read_text())
    p = rec["policy"]
    policy = Policy(window_s=p["window_s"], min_faults=p["min_faults"], every_s=p["every_s"],
                    min_exits=p.get("min_exits", Policy.min_exits))
    found = _first_livelock(_samples(REAL / name), policy)
    if rec["livelock"] is None:
        assert found is None
    else:
        assert found is not None and found[1].to_dict() == rec["livelock"]


def test_a_real_livelock_is_found_where_the_run_found_it_and_its_fault_is_named():
    """fast-pf-no-stop (kernel-patches/mutants) in tdp_legacy: both vCPUs of dirty_log_enable_test take the
    same write fault (NPF error code 0x200000007: guest final address, write, user, present) at gpa 0x180000
    and the fast path calls it spurious, ~33,000 times a second."""
    counters = REAL / "tdp_legacy-fast-pf-no-stop.json"
    found = _first_livelock(_samples(counters), Policy())
    assert found is not None
    i, ll = found
    assert i == 6 and ll.seconds >= Policy().window_s and ll.delta["pf_fixed"] == 0
    assert ll.delta["pf_spurious"] > 0.99 * ll.delta["pf_taken"] and ll.delta["io_exits"] == 0
    top = repeats(gzip.decompress((REAL / "tdp_legacy-fast-pf-no-stop.faults.txt.gz").read_bytes()).decode())
    assert {(r.vcpu, r.address, r.error_code) for r in top} == {(0, "0x0000000000180000", "0x200000007"),
                                                                 (1, "0x0000000000180000", "0x200000007")}
    assert sum(r.count for r in top) == top[0].total
    # the selftest's own code, and no event being delivered: a plain fault loop
    assert {(r.rip, r.event) for r in top} == {("0x414472", "")}


def test_a_tests_counter_growth_ignores_the_drop_of_a_destroyed_vm():
    samples = [_s(0, 100, io=1), _s(2, 900, io=5), _s(4, 50, io=0), _s(6, 450, io=3)]
    g = growth(samples)
    assert g["pf_taken"] == 800 + 0 + 400 and g["io_exits"] == 4 + 0 + 3
    assert growth(samples[:1]) == {}
    # the JSON a run keeps reads back as the samples it was made from
    rec = json.loads(json.dumps(record(samples, Policy(), None, 2)))
    assert samples_of(rec) == samples and rec["unread_samples"] == 2 and rec["livelock"] is None


def test_the_longest_stretch_without_progress_is_measured_whatever_its_length():
    from harness.guestcheck.livelock import longest_quiet
    samples = [_s(0, 0, io=1), _s(2, 500, io=1), _s(4, 900, io=1), _s(6, 1000, io=2), _s(8, 1500, io=2)]
    q = longest_quiet(samples)
    assert q is not None and q.seconds == 4 and q.delta["pf_taken"] == 900
    assert longest_quiet([_s(t, 100 * t, io=t) for t in range(0, 10, 2)]) is None
    assert longest_quiet(samples[:1]) is None


def test_a_real_exit_loop_is_a_livelock_and_no_real_progressing_test_is():
    """tdp_legacy, dirty_log_test -M dirty-ring, a default-series run on this machine (2026-12-03): from
    t=180 s the vCPU left the guest ~13,000 times a second for 210 s while pf_taken stood still; the
    watchdog of that run counted faults only, and the test ran into its 240 s timeout. Judged again, it is
    found within the window. The 15 tests of a run that passed are never a livelock."""
    samples = _samples(REAL / "exit-loop" / "tdp_legacy-dirty-ring.json")
    i, ll = _first_livelock(samples, Policy())
    assert ll.kind == "exit loop" and ll.delta["pf_taken"] == 0 and ll.delta["exits"] >= Policy().min_exits
    # the last sample with progress is at 179.4 s; found one window and a sample later
    assert ll.start_t > 179 and samples[i - 1].t - ll.start_t < Policy().window_s + 2 * Policy().every_s
    assert ll.reason().startswith("livelock (exit loop): ") and "0 page faults handled by the MMU" in ll.reason()
    assert _first_livelock(samples, Policy(min_exits=10**9)) is None, "the fault-only rule missed it"
    progressing = sorted((REAL / "progressing").glob("*.json"))
    assert len(progressing) == 15
    for f in progressing:
        assert _first_livelock(_samples(f), Policy()) is None, f.name


def test_the_exit_loop_caught_in_tdp_mmu_is_an_npf_with_the_reserved_bit_on_a_guest_page_table_walk():
    """tdp_mmu, dirty_log_test -M dirty-ring, caught by the watchdog in a default run (2026-12-03, retried in a
    fresh VM: flaky). Every exit of the second of trace is an NPF at the same gpa with error code 0x20000000e:
    PFERR_GUEST_PAGE (bit 33, the fault came from walking L2's own page tables), RSVD, write, user.
    kvm_mmu_page_fault() hands an RSVD fault to handle_mmio_page_fault(), which finds no MMIO spte there and
    returns RET_PF_RETRY ("let CPU fault again"), counting nothing: docs/steady.md."""
    rec = json.loads((REAL / "exit-loop" / "tdp_mmu-dirty-ring.json").read_text())
    i, ll = _first_livelock(_samples(REAL / "exit-loop" / "tdp_mmu-dirty-ring.json"), Policy())
    assert ll.to_dict() == rec["livelock"] and ll.kind == "exit loop" and ll.delta["pf_taken"] == 0
    trace = gzip.decompress((REAL / "exit-loop" / "tdp_mmu-dirty-ring.faults.txt.gz").read_bytes()).decode()
    top = repeats(trace)
    assert len(top) == 1 and top[0].address == "0x0000000014488ff8" and top[0].error_code == "0x20000000e"
    err = int(top[0].error_code, 16)
    assert err & (1 << 33) and err & (1 << 3) and err & (1 << 1), "guest page walk, RSVD, write"
    assert all("reason npf" in ln for ln in trace.splitlines() if "kvm_exit:" in ln)
    # Each exit was taken while delivering a #PF (instruction fetch, not present) into L2, and the rip L2 is
    # said to be at is L1's own: the instruction after VMRUN in __svm_vcpu_run (the L1 kernel's symbols from
    # that build's System.map, which has /proc/kallsyms' format, through the same awk the guest runs).
    assert top[0].event == "#PF (error code 0x10)" and top[0].rip == "0xffffffff813cf46c"
    nearest = (REAL / "exit-loop" / "tdp_mmu-dirty-ring.rip-nearest.txt").read_text()
    (named,) = resolve(top, nearest)
    assert named.l1_text == "__svm_vcpu_run+0x9c"
    assert "rip 0xffffffff813cf46c, which is L1's own __svm_vcpu_run+0x9c, delivering #PF (error code 0x10)" \
        in named.describe()


def test_the_event_being_delivered_is_decoded_as_svm_and_vmx_both_lay_it_out():
    from harness.guestcheck.livelock import delivering
    assert delivering(0x80000b0e, 0x10) == "#PF (error code 0x10)"
    assert delivering(0x80000b0d, 0) == "#GP (error code 0x0)"
    assert delivering(0x80000020, 0) == "interrupt 32" and delivering(0x80000202, 0) == "NMI 2"
    assert delivering(0x0000000e, 0x10) == "", "not valid: nothing was being delivered"


def test_a_rip_is_named_only_near_an_l1_text_symbol():
    r = Repeat(0, "0x414472", "0x180000", "0x200000007", 5, 5)
    far = Repeat(0, "0xffffffffc0001000", "0x180000", "0x7", 5, 5)
    nearest = ("0000000000414472 \n"                                            # below every kernel symbol
               "ffffffffc0001000 ffffffff82000000 T _etext_of_something\n"       # 0x3fe01000 away: not it
               "ffffffff813cf46c ffffffff813cf3d0 t __svm_vcpu_run [kvm_amd]\n")
    assert [x.l1_text for x in resolve([r, far], nearest)] == ["", ""]
    (k,) = resolve([Repeat(0, "0xffffffff813cf46c", "0x1", "0xe", 1, 1)], nearest)
    assert k.l1_text == "__svm_vcpu_run+0x9c [kvm_amd]"
