"""Where a stopped test's threads were (harness/guestcheck/sysrq.py), on real sysrq-t/-w dumps of this project's
forensics (tests/data/real/sysrq, 6.12 guests under TCG, 2026-12-03)."""

import gzip
from pathlib import Path

from harness.guestcheck.sysrq import tasks, where

REAL = Path(__file__).parent / "data" / "real" / "sysrq"


def _text(name: str) -> str:
    return gzip.decompress((REAL / f"{name}.sysrq-tw.txt.gz").read_bytes()).decode()


def test_a_vcpu_in_an_exit_loop_is_placed_in_the_fault_path():
    # tdp_legacy, dirty_log_test -M dirty-ring, 210 s of an RSVD NPF loop (docs/steady.md): the vCPU thread
    # runs in kvm_mmu_page_fault while the main thread waits for it on a futex
    text = _text("tdp_legacy-dirty-ring-exit-loop")
    assert where(text, "/bin/dirty_log_test") == (
        "pid 1498 R in kvm_mmu_page_fault < kvm_is_exception_pending < kvm_requeue_exception_e (the MMU's"
        " fault path); pid 1465 S in futex_wait_queue < __futex_wait < __futex_wake_mark")
    # every task once, though sysrq-w lists the blocked ones again
    pids = [t.pid for t in tasks(text)]
    assert len(pids) == len(set(pids)) == 48


def test_the_threads_of_a_long_name_are_found_by_the_kernels_15_characters():
    # fast-pf-no-stop (kernel-patches/mutants): both vCPUs of dirty_log_enable_test spin
    found = where(_text("tdp_legacy-fast-pf-no-stop"), "/bin/dirty_log_enable_test")
    running = [part for part in found.split("; ") if " R " in f"{part} "]
    assert len(running) == 2 and any("(the MMU's fault path)" in p for p in running), found
    assert found.index(" R") < found.index(" S"), "running threads first"


def test_no_thread_of_the_program_is_said_as_nothing():
    assert where(_text("tdp_mmu-dirty-ring-exit-loop"), "dirty_log_perf_test") == ""
    assert where("", "dirty_log_test") == "" and tasks("no dump here") == []


def test_a_task_line_without_timestamps_or_tgid_still_parses():
    text = ("task:dirty_log_test  state:D stack:0     pid:7     ppid:1      flags:0x00000000\n"
            "Call Trace:\n <TASK>\n __schedule+0x575/0x5af\n schedule+0x23/0x34\n"
            " kvm_vcpu_block+0x10/0x40\n </TASK>\n")
    (t,) = tasks(text)
    assert (t.comm, t.state, t.pid, t.tgid) == ("dirty_log_test", "D", 7, 7)
    assert t.describe() == "pid 7 D in kvm_vcpu_block (a halt)"
