"""The command line's option groups, declared once, and the two mappings between argv and a RunRequest.

Every subcommand that takes kernel, guest, workload or output options takes them from here
(cli.py adds the groups each one uses), so that one option means one thing everywhere. `request_from`
turns parsed options into the RunRequest a runner receives; `run_argv` is the way back, the `boot-test`
argv that makes the same request: the reproducer a run directory records (report/run_dir.py), also for
each step of a walk and each boot of an A/B run, generated from the request rather than copied from
whatever the user typed (tuxmake's reproducer, kunit_tool's typed requests).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import inputs
from .configreq import BASES, ConfigRequest
from .errors import UsageError
from .guestcheck import livelock
from .modes import MODES
from .request import RunRequest
from .series import DEFAULT_LIST, load_default_list
from .workloads import WorkloadPlan, parse_workload_cmd

# Option groups, by the name cli.py and the tests use for them
KERNEL, GUEST, MODES_GROUP, WORKLOADS, OUTPUT = "kernel", "guest", "modes", "workloads", "output"


def _vms(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or auto: {text!r}") from None


def add_kernel_options(p: argparse.ArgumentParser, *, series_help: str | None = None, no_series: bool = True) -> None:
    """--tree, --ref, --tarball, --series, --no-series (unless `no_series` is False), --config, --config-base."""
    d = RunRequest()
    g = p.add_argument_group("kernel")
    g.add_argument("--tree", type=Path, help="build from this kernel git tree (its HEAD; never modified)")
    g.add_argument("--ref", default=d.tree_ref, help="with --tree: build this branch, tag or commit instead of HEAD")
    g.add_argument("--tarball", type=Path, default=d.tarball,
                   help="kernel source tarball (default: Debian's linux-source-6.12)")
    g.add_argument("--series", type=Path, action="append", default=None, metavar="DIR|MBOX",
                   help=series_help or "a patch series: a directory (a quilt `series` file, or format-patch files /"
                   " mails in name order) or one mail file (mbox, b4 .mbx, .eml); repeatable, applied in order;"
                   " default: the list in kernel-patches/default")
    if no_series:
        g.add_argument("--no-series", action="store_true", help="build the plain kernel (no series)")
    g.add_argument("--config", type=Path, action="append", default=[], metavar="FRAGMENT",
                   help="extra Kconfig fragment (repeatable)")
    g.add_argument("--config-base", choices=sorted(BASES), default=d.config.base,
                   help="trim: tinyconfig + the harness's trimmed base (fast); defconfig: the full default")


def add_guest_options(p: argparse.ArgumentParser) -> None:
    """--accel, --smp, --memory, --append, --boot-deadline: one guest, whatever runs in it."""
    d = RunRequest()
    g = p.add_argument_group("guest")
    g.add_argument("--accel", choices=("auto", "kvm", "tcg"), default=d.accel)
    g.add_argument("--smp", type=int, default=d.smp)
    g.add_argument("--memory", default=d.memory, help="guest memory (the trace ring buffer lives there too)")
    g.add_argument("--append", action="append", default=[], help="extra guest kernel command-line word")
    g.add_argument("--boot-deadline", type=float, default=d.boot_deadline_s,
                   help="seconds from QEMU start to SSH ready")


def add_modes_options(p: argparse.ArgumentParser) -> None:
    """--modes and --vms: a matrix of guests."""
    d = RunRequest()
    g = p.add_argument_group("matrix")
    g.add_argument("--modes", default=",".join(d.modes), help=f"comma-separated MMU modes (of {', '.join(MODES)})")
    g.add_argument("--vms", type=_vms, default=d.vms, metavar="N|auto",
                   help="VMs running tests at once (default auto: one per host CPU, as memory allows)")


def add_workload_options(p: argparse.ArgumentParser) -> None:
    """What runs in each guest and how it is judged."""
    d, plan = RunRequest(), WorkloadPlan()
    g = p.add_argument_group("workloads")
    g.add_argument("--only", action="append", default=[], help="run only tests whose path contains this")
    g.add_argument("--iterations", type=int, default=plan.iterations, help="dirty_log_test -i")
    g.add_argument("--perf-bytes", default=plan.perf_bytes,
                   help="dirty_log_perf_test -b (guest memory each vCPU dirties)")
    g.add_argument("--timeout", type=float, default=plan.timeout_s, help="per-test timeout in seconds")
    g.add_argument("--retries", type=int, default=d.retries, choices=(0, 1),
                   help="run a selftest that failed with a known infrastructure signature once more before "
                        "calling it a FAIL (0: never); any other failure is a FAIL the first time")
    g.add_argument("--livelock-window", type=float, default=d.livelock.window_s, metavar="SECONDS",
                   help="stop a test whose vCPUs take page faults for this long with no progress (no spte "
                        "fixed, no exit to userspace) and call it a livelock; 0: off")
    g.add_argument("--consistency", choices=("auto", "off"), default=d.consistency,
                   help="auto: capture dumps + trace and check the bitmap wherever the guest kernel is instrumented")
    g.add_argument("--workload-cmd", action="append", default=[], metavar="NAME=CMD",
                   help="testing hook: also run this guest shell command as test kvm.<mode>.cmd.NAME "
                        "(with --timeout; used to simulate a hang or a killed VM)")


def add_output_options(p: argparse.ArgumentParser, *, results: bool = True) -> None:
    """-v, and --results where the subcommand writes a run directory."""
    p.add_argument("-v", "--verbose", action="store_true", help="log every command line")
    if results:
        p.add_argument("--results", type=Path, default=RunRequest().results_root, metavar="DIR",
                       help="results root (default ./results)")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Every group a run takes (boot-test, walk): kernel, guest, matrix, workloads, output."""
    for add in (add_kernel_options, add_guest_options, add_modes_options, add_workload_options, add_output_options):
        add(p)


def fill_defaults(p: argparse.ArgumentParser) -> None:
    """Give `p` the default of every run option it does not take, so that request_from reads one shape
    (a subcommand takes only the options it uses; the rest of its request is RunRequest's defaults)."""
    full = argparse.ArgumentParser(add_help=False)
    add_run_options(full)
    mine = {a.dest for a in p._actions}  # noqa: SLF001 - argparse offers no public list of a parser's options
    p.set_defaults(**{a.dest: a.default for a in full._actions  # noqa: SLF001
                      if a.dest not in mine and a.dest != "help"})


def request_from(args: argparse.Namespace) -> RunRequest:
    """The RunRequest of parsed options (a parser with fill_defaults). Raises UsageError for options that
    contradict each other or do not parse."""
    if args.no_series and args.series is not None:
        raise UsageError("--no-series and --series contradict each other: --series alone replaces the default "
                         "list (kernel-patches/default)")
    if args.no_series:
        dirs: list[Path] = []
    elif args.series is not None:
        dirs = [s.resolve() for s in args.series]
    elif DEFAULT_LIST.exists():
        dirs = load_default_list()
    else:   # never silently the plain kernel: the default series comes with the checkout, not the package
        raise UsageError(f"no default series: {DEFAULT_LIST} is missing (kvm-harness runs from its git checkout,"
                         " installed with pip install -e); give --series or --no-series")
    req = RunRequest(
        tarball=args.tarball, tree=args.tree, tree_ref=args.ref, series_dirs=dirs,
        config=ConfigRequest(args.config_base, list(args.config)),
        modes=[m.strip() for m in args.modes.split(",") if m.strip()], accel=args.accel,
        results_root=args.results, boot_deadline_s=args.boot_deadline, smp=args.smp, memory=args.memory,
        extra_append=list(args.append), consistency=args.consistency, retries=args.retries, vms=args.vms,
        livelock=livelock.Policy(window_s=args.livelock_window),
        plan=WorkloadPlan(iterations=args.iterations, perf_bytes=args.perf_bytes, timeout_s=args.timeout,
                          only=tuple(args.only), commands=tuple(parse_workload_cmd(w) for w in args.workload_cmd)))
    inputs.validate_modes(req.modes)   # the numbers and names now, before a run directory or a build
    inputs.validate_options(req)
    return req


def run_argv(req: RunRequest) -> list[str]:
    """The `boot-test` options that make `req` (request_from of them gives `req` back): each option whose
    value differs from the default, paths absolute, so that the command runs from any directory."""
    d, plan = RunRequest(), WorkloadPlan()
    out: list[str] = []
    if req.tree is not None:
        out += ["--tree", str(req.tree.resolve())]
        if req.tree_ref != d.tree_ref:
            out += ["--ref", req.tree_ref]
    elif req.tarball != d.tarball:
        out += ["--tarball", str(req.tarball.resolve())]
    default_dirs = load_default_list() if DEFAULT_LIST.exists() else []
    if not req.series_dirs:
        out += ["--no-series"]
    elif [s.resolve() for s in req.series_dirs] != default_dirs:
        for s in req.series_dirs:
            out += ["--series", str(s.resolve())]
    if req.config.base != d.config.base:
        out += ["--config-base", req.config.base]
    for f in req.config.user_fragments:
        out += ["--config", str(f.resolve())]
    if req.modes != d.modes:
        out += ["--modes", ",".join(req.modes)]
    if req.accel != d.accel:
        out += ["--accel", req.accel]
    if req.smp != d.smp:
        out += ["--smp", str(req.smp)]
    if req.memory != d.memory:
        out += ["--memory", req.memory]
    if req.vms != d.vms:
        out += ["--vms", str(req.vms)]
    for a in req.extra_append:
        out += ["--append", a]
    if req.boot_deadline_s != d.boot_deadline_s:
        out += ["--boot-deadline", f"{req.boot_deadline_s:g}"]
    p = req.plan
    for o in p.only:
        out += ["--only", o]
    for flag, value, default in (("--iterations", p.iterations, plan.iterations),
                                 ("--perf-bytes", p.perf_bytes, plan.perf_bytes),
                                 ("--timeout", p.timeout_s, plan.timeout_s), ("--retries", req.retries, d.retries),
                                 ("--livelock-window", req.livelock.window_s, d.livelock.window_s),
                                 ("--consistency", req.consistency, d.consistency)):
        if value != default:
            out += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    for name, cmd in p.commands:
        out += ["--workload-cmd", f"{name}={cmd}"]
    if req.results_root != d.results_root:
        out += ["--results", str(req.results_root.resolve())]
    return out
