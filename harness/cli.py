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

from . import cache, cache_entries, check, options, pipeline, proc, shell, walk
from .ab import cli as ab_cli
from .ab import run as ab_run
from .errors import EXIT_INFRA, EXIT_USAGE, HarnessError, Interrupted
from .modes import MODES
from .nightly import plan as nightly_plan
from .nightly import run as nightly_run
from .workloads import WorkloadPlan

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


SUBCOMMANDS = ("boot-test", "shell", "walk", "ab", "nightly", "check", "cache")


def _boot_test(args: argparse.Namespace) -> int:
    req = options.request_from(args)
    return pipeline.run_boot_test(req, ["boot-test", *options.run_argv(req)])


def _shell(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    return shell.run(options.request_from(args), args.mode, args.keep, cmd)


def _walk(args: argparse.Namespace) -> int:
    return walk.run(options.request_from(args))


def _ab(args: argparse.Namespace) -> int:
    return ab_run.run(ab_cli.request_from(args))


def _nightly(args: argparse.Namespace) -> int:
    return nightly_run.run(nightly_plan.load(args.plan), args.results)


def _check(args: argparse.Namespace) -> int:
    return check.run(args.run_dir)


def _cache(args: argparse.Namespace) -> int:
    return cache_command(args.action, args.max_age, args.max_size)


def parser() -> argparse.ArgumentParser:
    """The whole command line: each subcommand takes the option groups of harness/options.py it uses, and
    its runner (set_defaults(run=...)) receives what they parse to."""
    top = argparse.ArgumentParser(prog="kvm-harness", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bt = sub.add_parser("boot-test", help="build, boot, run the dirty-log selftests in every MMU mode, report")
    options.add_run_options(bt)
    bt.set_defaults(run=_boot_test)
    sh = sub.add_parser("shell", help="boot the same kernel and image in one MMU mode and open an SSH shell (or run "
                                      "a command)")
    options.add_kernel_options(sh)
    options.add_guest_options(sh)
    g = sh.add_argument_group("shell")
    g.add_argument("--mode", default="tdp_mmu", choices=sorted(MODES))
    g.add_argument("--timeout", type=float, default=WorkloadPlan().timeout_s,
                   help="with a command: stop it after this many seconds")
    g.add_argument("--keep", action="store_true", help="leave the VM running and print how to reach it")
    options.add_output_options(sh)
    sh.add_argument("cmd", nargs=argparse.REMAINDER,
                    help="command to run instead of an interactive shell (after --). kvm-harness exits 0 when it "
                         "exits 0, else 1 and says its status on stderr: the command's own status is never "
                         "returned, so it cannot be taken for the harness's codes 2-8 and 130")
    sh.set_defaults(run=_shell)
    wk = sub.add_parser("walk", help="build and test each prefix of a series: the first patch that goes wrong")
    options.add_run_options(wk)
    wk.set_defaults(run=_walk)
    ab = sub.add_parser("ab", help="base against patched: dirty_log_perf_test on both, interleaved; ratios, "
                                   "intervals, plots")
    ab_cli.add_options(ab)
    ab.set_defaults(run=_ab)
    ni = sub.add_parser("nightly", help="every combination of a plan (trees x series x configs), compared with "
                                        "the previous night")
    ni.add_argument("--plan", type=Path, required=True, help="the plan (TOML: harness/nightly/plan.py)")
    options.add_output_options(ni)
    ni.set_defaults(run=_nightly)
    ck = sub.add_parser("check", help="judge a run's kept captures again and rewrite its reports (no kernel, no VM)")
    ck.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory (results/latest, ...)")
    options.add_output_options(ck, results=False)
    ck.set_defaults(run=_check)
    ca = sub.add_parser("cache", help="list the cache's entries, or prune them by age and size")
    ca.add_argument("action", choices=("list", "prune"))
    ca.add_argument("--max-age", type=float, metavar="DAYS", help="prune: entries unused for longer")
    ca.add_argument("--max-size", metavar="SIZE", help="prune: least recently used first until the cache fits (40G)")
    options.add_output_options(ca, results=False)
    ca.set_defaults(run=_cache)
    for p in (bt, sh, wk):
        options.fill_defaults(p)
    return top


def synopsis() -> str:
    """Two lines per subcommand, from the parser: the README's CLI synopsis (tests/test_cli.py holds them
    equal). A group of more than two options is shown by its name, as `--help` lists them."""
    lines = []
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    helps = {c.dest: c.help for c in sub._choices_actions}  # noqa: SLF001
    for name, p in sub.choices.items():
        groups = p._action_groups  # noqa: SLF001 - argparse offers no public list of a parser's groups
        custom = [g for g in groups if g.title not in ("options", "optional arguments", "positional arguments")]
        plain = [g for g in groups if g not in custom]
        words = [f"kvm-harness {name}"]
        for g in [*custom, *plain]:
            acts = [a for a in g._group_actions if a.dest != "help"]  # noqa: SLF001
            if g in custom and len(acts) > 2:
                words.append(f"[{g.title} options]")
                continue
            for a in acts:
                words.append(_synopsis_word(a))
        lines.append(f"{' '.join(words)}\n    {helps[name]}")
    return "\n".join(lines)


def _synopsis_word(a: argparse.Action) -> str:
    if not a.option_strings:
        if a.nargs == argparse.REMAINDER:
            return "[-- COMMAND...]"
        return "|".join(a.choices) if a.choices else str(a.metavar or a.dest)
    flag = a.option_strings[0]
    if a.nargs == 0:
        return f"[{flag}]"
    value = f"{flag} {a.metavar or a.dest.upper()}"
    return value if a.required else f"[{value}]"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser().parse_args(argv)
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
        return int(args.run(args))
    except HarnessError as e:
        print(f"kvm-harness: {e.kind} error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the disk under the harness (full, read-only) outside a run's own handling
        print(f"kvm-harness: infra error: {pipeline.disk_fault(e)}", file=sys.stderr)
        return EXIT_INFRA
    finally:
        proc.kill_all_children()


if __name__ == "__main__":
    sys.exit(main())
