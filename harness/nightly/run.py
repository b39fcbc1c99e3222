"""`kvm-harness nightly --plan PLAN.toml`: every combination of the plan, once, through the library
(pipeline.boot_test: one build per (source, series, config) key, cache-shared), each recorded in the
history and compared with the previous run of the same combination (changes.py).

Layout: <results>/history.sqlite, and per night <results>/nights/<stamp>-night-<pid>/{runs/<one run directory per
combination>, kcidb.json (one submission: every combination's tests, each with its change in misc),
summary.md}.

Exit code: 1 if any test regressed; 8 if no combination ran a single test (the night itself failed);
0 otherwise. Flaky tests, fixes, apply errors and harness errors are in the summary, never in the code.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from .. import cache, cache_entries, options, pipeline
from ..configreq import ConfigRequest
from ..errors import EXIT_INFRA, EXIT_TEST_FAILED
from ..report import run_dir
from ..request import RunRequest
from ..workloads import WorkloadPlan
from . import changes as changes_mod
from . import page
from .history import History
from .plan import Combination, Plan

log = logging.getLogger("kvm-harness")


def request_for(plan: Plan, combo: Combination, runs_dir: Path) -> tuple[RunRequest, list[str]]:
    """The boot-test request of one combination, and the argv that reproduces it by hand."""
    req = RunRequest(tree=combo.tree.path, tree_ref=combo.tree.ref, series_dirs=list(combo.series.paths),
                     config=ConfigRequest("trim", list(combo.config.fragments)), modes=list(plan.modes),
                     results_root=runs_dir, plan=WorkloadPlan(only=plan.only))
    return req, ["boot-test", *options.run_argv(req)]


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def merge_kcidb(docs: list[tuple[str, dict[str, Any]]], changes: dict[str, dict[str, str]]) -> dict[str, Any]:
    """One KCIDB submission of a night from each combination's results.json: their checkouts, builds and
    tests together, each test's change (regression, fix, flaky, ...) and combination in its misc."""
    out: dict[str, Any] = {"version": {"major": 4, "minor": 3}, "checkouts": [], "builds": [], "tests": []}
    for combo, doc in docs:
        if "version" in doc:
            out["version"] = doc["version"]
        out["checkouts"] += doc.get("checkouts", [])
        out["builds"] += doc.get("builds", [])
        for t in doc.get("tests", []):
            t.setdefault("misc", {})["nightly"] = {"combination": combo,
                                                   "change": changes.get(combo, {}).get(t.get("path", ""), "same")}
            out["tests"].append(t)
    return out


def summary(stamp: str, rows: list[dict[str, Any]]) -> str:
    """summary.md: per combination, its outcome and every test that changed."""
    lines = [f"# kvm-harness nightly {stamp}", "", "| combination | commit | status | exit | regressions | fixes "
             "| flaky | run |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        by = {k: [p for p, c in r["changes"].items() if c == k] for k in ("regression", "fix", "flaky")}
        lines.append(f"| {r['combo']} | {r['describe'] or '-'} | {r['status']} | {r['exit_code']} "
                     f"| {len(by['regression'])} | {len(by['fix'])} | {len(by['flaky'])} | {r['run_dir']} |")
    for r in rows:
        changed = {p: c for p, c in r["changes"].items() if c not in ("same", "new")}
        if r["error"] or changed:
            lines += ["", f"## {r['combo']}", ""]
            if r["error"]:
                lines.append(f"- {r['error']['kind']} error: {r['error']['message']}")
            lines += [f"- {c}: {p}" for p, c in sorted(changed.items())]
    return "\n".join(lines) + "\n"


def run(plan: Plan, results_root: Path) -> int:
    """One night: every combination, recorded; the exit code of the module docstring."""
    night_dir = run_dir.create(results_root / "nights", "night")   # exclusive, as every run's directory
    stamp = night_dir.name
    (night_dir / "runs").mkdir()
    history = History(results_root / "history.sqlite")
    night_id = history.start_night(stamp, plan.path, time.time(), night_dir)
    rows: list[dict[str, Any]] = []
    docs: list[tuple[str, dict[str, Any]]] = []
    code = EXIT_INFRA   # until the night is through
    finished = False
    try:
        for combo in plan.combinations():
            log.info("nightly: %s (%s at %s)", combo.key, combo.tree.path, combo.tree.ref)
            req, argv = request_for(plan, combo, night_dir / "runs")
            slug = re.sub(r"[^A-Za-z0-9._-]", "_", combo.key.replace("/", "-"))
            outcome = pipeline.boot_test(req, argv, label=f"nightly-{slug}")
            meta = _read(outcome.run_dir / "metadata.json")
            meta["run_dir"] = str(outcome.run_dir)
            tests = _read(outcome.run_dir / "harness-results.json").get("results", [])
            inputs = changes_mod.inputs_key(meta)
            prev = history.previous(combo.key)
            current = {t["path"]: changes_mod.Observed.of(t)
                       for t in tests}
            ch = changes_mod.classify(prev.statuses if prev else None, prev.inputs if prev else None, current, inputs)
            history.record_run(night_id, combo.key, meta, inputs, tests, ch)
            docs.append((combo.key, _read(outcome.run_dir / "results.json")))
            rows.append({"combo": combo.key, "describe": (meta.get("source") or {}).get("describe"),
                         "status": outcome.status, "exit_code": outcome.exit_code, "error": outcome.error,
                         "changes": ch, "run_dir": outcome.run_dir.name, "tests": len(tests)})
        changes = {r["combo"]: r["changes"] for r in rows}
        (night_dir / "kcidb.json").write_text(json.dumps(merge_kcidb(docs, changes), indent=1) + "\n")
        text = summary(stamp, rows)
        if plan.cache_budget:
            # This night's workspaces, builds and images are held by this process: they stay.
            removed, held = cache_entries.prune(cache.cache_root(), None, plan.cache_budget)
            text += (f"\nCache pruned to {plan.cache_budget}: {len(removed)} entries removed "
                     f"({cache_entries.human(sum(e.size for e in removed))}), {len(held)} in use kept.\n")
        (night_dir / "summary.md").write_text(text)
        regressions = sum(c == "regression" for ch in changes.values() for c in ch.values())
        code = EXIT_TEST_FAILED if regressions else (EXIT_INFRA if not any(r["tests"] for r in rows) else 0)
        history.finish_night(night_id, time.time(), code)
        finished = True
        html = page.write(results_root / "index.html", plan.path, history.grid(plan.path))
        print(text + f"\nHistory page: {html}\n")
        print(f"kvm-harness nightly: {len(rows)} combination(s), {regressions} regression(s); exit {code}; "
              f"{night_dir}")
        return code
    finally:
        if not finished:   # an interrupted or failed night is recorded as such
            history.finish_night(night_id, time.time(), code)
        history.close()
