"""results.json in the KCIDB v4 I/O shape: one checkout, one build, the tests.

Test paths are dot-separated; statuses are KCIDB's (PASS/FAIL/ERROR/SKIP);
the harness's own facts (accelerator, nested fingerprint, evidence counts)
ride in `misc`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

from ..results import TestResult

ORIGIN = "kvmharness"


def patchset_hash(patch_hashes: list[str]) -> str | None:
    """KCIDB's `patchset_hash`: the sha256 of the patches' sha256 hashes, each newline-terminated, in order
    (kcidb-io's schema, v4: "a sha256 hash over newline-terminated sha256 hashes of each patch"); None
    without patches (the field is then left out)."""
    if not patch_hashes:
        return None
    return hashlib.sha256("".join(f"{h}\n" for h in patch_hashes).encode()).hexdigest()


def patch_url(applied: dict[str, Any]) -> str | None:
    """A file:// URI of the patch as applied (any path: spaces and non-ASCII are percent-encoded), or None
    when the build did not record the patch's path (never invented from the series' name)."""
    path = applied.get("path")
    return Path(path).as_uri() if path and Path(path).is_absolute() else None


def render(run_id: str, results: list[TestResult], source: dict[str, Any], build: dict[str, Any] | None,
           environment: dict[str, Any], status: str) -> dict[str, Any]:
    """The KCIDB v4.3 submission of one run (validated by kcidb-io's V4_3 schema in the tests, on real runs
    too). Harness data not in the schema rides in `misc`; a tarball's synthetic git base is not a commit
    of any tree, so it is only in misc, never `git_commit_hash`."""
    checkout_id = f"{ORIGIN}:{source.get('sha256') or source.get('commit') or 'unknown'}"
    applied = (build or {}).get("applied", [])
    # a KCIDB resource needs a URL: a patch whose path the build did not record is left out of the list (the
    # hash still covers it)
    files = [{"name": p.get("patch"), "url": url} for p in applied if (url := patch_url(p))]
    out: dict[str, Any] = {
        "version": {"major": 4, "minor": 3},
        "checkouts": [{
            "id": checkout_id, "origin": ORIGIN,
            "git_commit_hash": source.get("commit") if source.get("kind") == "tree" else None,
            "tree_name": source.get("kind"),
            "patchset_files": files,
            "patchset_hash": patchset_hash([h for h in (p.get("sha256") for p in applied) if h]),
            "misc": {"source": source},
            "valid": build is not None,
        }],
        "builds": [], "tests": [],
    }
    out["checkouts"][0] = {k: v for k, v in out["checkouts"][0].items() if v not in (None, [], "")}
    if build is None:
        return out
    build_id = f"{ORIGIN}:{build.get('key')}"
    entry = {"id": build_id, "checkout_id": checkout_id, "origin": ORIGIN, "architecture": "x86_64",
             "config_name": build.get("config_base"), "compiler": "gcc", "valid": True,
             "misc": {"kernel_release": build.get("kernel_release"), "durations_s": build.get("durations_s"),
                      # the checks this tree cannot have (6.1: no KVM_PROVE_MMU), and the harness settings a
                      # user fragment overrode: a reader of the results must see what was not checked
                      "unavailable_checks": build.get("unavailable_checks") or [],
                      "config_overrides": build.get("config_overrides") or []}}
    out["builds"].append({k: v for k, v in entry.items() if v is not None})
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
