"""Where a test's threads were, from the kernel's sysrq-t/sysrq-w task dump (forensics' sysrq-tw.txt).

The format is the kernel's: sched_show_task() (kernel/sched/core.c) prints
"task:%-15.15s state:%c" ("running task" after a running one's state), then "stack:... pid:... tgid:...
ppid:... flags:...", and show_stack() the "Call Trace:" frames, one per line, as "? symbol+0xoff/0xlen"
("?" for a frame the unwinder is unsure of, which is every frame of a task dumped from another CPU).
sysrq-w lists the blocked tasks again: the first listing of a pid is kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TASK = re.compile(r"task:(.{1,15}?)\s*state:(\S)(?:\s+running task)?\s+stack:\s*\d+\s+pid:\s*(\d+)"
                   r"(?:\s+tgid:\s*(\d+))?")
_FRAME = re.compile(r"(?:^|\s)(?:\? )?([A-Za-z_.][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+")
# Frames that say how a task waits, not where: skipped when naming where it was.
_SCHEDULER = frozenset(("__schedule", "schedule", "schedule_timeout", "schedule_hrtimeout_range_clock",
                        "schedule_hrtimeout_range", "preempt_schedule_irq", "__cond_resched",
                        "finish_task_switch.isra.0", "finish_task_switch"))
# Where a vCPU thread is, by the first of its frames that names a place (6.12, SVM and VMX).
_VCPU_PLACES = (
    (("kvm_mmu_page_fault", "kvm_tdp_mmu_map", "direct_page_fault", "kvm_tdp_page_fault", "fast_page_fault",
      "kvm_mmu_do_page_fault", "handle_mmio_page_fault", "paging64_page_fault", "paging32_page_fault",
      "npf_interception", "handle_ept_violation"), "the MMU's fault path"),
    (("svm_vcpu_run", "vmx_vcpu_run", "__svm_vcpu_run", "__vmx_vcpu_run", "vcpu_enter_guest"), "the guest"),
    (("kvm_vcpu_block", "kvm_vcpu_halt", "kvm_emulate_halt"), "a halt"),
    # between two exits: the work a signal or a reschedule asks for, then the guest again
    (("xfer_to_guest_mode_handle_work", "kvm_arch_vcpu_ioctl_run", "vcpu_run"), "the vCPU run loop"),
)


@dataclass(frozen=True)
class Task:
    """One task of the dump: its comm (15 characters at most), state letter, pid, thread group, frames."""

    comm: str
    state: str
    pid: int
    tgid: int
    frames: tuple[str, ...]

    def place(self) -> str:
        """Where a vCPU thread is (the MMU's fault path, the guest, a halt), "" when no frame says."""
        for names, place in _VCPU_PLACES:
            if any(f in names for f in self.frames):
                return place
        return ""

    def describe(self, top: int = 3) -> str:
        where = [f for f in self.frames if f not in _SCHEDULER][:top]
        place = self.place()
        return (f"pid {self.pid} {self.state}" + (f" in {' < '.join(where)}" if where else "")
                + (f" ({place})" if place else ""))


def tasks(text: str) -> list[Task]:
    """Every task of a sysrq-t/-w dump (console or dmesg text, timestamps or not), each pid once."""
    out: dict[int, Task] = {}
    comm = state = ""
    pid = tgid = -1
    frames: list[str] = []

    def close() -> None:
        if pid >= 0 and pid not in out:
            out[pid] = Task(comm, state, pid, tgid, tuple(frames))

    for line in text.splitlines():
        m = _TASK.search(line)
        if m is not None:
            close()
            comm, state, pid = m.group(1).strip(), m.group(2), int(m.group(3))
            tgid = int(m.group(4)) if m.group(4) else pid
            frames = []
            continue
        f = _FRAME.search(line)
        if f is not None and pid >= 0:
            frames.append(f.group(1))
    close()
    return list(out.values())


def where(text: str, program: str) -> str:
    """The threads of `program` (a path or name: the kernel keeps 15 characters of it) in a sysrq dump, in
    one line: "pid 1498 R in kvm_mmu_page_fault < ... (the MMU's fault path); pid 1465 S in futex_wait ...",
    running threads first; "" when the dump has none of them."""
    comm = program.rsplit("/", 1)[-1][:15]
    mine = [t for t in tasks(text) if t.comm == comm]
    mine.sort(key=lambda t: (t.state != "R", t.pid))
    return "; ".join(t.describe() for t in mine)
