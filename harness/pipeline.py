"""The run, top to bottom: validate -> prepare (source, series, config, build, image) -> the cells on
VMs (lanes) -> the consistency checks -> the reports. The only module that knows the order of stages.

The library's entry points (`boot-test` and `shell` use them, and so can any script):

    prepared = pipeline.prepare_build(req, log_dir)           # build once (cache-keyed) ...
    outcome = pipeline.boot_test(req, prepared=prepared,      # ... run any cells, many times
                                 cells=[Cell("shadow", w) for w in ...])
    outcome.results, outcome.run_dir, outcome.exit_code
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from . import cache, proc, verdicts
from . import vm as vm_mod
from .errors import EXIT_INFRA, EXIT_INTERRUPTED, HarnessError, Interrupted, exit_code_for
from .inputs import validate, validate_modes, validate_options, validate_prepare
from .lanes import Cell, Lanes
from .prepare import Prepared, prepare, record_build
from .report import write_reports
from .report.run_dir import RunRecord
from .request import RunRequest
from .results import Status, TestResult, counts, overall
from .schedule import BackgroundChecks, ResultBook, Timings
from .workloads import WorkloadPlan

log = logging.getLogger("kvm-harness")


@dataclass
class RunOutcome:
    """What a run gives back: its results in report order, and where its artifacts are."""

    run_dir: Path
    results: list[TestResult]
    status: str                        # metadata.json's: pass, fail, skip, error or interrupted
    exit_code: int                     # errors.py's table
    error: dict[str, object] | None    # the harness error that stopped the run: kind, message, detail


def cells_for(modes: list[str], plan: WorkloadPlan, selftests: tuple[str, ...] | None = None) -> list[Cell]:
    """boot-test's matrix: every selected workload (of the build's `selftests`, when given) in every mode;
    a mode with none keeps its boot case."""
    return [c for m in modes for c in ([Cell(m, w) for w in plan.selected(m, selftests)] or [Cell(m)])]


UNBUILT_INDEX = 1 << 30  # after every cell of a mode: the selftests that did not build


def prepare_build(req: RunRequest, log_dir: Path) -> Prepared:
    """Validate the build's inputs and prepare it (build.log and .config into `log_dir`): a Prepared that
    any number of boot_test(prepared=...) runs reuse. Raises the stages' HarnessErrors."""
    series = validate_prepare(req)
    log_dir.mkdir(parents=True, exist_ok=True)
    return prepare(req, series, log_dir, vm_mod.choose_accel(req.accel))


def run_boot_test(req: RunRequest, argv: list[str]) -> int:
    """`kvm-harness boot-test`: the exit code (errors.py)."""
    return boot_test(req, argv).exit_code


def boot_test(req: RunRequest, argv: list[str] | None = None, *, prepared: Prepared | None = None,
              cells: list[Cell] | None = None, label: str = "boot-test") -> RunOutcome:
    """One run in a new directory under req.results_root: build unless `prepared` is given, then `cells`
    (default: cells_for(req.modes, req.plan, the build's selftests)), checks and reports. Raises UsageError
    only when req.results_root cannot take a run directory (nothing is started then); any other HarnessError,
    and a disk fault (OSError: full, read-only), is recorded in the outcome, metadata.json and the reports
    as far as the disk allows; the run directory always has what could be written."""
    modes = req.modes if cells is None else list(dict.fromkeys(c.mode for c in cells))
    cache.writable_dir(req.results_root, "the results directory (--results)")
    # A signal while the run directory is being set up, or while the reports are
    # being written, is held back: the run is then either recorded or not started.
    with proc.deferred_interrupts():
        record = RunRecord(req.results_root, label, list(argv if argv is not None else []))
    out = record.dir
    log.info("run directory %s", out)
    t_start = time.monotonic()
    book = ResultBook(modes)
    timings = Timings()
    checks = BackgroundChecks()
    build_meta: dict[str, object] | None = None
    status, code = "error", EXIT_INFRA
    error: dict[str, object] | None = None
    try:
        proc.check_interrupted()
        prepared = _prepared(req, prepared, modes, record)
        build_meta = prepared.build.meta
        timings.update(build_s=prepared.build_s, build_cached=prepared.build.cached, image_s=prepared.image_s)
        record.update(build=build_meta, qemu_version=prepared.qemu_version,
                      accelerator={"name": prepared.accel.name, "cpu": prepared.accel.cpu,
                                   "reason": prepared.accel.reason},
                      kernel_release=build_meta.get("kernel_release"))
        t_work = time.monotonic()
        if cells is None:
            cells = cells_for(req.modes, req.plan, prepared.selftests)
            for mode in req.modes:
                book.add(mode, UNBUILT_INDEX, verdicts.unbuilt_results(mode, req.plan, prepared.selftest_errors))
        Lanes(prepared, req, out, timings, book, checks).run(cells)
        checks.finish()
        proc.check_interrupted()   # a signal held back during the last QMP exchange
        timings["modes_s"] = round(time.monotonic() - t_work, 1)
        results = book.ordered()
        code, status = exit_code_for(results), overall(results).lower()
    except HarnessError as e:
        code, error = e.exit_code, {"kind": e.kind, "message": str(e), "detail": e.detail[-5000:]}
        status = "interrupted" if isinstance(e, Interrupted) else "error"
        log.error("%s error: %s", e.kind, e)
        if e.detail:
            (out / "error-detail.txt").write_text(e.detail)
    except OSError as e:  # a full or read-only disk under the run: the harness's fault, named, never a traceback
        code, status, error = EXIT_INFRA, "error", {"kind": "infra", "message": disk_fault(e)}
        log.error("infra error: %s", error["message"])
    except KeyboardInterrupt:
        code, status, error = EXIT_INTERRUPTED, "interrupted", {"kind": "interrupted",
                                                                "message": "interrupted by signal"}
    finally:
        with proc.deferred_interrupts():
            proc.kill_all_children()
            results = book.ordered()   # the lanes have stopped: Lanes.run waits for them
            checks.finish(interrupted=status == "interrupted" or proc.interrupted() is not None)
            checks.close()
            timings.close(time.monotonic() - t_start)
            try:
                record.update(timings=timings, status=status, exit_code=code, error=error,
                              finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), counts=counts(results))
                write_reports(out, results, record.meta, build_meta, status)
                record.close()
            except OSError as e:
                # The tests' own outcome is said, and the exit code says the reports are not whole.
                tests = f"{status.upper()} (exit {code})"
                code, status = EXIT_INFRA, "error"
                error = {"kind": "infra", "message": f"reports not written: {disk_fault(e)}; the tests themselves:"
                                                     f" {tests}"}
                log.error("infra error: %s", error["message"])
            print_summary(out, results, status, code, error, timings)
    return RunOutcome(out, results, status, code, error)


def disk_fault(e: OSError) -> str:
    """'No space left on device: /path' for an OSError of the disk (the path it names, if any)."""
    where = f": {e.filename}" if e.filename else ""
    return f"{e.strerror or e}{where}"


def _prepared(req: RunRequest, prepared: Prepared | None, modes: list[str], record: RunRecord) -> Prepared:
    """Validate, then build, or take the given build; metadata.json learns the source as soon as known."""
    if prepared is None:
        series = validate(req)
        accel = vm_mod.choose_accel(req.accel)   # --accel kvm on a host without usable KVM: exit 2 now
        described = [s.describe() for s in series]
        return prepare(req, series, record.dir, accel,
                       on_source=lambda ident: record.update(source=ident, series=described))
    validate_modes(modes)
    validate_options(req)
    record.update(source=prepared.source, series=prepared.build.meta.get("series"))
    record_build(prepared.build, record.dir, built_here=False)
    return Prepared(prepared.build, prepared.initrd, prepared.image, prepared.accel, prepared.qemu_version,
                    prepared.source)   # this run built nothing: build_s and image_s are 0


def print_summary(out: Path, results: list[TestResult], status: str, code: int, error: dict[str, object] | None,
                  timings: Timings) -> None:
    """The console's account of a run: one line per result, then the verdict and where the artifacts are."""
    width = max([len(r.path) for r in results] + [20])
    for r in results:
        extra = f"  {r.reason}" if r.reason else ""
        print(f"  {r.status:5} {r.path:{width}} {r.duration_s:6.1f}s{extra}")
    n = counts(results)
    if error:
        print(f"ERROR ({error['kind']}): {error['message']}")
    print(f"kvm-harness: {status.upper()} (exit {code}) - {n[Status.PASS]} passed, {n[Status.FAIL]} failed, "
          f"{n[Status.ERROR]} errors, {n[Status.SKIP]} skipped; total {timings.get('total_s')}s, "
          f"overhead {timings.get('overhead_s')}s; artifacts: {out}")
