"""`make mutation-test`: the negative controls of the consistency check.

Every directory under kernel-patches/mutants/ is a small patch that breaks
the bitmap bookkeeping of the port on purpose (the observation, trace and
dump, stays intact). Each is built on top of the default series (the build
workspace makes that an incremental build) and run in the MMU modes that
reach the patched code; the mutation test passes only if the clean port is
consistent everywhere and every mutant is reported inconsistent (a
consistency FAIL naming a page and an index) in at least one mode.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .results import Status
from .series import load_default_list

REPO = Path(__file__).resolve().parent.parent
MUTANTS = REPO / "kernel-patches" / "mutants"


@dataclass
class Outcome:
    name: str
    rc: int
    run_dir: Path | None
    consistency: dict[str, str] = field(default_factory=dict)   # test path -> status
    first_finding: str = ""
    seconds: float = 0.0

    def caught(self) -> bool:
        return any(s == Status.FAIL for s in self.consistency.values())

    def clean(self) -> bool:
        return bool(self.consistency) and all(s == Status.PASS for s in self.consistency.values())


def run_one(name: str, extra: list[Path], results: Path, opts: list[str]) -> Outcome:
    args = [sys.executable, "-m", "harness", "boot-test", "--results", str(results / name)]
    for d in load_default_list() + extra:
        args += ["--series", str(d)]
    t0 = time.monotonic()
    r = subprocess.run(args + opts, cwd=str(results.parent), stdin=subprocess.DEVNULL,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    out = Outcome(name, r.returncode, None, seconds=time.monotonic() - t0)
    latest = results / name / "latest"
    if not latest.exists():
        return out
    out.run_dir = latest.resolve()
    doc = json.loads((out.run_dir / "results.json").read_text())
    for t in doc.get("kvm_harness", {}).get("results", []):
        if t["path"].endswith(".consistency"):
            out.consistency[t["path"]] = t["status"]
            if t["status"] == "FAIL" and not out.first_finding:
                out.first_finding = (t.get("output") or t.get("reason") or "").split("\n")[0][:300]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.mutation", description=__doc__)
    ap.add_argument("--results", type=Path, default=Path("results/mutation"))
    ap.add_argument("--mutant", action="append", default=[], help="only these mutants (directory names)")
    ap.add_argument("--modes", default="shadow,tdp_legacy")
    ap.add_argument("--only", default="dirty_log_test.dirty-log", help="workloads to run (substring of the path)")
    a = ap.parse_args(argv)
    a.results = a.results.resolve()
    a.results.mkdir(parents=True, exist_ok=True)
    opts = ["--modes", a.modes, "--only", a.only]
    names = a.mutant or sorted(d.name for d in MUTANTS.iterdir() if (d / "series").is_file())
    outcomes = [run_one("clean", [], a.results, opts)]
    for n in names:
        outcomes.append(run_one(n, [MUTANTS / n], a.results, opts))
    ok = True
    print(f"\n{'variant':28} {'verdict':9} {'exit':>4} {'time s':>7}  consistency per test; first finding")
    for o in outcomes:
        if o.name == "clean":
            good = o.clean()
            verdict = "clean" if good else "NOT CLEAN"
        else:
            good = o.caught()
            verdict = "caught" if good else "MISSED"
        ok &= good
        per = ", ".join(f"{p.split('.')[1]}={s}" for p, s in o.consistency.items()) or "no consistency result"
        print(f"{o.name:28} {verdict:9} {o.rc:>4} {o.seconds:7.0f}  {per}")
        if o.first_finding:
            print(f"{'':28} {o.first_finding}")
        if o.run_dir:
            print(f"{'':28} artifacts: {o.run_dir}")
    print(f"\nmutation test: {'PASS' if ok else 'FAIL'} ({sum(o.caught() for o in outcomes[1:])}/{len(outcomes) - 1}"
          f" mutants caught, clean port {'consistent' if outcomes[0].clean() else 'NOT consistent'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
