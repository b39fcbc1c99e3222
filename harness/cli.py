"""kvm-harness command line: boot-test, shell, walk, ab, nightly, check and cache (make boot-test, make shell,
make ab).

Exit codes (harness/errors.py): 0 all passed, 1 a test failed,
2 usage, 3 patch apply, 4 all skipped, 5 config, 6 build, 7 boot,
8 infrastructure, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from . import cache, cache_entries, check, pipeline, proc, shell, walk
from .ab import cli as ab_cli
from .ab import run as ab_run
from .checks import livelock
from .errors import EXIT_INFRA, EXIT_USAGE, HarnessError, Interrupted, UsageError
from .kconfig import BASES, ConfigRequest
from .modes import MODES
from .nightly import plan as nightly_plan
from .nightly import run as nightly_run
from .request import RunRequest
from .series import DEFAULT_LIST, load_default_list
from .workloads import WorkloadPlan, parse_workload_cmd

log = logging.getLogger("kvm-harness")


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    """SIGINT/SIGTERM: stop the run where it is; every stage's cleanup then runs
    (make and gcc get SIGTERM, QEMU SIGKILL, the workspace is reset), bounded in
    time. A second signal during that cleanup is ignored, not allowed to cut it short."""
    name = signal.Signals(signum).name
    if not proc.note_interrupt(name):
        log.warning("%s again: still cleaning up (QEMU and child processes are being stopped)", name)
    elif not proc.interrupts_deferred():
        raise Interrupted(f"interrupted by {name}")
    # else: raised when the critical call (a QMP exchange) returns


def _vms(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or auto: {text!r}") from None


def add_run_options(p: argparse.ArgumentParser) -> None:
    # Every default is the request's own (request.py, workloads.py): set once, read here.
    d, plan = RunRequest(), WorkloadPlan()
    g = p.add_argument_group("kernel")
    g.add_argument("--tree", type=Path, help="build from this kernel git tree (its HEAD; never modified)")
    g.add_argument("--ref", default=d.tree_ref, help="with --tree: build this branch, tag or commit instead of HEAD")
    g.add_argument("--tarball", type=Path, default=d.tarball,
                   help="kernel source tarball (default: Debian's linux-source-6.12)")
    g.add_argument("--series", type=Path, action="append", default=None, metavar="DIR|MBOX",
                   help="a patch series: a directory (a quilt `series` file, or format-patch files / mails in"
                        " name order) or one mail file (mbox, b4 .mbx, .eml); repeatable, applied in order;"
                        " default: the list in kernel-patches/default")
    g.add_argument("--no-series", action="store_true", help="build the plain kernel (no series)")
    g.add_argument("--config", type=Path, action="append", default=[], metavar="FRAGMENT",
                   help="extra Kconfig fragment (repeatable)")
    g.add_argument("--config-base", choices=sorted(BASES), default=d.config.base,
                   help="trim: tinyconfig + the harness's trimmed base (fast); defconfig: the full default")
    g = p.add_argument_group("guest")
    g.add_argument("--modes", default=",".join(d.modes),
                   help=f"comma-separated MMU modes (of {', '.join(MODES)})")
    g.add_argument("--accel", choices=("auto", "kvm", "tcg"), default=d.accel)
    g.add_argument("--smp", type=int, default=d.smp)
    g.add_argument("--memory", default=d.memory, help="guest memory (the trace ring buffer lives there too)")
    g.add_argument("--vms", type=_vms, default=d.vms, metavar="N|auto",
                   help="VMs running tests at once (default auto: one per host CPU, as memory allows)")
    g.add_argument("--append", action="append", default=[], help="extra guest kernel command-line word")
    g.add_argument("--boot-deadline", type=float, default=d.boot_deadline_s,
                   help="seconds from QEMU start to SSH ready")
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
    p.add_argument("-v", "--verbose", action="store_true", help="log every command line")
    p.add_argument("--results", type=Path, default=d.results_root, help="results root (default ./results)")


def request_from(args: argparse.Namespace) -> RunRequest:
    if args.no_series and args.series is not None:
        raise UsageError("--no-series and --series contradict each other: --series alone replaces the default "
                         "list (kernel-patches/default)")
    if args.no_series:
        dirs: list[Path] = []
    elif args.series is not None:
        dirs = [d.resolve() for d in args.series]
    else:
        dirs = load_default_list() if DEFAULT_LIST.exists() else []
    return RunRequest(
        tarball=args.tarball, tree=args.tree, tree_ref=args.ref, series_dirs=dirs,
        config=ConfigRequest(args.config_base, list(args.config)),
        modes=[m.strip() for m in args.modes.split(",") if m.strip()], accel=args.accel,
        results_root=args.results, boot_deadline_s=args.boot_deadline, smp=args.smp, memory=args.memory,
        extra_append=list(args.append), consistency=args.consistency, retries=args.retries, vms=args.vms,
        livelock=livelock.Policy(window_s=args.livelock_window),
        plan=WorkloadPlan(iterations=args.iterations, perf_bytes=args.perf_bytes, timeout_s=args.timeout,
                          only=tuple(args.only), commands=tuple(parse_workload_cmd(w) for w in args.workload_cmd)))


def cache_command(action: str, max_age: float | None, max_size: str | None) -> int:
    """`kvm-harness cache list|prune`: 0, or 2 for a usage error (raised)."""
    root = cache.cache_root()
    if action == "list":
        print(cache_entries.table(cache_entries.entries(root), time.time()))
        return 0
    removed, held = cache_entries.prune(root, max_age, max_size)
    for e in removed:
        print(f"removed {e.kind} {cache_entries.human(e.size)} {e.path}")
    for e in held:
        print(f"kept {e.kind} {e.path}: a running harness holds it")
    print(f"kvm-harness cache: freed {cache_entries.human(sum(e.size for e in removed))}; "
          f"{len(held)} held entr{'y' if len(held) == 1 else 'ies'} kept")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="kvm-harness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    bt = sub.add_parser("boot-test", help="build, boot, run the dirty-log selftests in every MMU mode, report")
    add_run_options(bt)
    sh = sub.add_parser("shell", help="boot the same kernel and image and open an SSH shell (or run a command)")
    add_run_options(sh)
    sh.add_argument("--mode", default="tdp_mmu", choices=sorted(MODES))
    sh.add_argument("--keep", action="store_true", help="leave the VM running and print how to reach it")
    sh.add_argument("cmd", nargs=argparse.REMAINDER,
                    help="command to run instead of an interactive shell; kvm-harness exits 0 when it exits 0, "
                         "else 1 and says its status (2-8 and 130 are the harness's own codes)")
    ab = sub.add_parser("ab", help="base against patched: dirty_log_perf_test on both, interleaved; ratios, "
                                   "intervals, plots")
    ab_cli.add_options(ab)
    ni = sub.add_parser("nightly", help="every combination of a plan (trees x series x configs), compared with "
                                        "the previous night")
    ni.add_argument("--plan", type=Path, required=True, help="the plan (TOML: harness/nightly/plan.py)")
    ni.add_argument("--results", type=Path, default=Path("results"),
                    help="results root: history.sqlite and nights/ (default ./results)")
    ni.add_argument("-v", "--verbose", action="store_true", help="log every command line")
    wk = sub.add_parser("walk", help="build and test each prefix of a series: the first patch that goes wrong")
    add_run_options(wk)
    ck = sub.add_parser("check", help="judge a run's kept captures again and rewrite its reports (no kernel, no VM)")
    ck.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory (results/latest, ...)")
    ck.add_argument("-v", "--verbose", action="store_true", help="log every command line")
    ca = sub.add_parser("cache", help="list the cache's entries, or prune them by age and size")
    ca.add_argument("action", choices=("list", "prune"))
    ca.add_argument("--max-age", type=float, metavar="DAYS", help="prune: entries unused for longer")
    ca.add_argument("--max-size", metavar="SIZE", help="prune: least recently used first until the cache fits (40G)")
    ca.add_argument("-v", "--verbose", action="store_true", help="log every command line")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code not in (0, None) else 0
    # The console gets INFO (DEBUG with -v); the run's harness.log always gets
    # every command line, so any step can be rerun by hand.
    console = logging.StreamHandler()
    console.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    console.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.getLogger().addHandler(console)
    logging.getLogger().setLevel(logging.DEBUG)
    # paramiko logs every refused early connection attempt at ERROR; the
    # harness reports what matters (deadline, panic) itself.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    # qemu.qmp narrates its connection (e.g. "end-of-file" when QEMU exits); the harness reports QEMU's end itself.
    logging.getLogger("qemu.qmp").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        if args.command == "boot-test":
            return pipeline.run_boot_test(request_from(args), argv)
        if args.command == "shell":
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            return shell.run(request_from(args), args.mode, args.keep, cmd)
        if args.command == "walk":
            return walk.run(request_from(args), argv[1:])   # as ab: its options, without the subcommand
        if args.command == "check":
            return check.run(args.run_dir)
        if args.command == "cache":
            return cache_command(args.action, args.max_age, args.max_size)
        if args.command == "nightly":
            return nightly_run.run(nightly_plan.load(args.plan), args.results)
        if args.command == "ab":
            return ab_run.run(ab_cli.request_from(args), argv[1:])
    except HarnessError as e:
        print(f"kvm-harness: {e.kind} error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the disk under the harness (full, read-only) outside a run's own handling
        print(f"kvm-harness: infra error: {pipeline.disk_fault(e)}", file=sys.stderr)
        return EXIT_INFRA
    finally:
        proc.kill_all_children()
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
