"""`kvm-harness ab` options and the request they make (make ab)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from .. import inputs, options, schedule
from ..configreq import ConfigRequest
from ..errors import UsageError
from ..modes import MODES
from ..request import RunRequest
from ..series import DEFAULT_LIST
from ..workloads import WorkloadPlan
from . import compare
from .run import ABRequest

# The series' kernel patches alone: no selftest (dirty_log_perf_test is upstream's), no instrumentation.
DEFAULT_PATCHED = DEFAULT_LIST.parent / "fast-write-protect-6.12"
DEFAULT_MODES = "shadow,tdp_legacy"   # the modes that reach the patched code
DEFAULT_SIZES = "128M,256M,512M,1G"   # TCG populates ~30 MiB/s in L2: a 1G point is ~90 s a run
DEFAULT_RUNS = 4                       # even, for ABBA; stats.py says what 3, 4 and 5 a side cost in false alarms
DEFAULT_ITERATIONS = 3
DEFAULT_TIMEOUT_S = 900.0


def add_options(p: argparse.ArgumentParser) -> None:
    """The kernel, guest and output groups of harness/options.py (--series naming the patched kernel's),
    --base-series, and the measurement's own options."""
    options.add_kernel_options(p, no_series=False, series_help=(
        f"series applied to the patched kernel (repeatable; default: kernel-patches/{DEFAULT_PATCHED.name});"
        " give the base's too if it builds on them"))
    g = p.add_argument_group("base")
    g.add_argument("--base-series", type=Path, action="append", default=[], metavar="DIR|MBOX",
                   help="series applied to the base kernel (repeatable; default: none, the plain tree)")
    options.add_guest_options(p)
    g = p.add_argument_group("measurement")
    g.add_argument("--modes", default=DEFAULT_MODES, help=f"comma-separated MMU modes (of {', '.join(MODES)})")
    g.add_argument("--sizes", default=DEFAULT_SIZES, help="guest memory per vCPU, comma-separated (M or G)")
    g.add_argument("--vcpus", default="1", help="vCPU counts, comma-separated")
    g.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                   help="boots per kernel, at least 3 (each runs every point once)")
    g.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS, help="dirty_log_perf_test -i (at least 2)")
    g.add_argument("--max-ratio", action="append", default=[], metavar="PHASE=R",
                   help="exit 1 when a phase's patched/base ratio is significantly above R (a CI gate)")
    g.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help="per-run timeout of dirty_log_perf_test, seconds")
    options.add_output_options(p)


def _ints(text: str, what: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise UsageError(f"--{what} wants positive whole numbers, comma-separated: {text!r}")
    return out


def request_from(args: argparse.Namespace) -> ABRequest:
    """The ABRequest, every input checked (UsageError naming the option otherwise)."""
    if args.runs < 3:
        raise UsageError(f"--runs must be at least 3 (with two samples a side a third of the ratios that do not "
                         f"differ would be called significant: harness/ab/stats.py): {args.runs}")
    if args.iterations < 2:
        raise UsageError(f"--iterations must be at least 2 (the first dirty iteration is a phase of its own): "
                         f"{args.iterations}")
    patched = [s.resolve() for s in args.series] if args.series is not None else [DEFAULT_PATCHED]
    base_series = [s.resolve() for s in args.base_series]
    if base_series == patched:
        raise UsageError("--base-series and --series are the same: there is nothing to compare")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    base = RunRequest(tarball=args.tarball, tree=args.tree, tree_ref=args.ref, series_dirs=base_series,
                      config=ConfigRequest(args.config_base, list(args.config)), modes=modes, accel=args.accel,
                      results_root=args.results, boot_deadline_s=args.boot_deadline, smp=args.smp,
                      memory=args.memory, extra_append=list(args.append), consistency="off", vms=1,
                      plan=WorkloadPlan(timeout_s=args.timeout))
    inputs.validate_options(base)   # --smp, --memory, --boot-deadline, --timeout: one line, exit 2, now
    inputs.in_range("--runs", args.runs, (3, 100))
    inputs.in_range("--iterations", args.iterations, (2, 100))
    vcpus = _ints(args.vcpus, "vcpus")
    for v in vcpus:
        inputs.in_range("--vcpus", v, (1, 64))
    sizes = [compare.parse_size(s) for s in args.sizes.split(",") if s.strip()]
    memory = schedule.memory_bytes(args.memory)
    if sizes and max(sizes) * max(vcpus) > memory // 2:
        raise UsageError(f"--sizes x --vcpus ({compare.size_label(max(sizes))} x {max(vcpus)}) must fit in half of"
                         f" --memory {args.memory}, the rest being the guest's own")

    def label(dirs: list[Path]) -> str:
        return " + ".join(d.name for d in dirs) or ("plain " + (args.tree.name if args.tree else args.tarball.name))
    return ABRequest(base=base, patched=replace(base, series_dirs=patched),
                     labels={"base": label(base_series), "patched": label(patched)}, modes=modes,
                     sizes=sizes, vcpus=vcpus, runs=args.runs, iterations=args.iterations,
                     max_ratio=compare.parse_max_ratio(args.max_ratio), results_root=args.results,
                     argv=ab_argv(args, patched, base_series))


def ab_argv(args: argparse.Namespace, patched: list[Path], base_series: list[Path]) -> list[str]:
    """The `ab` options that repeat this comparison: the kernels' and guest's from the base's request
    (options.run_argv), the base's series, then each measurement option that is not its default."""
    out = [a for a in _kernel_and_guest(args) if a != "--no-series"]
    for s in base_series:
        out += ["--base-series", str(s)]
    if patched != [DEFAULT_PATCHED]:
        for s in patched:
            out += ["--series", str(s)]
    for flag, value, default in (("--modes", args.modes, DEFAULT_MODES), ("--sizes", args.sizes, DEFAULT_SIZES),
                                 ("--vcpus", args.vcpus, "1"), ("--runs", args.runs, DEFAULT_RUNS),
                                 ("--iterations", args.iterations, DEFAULT_ITERATIONS),
                                 ("--timeout", args.timeout, DEFAULT_TIMEOUT_S)):
        if value != default:
            out += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    for m in args.max_ratio:
        out += ["--max-ratio", m]
    return out


def _kernel_and_guest(args: argparse.Namespace) -> list[str]:
    """options.run_argv of a request holding only the kernel, guest and output options (no series)."""
    req = RunRequest(tarball=args.tarball, tree=args.tree, tree_ref=args.ref, series_dirs=[],
                     config=ConfigRequest(args.config_base, list(args.config)), accel=args.accel,
                     results_root=args.results, boot_deadline_s=args.boot_deadline, smp=args.smp,
                     memory=args.memory, extra_append=list(args.append))
    return options.run_argv(req)
