"""Evidence capture in the guest around one workload: the kvmmmu trace and pw_sptes snapshots.

Before the workload: the instrumentation's trace events on, the ring buffer
cleared and sized so nothing is lost (no overwrite: a full buffer drops new
events and counts them), and a background loop that dumps every live VM's
pw_sptes file at a fixed interval (and a new VM's at once). After it: the loop stopped, tracing off,
the ring buffer's per-CPU counters read, the ring buffer written as trace.dat
(`trace-cmd extract`), and everything streamed back as one uncompressed tar
into the artifacts (the dumps are gzipped one by one in the guest). Losses are reported, never hidden: the
checker turns them into an ERROR.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

from .evidence import Captured, CaptureSettings
from .guest import Guest

TRACING = "/sys/kernel/tracing"
EVENTS = ("kvm_mmu_pw_spte", "kvm_mmu_pw_page")
# Write-protect-all's events (instrumentation 0004, and 0005 for the roots): enabled where the kernel has them.
OPTIONAL_EVENTS = ("kvm_mmu_wp_all", "kvm_mmu_wp_load", "kvm_mmu_wp_root")
CAP = "/tmp/kvm-harness-capture"


def snapshot_loop(s: CaptureSettings, debugfs: str = "/sys/kernel/debug/kvm", cap: str = CAP) -> str:
    """The guest's background loop that dumps every VM's pw_sptes into `cap`/snapshots until `cap`/stop
    exists, then touches `cap`/stopped (POSIX sh: busybox ash in the guest)."""
    return f"""# Snapshot loop: every live VM's dump each interval, and a VM first seen at
# once (checked every 0.2 s): even a VM that dies within the interval leaves
# a dump, whose masks the trace replay needs. A dump whose VM vanished
# mid-read has no 'end' line and is counted (vanished), not kept.
(
  n=0
  mkdir -p {cap}/seen
  dump() {{  # one VM's dump, the VM marked as seen
    touch {cap}/seen/$(basename $(dirname $1))
    n=$((n+1))
    out={cap}/snapshots/$(printf %06d $n)-$(basename $(dirname $1)).txt
    if cat "$1" > $out 2>/dev/null && tail -n 1 $out | grep -q '^end '; then
      gzip -1 $out
    else
      rm -f $out; echo x >> {cap}/vanished
    fi
  }}
  while [ ! -e {cap}/stop ]; do
    for f in {debugfs}/*/pw_sptes; do
      [ -e "$f" ] || continue
      dump "$f"
    done
    # the interval in 0.2 s steps, so a stop request waits at most one step (not a whole interval)
    i=0
    while [ $i -lt {max(1, round(s.snapshot_interval_s / 0.2))} ] && [ ! -e {cap}/stop ]; do
      sleep 0.2; i=$((i+1))
      for f in {debugfs}/*/pw_sptes; do
        [ -e "$f" ] && [ ! -e {cap}/seen/$(basename $(dirname $f)) ] || continue
        dump "$f"
      done
    done
  done
  touch {cap}/stopped
) >/dev/null 2>&1 &
"""


def start_script(s: CaptureSettings) -> str:
    enable = "\n".join([*(f"echo 1 > $T/events/kvmmmu/{e}/enable || exit 3" for e in EVENTS),
                        *(f"[ -d $T/events/kvmmmu/{e} ] && echo 1 > $T/events/kvmmmu/{e}/enable"
                          for e in OPTIONAL_EVENTS)])
    return f"""
T={TRACING}
for e in {' '.join(EVENTS)}; do
  [ -d $T/events/kvmmmu/$e ] || {{ echo "instrumentation missing: no kvmmmu:$e tracepoint"; exit 3; }}
done
rm -rf {CAP}; mkdir -p {CAP}/snapshots
echo 0 > $T/tracing_on
echo 0 > $T/options/overwrite
echo {s.buffer_kb_per_cpu} > $T/buffer_size_kb
echo > $T/trace
{enable}
echo 1 > $T/tracing_on
{snapshot_loop(s)}
echo started
"""


def stop_script() -> str:
    return f"""
T={TRACING}
touch {CAP}/stop
i=0; while [ ! -e {CAP}/stopped ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo 0 > $T/tracing_on
for e in {' '.join(EVENTS + OPTIONAL_EVENTS)}; do
  [ -d $T/events/kvmmmu/$e ] && echo 0 > $T/events/kvmmmu/$e/enable
done
for c in $T/per_cpu/cpu*; do
  echo "$(basename $c) $(grep -E '^entries|overrun|dropped events' $c/stats | tr '\\n' ' ')"
done > {CAP}/ring-stats.txt
# The ring buffer as it is (binary pages + event formats), not as text:
# formatting half a million events in the guest took longer than the workload.
trace-cmd extract -o {CAP}/trace.dat > {CAP}/extract.log 2>&1 ||
  {{ echo "trace-cmd extract failed:"; tail -n 5 {CAP}/extract.log; exit 5; }}
echo > $T/trace
[ -e {CAP}/vanished ] && wc -l < {CAP}/vanished > {CAP}/vanished-count || echo 0 > {CAP}/vanished-count
rm -rf {CAP}/vanished {CAP}/stop {CAP}/stopped {CAP}/seen
echo done
"""


_STAT = re.compile(r"(overrun|dropped events):\s*(\d+)")
_ENTRIES = re.compile(r"(?:^|\s)entries:\s*(\d+)")


def ring_losses(stats_text: str) -> int:
    """Events the ring buffer overwrote or dropped, summed over CPUs (0 is the only good answer)."""
    return sum(int(m.group(2)) for m in _STAT.finditer(stats_text))


def ring_entries(stats_text: str) -> int | None:
    """Events the ring buffer held when tracing stopped, summed over CPUs (None: not recorded).

    trace.dat must give back exactly this many: `trace-cmd report` of a truncated file prints
    nothing and still exits 0, so the count is the proof the file is whole (the checker's own reader,
    tracefile.py, also refuses a file cut short).
    """
    found = [int(m.group(1)) for m in _ENTRIES.finditer(stats_text)]
    return sum(found) if found else None


def start(guest: Guest, settings: CaptureSettings) -> str:
    """Returns "" when capture runs, else why not (e.g. instrumentation missing)."""
    r = guest.run(start_script(settings), 60)
    if r.rc != 0 or "started" not in r.stdout:
        return (r.stdout + r.stderr).strip() or f"capture start failed (exit {r.rc})"
    return ""


def stop_and_fetch(guest: Guest, local_dir: Path) -> Captured:
    cap = Captured(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    r = guest.run(stop_script(), 300)
    if r.rc != 0:
        cap.error = f"capture stop failed: {(r.stdout + r.stderr).strip()[-300:]}"
        return cap
    tarball = local_dir / "capture.tar"
    ok = guest.stream_to(f"tar -C {CAP} -cf - .", tarball, timeout=300)
    if not ok:
        cap.error = "could not fetch the capture from the guest"
        return cap
    with tarfile.open(tarball) as tf:
        tf.extractall(local_dir, filter="data")
    tarball.unlink()
    return load(local_dir)


def dir_name(path: str, attempt: int = 1) -> str:
    """The directory under the run's capture/ that holds test `path`'s capture (its `attempt`th run)."""
    safe = path.replace("/", "_")
    return safe if attempt == 1 else f"{safe}.attempt{attempt}"


def load(local_dir: Path) -> Captured:
    """A capture as stop_and_fetch left it in `local_dir` (snapshots/*.txt.gz, trace.dat, ring-stats.txt,
    vanished-count): what a run keeps, and what `kvm-harness check` judges again."""
    cap = Captured(local_dir)
    cap.snapshots = sorted((local_dir / "snapshots").glob("*.txt.gz"))
    cap.trace = local_dir / "trace.dat"
    stats = (local_dir / "ring-stats.txt").read_text() if (local_dir / "ring-stats.txt").exists() else ""
    cap.ring_lost = ring_losses(stats)
    cap.ring_entries = ring_entries(stats)
    vc = local_dir / "vanished-count"
    cap.vanished = int(vc.read_text().strip() or 0) if vc.exists() else 0
    return cap
