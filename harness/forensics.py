"""Forensics: what the guest and QEMU looked like when a test hung or the guest went away.

Collected into the artifacts (forensics/<test>/) before the VM is killed, so
a timeout is never just "it took too long":

- qmp.json        QEMU's view over QMP (query-status, query-cpus-fast), or how QEMU ended
- sysrq-tw.txt    the kernel's task states, from sysrq-t (all tasks) and sysrq-w (blocked tasks)
- dmesg.txt       the kernel log at that moment (since the last test's cut), before the sysrq dumps
- ps.txt          the guest's processes
- pw_sptes.txt.gz the pw_sptes debugfs dump of every VM still alive (/sys/kernel/debug/kvm/*/pw_sptes)
- trace.txt.gz    the trace ring buffer (the kvmmmu events, when the capture had enabled them)
- forensics.json  what was collected, what was not and why

Guest-side items need SSH; when SSH is dead only QMP is asked (a serial
console has no keyboard for sysrq over QMP `send-key`). Every step has its own
time limit, so collecting never hangs the run.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .errors import Interrupted
from .guest import Guest
from .vm import VM

log = logging.getLogger("kvm-harness")

SYSRQ_MARK = "kvm-harness: forensics sysrq"
STEP_TIMEOUT_S = 30.0
TRACE_TIMEOUT_S = 90.0

SYSRQ_SCRIPT = f"""
echo 1 > /proc/sys/kernel/sysrq
echo "{SYSRQ_MARK}" > /dev/kmsg
echo t > /proc/sysrq-trigger
echo w > /proc/sysrq-trigger
sleep 0.5
dmesg | sed -n '/{SYSRQ_MARK}/,$p'
"""
PW_SPTES_SCRIPT = """
n=0
for f in /sys/kernel/debug/kvm/*/pw_sptes; do
  [ -e "$f" ] || continue
  n=$((n+1)); echo "### $f"; cat "$f"
done
[ $n -gt 0 ] || echo "### no VM alive: no /sys/kernel/debug/kvm/*/pw_sptes"
"""
TRACE_SCRIPT = """
T=/sys/kernel/tracing
[ -e $T/trace ] || { echo "no tracefs at $T" >&2; exit 3; }
echo 0 > $T/tracing_on
gzip -1 -c $T/trace
"""


def collect(vm: VM, guest: Guest | None, dest: Path, why: str, trace: bool = True) -> dict[str, object]:
    """Collect everything still reachable into `dest`; return the summary (also in forensics.json).
    `trace` False leaves the trace ring buffer alone (TRACE_SCRIPT stops tracing to read it): the capture
    going on there is judged after the test is ended, its VMs' teardown included."""
    dest.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    collected: list[str] = []
    missing: dict[str, str] = {}
    summary: dict[str, object] = {"why": why, "dir": str(dest), "collected": collected, "missing": missing}

    qmp: dict[str, object] = {"qemu": vm.exit_description()}
    if vm.alive():
        qmp["query-status"] = vm.query("query-status")
        qmp["query-cpus-fast"] = vm.query("query-cpus-fast")
        vm.poll_events()
    qmp["events"] = vm.events
    (dest / "qmp.json").write_text(json.dumps(qmp, indent=1, default=str) + "\n")
    collected.append("qmp.json")

    if guest is None or not guest.alive():
        reason = "SSH to the guest is gone" + ("" if vm.alive() else f" (QEMU {vm.exit_description()})")
        for item in ("sysrq-tw.txt", "dmesg.txt", "ps.txt", "pw_sptes.txt.gz", "trace.txt.gz"):
            missing[item] = reason
    else:
        _text(guest, "dmesg", dest / "dmesg.txt", collected, missing)   # before sysrq floods it
        _text(guest, SYSRQ_SCRIPT, dest / "sysrq-tw.txt", collected, missing)
        _text(guest, "ps", dest / "ps.txt", collected, missing)
        _stream(guest, f"({PW_SPTES_SCRIPT}) | gzip -1 -c", dest / "pw_sptes.txt.gz", STEP_TIMEOUT_S,
                collected, missing)
        if trace:
            _stream(guest, TRACE_SCRIPT, dest / "trace.txt.gz", TRACE_TIMEOUT_S, collected, missing)
        else:
            summary["trace"] = "left running: the test's capture (capture/<test>/trace.dat) holds it, judged"
    summary["seconds"] = round(time.monotonic() - t0, 1)
    (dest / "forensics.json").write_text(json.dumps(summary, indent=1) + "\n")
    log.info("forensics (%s) in %s: %s%s", why, dest, ", ".join(collected),
             f"; not collected: {', '.join(missing)}" if missing else "")
    return summary


def _text(guest: Guest, script: str, local: Path, collected: list[str], missing: dict[str, str]) -> None:
    try:
        r = guest.run(script, STEP_TIMEOUT_S)
    except Interrupted:
        raise
    except Exception as e:  # the guest may die while we look at it
        missing[local.name] = f"{type(e).__name__}: {e}"
        return
    local.write_text(r.stdout + (f"\n--- stderr ---\n{r.stderr}" if r.stderr.strip() else ""))
    if r.timed_out:
        missing[local.name] = f"timed out after {STEP_TIMEOUT_S:.0f} s (partial output kept)"
    else:
        collected.append(local.name)


def _stream(guest: Guest, script: str, local: Path, timeout: float, collected: list[str],
            missing: dict[str, str]) -> None:
    try:
        ok = guest.stream_to(script, local, timeout)
    except Interrupted:
        raise
    except Exception as e:
        ok, err = False, f"{type(e).__name__}: {e}"
    else:
        err = f"failed or timed out after {timeout:.0f} s"
    if ok:
        collected.append(local.name)
    else:
        missing[local.name] = err
