"""The livelock watchdog of a running workload: the I/O around guestcheck/livelock.py.

Guest.run calls a FaultWatch every few seconds while the workload runs. Each call samples the guest
KVM's counters over a second SSH channel of the same connection (one short command, ~0.1 s of the
guest's time under TCG) and asks checks.livelock.judge whether a vCPU spins in the fault path. On a
livelock, `collect` keeps the evidence while the vCPU still spins: every sample (kvm-counters.json) and
one second of the fault path traced into a trace instance of its own (kvm-faults.txt.gz), so the
consistency capture's ring buffer is untouched.
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

from .errors import GuestError, Interrupted
from .guest import Guest
from .guestcheck import livelock

log = logging.getLogger("kvm-harness")

SAMPLE_TIMEOUT_S = 10.0
TRACE_LINES = 20000     # ~1 s of a spinning vCPU's faults and exits under TCG; ~0.2 MB gzipped
# kvm_exit says why the vCPU left the guest (npf, a #PF intercept...); fast_page_fault, spte_requested and
# the TDP MMU's spte changes say what the fault path did about it; handle_mmio_page_fault, kvm_emulate_insn
# and kvm_inj_exception what an RSVD fault became (an MMIO spte, the emulator, an exception for L2).
FAULT_EVENTS = ("kvm/kvm_page_fault", "kvm/kvm_exit", "kvmmmu/fast_page_fault", "kvmmmu/kvm_mmu_spte_requested",
                "kvmmmu/kvm_tdp_mmu_spte_changed", "kvmmmu/kvm_mmu_set_spte", "kvmmmu/handle_mmio_page_fault",
                "kvm/kvm_emulate_insn", "kvm/kvm_inj_exception")
FAULT_TRACE_SCRIPT = f"""
I=/sys/kernel/tracing/instances/kvm-harness-livelock
[ -d /sys/kernel/tracing/instances ] || {{ echo "no tracefs instances" >&2; exit 3; }}
rmdir $I 2>/dev/null; mkdir $I || exit 3
echo 2048 > $I/buffer_size_kb
for e in {' '.join(FAULT_EVENTS)}; do [ -d $I/events/$e ] && echo 1 > $I/events/$e/enable; done
echo 1 > $I/tracing_on; sleep 1; echo 0 > $I/tracing_on
head -n {TRACE_LINES} $I/trace | gzip -1 -c
rmdir $I
"""


class FaultWatch:
    """Called by Guest.run every `policy.every_s` seconds: "" while the workload progresses, the livelock's
    reason once checks.livelock.judge finds one (`found` keeps it)."""

    def __init__(self, guest: Guest, policy: livelock.Policy) -> None:
        self.guest = guest
        self.policy = policy
        self.samples: list[livelock.Sample] = []
        self.found: livelock.Livelock | None = None
        self.unread = 0      # samples the guest did not answer (no debugfs, a slow guest)

    def __call__(self) -> str:
        try:
            r = self.guest.run(livelock.SAMPLE_SCRIPT, SAMPLE_TIMEOUT_S)
        except Interrupted:
            raise
        except GuestError:
            return ""   # the workload's own wait sees the connection go and says so
        sample = livelock.parse_sample(r.stdout) if r.rc == 0 else None
        if sample is None:
            self.unread += 1
            return ""
        self.samples.append(sample)
        self.found = livelock.judge(self.samples, self.policy)
        return self.found.reason() if self.found else ""

    def write(self, path: Path) -> None:
        """Every sample, the policy and the verdict, as JSON (livelock.record; tests/test_livelock.py re-judges
        such files)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        rec = livelock.record(self.samples, self.policy, self.found, self.unread)
        path.write_text(json.dumps(rec, indent=1) + "\n")

    def collect(self, dest: Path) -> list[livelock.Repeat]:
        """The evidence of a livelock into `dest` (the test's forensics directory): kvm-counters.json and
        kvm-faults.txt.gz; returns the faults that repeat most in the trace. Never raises for a dying guest."""
        self.write(dest / "kvm-counters.json")
        trace = dest / "kvm-faults.txt.gz"
        try:
            if not self.guest.stream_to(FAULT_TRACE_SCRIPT, trace, 30):
                log.warning("fault trace for %s: the guest did not give it", dest.name)
            text = gzip.decompress(trace.read_bytes()).decode(errors="replace")
        except Interrupted:
            raise
        except Exception as e:  # evidence must never turn a FAIL into a crash
            log.warning("fault trace for %s failed: %s", dest.name, e)
            return []
        found = livelock.repeats(text)
        if not found:
            return found
        try:
            # an L2 rip that is the L1 kernel's own text says whose state the exit saved (docs/steady.md)
            r = self.guest.run(livelock.nearest_text_script(sorted({x.rip for x in found})), 30)
            (dest / "kvm-faults-rip.txt").write_text(r.stdout)
            return livelock.resolve(found, r.stdout) if r.rc == 0 else found
        except Interrupted:
            raise
        except Exception as e:
            log.warning("L1 symbols of the repeating rips for %s failed: %s", dest.name, e)
            return found
