"""results.json in the KCIDB v4 I/O shape: one checkout, one build, the tests.

Test paths are dot-separated; statuses are KCIDB's (PASS/FAIL/ERROR/SKIP);
the harness's own facts (accelerator, nested fingerprint, evidence counts)
ride in `misc`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..results import TestResult

ORIGIN = "kvmharness"


def render(run_id: str, results: list[TestResult], source: dict[str, Any], build: dict[str, Any] | None,
           environment: dict[str, Any], status: str) -> dict[str, Any]:
    checkout_id = f"{ORIGIN}:{source.get('sha256') or source.get('commit') or 'unknown'}"
    patch_hashes = [p.get("sha256") for p in (build or {}).get("applied", [])]
    out: dict[str, Any] = {
        "version": {"major": 4, "minor": 3},
        "checkouts": [{
            "id": checkout_id, "origin": ORIGIN,
            "git_commit_hash": source.get("commit") or source.get("base_commit"),
            "tree_name": source.get("kind"),
            "patchset_files": [{"name": p.get("patch"), "url": f"file://{p.get('series')}/{p.get('patch')}"}
                               for p in (build or {}).get("applied", [])],
            "patchset_hash": ",".join(h for h in patch_hashes if h) or None,
            "misc": {"source": source},
            "valid": build is not None,
        }],
        "builds": [], "tests": [],
    }
    out["checkouts"][0] = {k: v for k, v in out["checkouts"][0].items() if v not in (None, [], "")}
    if build is None:
        return out
    build_id = f"{ORIGIN}:{build.get('key')}"
    out["builds"].append({"id": build_id, "checkout_id": checkout_id, "origin": ORIGIN,
                          "architecture": "x86_64", "config_name": build.get("config_base"),
                          "compiler": "gcc", "valid": True,
                          "misc": {"kernel_release": build.get("kernel_release"),
                                   "durations_s": build.get("durations_s")}})
    now = dt.datetime.now(dt.UTC).isoformat()
    for r in results:
        out["tests"].append({
            "id": f"{ORIGIN}:{run_id}:{r.path}", "build_id": build_id, "origin": ORIGIN,
            "path": r.path, "status": r.status, "duration": round(r.duration_s, 3), "start_time": now,
            "environment": {"comment": environment.get("summary", ""), "misc": environment},
            "misc": {"reason": r.reason, "timed_out": r.timed_out, "flaky": bool(r.evidence.get("flaky")),
                     "evidence": r.evidence,
                     "command": r.command, "run_status": status},
        })
    return out
