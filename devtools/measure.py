"""`make measure`: the boot-test figures of docs/figures.md, from real runs.

Runs `kvm-harness boot-test` twice with the same options: first cold (with
--cold: a fresh, empty cache root, so source unpack, kernel, selftests and
image are all built, ccache empty), then warm (nothing changed). Prints wall
time, build time, harness overhead (everything but the workloads' own run
time: the wall time during which no test ran) and QEMU-start-to-SSH-ready per
boot, read from each run's metadata.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _run(args: list[str], env: dict[str, str], results: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "harness", "boot-test", "--results", str(results), *args], env=env,
                       stdin=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    meta: dict[str, Any] = json.loads(((results / "latest").resolve() / "metadata.json").read_text())
    meta["wall_s"] = round(wall, 1)
    meta["rc"] = r.returncode
    return meta


def boots(n: int, mode: str, results: Path) -> int:
    """QEMU start to SSH ready, n boots of the cached kernel (`kvm-harness shell -- true`)."""
    times = []
    for _ in range(n):
        r = subprocess.run([sys.executable, "-m", "harness", "shell", "--mode", mode, "--results", str(results),
                            "--", "true"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        m = re.search(r"ready over SSH in (\d+\.\d+)s", r.stderr)
        if r.returncode != 0 or not m:
            print(f"boot failed (exit {r.returncode}): {r.stderr[-500:]}")
            return 1
        times.append(float(m.group(1)))
    times.sort()
    print(f"QEMU start -> SSH ready, {n} boots ({mode}): min {times[0]:.2f} s, median {times[len(times) // 2]:.2f} s,"
          f" max {times[-1]:.2f} s; machine: {os.cpu_count()} CPUs")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devtools.measure", description=__doc__)
    ap.add_argument("--boots", type=int, default=0, help="only measure QEMU start to SSH ready over N boots")
    ap.add_argument("--mode", default="tdp_mmu", help="MMU mode for --boots")
    ap.add_argument("--cold", action="store_true", help="first run on an empty cache root (a full cold build)")
    ap.add_argument("--results", type=Path, default=Path("results/measure"))
    ap.add_argument("args", nargs=argparse.REMAINDER, help="options passed to boot-test")
    a = ap.parse_args(argv)
    if a.boots:
        return boots(a.boots, a.mode, a.results)
    env = dict(os.environ)
    tmp_cache = None
    if a.cold:
        tmp_cache = tempfile.mkdtemp(prefix="kvm-harness-cold-cache-", dir=str(Path.home()))
        env["KVM_HARNESS_CACHE"] = tmp_cache
    runs = [("cold" if a.cold else "first", _run(a.args, env, a.results)), ("warm", _run(a.args, env, a.results))]
    # workloads: wall time during which at least one test ran (summed over the VMs in brackets);
    # overhead: the rest of the run's wall time. capture/check: summed over the VMs.
    print(f"\n{'run':6} {'exit':>4} {'wall s':>8} {'build s':>8} {'cached':>6} {'vms':>3} {'workloads s':>16} "
          f"{'overhead s':>10} {'capture s':>9} {'check s':>7}  ssh-ready s (per boot)")
    for name, m in runs:
        t = m.get("timings") or {}
        work = f"{t.get('workloads_wall_s', '-')} ({t.get('workloads_s', '-')})"
        print(f"{name:6} {m['rc']:>4} {m['wall_s']:>8} {t.get('build_s', '-'):>8} {str(t.get('build_cached', '-')):>6} "
              f"{t.get('vms', '-'):>3} {work:>16} {t.get('overhead_s', '-'):>10} {t.get('capture_s', '-'):>9} "
              f"{t.get('check_s', '-'):>7}  {t.get('ssh_ready_s')}")
    print(f"machine: {os.cpu_count()} CPUs; accelerator: {(runs[-1][1].get('accelerator') or {}).get('name')}")
    if tmp_cache:
        print(f"(cold cache root kept for inspection: {tmp_cache}; remove it when done)")
    return 0 if all(m["rc"] == 0 for _, m in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
