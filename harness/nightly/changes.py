"""Night against night: what each test's status change means. Pure: statuses and input identities in.

A combination's inputs are what could change its outcome: the source commit, the series' patches, the
build key (config and harness recipe), the accelerator and the harness version. Against the previous run
of the same combination:

- regression: PASS before, FAIL now, and the inputs changed;
- fix: FAIL (or ERROR) before, PASS now, and the inputs changed;
- flaky: the status changed between PASS and FAIL/ERROR while the inputs did not, or the test passed on
  the harness's retry (verdicts.merge_attempts). Reported as flaky, never hidden, never a regression;
- error: PASS before, ERROR now with changed inputs: a harness fault (KernelCI's ERROR), not a regression;
- new: no previous run of the combination had this test; same: anything else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

REGRESSION, FIX, FLAKY, ERROR, NEW, SAME = "regression", "fix", "flaky", "error", "new", "same"
FAILING = ("FAIL", "ERROR")


@dataclass(frozen=True)
class Observed:
    """A test's status in one run, and whether it passed only on the harness's retry."""

    status: str
    retried_pass: bool = False

    @classmethod
    def of(cls, test: Mapping[str, Any]) -> Observed:
        """A test of harness-results.json as observed: its status, and the flag verdicts.merge_attempts sets
        on a pass that came only on the retry (`evidence.flaky`)."""
        return cls(test["status"], bool(test.get("evidence", {}).get("flaky")))


def inputs_key(meta: Mapping[str, Any]) -> str:
    """A digest of a run's inputs from its metadata.json: source commit (or tarball sha256), the series'
    patch hashes, the build key, the accelerator and the harness version. Equal digests, equal inputs."""
    source = meta.get("source") or {}
    build = meta.get("build") or {}
    series = [[p.get("sha256") for p in s.get("patches", [])] for s in meta.get("series") or []]
    ident = {"source": source.get("commit") or source.get("sha256"), "series": series,
             "build": build.get("key"), "accel": (meta.get("accelerator") or {}).get("name"),
             "harness": meta.get("harness_version")}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def classify(previous: Mapping[str, str] | None, previous_inputs: str | None,
             current: Mapping[str, Observed], current_inputs: str) -> dict[str, str]:
    """{test path: change} for every test of `current`, against `previous` ({path: status} of the last run
    of the same combination, None if there is none)."""
    same_inputs = previous_inputs == current_inputs
    out = {}
    for path, now in current.items():
        before = None if previous is None else previous.get(path)
        if now.retried_pass:
            out[path] = FLAKY
        elif before is None:
            out[path] = NEW
        elif before == "PASS" and now.status in FAILING:
            out[path] = FLAKY if same_inputs else (REGRESSION if now.status == "FAIL" else ERROR)
        elif before in FAILING and now.status == "PASS":
            out[path] = FLAKY if same_inputs else FIX
        else:
            out[path] = SAME
    return out
