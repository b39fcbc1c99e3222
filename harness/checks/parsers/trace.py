"""Streaming parser of the `kvmmmu:kvm_mmu_pw_*` and `kvm_mmu_wp_*` trace events (FORMAT.md).

A trace of a real run is large (millions of lines), so this reads line by line and yields one small value
per event; every other line (ftrace header comments, other events) is skipped without a regex. A line that
carries a pw event but does not follow the format raises: silently skipping it would look like a lost event
at best and hide a kernel-side bug at worst.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from harness.checks.reference.findings import WP_COUNT_KEYS

SPTE_EVENT = "kvm_mmu_pw_spte: "
PAGE_EVENT = "kvm_mmu_pw_page: "
_MARK = "kvm_mmu_pw_"


@dataclass(slots=True)
class SpteEvent:
    """An spte's possibly-writable state changed; `count` is the page's counter after the change."""

    seq: int
    vm: int
    spt: int
    gfn: int
    role: int
    level: int
    idx: int
    old: int
    new: int
    count: int
    line_no: int


@dataclass(slots=True)
class PageEvent:
    """A shadow page was initialised (`op="alloc"`, counter 0) or is about to be freed (`op="free"`)."""

    seq: int
    vm: int
    spt: int
    gfn: int
    role: int
    level: int
    op: str
    count: int
    line_no: int


@dataclass(slots=True)
class WpAllEvent:
    """kvm_mmu_write_protect_all_pages() set the VM's indicator: enabled or not, and its generation."""

    seq: int
    vm: int
    enable: bool
    gen: int
    line_no: int


@dataclass(slots=True)
class WpLoadEvent:
    """mmu_load_shadow_page() is about to write-protect a page older than the generation (`old_gen` < `gen`);
    `count` is the page's counter then. The non-leaf sptes it makes read-only are the events that follow."""

    seq: int
    vm: int
    spt: int
    gfn: int
    role: int
    level: int
    old_gen: int
    gen: int
    count: int
    line_no: int


@dataclass(slots=True)
class WpRootEvent:
    """A vCPU is about to enter the guest with root `spt` while write-protect-all is enabled at `gen`: the
    first entry after each enable, and after each change of root (instrumentation 0005). `root_gen` is the
    root's own generation then, `count` its counter; a root at `gen` was loaded or created since the enable."""

    seq: int
    vm: int
    vcpu: int
    spt: int
    gfn: int
    role: int
    level: int
    root_gen: int
    gen: int
    count: int
    line_no: int


AnyEvent = SpteEvent | PageEvent | WpAllEvent | WpLoadEvent | WpRootEvent


class TraceFormatError(ValueError):
    """A kvm_mmu_pw_* line that does not follow FORMAT.md; names the line."""

    def __init__(self, line_no: int, line: str, reason: str, source: str = "") -> None:
        self.source = source
        self.line_no = line_no
        self.line = line
        self.reason = reason
        shown = line if len(line) <= 300 else line[:300] + "..."
        super().__init__(f"{source or '<trace>'}:{line_no}: {reason}: {shown!r}")


@dataclass(slots=True)
class TraceStats:
    """What the reader saw besides the events: ftrace's own loss markers."""

    lines: int = 0
    events: int = 0
    lost_events: int = 0  # sum of N over `CPU:c [LOST N EVENTS]`
    lost_markers: int = 0
    overrun_markers: int = 0  # `##### CPU c buffer started ####`: that CPU's oldest events were overwritten
    # write-protect-all (FORMAT.md): kvm_mmu_wp_all enable=1 / enable=0, kvm_mmu_wp_load, kvm_mmu_wp_root
    wp_all_enables: int = 0
    wp_all_disables: int = 0
    wp_loads: int = 0
    wp_roots: int = 0

    def wp_counts(self) -> dict[str, int]:
        """The write-protect-all events seen, under a verdict's count names (findings.WP_COUNT_KEYS)."""
        return {k: getattr(self, k) for k in WP_COUNT_KEYS}


# A hex field: 0x-prefixed, or a bare "0". The kernel prints %#llx of zero as "0x0", but `trace-cmd report`
# formats in user space where glibc prints it as "0"; int(x, 16) takes both forms.
_H = r"(0x[0-9a-fA-F]{1,16}|0)"
# `trace-cmd report` pads the event name ("kvm_mmu_pw_page:      seq=..."), the kernel does not.
_SPTE_RE = re.compile(
    rf"kvm_mmu_pw_spte:\s+seq={_H} vm={_H} spt={_H} gfn={_H} role=(0x[0-9a-fA-F]{{1,8}}|0) level=(\d+)"
    rf" idx=(\d+) old={_H} new={_H} count=(-?\d+)\s*\Z"
)
_PAGE_RE = re.compile(
    rf"kvm_mmu_pw_page:\s+seq={_H} vm={_H} spt={_H} gfn={_H} role=(0x[0-9a-fA-F]{{1,8}}|0) level=(\d+)"
    r" op=(alloc|free) count=(-?\d+)\s*\Z"
)
_WP_ALL_RE = re.compile(rf"kvm_mmu_wp_all:\s+seq={_H} vm={_H} enable=([01]) gen={_H}\s*\Z")
_WP_LOAD_RE = re.compile(
    rf"kvm_mmu_wp_load:\s+seq={_H} vm={_H} spt={_H} gfn={_H} role=(0x[0-9a-fA-F]{{1,8}}|0) level=(\d+)"
    rf" old_gen={_H} gen={_H} count=(\d+)\s*\Z"
)
_WP_ROOT_RE = re.compile(
    rf"kvm_mmu_wp_root:\s+seq={_H} vm={_H} vcpu=(\d+) spt={_H} gfn={_H} role=(0x[0-9a-fA-F]{{1,8}}|0)"
    rf" level=(\d+) root_gen={_H} gen={_H} count=(\d+)\s*\Z"
)
_WP_NAMES = ("kvm_mmu_wp_all:", "kvm_mmu_wp_load:", "kvm_mmu_wp_root:")
_WP_MARK = "kvm_mmu_wp_"
_LOST_RE = re.compile(r"\[LOST (\d+) EVENTS\]")
_OVERRUN_RE = re.compile(r"^##### CPU \d+ buffer started ####")


class _HexCache(dict[str, int]):
    """hex digits -> int, computed on first use (a dict lookup is cheaper than int(x, 16) and shares the int)."""

    def __missing__(self, key: str) -> int:
        value = self[key] = int(key, 16)
        return value


def _wp_event(line: str, p: int, stats: TraceStats, line_no: int,
              source: str) -> WpAllEvent | WpLoadEvent | WpRootEvent | None:
    """The write-protect-all event at `p` (a mention of kvm_mmu_wp_), counted in `stats`; None for a mere
    mention of the name; a malformed event raises TraceFormatError."""
    while p >= 0:
        m = _WP_ALL_RE.match(line, p)
        if m is not None:
            enable = m[3] == "1"
            if enable:
                stats.wp_all_enables += 1
            else:
                stats.wp_all_disables += 1
            return WpAllEvent(int(m[1], 16), int(m[2], 16), enable, int(m[4], 16), line_no)
        m = _WP_LOAD_RE.match(line, p)
        if m is not None:
            stats.wp_loads += 1
            seq, vm, spt, gfn, role, level, old_gen, gen, count = m.groups()
            return WpLoadEvent(int(seq, 16), int(vm, 16), int(spt, 16), int(gfn, 16), int(role, 16), int(level),
                               int(old_gen, 16), int(gen, 16), int(count), line_no)
        m = _WP_ROOT_RE.match(line, p)
        if m is not None:
            stats.wp_roots += 1
            seq, vm, vcpu, spt, gfn, role, level, root_gen, gen, count = m.groups()
            return WpRootEvent(int(seq, 16), int(vm, 16), int(vcpu), int(spt, 16), int(gfn, 16), int(role, 16),
                               int(level), int(root_gen, 16), int(gen, 16), int(count), line_no)
        if line.startswith(_WP_NAMES, p):
            raise TraceFormatError(line_no, line.rstrip("\n"), "malformed kvm_mmu_wp event", source)
        p = line.find(_WP_MARK, p + 1)
    return None


def _marker(line: str, stats: TraceStats) -> None:
    """Count ftrace's loss annotations (only called for lines that are not events)."""
    if "LOST" in line:
        m = _LOST_RE.search(line)
        if m:
            stats.lost_events += int(m[1])
            stats.lost_markers += 1
    elif line.startswith("#####") and _OVERRUN_RE.match(line):
        stats.overrun_markers += 1


def parse_trace(lines: Iterable[str], *, stats: TraceStats | None = None,
                source: str = "") -> Iterator[AnyEvent]:
    """Yield the pw and wp events of a trace (`trace`, `trace_pipe` or `trace-cmd report` text), in file order.

    File order is not seq order (ftrace merges per-CPU buffers by timestamp); the checker sorts.
    Pass `stats` to also count ftrace's LOST markers in the same pass.
    """
    st = stats if stats is not None else TraceStats()
    spte_match = _SPTE_RE.match
    page_match = _PAGE_RE.match
    # vm, spt, gfn and role repeat across events: parse each distinct string once and share the int
    # (half the int() calls, and the event list of a long trace is much smaller).
    ids = _HexCache()
    line_no = 0
    for line_no, line in enumerate(lines, 1):  # noqa: B007 - line_no is kept for st.lines
        p = line.find(_MARK)
        if p < 0 or line.startswith("#"):
            if line.startswith("#"):
                if stats is not None:
                    _marker(line, st)
                continue
            q = line.find(_WP_MARK)
            wp = _wp_event(line, q, st, line_no, source) if q >= 0 else None
            if wp is not None:
                st.events += 1
                yield wp
            elif stats is not None:
                _marker(line, st)
            continue
        while p >= 0:  # almost always one pass: the first mention is the event name
            m = spte_match(line, p)
            if m is not None:
                seq, vm, spt, gfn, role, level, idx, old, new, count = m.groups()
                if int(idx) >= 512:
                    raise TraceFormatError(line_no, line.rstrip("\n"), f"spte index {idx} out of range",
                                           source)
                st.events += 1
                yield SpteEvent(int(seq, 16), ids[vm], ids[spt], ids[gfn], ids[role], int(level), int(idx),
                                int(old, 16), int(new, 16), int(count), line_no)
                break
            m = page_match(line, p)
            if m is not None:
                seq, vm, spt, gfn, role, level, op, count = m.groups()
                st.events += 1
                yield PageEvent(int(seq, 16), ids[vm], ids[spt], ids[gfn], ids[role], int(level), op,
                                int(count), line_no)
                break
            if line.startswith(SPTE_EVENT, p) or line.startswith(PAGE_EVENT, p):
                raise TraceFormatError(line_no, line.rstrip("\n"), "malformed kvm_mmu_pw event", source)
            # a mere mention of the name (a function-tracer line, a task name): look further, else skip
            p = line.find(_MARK, p + 1)
        else:
            if stats is not None:
                _marker(line, st)
    st.lines = line_no


def where(ev: AnyEvent) -> str:
    """Where an event was read: `trace line N` of a text trace; a binary trace.dat has no lines (its events are
    found by their seq, which every message gives)."""
    return f"trace line {ev.line_no}" if ev.line_no else "trace.dat"


def format_event(ev: AnyEvent) -> str:
    """The event as its trace line body (after the ftrace prefix), exactly as FORMAT.md prints it."""
    if isinstance(ev, SpteEvent):
        return (f"kvm_mmu_pw_spte: seq={ev.seq:#x} vm={ev.vm:#x} spt={ev.spt:#x} gfn={ev.gfn:#x}"
                f" role={ev.role:#x} level={ev.level} idx={ev.idx} old={ev.old:#x} new={ev.new:#x}"
                f" count={ev.count}")
    if isinstance(ev, PageEvent):
        return (f"kvm_mmu_pw_page: seq={ev.seq:#x} vm={ev.vm:#x} spt={ev.spt:#x} gfn={ev.gfn:#x}"
                f" role={ev.role:#x} level={ev.level} op={ev.op} count={ev.count}")
    if isinstance(ev, WpAllEvent):
        return f"kvm_mmu_wp_all: seq={ev.seq:#x} vm={ev.vm:#x} enable={int(ev.enable)} gen={ev.gen:#x}"
    if isinstance(ev, WpRootEvent):
        return (f"kvm_mmu_wp_root: seq={ev.seq:#x} vm={ev.vm:#x} vcpu={ev.vcpu} spt={ev.spt:#x} gfn={ev.gfn:#x}"
                f" role={ev.role:#x} level={ev.level} root_gen={ev.root_gen:#x} gen={ev.gen:#x} count={ev.count}")
    return (f"kvm_mmu_wp_load: seq={ev.seq:#x} vm={ev.vm:#x} spt={ev.spt:#x} gfn={ev.gfn:#x} role={ev.role:#x}"
            f" level={ev.level} old_gen={ev.old_gen:#x} gen={ev.gen:#x} count={ev.count}")
