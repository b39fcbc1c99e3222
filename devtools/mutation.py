"""`make mutation-test`: the negative controls of the consistency check.

Every directory under kernel-patches/mutants/ is a small patch that breaks
the port on purpose: the bitmap bookkeeping, or write-protect-all, which the
bitmap drives (the observation, trace and dump, stays intact). Each is built
on top of the default series (the build workspace makes that an incremental
build) and run in the MMU modes that reach the patched code; the mutation
test passes only if the clean port passes everything and every mutant is
caught in at least one mode: a consistency FAIL naming a page and an index,
or a workload FAIL (dirty_log_enable_test's lost write or stuck vCPU,
dirty_log_test's missing dirty bit). A harness ERROR catches nothing.
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

from harness.results import Status
from harness.series import load_default_list

REPO = Path(__file__).resolve().parent.parent
MUTANTS = REPO / "kernel-patches" / "mutants"


@dataclass
class Outcome:
    name: str
    rc: int
    run_dir: Path | None
    statuses: dict[str, str] = field(default_factory=dict)   # test path -> status (boots left out)
    first_finding: str = ""
    seconds: float = 0.0

    def caught_by(self) -> list[str]:
        """The tests that FAILed: kvm.<mode>.<workload>[.consistency]."""
        return [p for p, s in self.statuses.items() if s == Status.FAIL]

    def caught(self) -> bool:
        return bool(self.caught_by())

    def clean(self) -> bool:
        return any(p.endswith(".consistency") for p in self.statuses) and all(
            s in (Status.PASS, Status.SKIP) for s in self.statuses.values())


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
    doc = json.loads((out.run_dir / "harness-results.json").read_text())
    for t in doc.get("results", []):
        if t["path"].endswith(".boot"):
            continue
        out.statuses[t["path"]] = t["status"]
        if t["status"] == "FAIL" and not out.first_finding:
            out.first_finding = (t.get("reason") or t.get("output") or "").split("\n")[0][:300]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devtools.mutation", description=__doc__)
    ap.add_argument("--results", type=Path, default=Path("results/mutation"))
    ap.add_argument("--mutant", action="append", default=[], help="only these mutants (directory names)")
    ap.add_argument("--modes", default="shadow,tdp_legacy")
    ap.add_argument("--only", action="append", default=[],
                    help="workloads to run (substring of the path; repeatable; default: dirty_log_test.dirty-log"
                         " and dirty_log_enable_test)")
    a = ap.parse_args(argv)
    a.results = a.results.resolve()
    a.results.mkdir(parents=True, exist_ok=True)
    opts = ["--modes", a.modes]
    for o in a.only or ["dirty_log_test.dirty-log", "dirty_log_enable_test"]:
        opts += ["--only", o]
    names = a.mutant or sorted(d.name for d in MUTANTS.iterdir() if (d / "series").is_file())
    outcomes = [run_one("clean", [], a.results, opts)]
    for n in names:
        outcomes.append(run_one(n, [MUTANTS / n], a.results, opts))
    ok = True
    print(f"\n{'variant':28} {'verdict':9} {'exit':>4} {'time s':>7}  caught by (FAIL); first finding")
    for o in outcomes:
        if o.name == "clean":
            good = o.clean()
            verdict = "clean" if good else "NOT CLEAN"
        else:
            good = o.caught()
            verdict = "caught" if good else "MISSED"
        ok &= good
        if o.name == "clean":
            per = ", ".join(f"{p.removeprefix('kvm.')}={s}" for p, s in o.statuses.items()
                            if s != Status.PASS) or f"all {len(o.statuses)} PASS" if o.statuses else "no result"
        else:
            per = ", ".join(p.removeprefix("kvm.") for p in o.caught_by()) or (
                ", ".join(f"{p.removeprefix('kvm.')}={s}" for p, s in o.statuses.items()) or "no result")
        print(f"{o.name:28} {verdict:9} {o.rc:>4} {o.seconds:7.0f}  {per}")
        if o.first_finding:
            print(f"{'':28} {o.first_finding}")
        if o.run_dir:
            print(f"{'':28} artifacts: {o.run_dir}")
    print(f"\nmutation test: {'PASS' if ok else 'FAIL'} ({sum(o.caught() for o in outcomes[1:])}/{len(outcomes) - 1}"
          f" mutants caught, clean port {'clean' if outcomes[0].clean() else 'NOT clean'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
