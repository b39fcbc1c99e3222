"""`kvm-harness ab`: base against patched, measured the same way, side by side.

Both kernels are built with the same source and config (pipeline.prepare_build, each cached under its
own key), then booted in turn, base and patched interleaved as ABBA... so that drift of the machine
falls on both alike: each boot is a boot-test run of its own (pipeline.boot_test, one VM at a time)
that runs dirty_log_perf_test -g once per (mode, size, vCPUs) point and keeps everything a boot-test
keeps. The figures are then compared (compare.py) and reported (report.py).

Layout: <results>/<stamp>-ab/{metadata.json, base/ and patched/ (build.log, .config), runs/<one run
directory per boot>, ab.md, ab.json, <phase>.png}.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import options, pipeline
from ..errors import EXIT_TEST_FAILED
from ..inputs import validate_prepare
from ..lanes import Cell
from ..perf import phases
from ..report import run_dir
from ..request import RunRequest
from ..results import PASS
from ..workloads import Workload
from . import compare, report

log = logging.getLogger("kvm-harness")


@dataclass
class ABRequest:
    """What `ab` compares: `base` and `patched` are whole requests (the same source, config and guest; they
    differ in series_dirs), run in `modes` at every size (bytes per vCPU) and vCPU count, `runs` times."""

    base: RunRequest
    patched: RunRequest
    labels: dict[str, str]
    modes: list[str]
    sizes: list[int]
    vcpus: list[int] = field(default_factory=lambda: [1])
    runs: int = 4
    iterations: int = 3
    max_ratio: dict[str, float] = field(default_factory=dict)
    results_root: Path = Path("results")
    argv: list[str] = field(default_factory=list)   # the `ab` options that make this request (ab/cli.py)


def workloads(req: ABRequest) -> dict[Workload, tuple[int, int]]:
    """dirty_log_perf_test -g at every point, smallest first, each with its (size, vcpus). -g: no manual
    protect, so enabling dirty logging write-protects everything at once, the path the series changes."""
    timeout = req.base.plan.timeout_s
    return {Workload("dirty_log_perf_test", f"{compare.size_label(size)}-{v}vcpu",
                     ("-v", str(v), "-b", compare.size_label(size), "-i", str(req.iterations), "-g"), timeout):
            (size, v) for v in req.vcpus for size in req.sizes}


def _host_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def boot_argv(req: RunRequest, ws: dict[Workload, tuple[int, int]], modes: list[str]) -> list[str]:
    """The boot-test argv that repeats one A/B boot of `req`: the same kernel and guest, its points as
    --workload-cmd (the same dirty_log_perf_test command lines, as tests kvm.<mode>.cmd.<point>), nothing
    else run."""
    points = tuple((w.variant.replace(".", "_"), w.command()) for w in ws)
    rq = replace(req, modes=modes, plan=replace(req.plan, only=(".cmd.",), commands=points))
    return ["boot-test", *options.run_argv(rq)]


def run(req: ABRequest) -> int:
    """Build both, run every boot, write the report; the exit code (errors.py): 1 when --max-ratio trips
    or a run failed, a run's harness error code when one could not run, 0 otherwise. Raises the build
    stages' HarnessErrors (nothing has booted then)."""
    for kernel_req in (req.base, req.patched):   # bad input is a usage error before the run directory exists
        validate_prepare(kernel_req)
    out = run_dir.create(req.results_root, "ab")   # exclusive: two A/B runs in one second do not collide
    meta: dict[str, object] = {"command": ["kvm-harness", "ab", *req.argv], "started": time.time(),
                               "modes": req.modes, "sizes": [compare.size_label(s) for s in req.sizes],
                               "vcpus": req.vcpus, "runs": req.runs, "iterations": req.iterations,
                               "max_ratio": req.max_ratio, "host_cpu": _host_cpu(), "instrumentation": False}
    (out / "metadata.json").write_text(json.dumps(meta, indent=1) + "\n")
    log.info("A/B directory %s", out)
    reqs = {"base": req.base, "patched": req.patched}
    prepared = {k: pipeline.prepare_build(r, out / k) for k, r in reqs.items()}
    p0 = prepared["patched"]
    meta.update(accelerator=f"{p0.accel.name} -cpu {p0.accel.cpu}", qemu_version=p0.qemu_version)
    for k, p in prepared.items():
        meta[k] = {"label": req.labels[k], "kernel_release": p.build.meta.get("kernel_release"),
                   "build": p.build.key, "series": p.build.meta.get("series")}
    (out / "metadata.json").write_text(json.dumps(meta, indent=1) + "\n")

    ws = workloads(req)
    by_path = {w.path(m): (m, *point) for m in req.modes for w, point in ws.items()}
    samples: list[compare.Sample] = []
    failures: list[str] = []
    codes: list[int] = []
    for r in range(req.runs):
        order = compare.KERNELS if r % 2 == 0 else compare.KERNELS[::-1]
        for kernel in order:
            log.info("A/B run %d of %d: %s", r + 1, req.runs, kernel)
            rq = replace(reqs[kernel], results_root=out / "runs")
            outcome = pipeline.boot_test(rq, boot_argv(reqs[kernel], ws, req.modes), prepared=prepared[kernel],
                                         cells=[Cell(m, w) for m in req.modes for w in ws],
                                         label=f"ab-{kernel}-{r + 1}")
            codes.append(outcome.exit_code)
            if outcome.error:
                failures.append(f"{kernel} run {r + 1}: {outcome.error['kind']} error: {outcome.error['message']}")
            for res in outcome.results:
                if res.path not in by_path:
                    continue
                mode, size, vcpus = by_path[res.path]
                figs = phases(res.output) if res.status == PASS else {}
                if figs:
                    samples.append(compare.Sample(kernel, mode, size, vcpus, r + 1, figs,
                                                  str(outcome.run_dir)))
                else:
                    failures.append(f"{kernel} run {r + 1} {res.path}: {res.status} {res.reason}".strip())

    pts = compare.points(samples)
    md = report.write(out, meta, samples, pts, compare.scaling(samples), failures)
    print(md)
    tripped = compare.over_limit(pts, req.max_ratio)
    for t in tripped:
        print(f"kvm-harness ab: over --max-ratio: {t}")
    print(f"kvm-harness ab: {len(samples)} samples, {len(failures)} without figures; report: {out / 'ab.md'}")
    if tripped:
        return EXIT_TEST_FAILED
    return next((c for c in codes if c != 0), 0)
