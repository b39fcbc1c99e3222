"""`kvm-harness walk`: which patch of a series breaks it. Builds and tests prefixes of the series (patches
1..k) through the library (prepare + pipeline.boot_test), and names the first k at which the patch does
not apply, the build, the boot, a workload or a consistency check goes wrong, or says that none does.

The base (k = 0) is run first: a base that already fails blames no patch. Up to LINEAR_MAX patches are
walked in order, stopping at the first bad one; longer series are bisected (which assumes that once bad,
every longer prefix is bad too, as git bisect does). A step is bad when a patch does not apply, the kernel
does not configure, build or boot, or a test FAILs; it is untestable (git bisect's `skip`) when its run
only ERRORs or SKIPs (a harness fault; a kernel only partly instrumented, between the instrumentation's
patches): the walk goes around it and names the first bad step among the testable ones, with the
untestable steps right before it, any of which could be the culprit. Every prefix builds in the same workspace with the
same O= directory and ccache, so a step recompiles only what its patch touched: the report gives each
step's build time next to the base's.

A series given as one mbox is split into its mails (git mailsplit) so that each mail is a step.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from . import cache, options, pipeline, proc
from . import series as series_mod
from . import vm as vm_mod
from .errors import (
    EXIT_INFRA,
    EXIT_OK,
    EXIT_SKIPPED,
    EXIT_TEST_FAILED,
    EXIT_USAGE,
    HarnessError,
    Interrupted,
    UsageError,
)
from .inputs import validate_prepare
from .prepare import prepare
from .report import run_dir
from .request import RunRequest
from .results import TestResult

log = logging.getLogger("kvm-harness")
LINEAR_MAX = 8
GOOD, BAD, UNTESTABLE = "good", "bad", "untestable"


@dataclass
class Step:
    """Prefix k of the series (k patches applied) and what became of it."""

    k: int
    patch: str                 # the k-th patch's name ("" for the base)
    exit_code: int
    stage: str                 # "" when good; else apply, config, build, boot, test, infra, usage
    reason: str
    build_s: float = 0.0
    build_cached: bool = False
    run_dir: str = ""

    @property
    def outcome(self) -> str:
        """good, bad or untestable (a run with ERRORs and no FAIL, or nothing but SKIPs)."""
        if self.exit_code == EXIT_OK:
            return GOOD
        return UNTESTABLE if self.exit_code in (EXIT_SKIPPED, EXIT_INFRA, EXIT_USAGE) else BAD

    @property
    def good(self) -> bool:
        return self.outcome == GOOD


def stage_of(exit_code: int, error_kind: str | None, results: list[TestResult]) -> tuple[str, str]:
    """Where a step went wrong, from its run: (stage, one-line reason); ("", "") when it did not."""
    if exit_code in (EXIT_OK, EXIT_SKIPPED):
        return "", ""
    if error_kind:
        return error_kind, ""
    # a consistency FAIL names the page and the spte: the more precise of the two when both FAIL
    bad = next((r for r in results if r.status == "FAIL" and r.path.endswith(".consistency")), None) or next(
        (r for r in results if r.status == "FAIL"), None) or next((r for r in results if r.status == "ERROR"), None)
    if bad is None:
        return "test", f"exit {exit_code}"
    return ("consistency" if bad.path.endswith(".consistency") else "test"), f"{bad.path}: {bad.reason}"


def first_bad(n: int, outcome: Callable[[int], str]) -> tuple[int | None, list[int]]:
    """(the smallest testable k in 1..n whose outcome is BAD, the UNTESTABLE steps between the last good
    step before it and it), given step 0 is good; (None, the untestable steps at the end) when no testable
    step is bad. Walks k = 1, 2, ... for n <= LINEAR_MAX; else bisects (outcomes must then be monotonic
    among testable steps), going around an untestable midpoint to the untried step nearest to it."""
    if n <= LINEAR_MAX:
        lo = 0
        for k in range(1, n + 1):
            o = outcome(k)
            if o == BAD:
                return k, list(range(lo + 1, k))
            if o == GOOD:
                lo = k
        return None, list(range(lo + 1, n + 1))
    known: dict[int, str] = {}

    def at(k: int) -> str:
        if k not in known:
            known[k] = outcome(k)
        return known[k]

    hi = n
    while hi > 0 and at(hi) == UNTESTABLE:
        hi -= 1
    if hi == 0 or at(hi) == GOOD:
        return None, list(range(hi + 1, n + 1))
    lo = 0                 # good at lo, bad at hi
    while True:
        untried = [m for m in range(lo + 1, hi) if known.get(m) != UNTESTABLE]
        if not untried:
            return hi, list(range(lo + 1, hi))
        mid = min(untried, key=lambda m: (abs(2 * m - lo - hi), m))
        o = at(mid)
        if o == GOOD:
            lo = mid
        elif o == BAD:
            hi = mid


def flatten(series: list[series_mod.Series], split_dir: Path) -> list[series_mod.Patch]:
    """Every patch in apply order; an mbox file becomes one patch per mail (git mailsplit into split_dir)."""
    out: list[series_mod.Patch] = []
    for s in series:
        for p in s.patches:
            if not series_mod.is_mbox(p.path):
                out.append(p)
                continue
            dest = split_dir / f"{len(out):03d}-{p.path.stem}"
            dest.mkdir(parents=True)
            r = proc.run(["git", "mailsplit", "-b", "-o" + str(dest), str(p.path)])
            if r.returncode != 0:
                raise UsageError(f"git mailsplit {p.path} failed: {r.stderr.strip()[-300:]}")
            mails = sorted(dest.iterdir())
            # a cover letter (no diff) would be a step that changes nothing, in an mbox or on its own (b4's
            # and format-patch's 0000-cover-letter.patch in a directory of mails)
            if len(mails) == 1:
                if "\ndiff --git " in mails[0].read_text(errors="replace"):
                    out.append(p)
                continue
            for mail in mails:
                if "\ndiff --git " in mail.read_text(errors="replace"):
                    out.append(series_mod.Patch(mail, cache.sha256_file(mail), p.strip,
                                                f"{p.name} mail {int(mail.name)}"))
    return out


def run(req: RunRequest) -> int:
    """Walk the series of `req` (its series_dirs) on its source; prints and writes walk.json; the exit code:
    0 when no patch goes wrong, 1 when one does (named), the base's own code when the base fails."""
    out = run_dir.create(req.results_root, "walk")   # exclusive: two walks in one second do not collide
    loaded = validate_prepare(req)
    patches = flatten(loaded, out / "mails")
    if not patches:
        raise UsageError("walk needs a series with at least one patch (--series)")
    accel = vm_mod.choose_accel(req.accel)
    steps: dict[int, Step] = {}

    def step(k: int) -> Step:
        if k in steps:
            return steps[k]
        name = patches[k - 1].name if k else ""
        log.info("walk: %d of %d patches%s", k, len(patches), f" (up to {name})" if k else " (the base)")
        prefix = [series_mod.Series(f"walk-{k}", out, tuple(patches[:k]))] if k else []
        t0 = time.monotonic()
        (out / f"step-{k}").mkdir()   # the step's build.log and .config
        try:
            prepared = prepare(replace(req, series_dirs=[]), prefix, out / f"step-{k}", accel)
        except Interrupted:
            raise
        except HarnessError as e:
            s = Step(k, name, e.exit_code, e.kind, str(e), round(time.monotonic() - t0, 1))
        else:
            # the step's own reproducer: boot-test of the same request on this prefix's patches
            mine = replace(req, series_dirs=[p.path for p in patches[:k]])
            o = pipeline.boot_test(req, ["boot-test", *options.run_argv(mine)], prepared=prepared,
                                   label=f"walk-{k}")
            kind = o.error["kind"] if o.error else None
            stage, why = stage_of(o.exit_code, str(kind) if kind else None, o.results)
            reason = str(o.error["message"]) if o.error else why
            s = Step(k, name, o.exit_code, stage, reason, prepared.build_s, prepared.build.cached, str(o.run_dir))
        steps[k] = s
        log.info("walk: %d patches: %s%s", k, s.outcome if s.good else f"{s.outcome} ({s.stage})",
                 "" if s.good else f": {s.reason}")
        return s

    base = step(0)
    base_ok = base.exit_code in (EXIT_OK, EXIT_SKIPPED)   # a base whose tests all SKIP is walked from, as ever
    bad, around = (None, []) if not base_ok else first_bad(len(patches), lambda k: step(k).outcome)
    untestable = sorted(k for k, s in steps.items() if k and s.outcome == UNTESTABLE)
    doc = {"command": ["kvm-harness", "walk", *options.run_argv(req)], "patches": [p.name for p in patches],
           "steps": [{**vars(s), "outcome": s.outcome} for s in sorted(steps.values(), key=lambda s: s.k)],
           "first_bad": bad, "first_bad_patch": patches[bad - 1].name if bad else None,
           "untestable": untestable, "could_also_be": around}
    (out / "walk.json").write_text(json.dumps(doc, indent=1) + "\n")
    shown = {GOOD: "good", BAD: "BAD ", UNTESTABLE: "skip"}
    for s in sorted(steps.values(), key=lambda s: s.k):
        cached = " (cached)" if s.build_cached else ""
        print(f"  {s.k:3d} {shown[s.outcome]:4} build {s.build_s:6.1f}s{cached}"
              f"  {s.patch or '(base)'}{'' if s.good else f'  [{s.stage}] {s.reason}'}")
    if untestable:
        print(f"kvm-harness walk: untestable, skipped (their runs only ERROR or SKIP): steps "
              f"{', '.join(map(str, untestable))}")
    builds = [s.build_s for s in steps.values() if s.k]
    base_note = "the base came from the cache" if base.build_cached else f"the base's: {base.build_s:.0f} s"
    print(f"kvm-harness walk: {len(steps)} of {len(patches) + 1} prefixes run; build time of the patched steps "
          f"{sum(builds):.0f} s in all ({base_note}); {out / 'walk.json'}")
    if not base_ok:
        print(f"kvm-harness walk: the base itself goes wrong ({base.stage}: {base.reason}): no patch to blame")
        return base.exit_code
    if bad is None:
        tail = f" (steps {', '.join(map(str, around))} untestable)" if around else ""
        print(f"kvm-harness walk: none of the {len(patches)} patches goes wrong where it can be tested{tail}")
        return EXIT_OK
    s = steps[bad]
    print(f"kvm-harness walk: the first bad patch is {bad} of {len(patches)}, {s.patch}: {s.stage}: {s.reason}")
    if around:
        print(f"kvm-harness walk: it could also be {', '.join(map(str, around))}, untestable steps before it")
    return EXIT_TEST_FAILED
