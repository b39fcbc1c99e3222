"""`kvm-harness check RUN_DIR`: judge a run's kept captures again and rewrite its reports, with no kernel and
no VM (kunit.py's `parse` of a saved log): the way to re-judge a run after a fix of the checker.

Every consistency case whose capture the run kept (capture/<test>[.attemptN]/) is checked again as the run
checked it (lanes.check_capture, then verdicts.stopped_consistency for a test stopped before its end); the
other results are kept as they were. The reports (ktap.txt, junit.xml, results.json, harness-results.json)
are written again; metadata.json records the re-judgement (`rechecked`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import capture, verdicts
from .errors import UsageError, exit_code_for
from .lanes import FAILED, check_capture
from .modes import MODES
from .report import write_reports
from .results import TestResult, overall
from .workloads import WorkloadPlan

POPULATED = {w.test for w in WorkloadPlan().workloads() if w.logs_populated_memory}


@dataclass
class Change:
    path: str
    before: str
    after: str
    reason: str


def _result(d: dict[str, Any]) -> TestResult:
    d = {k: v for k, v in d.items() if k != "timed_out"}
    return TestResult(**d)


def recheck(run: Path) -> tuple[list[TestResult], list[Change]]:
    """The run's results with every kept capture judged again, and what changed. UsageError when `run` is not
    a run directory (no harness-results.json)."""
    doc_path = run / "harness-results.json"
    if not doc_path.is_file():
        raise UsageError(f"{run} is not a run directory: no harness-results.json")
    results = [_result(d) for d in json.loads(doc_path.read_text())["results"]]
    by_path = {r.path: r for r in results}
    changes: list[Change] = []
    for i, r in enumerate(results):
        if not r.path.endswith(".consistency"):
            continue
        test = r.path.removesuffix(".consistency")
        cap_dir = next((d for d in _capture_dirs(run, test) if (d / "trace.dat").is_file()), None)
        parts = test.split(".")
        if cap_dir is None or len(parts) < 3 or parts[1] not in MODES:
            continue
        new = check_capture(test, MODES[parts[1]], capture.load(cap_dir), "", parts[2] in POPULATED)
        workload = by_path.get(test)
        if workload is not None and workload.failure in ("timeout", "livelock"):
            new = verdicts.stopped_consistency(new, TestResult(test, workload.status), FAILED[workload.failure][2])
        new.duration_s, new.artifacts = r.duration_s, r.artifacts
        if new.status != r.status:
            changes.append(Change(r.path, r.status, new.status, new.reason))
        results[i] = new
    return results, changes


def _capture_dirs(run: Path, test: str) -> list[Path]:
    """The capture directories of `test`, the last attempt first (the one its merged result reports)."""
    first = capture.dir_name(test)
    return sorted((run / "capture").glob(f"{first}.attempt*"), reverse=True) + [run / "capture" / first]


def run(run_dir: Path) -> int:
    """Re-judge `run_dir` and rewrite its reports; prints what changed; the run's new exit code."""
    run_dir = run_dir.resolve()
    results, changes = recheck(run_dir)
    meta_path = run_dir / "metadata.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    code = exit_code_for(results)
    status = overall(results).lower()
    meta.update(exit_code=code, status=status, rechecked=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    write_reports(run_dir, results, meta, meta.get("build"), status)
    for c in changes:
        print(f"  {c.before:>5} -> {c.after:<5} {c.path}: {c.reason[:200]}")
    judged = sum(1 for r in results if r.path.endswith(".consistency"))
    print(f"kvm-harness check: {len(changes)} of {judged} consistency cases changed; {status.upper()} (exit {code});"
          f" reports rewritten in {run_dir}")
    return code
