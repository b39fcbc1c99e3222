"""The cells of a run on `--vms` VMs at once: each lane boots one VM at a time and runs its tests.

A cell is (MMU mode, workload); a workload of None is the mode's boot case alone. Which lane takes
which cell is schedule.py's; what a boot or a workload means is verdicts.py's; this module does the
I/O between them (boot, run, capture, forensics) and puts results into the ResultBook.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path

from . import capture, proc, schedule, verdicts, watchdog
from .checks.files import check_files
from .errors import BootError, GuestError, Interrupted
from .evidence import Captured
from .guestcheck import livelock
from .modes import MODES, MmuMode
from .prepare import Prepared
from .request import RunOptions
from .results import ERROR, PASS, SKIP, TestResult
from .schedule import BackgroundChecks, ResultBook, Timings, WorkQueue
from .session import Session
from .workloads import AnyWorkload

log = logging.getLogger("kvm-harness")
# A test that did not run to its end, by TestResult.failure: (the log's word, the forensics' why, the
# consistency case's why). Each is followed by forensics and a fresh VM.
FAILED = {"timeout": ("timed out", "timeout after {timeout:g} s", "workload timed out"),
           "guest_lost": ("lost the guest", "guest lost during the test", "guest lost during the workload"),
           "livelock": ("livelocked", "livelock seen by the watchdog", "workload stopped by the livelock watchdog")}


@dataclass(frozen=True)
class Cell:
    """One test of the matrix: `workload` in MMU `mode` (None: the mode's boot case only)."""

    mode: str
    workload: AnyWorkload | None = None


def check_capture(path: str, mode: MmuMode, cap: Captured | None, why_not: str,
                  logs_populated_memory: bool = False) -> TestResult:
    """`<path>.consistency`: the checker run on the captured files, then verdicts.consistency_verdict."""
    verdict = None if cap is None or cap.error or why_not else check_files(cap.snapshots, cap.trace)
    return verdicts.consistency_verdict(path, mode, cap, why_not, verdict, logs_populated_memory)


@dataclass
class Started:
    """A lane's attempt at a VM of a mode: its session, or why there is none (the mode's tests are then
    not run), and whether its workloads get a consistency check."""

    session: Session | None
    check: bool = False
    why_not: str = ""


@dataclass
class Lanes:
    """What every lane shares: the build, the options, the run directory and the thread-safe books."""

    prepared: Prepared
    opts: RunOptions
    out: Path
    timings: Timings
    book: ResultBook
    checks: BackgroundChecks

    def run(self, cells: list[Cell]) -> None:
        """Every cell, on `opts.vms` VMs at once (schedule.py says why and how). Results go into `book`
        as they come, so an interrupted run keeps what it had. Raises the first harness fault of a lane."""
        plan: dict[str, list[AnyWorkload | None]] = {}
        for c in cells:
            plan.setdefault(c.mode, [])
            if c.workload is not None:
                plan[c.mode].append(c.workload)
        queue: WorkQueue[AnyWorkload | None] = WorkQueue({m: [*ws] or [None] for m, ws in plan.items()})
        lanes, why = schedule.lanes_for(self.opts.vms, self.opts.memory, len(queue))
        self.timings["vms"] = lanes
        log.info("%d test(s) in %d MMU mode(s), on %d VM(s) at once (%s)", sum(map(len, plan.values())),
                 len(plan), lanes, why)
        if lanes == 1:
            self.lane(0, queue)
            return
        pool = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="kvm-harness-vm")
        futures = [pool.submit(self.lane, n, queue) for n in range(lanes)]
        try:
            while not all(f.done() for f in futures):
                wait_futures(futures, timeout=0.5)
                proc.check_interrupted()  # a signal held back while a lane was talking QMP
        except BaseException:
            # Interrupted: each lane sees it within a second (guest.run polls for it); killing the
            # QEMUs now also ends any SSH transfer a lane is blocked in.
            proc.kill_all_children()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        for f in futures:  # the lanes that got on with it have finished: now the first harness fault
            exc = f.exception()
            if exc is not None:
                raise exc

    def lane(self, lane: int, queue: WorkQueue[AnyWorkload | None]) -> None:
        """One VM at a time: it runs the tests of its mode while the mode has some left, then the lane
        boots a VM for whatever test is next. A test that hangs or loses the guest is followed by a
        fresh VM for the rest."""
        s: Session | None = None
        mode: MmuMode | None = None   # the lane's mode: after a hang, its next VM is of the same mode
        check = False
        try:
            while True:
                proc.check_interrupted()
                item = queue.take(lane, mode.name if mode else None)
                if item is None:
                    break
                if s is not None and item.mode != s.mode.name:
                    s.stop()
                    s = None
                mode = MODES[item.mode]
                if s is None:
                    started = self.start_session(mode)
                    if started.session is None:
                        self.not_run(mode, [item, *queue.drain(mode.name)], started.why_not)
                        continue
                    s, check = started.session, started.check
                if item.workload is None:
                    continue
                res, s, check = self.run_cell(s, item.workload, check, item.index)
                if s is not None and res.failure in FAILED:
                    log.info("%s: %s; what is left of %s goes on in a fresh VM", res.path, FAILED[res.failure][0],
                             mode.name)
                    s.stop(fast=True)
                    s = None
        except BaseException:
            if s is not None:
                s.stop(fast=True)
            raise
        if s is not None:
            s.stop()

    def not_run(self, mode: MmuMode, items: list[schedule.Item[AnyWorkload | None]], why: str) -> None:
        for it in items:
            if it.workload is not None:
                self.book.add(mode.name, it.index, [TestResult(it.workload.path(mode.name), ERROR,
                                                               reason=f"not run: {why}")])

    def start_session(self, mode: MmuMode) -> Started:
        """Boot a VM of `mode` and check that it reached the mode. The mode's first VM gives its boot
        case; another one (a second lane, or a fresh VM after a hang) adds a boot case only if it fails."""
        n = self.book.next_boot(mode.name)
        tag = mode.name if n == 1 else f"{mode.name}-{n}"
        case = f"kvm.{mode.name}.boot" + ("" if n == 1 else f".{n}")
        try:
            s = Session.boot(self.prepared, self.opts, mode, self.out, tag)
        except BootError as e:
            (self.out / f"boot-error-{tag}.txt").write_text(f"{e}\n\n{e.detail}\n")
            self.book.add_boot(mode.name, [TestResult(case, ERROR, reason=str(e), output=e.detail, failure="boot",
                                                      artifacts=[f"boot-error-{tag}.txt", f"console-{tag}.log"])])
            return Started(None, why_not=f"boot failed ({e})")
        self.timings.append("ssh_ready_s", round(s.ready_s, 2))
        try:
            facts = s.facts()
            _, findings = s.cut_dmesg()
        except BaseException:
            s.stop(fast=True)
            raise
        boot = verdicts.boot_verdict(case, mode, facts, findings, s.ready_s, s.vm.spec.smp)
        self.timings.put("fingerprint", tag, facts.fingerprint(s.ready_s))
        if n == 1 or boot.status != PASS:
            self.book.add_boot(mode.name, [boot])
        if boot.status != PASS:
            s.stop()
            return Started(None, why_not=boot.reason)
        auto = self.opts.consistency == "auto"
        if n == 1 and auto and not facts.instrumented and self.prepared.instrumented:
            self.book.add_boot(mode.name, verdicts.uninstrumented_results(
                mode.name, self.opts.plan.selected(mode.name, self.prepared.selftests)))
        s.unjudgeable = facts.partly_instrumented() if auto else ""
        return Started(s, auto and facts.instrumented and not s.unjudgeable)

    def run_cell(self, s: Session, w: AnyWorkload, check: bool,
                 index: int) -> tuple[TestResult, Session | None, bool]:
        """Run one workload (and its retry), put its results in the book. Returns the workload's result and
        the session (and its `check`) to go on with: a livelock's retry runs in a fresh VM, and None says
        that VM did not boot."""
        mode = s.mode
        first = s
        try:
            results = self.attempt(s, w, check and w.checks_consistency)
            retry_here = verdicts.worth_a_retry(results[0], self.opts.retries)
            if retry_here or verdicts.livelock_retry(results[0], mode, self.prepared.accel.name, self.opts.retries):
                log.warning("%s failed (%s); running it once more%s before calling it a regression",
                            results[0].path, results[0].reason, "" if retry_here else " in a fresh VM")
                started = Started(s, check) if retry_here else self.fresh_session(s)
                s, check = started.session, started.check  # type: ignore[assignment]
                if started.session is None:
                    results[0].reason += f"; not retried: a fresh VM {started.why_not}"
                else:
                    second = self.attempt(started.session, w, check and w.checks_consistency, attempt=2)
                    self.checks.wait_for(results[1:] + second[1:])  # the merge compares both attempts' verdicts
                    results = verdicts.merge_attempts(results, second)
        except BaseException as e:
            if isinstance(e, Interrupted):
                self.book.add(mode.name, index, [TestResult(w.path(mode.name), ERROR, reason=f"not finished: {e}")])
            if s is not None and s is not first:
                s.stop(fast=True)   # the lane stops the session it handed in
            raise
        self.book.add(mode.name, index, results)
        return results[0], s, check

    def fresh_session(self, s: Session) -> Started:
        """Forget `s` (after its forensics) and boot another VM of its mode."""
        s.stop(fast=True)
        return self.start_session(s.mode)

    def attempt(self, s: Session, w: AnyWorkload, check: bool, attempt: int = 1) -> list[TestResult]:
        """One run of `w`: [workload result] plus, when `check`, its consistency result (a placeholder
        that the background checks fill in)."""
        proc.check_interrupted()
        path = w.path(s.mode.name)
        why_not = ""
        if check:
            with self.timings.measure("capture_s"):
                why_not = capture.start(s.guest, self.opts.capture)
        obs, cap, watch = self.observe(s, w, path, check and not why_not, attempt)
        if watch is not None:  # the counters of every test: what the watchdog judged, kept
            watch.write(self.out / "counters" / f"{obs.forensics_dir}.json")
            obs.counters = livelock.growth(watch.samples)
        if watch is not None and watch.found is not None:
            # while the vCPU still spins: the counters and the fault path's trace, before sysrq floods the log
            obs.livelock, obs.repeats = watch.found, watch.collect(self.out / "forensics" / obs.forensics_dir)
        res = verdicts.workload_verdict(obs)
        if res.failure in FAILED:
            _, why, lost = FAILED[res.failure]
            judged = check and res.failure != "guest_lost"   # its capture, tracing still on, is judged after
            summary, artifact = s.forensics(obs.forensics_dir, why.format(timeout=w.timeout_s), trace=not judged)
            res.evidence["forensics"] = summary
            res.artifacts.append(artifact)
            sysrq = self.out / artifact / "sysrq-tw.txt"
            verdicts.add_threads(res, sysrq.read_text(errors="replace") if sysrq.is_file() else "", w.test,
                                 str(summary.get("ended_meanwhile", "")))
            if judged:
                return [res, self.judge_stopped(s, w, path, res, lost, attempt)]
            return [res, verdicts.consistency_verdict(path, s.mode, None, lost, None)] if check else [res]
        if not check:
            if s.unjudgeable and w.checks_consistency:
                return [res, TestResult(f"{path}.consistency", SKIP, reason=s.unjudgeable)]
            return [res]
        placeholder = TestResult(f"{path}.consistency", ERROR, reason="not checked yet")
        populated = w.logs_populated_memory
        self.checks.submit(placeholder, lambda: self.timed_check(path, s.mode, cap, why_not, populated))
        return [res, placeholder]

    def judge_stopped(self, s: Session, w: AnyWorkload, path: str, res: TestResult, lost: str,
                      attempt: int) -> TestResult:
        """The consistency case of a workload stopped before its end (timeout, livelock), after its forensics:
        its processes are killed, so that KVM tears their VMs down under the trace, and the capture so far is
        fetched and judged like any other (verdicts.stopped_consistency); `res` learns how far it got."""
        try:
            s.end_workload(w.test)
            with self.timings.measure("capture_s"):
                cap = capture.stop_and_fetch(s.guest, self.out / "capture" / capture.dir_name(path, attempt))
        except GuestError as e:
            return verdicts.consistency_verdict(path, s.mode, None, f"{lost}; its capture was not fetched: {e}", None)
        with self.timings.measure("check_s"):
            checked = check_capture(path, s.mode, cap, "", w.logs_populated_memory)
        return verdicts.stopped_consistency(checked, res, lost)

    def timed_check(self, path: str, mode: MmuMode, cap: Captured | None, why_not: str,
                    logs_populated_memory: bool = False) -> TestResult:
        t0 = time.monotonic()
        with self.timings.measure("check_s"):
            v = check_capture(path, mode, cap, why_not, logs_populated_memory)
        log.debug("%s: consistency checked in %.1f s", path, time.monotonic() - t0)
        return v

    def observe(self, s: Session, w: AnyWorkload, path: str, capturing: bool, attempt: int
                ) -> tuple[verdicts.Observation, Captured | None, watchdog.FaultWatch | None]:
        """Run `w` in the guest, watched for a livelock, and gather what verdicts.workload_verdict judges:
        its output, the console and the kernel log; the capture is stopped and fetched when `capturing`."""
        console_mark = len(s.vm.console())
        log.info("running %s: %s", path, w.command())
        obs = verdicts.Observation(path, w.test, w.command(), w.timeout_s, s.tag, 0.0, None, attempt=attempt)
        policy = self.opts.livelock
        watch = watchdog.FaultWatch(s.guest, policy) if policy.enabled else None
        t0 = time.monotonic()
        try:
            r = s.run(w.command(), w.timeout_s, watch, hold=True)
        except GuestError as e:
            obs.seconds = time.monotonic() - t0
            self.timings.workload_ran(t0, t0 + obs.seconds)
            proc.check_interrupted()
            time.sleep(0.5)  # let a dying QEMU finish, so its end is reported as it was
            obs.lost, obs.qemu_alive, obs.qemu_end = str(e), s.vm.alive(), s.vm.exit_description()
            obs.console, obs.console_tail = s.vm.console()[console_mark:], s.vm.console_tail()
            return obs, None, watch
        obs.run, obs.seconds = r, r.seconds
        self.timings.workload_ran(t0, t0 + r.seconds)
        with open(self.out / f"workloads-{s.tag}.log", "a") as f:
            f.write(f"### {path}\n$ {w.command()}\n{r.stdout}{r.stderr}\n### exit {r.rc} after {r.seconds:.1f}s\n")
        if r.rc is None:   # timed out, or stopped by the watchdog
            obs.console = s.vm.console()[console_mark:]
            return obs, None, watch
        cap = None
        if capturing:
            with self.timings.measure("capture_s"):
                cap = capture.stop_and_fetch(s.guest, self.out / "capture" / capture.dir_name(path, attempt))
        try:
            obs.dmesg, _ = s.cut_dmesg(after=path)
            obs.taint = (s.taint_before, s.taint)
        except GuestError as e:
            obs.dmesg_error = str(e)
            with open(self.out / f"dmesg-{s.tag}.txt", "a") as f:
                f.write(f"### after {path}\n")
        return obs, cap, watch
