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
from dataclasses import dataclass, replace

DEBUGFS = "/sys/kernel/debug/kvm"
COUNTERS = ("pf_taken", "pf_fixed", "pf_spurious", "pf_fast", "pf_emulate", "exits", "io_exits", "mmio_exits",
            "halt_exits", "signal_exits", "insn_emulation", "insn_emulation_fail")
# A fault that ended in one of these, or an exit of one of these kinds, is the guest getting somewhere.
# insn_emulation is evidence, not progress: an emulator that fails to fetch the same instruction, injecting
# the same #PF over and over, counts it at every exit (docs/steady.md, the cause).
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
        # the counters are read one after another, not at one instant: a few faults may be counted as ended
        # before they are counted as taken
        retried = max(0, taken - sum(ended.values()))
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
# kvm:kvm_exit (arch/x86/kvm/trace.h, 6.x): "vcpu %u reason %s rip 0x%lx info1 0x%016llx info2 0x%016llx
# intr_info 0x%08x error_code 0x%08x"; intr_info is SVM's EXITINTINFO or VMX's IDT-vectoring information.
_EXIT = re.compile(r"kvm_exit: vcpu (\d+) reason \S+ rip (0x[0-9a-f]+) info1 0x[0-9a-f]+ info2 0x[0-9a-f]+ "
                   r"intr_info (0x[0-9a-f]+) error_code (0x[0-9a-f]+)")
_VECTORS = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
            10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC", 19: "#XM"}
_EVENT_TYPES = {0: "interrupt", 2: "NMI", 3: "exception", 4: "software interrupt", 5: "privileged exception",
                6: "software exception"}
KTEXT_MAX_OFFSET = 0x10000   # farther from the nearest text symbol than any function: not that symbol's


def delivering(intr_info: int, error_code: int) -> str:
    """The event the vCPU was delivering when it exited, from kvm_exit's intr_info (bit 31 valid, bits 10:8
    type, bits 7:0 vector, bit 11 error code valid: the same layout in SVM's EXITINTINFO, APM vol. 2
    15.7.2, and VMX's IDT-vectoring information, SDM vol. 3 25.9.3); "" when none was."""
    if not intr_info & (1 << 31):
        return ""
    vector, kind = intr_info & 0xff, (intr_info >> 8) & 7
    name = _VECTORS.get(vector, f"vector {vector}") if kind in (3, 6) else \
        _EVENT_TYPES.get(kind, f"type {kind}") + f" {vector}"
    return name + (f" (error code {error_code:#x})" if intr_info & (1 << 11) else "")


@dataclass(frozen=True)
class Repeat:
    """One (vCPU, rip, address, error code) that faulted `count` times of `total` in a trace; `event` is
    what the vCPU was delivering at its exits (`delivering`), `l1_text` the L1 kernel's text symbol at
    `rip` (`resolve`), each "" when none."""

    vcpu: int
    rip: str
    address: str
    error_code: str
    count: int
    total: int
    event: str = ""
    l1_text: str = ""

    def describe(self) -> str:
        rip = f"rip {self.rip}" + (f", which is L1's own {self.l1_text}" if self.l1_text else "")
        event = f", delivering {self.event}" if self.event else ""
        return (f"vCPU {self.vcpu} faults at {self.address} (error code {self.error_code}, {rip}{event}) "
                f"{self.count:,} times of {self.total:,}")


def repeats(trace: str, top: int = 3) -> list[Repeat]:
    """The faults that repeat most in a tracefs text of kvm:kvm_page_fault events, most frequent first, each
    with the event its vCPU's kvm_exit events at that rip say it was delivering (the most frequent)."""
    seen: Counter[tuple[int, str, str, str]] = Counter()
    for m in _FAULT.finditer(trace):
        seen[(int(m.group(1)), m.group(2), m.group(3), m.group(4))] += 1
    events: dict[tuple[int, str], Counter[str]] = {}
    for m in _EXIT.finditer(trace):
        what = delivering(int(m.group(3), 16), int(m.group(4), 16))
        events.setdefault((int(m.group(1)), m.group(2)), Counter())[what] += 1
    total = sum(seen.values())
    out = []
    for (v, rip, addr, err), n in seen.most_common(top):
        ev = events.get((v, rip))
        out.append(Repeat(v, rip, addr, err, n, total, ev.most_common(1)[0][0] if ev else ""))
    return out


def nearest_text_script(rips: Sequence[str]) -> str:
    """A guest shell (busybox awk) printing, for each rip, `<rip as 16 hex digits> <kallsyms line of the
    nearest text symbol at or below it>`, or the rip alone; `resolve` reads it. /proc/kallsyms addresses
    are 16 lowercase hex digits, so awk's string comparison orders them; zeros (kptr_restrict) are skipped."""
    padded = " ".join(f"{int(r, 16):016x}" for r in rips)
    return ("awk -v r='" + padded + "' 'BEGIN { n = split(r, R, \" \") } "
            "($2 == \"T\" || $2 == \"t\") && $1 != \"0000000000000000\" { "
            "for (i = 1; i <= n; i++) if ($1 <= R[i] && (B[i] == \"\" || $1 > B[i])) { B[i] = $1; S[i] = $0 } } "
            "END { for (i = 1; i <= n; i++) print R[i], S[i] }' /proc/kallsyms")


def resolve(found: Sequence[Repeat], nearest: str) -> list[Repeat]:
    """`found` with `l1_text` set ("symbol+0xoff") where `nearest` (the output of nearest_text_script) puts
    the rip within KTEXT_MAX_OFFSET of an L1 kernel text symbol."""
    syms: dict[int, str] = {}
    for line in nearest.splitlines():
        f = line.split()
        if len(f) >= 4 and re.fullmatch(r"[0-9a-f]{16}", f[0]) and re.fullmatch(r"[0-9a-f]{16}", f[1]):
            off = int(f[0], 16) - int(f[1], 16)
            if 0 <= off < KTEXT_MAX_OFFSET:
                syms[int(f[0], 16)] = f"{f[3]}+{off:#x}" + (f" {f[4]}" if len(f) > 4 else "")
    return [replace(r, l1_text=syms.get(int(r.rip, 16), "")) for r in found]
