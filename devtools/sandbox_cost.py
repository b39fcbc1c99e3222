"""`make sandbox-cost`: what the build sandbox (harness/sandbox.py) costs a build, measured.

The sandbox adds a fixed cost to each command it wraps (bubblewrap sets up its namespaces and mounts), and
none to the work inside (the same files through bind mounts). So this times a trivial command with and
without it, interleaved, and prints the cost per sandboxed command and for a build's count of them (the
config steps, the kernel's make and the selftests' make). With `--make DIR`, it also times a no-op
`make -C DIR` (a built kernel tree: the warm case, all make's own stat()s) both ways."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from harness import sandbox

COMMANDS_PER_BUILD = 6   # 3 config steps, the kernel's make, the selftests' make, one retry of a selftest


def _time(cmd: list[str], n: int, check: bool = True) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run(cmd, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devtools.sandbox_cost", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="rounds, each both ways (default 5)")
    ap.add_argument("--make", type=Path, help="a workspace's built O= directory (its source in ../src): time a"
                    " no-op make in it both ways")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wrapped = sandbox.command(["true"], [Path(tmp)], [])
        plain, boxed = [], []
        for _ in range(args.runs):
            plain.append(_time(["true"], 40))
            boxed.append(_time(wrapped, 40))
    cost = statistics.median(boxed) - statistics.median(plain)
    print(f"a sandboxed command: {statistics.median(boxed) * 1e3:.1f} ms, plain {statistics.median(plain) * 1e3:.1f}"
          f" ms: {cost * 1e3:.1f} ms each, {COMMANDS_PER_BUILD * cost:.2f} s a build ({COMMANDS_PER_BUILD} commands;"
          f" median of {args.runs} rounds of 40)")
    if args.make is not None:
        obj = args.make.resolve()
        cmd = ["make", "-s", "-C", str(obj), "-q", "prepare"]
        times: dict[str, list[float]] = {"plain": [], "sandboxed": []}
        for _ in range(args.runs):
            # make -q answers 1 when something is out of date: a no-op all the same, timed either way
            times["plain"].append(_time(cmd, 1, check=False))
            # as build.sandboxed binds a workspace: its O= directory and the source beside it
            times["sandboxed"].append(_time(sandbox.command(cmd, [obj, obj.parent / "src"], []), 1, check=False))
        print(f"no-op make in {obj}: " + ", ".join(f"{k} {statistics.median(v):.2f} s" for k, v in times.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
