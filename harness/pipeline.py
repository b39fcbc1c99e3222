"""The run, top to bottom: source -> series -> config -> build -> image -> vm -> guest
-> workloads -> checks -> report. The only module that knows the order of stages.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path

from . import build as build_mod
from . import cache, capture, forensics, image as image_mod, kconfig, proc, schedule, series as series_mod, source
from . import vm as vm_mod
from .checks import health
from .checks.consistency import check_files
from .errors import (EXIT_BOOT, EXIT_INFRA, EXIT_OK, EXIT_SKIPPED, EXIT_TEST_FAILED, BootError, GuestError,
                     HarnessError, Interrupted, UsageError)
from .guest import Guest, console_tail, last_line, printable
from .report import junit, kcidb, ktap, run_dir as run_dir_mod
from .results import ERROR, FAIL, PASS, SKIP, TestResult, overall
from .schedule import ResultBook, WorkQueue
from .workloads import (FACTS_SCRIPT, KSFT_PASS, KSFT_SKIP, MODES, MmuMode, Workload, WorkloadPlan,
                        parse_facts, perf_figures, skip_reason)

log = logging.getLogger("kvm-harness")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_SERIES_LIST = REPO / "kernel-patches" / "default"


@dataclass
class RunRequest:
    tarball: Path = source.DEFAULT_TARBALL
    tree: Path | None = None
    series_dirs: list[Path] = field(default_factory=list)
    config: kconfig.ConfigRequest = field(default_factory=lambda: kconfig.ConfigRequest("trim"))
    modes: list[str] = field(default_factory=lambda: ["shadow", "tdp_legacy", "tdp_mmu"])
    accel: str = "auto"
    results_root: Path = Path("results")
    plan: WorkloadPlan = field(default_factory=WorkloadPlan)
    boot_deadline_s: float = 60.0
    smp: int = 2
    memory: str = "3G"
    extra_append: list[str] = field(default_factory=list)
    consistency: str = "auto"   # auto: check wherever the guest kernel carries the instrumentation; off
    retries: int = 1            # a failing selftest is run once more before it is called a FAIL
    capture: capture.CaptureSettings = field(default_factory=capture.CaptureSettings)
    extra_workloads: list[tuple[str, str]] = field(default_factory=list)   # --workload-cmd NAME=CMD
    vms: int | None = None      # VMs at once (None: auto, see schedule.lanes_for)


@dataclass(frozen=True)
class CommandWorkload:
    """A testing hook (--workload-cmd NAME=CMD): any guest shell command run as a test.

    Used by the fault tests to simulate a hang (`sleep 600`) or a victim for
    a killed QEMU; its path is kvm.<mode>.cmd.<NAME>, it has the per-test
    timeout and no consistency check.
    """

    variant: str
    cmd: str
    timeout_s: float
    test: str = "cmd"

    def path(self, mode: str) -> str:
        return f"kvm.{mode}.cmd.{self.variant}"

    def command(self) -> str:
        return self.cmd


_WORKLOAD_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def parse_workload_cmd(spec: str) -> tuple[str, str]:
    """NAME=CMD -> (NAME, CMD); a UsageError naming the problem otherwise."""
    name, sep, cmd = spec.partition("=")
    if not sep or not _WORKLOAD_NAME.match(name) or not cmd.strip():
        raise UsageError(f"--workload-cmd wants NAME=COMMAND (NAME of letters, digits, - or _): {spec!r}")
    return name, cmd


def selected_workloads(req: RunRequest, mode: str) -> list[Workload | CommandWorkload]:
    extra = [CommandWorkload(n, c, req.plan.timeout_s) for n, c in req.extra_workloads]
    only = req.plan.only
    return [*req.plan.selected(mode), *[w for w in extra if not only or any(o in w.path(mode) for o in only)]]


@dataclass
class Prepared:
    build: build_mod.BuildResult
    initrd: Path
    image: image_mod.Image
    accel: vm_mod.Accel
    qemu_version: str


def validate(req: RunRequest) -> list[series_mod.Series]:
    """Every input checked before any work starts; problems are UsageErrors naming the path."""
    if req.tree is not None:
        source.check_tree(req.tree)
    else:
        source.check_tarball(req.tarball)
    series = [series_mod.load_series(d) for d in req.series_dirs]
    req.config.validate()
    if not req.modes:
        raise UsageError("no MMU mode given (--modes)")
    for m in req.modes:
        if m not in MODES:
            raise UsageError(f"unknown MMU mode {m!r} (choose from {', '.join(MODES)})")
    if req.accel not in ("auto", "kvm", "tcg"):
        raise UsageError(f"unknown accelerator {req.accel!r} (auto, kvm or tcg)")
    if req.boot_deadline_s <= 0 or req.plan.timeout_s <= 0:
        raise UsageError("--boot-deadline and --timeout must be positive numbers of seconds")
    schedule.memory_bytes(req.memory)
    if req.vms is not None and req.vms < 1:
        raise UsageError(f"--vms must be at least 1 (or auto): {req.vms}")
    names = [n for n, _ in req.extra_workloads]
    if len(set(names)) != len(names):
        raise UsageError(f"--workload-cmd names must be unique: {', '.join(names)}")
    return series


def prepare(req: RunRequest, series: list[series_mod.Series], out: Path, meta: dict[str, object],
            timings: dict[str, object], accel: vm_mod.Accel | None = None) -> Prepared:
    root = cache.cache_root()
    t0 = time.monotonic()
    ws = source.from_tree(req.tree, root) if req.tree else source.from_tarball(req.tarball, root)
    run_dir_mod.update_metadata(out, meta, source=ws.identity,
                                series=[s.describe() for s in series])
    breq = build_mod.BuildRequest(ws, series, req.config)
    b = build_mod.build(breq, root, out / "build.log")
    timings["build_s"] = round(time.monotonic() - t0, 1)
    timings["build_cached"] = b.cached
    shutil.copy2(b.dir / "config", out / ".config")
    if b.cached:
        with open(out / "build.log", "w") as f:
            f.write(f"# build cache hit {b.key}: make was not run. The original build's log follows "
                    f"({b.dir / 'build.log'}).\n")
            f.write((b.dir / "build.log").read_text(errors="replace"))
    t1 = time.monotonic()
    img = image_mod.build_image(root)
    initrd = image_mod.initrd_for(img, b, root)
    timings["image_s"] = round(time.monotonic() - t1, 1)
    proc.check_interrupted()
    if accel is None:
        accel = vm_mod.choose_accel(req.accel)
    return Prepared(b, initrd, img, accel, vm_mod.qemu_version())


PORT_ATTEMPTS = 3


def _boot(req: RunRequest, p: Prepared, mode: MmuMode, out: Path, tag: str) -> tuple[vm_mod.VM, Guest, float]:
    """Start QEMU and wait for SSH. The VM is always stopped when this raises."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        proc.check_interrupted()
        spec = vm_mod.VMSpec(kernel=p.build.bzimage, initrd=p.initrd, accel=p.accel,
                             append=list(mode.append) + req.extra_append, smp=req.smp, memory=req.memory,
                             ssh_port=vm_mod.free_port(), name=f"kvm-harness-{out.name}-{tag}")
        vm = vm_mod.VM(spec, out, tag)
        try:
            vm.start()
            guest = Guest.wait_ready(vm, spec.ssh_port, p.image.client_key, p.image.known_hosts,
                                     req.boot_deadline_s)
        except vm_mod.PortInUse as e:
            vm.stop()
            # Another run took the port between free_port() and QEMU's bind: pick another.
            if attempt == PORT_ATTEMPTS:
                raise
            log.warning("%s; retrying with another port", e)
            continue
        except Exception:
            vm.stop(fast=proc.interrupted() is not None)
            raise
        except BaseException:  # KeyboardInterrupt, SystemExit: just be gone
            vm.stop(fast=True)
            raise
        return vm, guest, time.monotonic() - vm.started_at
    raise AssertionError("unreachable")


def _shutdown(vm: vm_mod.VM, guest: Guest | None, fast: bool = False) -> None:
    """Power the guest off and stop QEMU; `fast` (interrupt, error) skips the courtesy."""
    t0 = time.monotonic()
    try:
        _shutdown_steps(vm, guest, fast)
    finally:
        log.debug("VM %s stopped in %.1f s", vm.tag, time.monotonic() - t0)


def _shutdown_steps(vm: vm_mod.VM, guest: Guest | None, fast: bool) -> None:
    fast = fast or proc.interrupted() is not None
    if guest is not None:
        if not fast:
            try:
                # reboot, not poweroff: QEMU runs with -no-reboot, so this ends it
                # whatever the guest kernel's config (poweroff needs ACPI).
                guest.run("sync; reboot -f", 5)
            except Exception:
                pass  # the connection drops as the guest powers off
        guest.close()
    if vm.proc is not None and not fast:
        try:
            vm.proc.wait(timeout=5)
        except Exception:
            pass
    vm.stop(fast=fast)


def _boot_case(mode: MmuMode, guest: Guest, out: Path, tag: str, ssh_ready_s: float,
               smp: int) -> tuple[TestResult, dict[str, object]]:
    facts_text = guest.check(FACTS_SCRIPT, 30)
    facts, raw = parse_facts(facts_text)
    dmesg = guest.check("dmesg -c", 30)
    (out / f"dmesg-{tag}.txt").write_text(dmesg)
    findings = health.scan(dmesg, f"dmesg-{tag}.txt")
    fp = {"vendor": facts.vendor, "nested": facts.nested, "tdp": facts.tdp, "tdp_mmu": facts.tdp_mmu,
          "instrumented": raw.get("instrumented") == "1", "cpus": facts.cpus,
          "guest_kernel": raw.get("release", ""), "kvm_log": facts.kvm_lines, "ssh_ready_s": round(ssh_ready_s, 2)}
    problems = facts.problems(mode)
    env_problems = [x for x in (facts.cpu_problem(smp), facts.tsc_problem()) if x]  # the machine's, not KVM's
    res = TestResult(f"kvm.{mode.name}.boot", PASS, ssh_ready_s, evidence={"fingerprint": fp},
                     output="\n".join(facts.kvm_lines))
    if findings:
        res.status, res.reason = FAIL, "; ".join(f.summary() for f in findings)
        res.output += "\n" + "\n".join(f.excerpt for f in findings)
    elif not facts.dev_kvm or not facts.vendor:
        res.status, res.reason = FAIL, "; ".join(problems)
    elif problems:
        res.status, res.reason = ERROR, "MMU mode not reached: " + "; ".join(problems)
    elif env_problems:
        res.status, res.reason = ERROR, "; ".join(env_problems)
    return res, fp


def _consistency_case(path: str, mode: MmuMode, cap: capture.Captured | None, why_not: str) -> TestResult:
    """The bitmap/counter verdict for one workload run, from the captured dumps and trace."""
    res = TestResult(f"{path}.consistency", ERROR)
    if cap is None or cap.error or why_not:
        res.reason = why_not or (cap.error if cap else "no capture")
        return res
    verdict = check_files(cap.snapshots, cap.trace)
    res.evidence = {"counts": verdict.counts, "vanished_dumps": cap.vanished, "ring_buffer_lost": cap.ring_lost,
                    "ring_buffer_entries": cap.ring_entries, "capture_dir": str(cap.dir)}
    res.status, res.reason = verdict.status, verdict.reason
    if cap.ring_lost and res.status != FAIL:
        res.status = ERROR
        res.reason = f"the trace ring buffer lost {cap.ring_lost} events; {verdict.reason}"
    elif cap.ring_entries is not None and verdict.counts.get("events") != cap.ring_entries:
        # Incomplete evidence: even a finding made on it may be an artefact of the missing events.
        res.status = ERROR
        res.reason = (f"the trace gave {verdict.counts.get('events')} events but the guest's ring buffer held "
                      f"{cap.ring_entries} (truncated or unreadable {cap.trace}); {verdict.reason}")
    if res.status == SKIP and mode.reaches_patched_code:
        # A mode that should reach the shadow MMU showed none of it: that is not a skip.
        res.status, res.reason = ERROR, f"mode {mode.name} should reach the patched code but: {verdict.reason}"
    res.output = "\n\n".join(str(i) for i in verdict.inconsistencies)
    return res


def _forensics(vm: vm_mod.VM, guest: Guest | None, out: Path, path: str, why: str, res: TestResult) -> None:
    dest = out / "forensics" / forensics.safe_name(path)
    try:
        summary = forensics.collect(vm, guest, dest, why)
    except HarnessError:
        raise
    except Exception as e:  # forensics must never turn an ERROR into a crash
        log.warning("forensics for %s failed: %s", path, e)
        summary = {"error": f"{type(e).__name__}: {e}"}
    res.evidence["forensics"] = summary
    res.artifacts.append(str(dest.relative_to(out)))


class BackgroundChecks:
    """Consistency verdicts computed in one worker thread while the guests go on with their next workloads.

    A guest keeps about one host core busy (its vCPU running the nested guest); the check of a capture
    (trace-cmd report, parse, replay: seconds for a shadow-MMU workload) uses what is left. Each verdict
    fills in a result that is already in the run's list, in its place; `finish()` waits for all of them
    and runs before the exit code is decided and before any report is written. An interrupted run does
    not wait for checks that have not started: their results say so (ERROR). Every VM lane submits
    here, so the bookkeeping is under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[tuple[TestResult, Future[TestResult]]] = []

    def submit(self, placeholder: TestResult, check: Callable[[], TestResult]) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvm-harness-check")
            self._pending.append((placeholder, self._pool.submit(check)))

    def wait_for(self, placeholders: list[TestResult]) -> None:
        """Fill in these placeholders now (a retry compares both attempts' verdicts)."""
        with self._lock:
            mine = [(ph, f) for ph, f in self._pending if any(ph is x for x in placeholders)]
            self._pending = [(ph, f) for ph, f in self._pending if not any(ph is x for x in placeholders)]
        self._resolve(mine)

    def finish(self, interrupted: bool = False) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if interrupted:  # every check not started yet is dropped before waiting for the running one
            for _, fut in pending:
                fut.cancel()
        self._resolve(pending)

    @staticmethod
    def _resolve(pending: list[tuple[TestResult, Future[TestResult]]]) -> None:
        for placeholder, fut in pending:
            if fut.cancelled():
                placeholder.reason = "not checked: the run was interrupted first"
                continue
            try:
                done = fut.result()
            except Exception as e:  # a checker bug is the harness's fault: ERROR, with the cause
                log.exception("consistency check of %s crashed", placeholder.path)
                done = TestResult(placeholder.path, ERROR, reason=f"consistency check crashed: "
                                                                  f"{type(e).__name__}: {e}")
            placeholder.__dict__.update(done.__dict__)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class Timings(dict):  # type: ignore[type-arg]
    """metadata.json's `timings`. The VM lanes add to it at once: sums and lists under a lock, and
    each workload's [start, end] kept aside, so the harness's overhead is the wall time during
    which no workload ran (with several VMs, their workloads overlap each other's boots)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.intervals: list[tuple[float, float]] = []

    def add(self, key: str, seconds: float) -> None:
        with self._lock:
            self[key] = round(float(self.get(key, 0.0)) + seconds, 1)

    def append(self, key: str, value: object) -> None:
        with self._lock:
            self.setdefault(key, []).append(value)

    def put(self, key: str, sub: str, value: object) -> None:
        with self._lock:
            self.setdefault(key, {})[sub] = value

    def workload_ran(self, start: float, end: float) -> None:
        with self._lock:
            self.intervals.append((start, end))


def _run_workload(guest: Guest, vm: vm_mod.VM, w: Workload | CommandWorkload, mode: MmuMode, out: Path, tag: str,
                  check: bool = False, settings: capture.CaptureSettings | None = None, *,
                  checks: BackgroundChecks, timings: Timings, attempt: int = 1) -> list[TestResult]:
    proc.check_interrupted()
    path = w.path(mode.name)
    console_mark = len(vm.console())
    log.info("running %s: %s", path, w.command())
    res = TestResult(path, PASS, command=w.command())
    cap: capture.Captured | None = None
    why_not = ""
    if check:
        t_start = time.monotonic()
        why_not = capture.start(guest, settings or capture.CaptureSettings())
        timings.add("capture_s", time.monotonic() - t_start)
    t0 = time.monotonic()
    try:
        r = guest.run(w.command(), w.timeout_s)
    except GuestError as e:
        res.duration_s = time.monotonic() - t0
        timings.workload_ran(t0, t0 + res.duration_s)
        # The guest went away under the test: a kernel crash is the test's FAIL, anything else an ERROR.
        proc.check_interrupted()
        time.sleep(0.5)  # let a dying QEMU finish, so its end is reported as it was
        new_console = vm.console()[console_mark:]
        findings = health.scan(new_console, f"console-{tag}.log")
        res.status = FAIL if findings else ERROR
        qemu = "" if vm.alive() else f"; QEMU {vm.exit_description()}"
        res.reason = "; ".join(f.summary() for f in findings) if findings else f"lost the guest: {e}{qemu}"
        res.output = "\n".join(f.excerpt for f in findings) or console_tail(vm)
        res.evidence["guest_lost"] = True
        res.evidence["qemu"] = vm.exit_description()
        _forensics(vm, guest, out, path, "guest lost during the test", res)
        return [res] + ([_consistency_case(path, mode, None, "guest lost during the workload")] if check else [])
    res.duration_s = r.seconds
    timings.workload_ran(t0, t0 + r.seconds)
    res.output = printable(r.stdout + r.stderr)[-20000:]   # a test's terminal escapes would break junit.xml
    with open(out / f"workloads-{tag}.log", "a") as f:
        f.write(f"### {path}\n$ {w.command()}\n{r.stdout}{r.stderr}\n### exit {r.rc} after {r.seconds:.1f}s\n")
    if r.timed_out:
        res.status, res.timed_out = ERROR, True
        res.reason = (f"timeout after {w.timeout_s:g} s (--timeout); "
                      f"forensics in forensics/{forensics.safe_name(path)}/")
        tail = last_line(vm.console()[console_mark:])
        res.output = (res.output + f"\n[console since the test started ends: {tail}]").strip()
        _forensics(vm, guest, out, path, f"timeout after {w.timeout_s:g} s", res)
        return [res] + ([_consistency_case(path, mode, None, "workload timed out")] if check else [])
    if check and not why_not:
        safe = path.replace("/", "_")
        t_cap = time.monotonic()
        cap = capture.stop_and_fetch(guest, out / "capture" / (safe if attempt == 1 else f"{safe}.attempt{attempt}"))
        log.debug("%s: capture stopped and fetched in %.1f s", path, time.monotonic() - t_cap)
        timings.add("capture_s", time.monotonic() - t_cap)
    if r.rc == KSFT_PASS:
        res.status = PASS
    elif r.rc == KSFT_SKIP:
        res.status, res.reason = SKIP, skip_reason(res.output)
    else:
        res.status = FAIL
        last = [ln for ln in res.output.splitlines() if ln.strip()][-3:]
        res.reason = f"exit {r.rc}: " + " | ".join(last)
    if w.test == "dirty_log_perf_test":
        res.evidence["figures"] = perf_figures(res.output)
    try:
        dmesg = guest.check("dmesg -c", 30)
    except GuestError as e:
        dmesg = ""
        res.evidence["dmesg_error"] = str(e)
    with open(out / f"dmesg-{tag}.txt", "a") as f:
        f.write(f"### after {path}\n{dmesg}")
    findings = health.scan(dmesg, f"dmesg-{tag}.txt")
    if findings:
        res.evidence["health"] = [f.summary() for f in findings]
        if res.status in (PASS, SKIP):
            res.status = FAIL
            res.reason = "kernel reported: " + "; ".join(f.summary() for f in findings)
        else:
            res.reason += "; kernel reported: " + "; ".join(f.summary() for f in findings)
        res.output += "\n" + "\n".join(f.excerpt for f in findings)
    if check:
        def verdict() -> TestResult:
            t_check = time.monotonic()
            v = _consistency_case(path, mode, cap, why_not)
            log.debug("%s: consistency checked in %.1f s", path, time.monotonic() - t_check)
            timings.add("check_s", time.monotonic() - t_check)
            return v
        placeholder = TestResult(f"{path}.consistency", ERROR, reason="not checked yet")
        checks.submit(placeholder, verdict)
        return [res, placeholder]
    return [res]


def run_lanes(req: RunRequest, p: Prepared, out: Path, timings: Timings, book: ResultBook,
              checks: BackgroundChecks) -> None:
    """Every selected test of every MMU mode, on `--vms` VMs at once (schedule.py says why and how).
    Results go into `book` as they come, so an interrupted run keeps what it had; their consistency
    verdicts come from `checks`. A mode with no test selected is still booted (its boot case)."""
    plan = {m: selected_workloads(req, m) for m in req.modes}
    queue: WorkQueue[Workload | CommandWorkload | None] = WorkQueue({m: [*ws] or [None] for m, ws in plan.items()})
    lanes, why = schedule.lanes_for(req.vms, req.memory, len(queue))
    timings["vms"] = lanes
    log.info("%d test(s) in %d MMU mode(s), on %d VM(s) at once (%s)", sum(map(len, plan.values())),
             len(plan), lanes, why)
    if lanes == 1:
        _lane(0, req, p, out, timings, book, checks, queue)
        return
    pool = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="kvm-harness-vm")
    futures = [pool.submit(_lane, n, req, p, out, timings, book, checks, queue) for n in range(lanes)]
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
        if f.exception() is not None:
            raise f.exception()  # type: ignore[misc]


def _lane(lane: int, req: RunRequest, p: Prepared, out: Path, timings: Timings, book: ResultBook, checks: BackgroundChecks,
          queue: WorkQueue[Workload | CommandWorkload | None]) -> None:
    """One VM at a time: it runs the tests of its mode while the mode has some left, then the lane
    boots a VM for whatever test is next. A test that hangs or loses the guest is followed by a
    fresh VM for the rest."""
    vm: vm_mod.VM | None = None
    guest: Guest | None = None
    mode: MmuMode | None = None
    do_check = False
    try:
        while True:
            proc.check_interrupted()
            item = queue.take(lane, mode.name if mode else None)
            if item is None:
                break
            if vm is not None and mode is not None and item.mode != mode.name:
                _shutdown(vm, guest)
                vm = guest = None
            mode = MODES[item.mode]
            if vm is None:
                started = _start_vm(req, p, mode, out, timings, book)
                if isinstance(started, str):  # no VM of this mode will run a test
                    for it in [item, *queue.drain(mode.name)]:
                        if it.workload is not None:
                            book.add(mode.name, it.index, [TestResult(it.workload.path(mode.name), ERROR,
                                                                      reason=f"not run: {started}")])
                    continue
                vm, guest, do_check = started
            w = item.workload
            if w is None:  # the mode's boot case was all there was to run
                continue
            check = do_check and isinstance(w, Workload)
            try:
                res_list = _run_workload(guest, vm, w, mode, out, vm.tag, check, req.capture,
                                         checks=checks, timings=timings)
                if _worth_a_retry(res_list[0], req):
                    log.warning("%s failed (%s); running it once more before calling it a regression",
                                res_list[0].path, res_list[0].reason)
                    second = _run_workload(guest, vm, w, mode, out, vm.tag, check, req.capture,
                                           checks=checks, timings=timings, attempt=2)
                    checks.wait_for(res_list[1:] + second[1:])  # the merge compares both attempts' verdicts
                    res_list = _merge_attempts(res_list, second)
            except Interrupted as e:
                book.add(mode.name, item.index, [TestResult(w.path(mode.name), ERROR, reason=f"not finished: {e}")])
                raise
            book.add(mode.name, item.index, res_list)
            res = res_list[0]
            if res.timed_out or res.evidence.get("guest_lost"):
                log.info("%s: %s; what is left of %s goes on in a fresh VM", res.path,
                         "timed out" if res.timed_out else "lost the guest", mode.name)
                _shutdown(vm, guest, fast=True)
                vm = guest = None
    except BaseException:
        if vm is not None:
            _shutdown(vm, guest, fast=True)
        raise
    if vm is not None:
        _shutdown(vm, guest)


def _start_vm(req: RunRequest, p: Prepared, mode: MmuMode, out: Path, timings: Timings,
              book: ResultBook) -> tuple[vm_mod.VM, Guest, bool] | str:
    """Boot a VM of `mode` and check that it reached the mode: (vm, guest, consistency on?), or why
    not (the mode's remaining tests are then not run). The mode's first VM gives its boot case;
    another one (a second lane, or a fresh VM after a hang) adds a boot case only if it fails."""
    n = book.next_boot(mode.name)
    tag = mode.name if n == 1 else f"{mode.name}-{n}"
    case = f"kvm.{mode.name}.boot" + ("" if n == 1 else f".{n}")
    try:
        vm, guest, ready_s = _boot(req, p, mode, out, tag)
    except BootError as e:
        (out / f"boot-error-{tag}.txt").write_text(f"{e}\n\n{e.detail}\n")
        book.add_boot(mode.name, [TestResult(case, ERROR, reason=str(e), output=e.detail,
                                             evidence={"boot_error": True},
                                             artifacts=[f"boot-error-{tag}.txt", f"console-{tag}.log"])])
        return f"boot failed ({e})"
    timings.append("ssh_ready_s", round(ready_s, 2))
    try:
        boot_res, fp = _boot_case(mode, guest, out, tag, ready_s, vm.spec.smp)
    except BaseException:
        _shutdown(vm, guest, fast=True)
        raise
    boot_res.path = case
    timings.put("fingerprint", tag, fp)
    if n == 1 or boot_res.status != PASS:
        book.add_boot(mode.name, [boot_res])
    if boot_res.status != PASS:
        _shutdown(vm, guest)
        return boot_res.reason
    instrumented = bool(fp.get("instrumented"))
    if n == 1 and req.consistency == "auto" and not instrumented and _series_has_instrumentation(p):
        book.add_boot(mode.name, [TestResult(f"{w.path(mode.name)}.consistency", ERROR,
                                             reason="the instrumentation series was applied but the guest has no "
                                                    "kvmmmu:kvm_mmu_pw_spte tracepoint")
                                  for w in selected_workloads(req, mode.name) if isinstance(w, Workload)])
    return vm, guest, req.consistency == "auto" and instrumented


def _worth_a_retry(res: TestResult, req: RunRequest) -> bool:
    """Retry-before-regression, for a selftest's own failure only: never for a kernel
    health finding (a WARN or an Oops is a bug however often it shows), a timeout, or a
    lost guest. Measured here: TCG's emulated nested SVM occasionally shuts the
    selftest's L2 guest down ("Invalid guest sync status: exit_reason=SHUTDOWN")
    under CPU contention, in the unpatched TDP MMU mode as well."""
    return (req.retries > 0 and res.status == FAIL and not res.evidence.get("health")
            and not res.timed_out and not res.evidence.get("guest_lost"))


def _merge_attempts(first: list[TestResult], second: list[TestResult]) -> list[TestResult]:
    """Both attempts are kept as evidence. The workload passes only if the retry passes
    (then it is marked flaky); a consistency FAIL from either attempt always stands."""
    w1, w2 = first[0], second[0]
    w2.evidence["first_attempt"] = {"status": w1.status, "reason": w1.reason, "output": w1.output[-4000:],
                                    "duration_s": round(w1.duration_s, 1)}
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


def _series_has_instrumentation(p: Prepared) -> bool:
    return any(s.get("name") == "instrumentation" for s in p.build.meta.get("series", []))  # type: ignore[union-attr]


def exit_code(results: list[TestResult]) -> int:
    """The run's exit code from the KCIDB precedence in results.overall (no results: ERROR)."""
    status = overall(results)
    if status == ERROR:
        return EXIT_BOOT if any(r.evidence.get("boot_error") for r in results) else EXIT_INFRA
    return {FAIL: EXIT_TEST_FAILED, SKIP: EXIT_SKIPPED, PASS: EXIT_OK}[status]


def write_reports(out: Path, results: list[TestResult], meta: dict[str, object], build: dict[str, object] | None,
                  status: str) -> None:
    (out / "ktap.txt").write_text(ktap.render(results))
    junit.write(results, out / "junit.xml")
    env = {"accelerator": meta.get("accelerator"), "qemu": meta.get("qemu_version"),
           "fingerprint": (meta.get("timings") or {}).get("fingerprint")}  # type: ignore[union-attr]
    env["summary"] = f"{env['accelerator']}; {env['qemu']}"
    doc = kcidb.render(out.name, results, meta.get("source") or {}, build, env, status)  # type: ignore[arg-type]
    doc["kvm_harness"] = {"status": status, "exit_code": meta.get("exit_code"), "error": meta.get("error"),
                          "results": [r.to_dict() for r in results]}
    cache.write_json(out / "results.json", doc)
    consoles = sorted(out.glob("console-*.log"))
    with open(out / "console.log", "w") as f:
        for c in consoles:
            f.write(f"===== {c.name} =====\n{c.read_text(errors='replace')}\n")


def run_boot_test(req: RunRequest, argv: list[str]) -> int:
    # A signal while the run directory is being set up, or while the reports are
    # being written, is held back: the run is then either recorded or not started.
    with proc.deferred_interrupts():
        out = run_dir_mod.create(req.results_root, "boot-test")
        run_dir_mod.point_latest(req.results_root, out)
        meta = run_dir_mod.start_metadata(out, argv, "boot-test")
        handler = logging.FileHandler(out / "harness.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger().addHandler(handler)
    log.info("run directory %s", out)
    t_start = time.monotonic()
    results: list[TestResult] = []
    book = ResultBook(req.modes)
    timings = Timings()
    build_meta: dict[str, object] | None = None
    status, code, error = "error", EXIT_INFRA, None
    checks = BackgroundChecks()
    try:
        proc.check_interrupted()
        series = validate(req)
        accel = vm_mod.choose_accel(req.accel)   # --accel kvm on a host without usable KVM: exit 2 now
        p = prepare(req, series, out, meta, timings, accel)
        build_meta = p.build.meta
        run_dir_mod.update_metadata(out, meta, build=build_meta, accelerator={
            "name": p.accel.name, "cpu": p.accel.cpu, "reason": p.accel.reason}, qemu_version=p.qemu_version,
            kernel_release=build_meta.get("kernel_release"))
        t_work = time.monotonic()
        run_lanes(req, p, out, timings, book, checks)
        results = book.ordered()
        checks.finish()
        proc.check_interrupted()   # a signal held back during the last QMP exchange
        timings["modes_s"] = round(time.monotonic() - t_work, 1)
        code = exit_code(results)
        status = {EXIT_OK: "pass", EXIT_TEST_FAILED: "fail", EXIT_SKIPPED: "skip"}.get(code, "error")
    except HarnessError as e:
        code, error = e.exit_code, {"kind": e.kind, "message": str(e), "detail": e.detail[-5000:]}
        status = "interrupted" if isinstance(e, Interrupted) else "error"
        log.error("%s error: %s", e.kind, e)
        if e.detail:
            (out / "error-detail.txt").write_text(e.detail)
    except KeyboardInterrupt:
        code, status, error = 130, "interrupted", {"kind": "interrupted", "message": "interrupted by signal"}
    finally:
        with proc.deferred_interrupts():
            proc.kill_all_children()
            results = book.ordered()   # the lanes have stopped: run_lanes waits for them
            checks.finish(interrupted=status == "interrupted" or proc.interrupted() is not None)
            checks.close()
            total = time.monotonic() - t_start
            # With several VMs the tests overlap: their summed time is not wall time, and the
            # harness's overhead is the wall time during which no test was running.
            ran = schedule.covered_seconds(timings.intervals)
            timings["total_s"] = round(total, 1)
            timings["workloads_s"] = round(sum(b - a for a, b in timings.intervals), 1)
            timings["workloads_wall_s"] = round(ran, 1)
            timings["overhead_s"] = round(total - ran, 1)
            meta["timings"] = timings
            run_dir_mod.update_metadata(out, meta, status=status, exit_code=code, error=error,
                                        finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                        counts={s: sum(r.status == s for r in results)
                                                for s in (PASS, FAIL, ERROR, SKIP)})
            write_reports(out, results, meta, build_meta, status)
            logging.getLogger().removeHandler(handler)
            handler.close()
            _print_summary(out, results, status, code, error, timings)
    return code


def _print_summary(out: Path, results: list[TestResult], status: str, code: int, error: dict[str, object] | None,
                   timings: dict[str, object]) -> None:
    width = max([len(r.path) for r in results] + [20])
    for r in results:
        extra = f"  {r.reason}" if r.reason else ""
        print(f"  {r.status:5} {r.path:{width}} {r.duration_s:6.1f}s{extra}")
    counts = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, ERROR, SKIP)}
    if error:
        print(f"ERROR ({error['kind']}): {error['message']}")
    print(f"kvm-harness: {status.upper()} (exit {code}) - {counts[PASS]} passed, {counts[FAIL]} failed, "
          f"{counts[ERROR]} errors, {counts[SKIP]} skipped; total {timings.get('total_s')}s, "
          f"overhead {timings.get('overhead_s')}s; artifacts: {out}")
