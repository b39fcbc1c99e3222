"""`kvm-harness ab` options and the request they make (make ab)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..errors import UsageError
from ..kconfig import BASES, ConfigRequest
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


def add_options(p: argparse.ArgumentParser) -> None:
    d = RunRequest()
    g = p.add_argument_group("kernels")
    g.add_argument("--tree", type=Path, help="build both from this kernel git tree (its HEAD; never modified)")
    g.add_argument("--ref", default=d.tree_ref, help="with --tree: build this branch, tag or commit instead of HEAD")
    g.add_argument("--tarball", type=Path, default=d.tarball, help="kernel source tarball (default: 6.12's)")
    g.add_argument("--base-series", type=Path, action="append", default=[], metavar="DIR|MBOX",
                   help="series applied to the base kernel (repeatable; default: none, the plain tree)")
    g.add_argument("--series", type=Path, action="append", default=None, metavar="DIR|MBOX",
                   help=f"series applied to the patched kernel (repeatable; default: "
                        f"kernel-patches/{DEFAULT_PATCHED.name}); give the base's too if it builds on them")
    g.add_argument("--config", type=Path, action="append", default=[], metavar="FRAGMENT",
                   help="extra Kconfig fragment for both (repeatable)")
    g.add_argument("--config-base", choices=sorted(BASES), default=d.config.base)
    g = p.add_argument_group("measurement")
    g.add_argument("--modes", default=DEFAULT_MODES, help=f"comma-separated MMU modes (of {', '.join(MODES)})")
    g.add_argument("--sizes", default=DEFAULT_SIZES, help="guest memory per vCPU, comma-separated (M or G)")
    g.add_argument("--vcpus", default="1", help="vCPU counts, comma-separated")
    g.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                   help="boots per kernel, at least 3 (each runs every point once)")
    g.add_argument("--iterations", type=int, default=3, help="dirty_log_perf_test -i (at least 2)")
    g.add_argument("--max-ratio", action="append", default=[], metavar="PHASE=R",
                   help="exit 1 when a phase's patched/base ratio is significantly above R (a CI gate)")
    g.add_argument("--timeout", type=float, default=900.0, help="per-run timeout of dirty_log_perf_test, seconds")
    g = p.add_argument_group("guest")
    g.add_argument("--accel", choices=("auto", "kvm", "tcg"), default=d.accel)
    g.add_argument("--smp", type=int, default=d.smp)
    g.add_argument("--memory", default=d.memory, help="guest memory (must hold vCPUs x size, and more)")
    g.add_argument("--boot-deadline", type=float, default=d.boot_deadline_s)
    p.add_argument("-v", "--verbose", action="store_true", help="log every command line")
    p.add_argument("--results", type=Path, default=d.results_root, help="results root (default ./results)")


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
                      memory=args.memory, consistency="off", vms=1,
                      plan=WorkloadPlan(timeout_s=args.timeout))
    def label(dirs: list[Path]) -> str:
        return " + ".join(d.name for d in dirs) or ("plain " + (args.tree.name if args.tree else args.tarball.name))
    return ABRequest(base=base, patched=replace(base, series_dirs=patched),
                     labels={"base": label(base_series), "patched": label(patched)}, modes=modes,
                     sizes=[compare.parse_size(s) for s in args.sizes.split(",") if s.strip()],
                     vcpus=_ints(args.vcpus, "vcpus"), runs=args.runs, iterations=args.iterations,
                     max_ratio=compare.parse_max_ratio(args.max_ratio), results_root=args.results)
