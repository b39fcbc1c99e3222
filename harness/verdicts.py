"""The run's decisions, as pure functions of what was observed: boot, workload, consistency, retry.

No VM, no SSH, no file: the lanes observe (lanes.py, session.py) and these decide, so each rule is
tested on plain values (tests/test_verdicts.py). The exit code of a whole run is in errors.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .checks.reference.findings import Verdict
from .evidence import Captured, safe_name
from .guestcheck import health, sysrq
from .guestcheck.livelock import Livelock, Repeat
from .modes import MmuMode, ModeFacts
from .perf import phases as perf_phases
from .results import ERROR, FAIL, PASS, SKIP, RunResult, TestResult
from .workloads import KSFT_PASS, KSFT_SKIP, AnyWorkload, Workload, WorkloadPlan, skip_reason

OUTPUT_KEPT = 20000   # characters of a test's output kept in the reports (its tail)


def boot_verdict(path: str, mode: MmuMode, facts: ModeFacts, findings: list[health.Finding], ssh_ready_s: float,
                 smp: int) -> TestResult:
    """The boot case: the kernel log is clean, KVM initialised, and the guest is in `mode` on `smp` CPUs.

    A health finding or a KVM that did not come up is the kernel's FAIL; a mode not reached, too few
    CPUs or no TSC frequency is the environment's ERROR."""
    problems = facts.problems(mode)
    env_problems = [x for x in (facts.cpu_problem(smp), facts.tsc_problem()) if x]  # the machine's, not KVM's
    res = TestResult(path, PASS, ssh_ready_s, evidence={"fingerprint": facts.fingerprint(ssh_ready_s)},
                     output="\n".join(facts.kvm_lines))
    if findings:
        res.status, res.reason = FAIL, health.describe(findings)
        res.output += "\n" + "\n".join(f.excerpt for f in findings)
    elif not facts.dev_kvm or not facts.vendor:
        res.status, res.reason = FAIL, "; ".join(problems)
    elif problems:
        res.status, res.reason = ERROR, "MMU mode not reached: " + "; ".join(problems)
    elif env_problems:
        res.status, res.reason = ERROR, "; ".join(env_problems)
    return res


@dataclass
class Observation:
    """What one workload run left behind, for workload_verdict.

    `run` is None when the guest went away under the test (`lost` says how); `console` is the serial
    console since the test started; `dmesg` the kernel log cut after it (not read after a timeout
    or a lost guest)."""

    path: str
    test: str                   # the selftest (or "cmd")
    command: str
    timeout_s: float
    tag: str                    # the VM's tag: names console-<tag>.log and dmesg-<tag>.txt
    seconds: float
    run: RunResult | None
    lost: str = ""
    qemu_alive: bool = True
    qemu_end: str = ""          # vm.exit_description()
    console: str = ""
    console_tail: str = ""
    dmesg: str = ""
    dmesg_error: str = ""
    taint: tuple[int, int] = (0, 0)  # /proc/sys/kernel/tainted before and after the test
    attempt: int = 1            # 2: the retry (its forensics directory is <path>.attempt2)
    livelock: Livelock | None = None  # what the watchdog saw when it stopped the test (run.stopped)
    repeats: list[Repeat] | None = None  # the faults that repeated most in the livelock's fault trace
    counters: dict[str, int] = field(default_factory=dict)  # the guest KVM's counters' growth meanwhile

    @property
    def forensics_dir(self) -> str:
        """forensics/<this>/ holds the test's forensics, relative to the run directory."""
        return safe_name(self.path if self.attempt == 1 else f"{self.path}.attempt{self.attempt}")


def workload_verdict(obs: Observation) -> TestResult:
    """A workload's result. A crash of the guest kernel is the test's FAIL; any other loss of the guest
    or a timeout is an ERROR (KernelCI: a harness fault is never a FAIL); otherwise the kselftest exit
    code decides (0 pass, 4 skip, anything else fail), and a kernel health finding turns a pass into a
    FAIL. Forensics are the caller's (lanes), for failure "timeout" and "guest_lost"."""
    res = TestResult(obs.path, PASS, obs.seconds, command=obs.command)
    if obs.counters:
        res.evidence["kvm_counters"] = obs.counters
    if obs.run is None:
        findings = health.scan(obs.console, f"console-{obs.tag}.log")
        res.status = FAIL if findings else ERROR
        qemu = "" if obs.qemu_alive else f"; QEMU {obs.qemu_end}"
        res.reason = health.describe(findings) if findings else f"lost the guest: {obs.lost}{qemu}"
        res.output = "\n".join(f.excerpt for f in findings) or obs.console_tail
        res.failure = "guest_lost"
        res.evidence["qemu"] = obs.qemu_end
        return res
    r = obs.run
    # printable: a test's terminal escapes would break junit.xml
    res.output = health.printable(r.stdout + r.stderr)[-OUTPUT_KEPT:]
    if r.stopped:
        # A vCPU that takes faults and never gets on is a KVM bug as the test sees it; under TCG, in a
        # mode the series does not reach, the lanes give it one more try in a fresh VM (livelock_retry).
        res.status, res.failure = FAIL, "livelock"
        where = "; " + obs.repeats[0].describe() if obs.repeats else ""
        res.reason = (f"{r.stopped}; stopped by the watchdog {obs.seconds:.0f} s into the test{where}; "
                      f"forensics in forensics/{obs.forensics_dir}/")
        res.evidence["livelock"] = {**(obs.livelock.to_dict() if obs.livelock else {}),
                                    "repeats": [vars(x) for x in obs.repeats or []]}
        res.output = (res.output + f"\n[console since the test started ends: {health.last_line(obs.console)}]").strip()
        return res
    if r.timed_out:
        res.status, res.failure = ERROR, "timeout"
        res.reason = (f"timeout after {obs.timeout_s:g} s (--timeout); "
                      f"forensics in forensics/{obs.forensics_dir}/")
        res.output = (res.output + f"\n[console since the test started ends: {health.last_line(obs.console)}]").strip()
        return res
    if r.rc == KSFT_PASS:
        res.status = PASS
    elif r.rc == KSFT_SKIP:
        res.status, res.reason = SKIP, skip_reason(res.output)
    else:
        res.status = FAIL
        last = [ln for ln in res.output.splitlines() if ln.strip()][-3:]
        res.reason = f"exit {r.rc}: " + " | ".join(last)
    if obs.test == "dirty_log_perf_test":
        res.evidence["figures"] = perf_phases(res.output)
    if obs.dmesg_error:
        res.evidence["dmesg_error"] = obs.dmesg_error
    findings = health.scan(obs.dmesg, f"dmesg-{obs.tag}.txt")
    gained = health.taint_finding(*obs.taint, f"dmesg-{obs.tag}.txt")
    if gained is not None and not findings:  # a bug the kernel recorded but the log does not show in a known form
        findings = [gained]
    if findings:
        res.evidence["health"] = [f.summary() for f in findings]
        res.failure = "health"
        if res.status in (PASS, SKIP):
            res.status = FAIL
            res.reason = "kernel reported: " + health.describe(findings)
        else:
            res.reason += "; kernel reported: " + health.describe(findings)
        res.output += "\n" + "\n".join(f.excerpt for f in findings)
    return res


def traced_events(counts: dict[str, int]) -> int:
    """Every event the checker read from a capture's trace: kvm_mmu_pw_* and, since FORMAT.md v2, the
    write-protect-all ones, all replayed. The guest's ring buffer must have held exactly as many."""
    return counts.get("events", 0)


def consistency_verdict(path: str, mode: MmuMode, cap: Captured | None, why_not: str,
                        verdict: Verdict | None, logs_populated_memory: bool = False) -> TestResult:
    """The bitmap/counter verdict of one workload run (`<path>.consistency`): the checker's verdict on
    the capture (None when there is none: `why_not` or the capture's error says why, an ERROR), made an
    ERROR where the capture itself is incomplete, or where a mode that reaches the shadow MMU showed none.
    A PASS is a SKIP where write-protect-all should have been judged and was not: the workload
    (`logs_populated_memory`, workloads.Workload) starts dirty logging on memory it wrote, the kernel's
    dumps are v2 (it carries write-protect-all's instrumentation), and no enable was traced."""
    res = TestResult(f"{path}.consistency", ERROR)
    if cap is None or cap.error or why_not or verdict is None:
        res.reason = why_not or (cap.error if cap else "no capture") or "not checked"
        return res
    res.evidence = {"counts": verdict.counts, "vanished_dumps": cap.vanished, "ring_buffer_lost": cap.ring_lost,
                    "ring_buffer_entries": cap.ring_entries, "capture_dir": str(cap.dir)}
    res.status, res.reason = verdict.status, verdict.reason
    if (res.status == ERROR and not mode.reaches_patched_code and not verdict.inconsistencies
            and verdict.counts.get("pages", 0) == 0 and verdict.counts.get("pages_replayed", 0) == 0):
        # A VM that lived less than the dump interval leaves no dump to say "TDP MMU pages only"; in a mode
        # that never reaches the shadow MMU, no shadow-MMU evidence is what is expected, not a harness fault.
        res.status, res.reason = SKIP, f"mode {mode.name} does not reach the patched code; {verdict.reason}"
    if cap.ring_lost and res.status != FAIL:
        res.status = ERROR
        res.reason = f"the trace ring buffer lost {cap.ring_lost} events; {verdict.reason}"
    elif cap.ring_entries is not None and traced_events(verdict.counts) != cap.ring_entries:
        # Incomplete evidence: even a finding made on it may be an artefact of the missing events.
        res.status = ERROR
        res.reason = (f"the trace gave {traced_events(verdict.counts)} events but the guest's ring buffer held "
                      f"{cap.ring_entries} (truncated or unreadable {cap.trace}); {verdict.reason}")
    if (res.status == PASS and mode.reaches_patched_code and logs_populated_memory
            and verdict.counts.get("wp_dumps", 0) and not verdict.counts.get("wp_all_enables", 0)):
        res.status = SKIP
        res.reason = ("write-protect-all not judged: the workload starts dirty logging on memory it wrote, and"
                      " the kernel's dumps carry write-protect-all, but no enable (kvm_mmu_wp_all enable=1) was"
                      f" traced; the bookkeeping has no inconsistency; {verdict.reason}")
    no_shadow_mmu = verdict.counts.get("pages", 0) == 0 and verdict.counts.get("pages_replayed", 0) == 0
    if res.status == SKIP and mode.reaches_patched_code and no_shadow_mmu:
        # A mode that should reach the shadow MMU showed none of it: that is not a skip.
        res.status, res.reason = ERROR, f"mode {mode.name} should reach the patched code but: {verdict.reason}"
    res.output = "\n\n".join(str(i) for i in verdict.inconsistencies)
    return res


def add_threads(res: TestResult, sysrq_text: str, program: str, ended: str = "") -> None:
    """A test stopped before its end says where its threads were (checks.sysrq.where, on the forensics'
    sysrq-t/-w dump): a vCPU in the MMU's fault path, in the guest, halted, or waiting. `ended`: how it
    ended by itself before the forensics (Guest.held_ended), when it did."""
    threads = sysrq.where(sysrq_text, program)
    if threads:
        res.reason += f"; its threads then: {threads}"
        res.evidence["threads"] = threads
    elif ended:
        res.reason += f"; it ended by itself before its forensics ({ended})"
        res.evidence["ended_meanwhile"] = ended


def stopped_consistency(checked: TestResult, workload: TestResult, lost: str) -> TestResult:
    """The consistency case of a workload stopped before its end (`lost` says how), from `checked`, the
    consistency_verdict of the capture taken once its processes were killed. An inconsistency is a FAIL as
    anywhere; else the case is an ERROR saying how far the judged capture got (events, dumps, whether its
    VMs were torn down), which the workload's result learns too."""
    if checked.status == FAIL:
        checked.reason = f"{checked.reason} ({lost}: its capture judged to its end)"
        return checked
    counts = checked.evidence.get("counts")
    if not isinstance(counts, dict):
        checked.status, checked.reason = ERROR, f"{lost}; {checked.reason}"
        return checked
    left = counts.get("pages_left", 0)
    teardown = "its VMs torn down" if left == 0 else f"{left} shadow pages never freed (no teardown seen)"
    how_far = (f"the capture up to then judged {checked.status}: {counts.get('events', 0)} trace events,"
               f" {counts.get('snapshots', 0)} dumps, {teardown}")
    checked.status, checked.reason = ERROR, f"{lost}; {how_far}; {checked.reason}"
    workload.reason += f"; {how_far}"
    return checked


# Selftest failures that do not come from the KVM under test: the only ones retried, each seen here.
INFRA_SIGNATURES = (
    # TCG's emulated nested SVM occasionally shuts the selftest's L2 guest down under CPU contention,
    # in the TDP MMU mode as well, where the series changes nothing. Every selftest sees it as a
    # KVM_EXIT_SHUTDOWN, spelt the two ways the selftests print an exit reason: dirty_log_test and
    # dirty_log_perf_test's sync check ("Invalid guest sync status: exit_reason=%s"), and the
    # library's TEST_ASSERT_KVM_EXIT_REASON (include/test_util.h: "Wanted KVM exit reason: %u (%s),
    # got: %u (%s)"), which dirty_log_enable_test uses.
    re.compile(r"Invalid guest sync status: exit_reason=SHUTDOWN"
               r"|Wanted KVM exit reason: \d+ \(\w+\), got: \d+ \(SHUTDOWN\)"),
    # 6.12's dirty_log_test in dirty-ring mode: a page reported dirty holds an older iteration's value
    # ("Set page %lu value %lu incorrect (iteration=%lu)", after an iteration that collected 0 pages).
    # Seen here in the TDP MMU mode, which the series does not touch; a race of the test's own
    # iteration hand-off with its vCPU thread (believed fixed in later kernels' dirty_log_test, not
    # verified here). A page *missing* from the log is never retried.
    re.compile(r"Set page \d+ value \d+ incorrect \(iteration=\d+\)"),
)


def worth_a_retry(res: TestResult, retries: int) -> bool:
    """Retry-before-regression, for a failure that matches a known infrastructure signature only.

    Never for a kernel health finding (a WARN or an Oops is a bug however often it shows), a timeout
    or a lost guest; and never for a selftest's own verdict on the kernel, such as a page missing from
    the dirty log: a write lost once in a race is exactly how a bookkeeping bug shows, and is a FAIL
    the first time."""
    return (retries > 0 and res.status == FAIL and res.failure is None
            and any(p.search(res.output) for p in INFRA_SIGNATURES))


def livelock_retry(res: TestResult, mode: MmuMode, accel: str, retries: int) -> bool:
    """A livelock is retried once, in a fresh VM, only where the emulator is a suspect and the series is
    not (docs/steady.md says why): under TCG, in a mode that does not reach the patched code, an exit
    loop in any mode (the vCPU keeps leaving the guest but no fault reaches the MMU's fault path, where
    write-protect-all's push-down lives), or a loop at L1's own text (emulator_signature). A fault loop at
    the guest's own code in a mode the series reaches, or any livelock under hardware KVM, is a FAIL the
    first time: a lost push-down looks exactly like the former."""
    ll = res.evidence.get("livelock")
    exit_loop = isinstance(ll, dict) and ll.get("kind") == "exit loop"
    return (retries > 0 and res.failure == "livelock" and accel == "tcg"
            and (not mode.reaches_patched_code or exit_loop or emulator_signature(ll)))


def emulator_signature(ll: object) -> bool:
    """The livelock's most repeated fault is at a rip in L1's own kernel text (livelock.Repeat.l1_text):
    TCG stored L1's state as L2's at a nested #VMEXIT (docs/steady.md, "The cause"). No KVM MMU bug
    puts L2's rip there; a lost push-down spins at the guest's own code, delivering nothing."""
    repeats = ll.get("repeats") if isinstance(ll, dict) else None
    return bool(isinstance(repeats, list) and repeats and isinstance(repeats[0], dict) and repeats[0].get("l1_text"))


def merge_attempts(first: list[TestResult], second: list[TestResult]) -> list[TestResult]:
    """Both attempts are kept as evidence. The workload passes only if the retry passes
    (then it is marked flaky); a consistency FAIL from either attempt always stands.

    Each list is [workload result, consistency result?]; returns the same shape."""
    w1, w2 = first[0], second[0]
    w2.evidence["first_attempt"] = {"status": w1.status, "reason": w1.reason, "output": w1.output[-4000:],
                                    "duration_s": round(w1.duration_s, 1), "failure": w1.failure,
                                    **({"livelock": w1.evidence["livelock"]} if "livelock" in w1.evidence else {})}
    w2.artifacts[:0] = [a for a in w1.artifacts if a not in w2.artifacts]  # the first attempt's forensics
    if w2.status == PASS:
        w2.evidence["flaky"] = True
        w2.reason = f"flaky: passed on retry; first attempt: {w1.reason}"
    else:
        w2.reason = f"failed twice; {w2.reason}"
    merged = [w2]
    c1 = first[1] if len(first) > 1 else None
    c2 = second[1] if len(second) > 1 else None
    if c1 is not None and c1.status == FAIL:
        c1.evidence["retry_verdict"] = c2.status if c2 else None
        merged.append(c1)
    elif c2 is not None:
        if c1 is not None:
            c2.evidence["first_attempt_verdict"] = {"status": c1.status, "reason": c1.reason}
        merged.append(c2)
    return merged


def unbuilt_results(mode: str, plan: WorkloadPlan, errors: dict[str, str]) -> list[TestResult]:
    """An ERROR for each selected workload whose selftest did not build (build.json's selftest_errors): the
    tree's breakage is reported as its own test cases, named by their first compiler or linker error, while
    the others run."""
    return [TestResult(w.path(mode), ERROR, reason=f"{w.test} did not build: {errors[w.test]}")
            for w in plan.selected(mode) if isinstance(w, Workload) and w.test in errors]


def uninstrumented_results(mode: str, workloads: list[AnyWorkload]) -> list[TestResult]:
    """An ERROR for the consistency case of each of `workloads` that checks consistency, in a guest whose
    build carries the instrumentation series but whose kernel has no kvmmmu:kvm_mmu_pw_spte tracepoint:
    the harness's own fault (a config without tracing, a wrong image), never the series'."""
    return [TestResult(f"{w.path(mode)}.consistency", ERROR,
                       reason="the instrumentation series was applied but the guest has no kvmmmu:kvm_mmu_pw_spte"
                              " tracepoint")
            for w in workloads if w.checks_consistency]
