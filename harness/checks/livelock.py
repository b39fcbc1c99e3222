"""Is a vCPU spinning in the MMU's fault path? A pure judgement over samples of the guest KVM's counters.

A hung selftest whose vCPU is blocked (a deadlock, a lost wakeup) is the hung-task detector's; what
this module sees is the other kind, seen on every machine of this project: a vCPU that keeps taking
page faults and gets nowhere. KVM counts, per VM and summed over all VMs in /sys/kernel/debug/kvm/
(virt/kvm/kvm_main.c, the stat descriptors of arch/x86/kvm/x86.c):

- pf_taken: faults handled by kvm_mmu_page_fault() (an NPF/EPT violation, or a #PF under shadow paging);
- pf_fixed: faults that installed or fixed an spte (the fast path's fixes included, pf_fast counts those
  again); pf_spurious: faults that found the spte already allowing the access; pf_emulate: faults
  resolved by emulating the instruction. A fault that returns RET_PF_RETRY is counted in none of them.
- io_exits, mmio_exits, halt_exits: the vCPU got past an instruction that needs userspace or halts.
  KVM selftests report progress to their host thread through a port I/O ucall on x86, so a selftest
  that progresses makes io_exits grow.

A livelock is a window of `Policy.window_s` seconds in which nothing progressed (no spte was fixed, no
instruction was emulated, no exit needed userspace and no vCPU halted) while the vCPUs kept leaving the guest:
at least `Policy.min_faults` page faults handled (a "fault loop"), or at least `Policy.min_exits` exits of
which too few were page faults (an "exit loop": seen on a real run, a vCPU leaving the guest 13,000 times a
second for 200 s while pf_taken stood still: what brings it back never reaches the MMU's counted fault path,
e.g. an NPF with the reserved bit, or an exception whose delivery KVM requeues again and again). A guest that
only computes leaves it for its timer ticks, ~250 a second at most. A test that is slow but faults in new
memory (pf_fixed grows), or reaches its ucalls, is left alone however long it takes; the per-test timeout
is for those.
The sums cover every vCPU of every VM: one vCPU stuck beside another that progresses is not seen here.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

DEBUGFS = "/sys/kernel/debug/kvm"
COUNTERS = ("pf_taken", "pf_fixed", "pf_spurious", "pf_fast", "pf_emulate", "exits", "io_exits", "mmio_exits",
            "halt_exits", "signal_exits")
# A fault that ended in one of these, or an exit of one of these kinds, is the guest getting somewhere.
PROGRESS = ("pf_fixed", "pf_emulate", "io_exits", "mmio_exits", "halt_exits")

# One line: "t=<guest uptime s> pf_taken=<n> ..."; a counter the kernel lacks reads "-". Builtins only (read,
# printf): a sample forks nothing but the shell, so sampling every 2 s costs the guest next to nothing.
SAMPLE_SCRIPT = (
    f"cd {DEBUGFS} 2>/dev/null || exit 3; read up _ < /proc/uptime; printf 't=%s' $up; "
    f"for c in {' '.join(COUNTERS)}; do v=-; read v 2>/dev/null < $c; printf ' %s=%s' $c \"$v\"; done; echo"
)


@dataclass(frozen=True)
class Sample:
    """The counters at guest uptime `t` (seconds); a counter missing from the kernel is absent."""

    t: float
    counters: dict[str, int]

    def get(self, name: str) -> int:
        return self.counters.get(name, 0)


@dataclass(frozen=True)
class Policy:
    """When a run of faults without progress is a livelock. `window_s` 0 turns the watchdog off."""

    window_s: float = 10.0     # seconds without progress
    min_faults: int = 1000     # page faults in that window (an idle guest takes none)
    min_exits: int = 20000     # or exits (a vCPU that only computes: its timer ticks, ~2,500 in 10 s)
    every_s: float = 2.0       # how often the lanes sample

    @property
    def enabled(self) -> bool:
        return self.window_s > 0


@dataclass(frozen=True)
class Livelock:
    """A window without progress: its start and length (guest uptime seconds) and the counters' growth."""

    start_t: float
    seconds: float
    delta: dict[str, int]
    min_faults: int = Policy.min_faults

    @property
    def kind(self) -> str:
        """"fault loop": faults handled by the MMU and none fixed; "exit loop": exits that are not those."""
        return "fault loop" if self.delta.get("pf_taken", 0) >= self.min_faults else "exit loop"

    def reason(self) -> str:
        d = self.delta
        taken, exits = d.get("pf_taken", 0), d.get("exits", 0)
        tail = f"no I/O, MMIO or halt exit; {d.get('signal_exits', 0):,} exits for signals"
        if self.kind == "exit loop":
            return (f"livelock (exit loop): {exits:,} exits in {self.seconds:.0f} s with no progress and "
                    f"{taken:,} page faults handled by the MMU (pf_fixed 0; {tail})")
        ended = {k: d.get(k, 0) for k in ("pf_spurious", "pf_fixed", "pf_emulate")}
        retried = taken - sum(ended.values())
        return (f"livelock (fault loop): {taken:,} page faults in {self.seconds:.0f} s with no progress "
                f"(pf_spurious {ended['pf_spurious']:,}, retried {retried:,}, pf_fixed 0; {tail}; {exits:,} exits)")

    def to_dict(self) -> dict[str, object]:
        return {"start_t": self.start_t, "seconds": round(self.seconds, 1), "delta": dict(self.delta),
                "kind": self.kind}


def parse_sample(text: str) -> Sample | None:
    """SAMPLE_SCRIPT's line -> Sample; None for anything else (no debugfs, a guest that printed nothing)."""
    line = text.strip().splitlines()[-1] if text.strip() else ""
    fields = dict(f.partition("=")[::2] for f in line.split())
    try:
        t = float(fields.pop("t"))
    except (KeyError, ValueError):
        return None
    return Sample(t, {k: int(v) for k, v in fields.items() if k in COUNTERS and v.isdigit()})


def growth(samples: Sequence[Sample]) -> dict[str, int]:
    """How much each counter grew over `samples`: the sum of each interval's growth, where a drop (a VM
    destroyed, its counts gone from the sums) counts as none. {} with fewer than two samples."""
    out: dict[str, int] = {}
    for prev, cur in zip(samples, samples[1:], strict=False):
        for c in COUNTERS:
            if c in cur.counters:
                out[c] = out.get(c, 0) + max(0, cur.get(c) - prev.get(c))
    return out


def record(samples: Sequence[Sample], policy: Policy, found: Livelock | None, unread: int) -> dict[str, object]:
    """The JSON form of a watched test (counters/<test>.json, forensics' kvm-counters.json): every sample,
    the policy and the verdict. samples_of() reads it back."""
    return {"policy": {"window_s": policy.window_s, "min_faults": policy.min_faults,
                       "min_exits": policy.min_exits, "every_s": policy.every_s},
            "livelock": found.to_dict() if found else None, "unread_samples": unread,
            "samples": [{"t": x.t, **x.counters} for x in samples]}


def samples_of(rec: dict[str, object]) -> list[Sample]:
    """record()'s samples, as Samples."""
    raw = rec["samples"]
    assert isinstance(raw, list)
    return [Sample(x["t"], {k: v for k, v in x.items() if k in COUNTERS}) for x in raw]


def judge(samples: Sequence[Sample], policy: Policy) -> Livelock | None:
    """The livelock that the last samples show, if any.

    The window runs back from the last sample to the earliest one after which no PROGRESS counter grew.
    A counter that went down ends the window too: a VM was destroyed and its counts left the sums, so
    the test moved on."""
    if not policy.enabled or len(samples) < 2:
        return None
    last = samples[-1]
    start = len(samples) - 1
    while start > 0:
        prev, cur = samples[start - 1], samples[start]
        if any(cur.get(c) < prev.get(c) for c in COUNTERS) or any(cur.get(c) > prev.get(c) for c in PROGRESS):
            break
        start -= 1
    first = samples[start]
    if last.t - first.t < policy.window_s:
        return None
    delta = {c: last.get(c) - first.get(c) for c in COUNTERS if c in last.counters}
    if delta.get("pf_taken", 0) < policy.min_faults and delta.get("exits", 0) < policy.min_exits:
        return None
    return Livelock(first.t, last.t - first.t, delta, policy.min_faults)


def longest_quiet(samples: Sequence[Sample]) -> Livelock | None:
    """The longest window without progress in `samples` (ties: the one with more faults), whatever its
    faults: how near a test came to a livelock. None with fewer than two samples."""
    best: Livelock | None = None
    for end in range(2, len(samples) + 1):
        w = judge(samples[:end], Policy(window_s=1e-9, min_faults=0, min_exits=0))
        if w is not None and (best is None or (w.seconds, w.delta.get("pf_taken", 0)) >
                              (best.seconds, best.delta.get("pf_taken", 0))):
            best = w
    return best


# kvm:kvm_page_fault (arch/x86/kvm/trace.h): "vcpu %u rip 0x%lx address 0x%016llx error_code 0x%llx"
_FAULT = re.compile(r"kvm_page_fault: vcpu (\d+) rip (0x[0-9a-f]+) address (0x[0-9a-f]+) error_code (0x[0-9a-f]+)")


@dataclass(frozen=True)
class Repeat:
    """One (vCPU, rip, address, error code) that faulted `count` times of `total` in a trace."""

    vcpu: int
    rip: str
    address: str
    error_code: str
    count: int
    total: int

    def describe(self) -> str:
        return (f"vCPU {self.vcpu} faults at {self.address} (error code {self.error_code}, rip {self.rip}) "
                f"{self.count:,} times of {self.total:,}")


def repeats(trace: str, top: int = 3) -> list[Repeat]:
    """The faults that repeat most in a tracefs text of kvm:kvm_page_fault events, most frequent first."""
    seen: Counter[tuple[int, str, str, str]] = Counter()
    for m in _FAULT.finditer(trace):
        seen[(int(m.group(1)), m.group(2), m.group(3), m.group(4))] += 1
    total = sum(seen.values())
    return [Repeat(v, rip, addr, err, n, total) for (v, rip, addr, err), n in seen.most_common(top)]
