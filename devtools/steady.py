"""`make steady`: does the default matrix pass every time on this machine? N consecutive boot-tests.

Runs `kvm-harness boot-test` N times in a row with the same options (warm: build once, then the cache) and
reads each run's harness-results.json back: its exit code, wall time, counts, and every test that was not a
plain PASS the first time: passed on a retry (flaky, with the first attempt's reason), a livelock the
watchdog stopped, a timeout. docs/steady.md keeps what it printed on this project's machines. Exits 0 only
if every run did.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.guestcheck import livelock


def _run(args: list[str], results: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "harness", "boot-test", "--results", str(results), *args],
                         stdin=subprocess.DEVNULL)
    try:
        rc = p.wait()
    except BaseException:
        # Interrupted: the harness is told as a user's Ctrl-C tells it, so it stops its QEMUs and writes
        # its reports (subprocess.run would SIGKILL it and leave its QEMUs running).
        p.send_signal(signal.SIGINT)
        p.wait()
        raise
    return read_run((results / "latest").resolve(), rc, round(time.monotonic() - t0, 1))


def read_run(run: Path, rc: int | None = None, wall_s: float | None = None) -> dict[str, Any]:
    """A kept run directory as the table reads it; `rc` and `wall_s` default to what the run recorded
    (harness-results.json's exit code, metadata.json's total)."""
    out: dict[str, Any] = {"rc": rc, "wall_s": wall_s, "dir": str(run), "quiet": quietest(run)}
    try:
        doc = json.loads((run / "harness-results.json").read_text())
        out["results"] = doc["results"]
        if doc.get("error"):   # a harness fault outside any test (ERROR, exit 8)
            out["harness_error"] = str(doc["error"].get("message", doc["error"]))
        out["rc"] = doc["exit_code"] if rc is None else rc
        if wall_s is None:
            out["wall_s"] = json.loads((run / "metadata.json").read_text())["timings"]["total_s"]
    except (OSError, ValueError, KeyError) as e:
        out["results"], out["error"] = [], f"no harness-results.json: {e}"
        out["rc"], out["wall_s"] = (-1 if rc is None else rc), (0.0 if wall_s is None else wall_s)
    return out


def quietest(run: Path) -> tuple[float, int, int, str]:
    """(seconds, page faults, exits, test) of the longest stretch without progress among a run's
    counters/*.json: how near any test came to the livelock watchdog's window."""
    best: tuple[float, int, int, str] = (0.0, 0, 0, "-")
    for f in sorted(run.glob("counters/*.json")):
        q = livelock.longest_quiet(livelock.samples_of(json.loads(f.read_text())))
        if q is not None and (q.seconds, q.delta.get("pf_taken", 0)) > best[:2]:
            best = (q.seconds, q.delta.get("pf_taken", 0), q.delta.get("exits", 0), f.stem)
    return best


def notable(results: list[dict[str, Any]]) -> list[str]:
    """One line per test that was not a plain first-time PASS or SKIP."""
    lines = []
    for r in results:
        ev = r.get("evidence") or {}
        first = ev.get("first_attempt")
        if ev.get("flaky") and first:
            lines.append(f"flaky    {r['path']}: first attempt {first.get('status')} ({first.get('reason', '')[:160]})")
        elif r["status"] not in ("PASS", "SKIP"):
            lines.append(f"{r['status']:8} {r['path']}: {r.get('reason', '')[:200]}")
        if first and first.get("failure") == "livelock":
            lines.append(f"livelock {r['path']} (first attempt, retried in a fresh VM)")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devtools.steady", description=__doc__)
    ap.add_argument("--runs", type=int, default=10, help="consecutive boot-tests (default 10)")
    ap.add_argument("--results", type=Path, default=Path("results/steady"))
    ap.add_argument("--report", type=Path, nargs="+", metavar="RUN_DIR",
                    help="no run: the table of these kept run directories (wall time: the harness's total)")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="options passed to boot-test")
    a = ap.parse_args(argv)
    if a.runs < 1:
        ap.error(f"--runs must be at least 1: {a.runs}")
    passed = [x for x in a.args if x != "--"]
    if any(x == "--results" or x.startswith("--results=") for x in passed):
        # the runs would go there while the table reads --results/latest: steady's own option says both
        ap.error("--results belongs to steady itself (before --): the boot-tests' results go under it")
    runs = [read_run(d.resolve()) for d in a.report or []]
    for i in range(1, (a.runs if not a.report else 0) + 1):
        print(f"=== steady: run {i} of {a.runs}", flush=True)
        runs.append(_run(passed, a.results))
    print(f"\n{'run':>3} {'exit':>4} {'wall s':>7} {'PASS':>4} {'FAIL':>4} {'ERROR':>5} {'SKIP':>4} {'flaky':>5}"
          "  run directory")
    for i, r in enumerate(runs, 1):
        c = {s: sum(1 for x in r["results"] if x["status"] == s) for s in ("PASS", "FAIL", "ERROR", "SKIP")}
        flaky = sum(1 for x in r["results"] if (x.get("evidence") or {}).get("flaky"))
        print(f"{i:>3} {r['rc']:>4} {r['wall_s']:>7} {c['PASS']:>4} {c['FAIL']:>4} {c['ERROR']:>5} {c['SKIP']:>4} "
              f"{flaky:>5}  {r['dir']}{'  ' + r['error'] if 'error' in r else ''}")
        for line in notable(r["results"]):
            print(f"      {line}")
        if r.get("harness_error"):
            print(f"      harness error: {' '.join(r['harness_error'].split())[:200]}")
        if r["quiet"][0]:
            print(f"      longest stretch without progress: {r['quiet'][0]:.1f} s, {r['quiet'][1]:,} page faults, "
                  f"{r['quiet'][2]:,} exits ({r['quiet'][3]})")
    ok = sum(1 for r in runs if r["rc"] == 0)
    walls = sorted(r["wall_s"] for r in runs)
    quiet = max((r["quiet"] for r in runs), key=lambda q: q[:2])
    p = livelock.Policy()
    print(f"longest stretch without progress in any test of any run: {quiet[0]:.1f} s, {quiet[1]:,} page faults, "
          f"{quiet[2]:,} exits ({quiet[3]}); the livelock watchdog's window: --livelock-window (default "
          f"{p.window_s:g} s, with at least {p.min_faults:,} faults or {p.min_exits:,} exits)")
    print(f"steady: {ok} of {len(runs)} runs exit 0; wall min {walls[0]} s, median {walls[len(walls) // 2]} s, "
          f"max {walls[-1]} s; machine: {os.cpu_count()} CPUs")
    return 0 if ok == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
