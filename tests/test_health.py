from pathlib import Path

import pytest

from harness.guestcheck import health

WARN = """[   12.345678] ------------[ cut here ]------------
[   12.345679] WARNING: CPU: 1 PID: 123 at arch/x86/kvm/mmu/mmu.c:1234 mmu_spte_set+0x50/0x60
[   12.345680] Modules linked in:
[   12.345681] CPU: 1 UID: 0 PID: 123 Comm: dirty_log_test Not tainted 6.12.117 #1
[   12.345690] ---[ end trace 0000000000000000 ]---
[   12.400000] something else
"""

HUNG = "[  245.1] INFO: task dirty_log_test:99 blocked for more than 120 seconds.\n[  245.2]       Not tainted\n"


def test_warning_found_with_excerpt_until_end_marker():
    f = health.scan(WARN, "dmesg.txt")
    assert [x.kind for x in f] == ["warning"]
    assert "mmu.c:1234" in f[0].line and f[0].excerpt.splitlines()[-1].endswith("end trace 0000000000000000 ]---")
    assert f[0].where == "dmesg.txt:2"


# One message per report kind, as the kernel's format strings print it (the file is on each pattern in
# health.py), in the spellings of 6.1, 6.12 and v6.19 where they differ.
SAMPLES = [
    ("panic", "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100"),
    ("oops", "Oops: general protection fault, probably for non-canonical address 0xdffffc0000000001: 0000 [#1]"
             " PREEMPT SMP KASAN NOPTI"),  # 6.12
    ("oops", "general protection fault, probably for non-canonical address 0xdffffc0000000001: 0000 [#1]"
             " PREEMPT SMP KASAN NOPTI"),  # 6.1
    ("oops", "Oops: 0002 [#2] PREEMPT SMP NOPTI"),  # after a page fault's BUG line, 6.1
    ("oops", "Oops: invalid opcode: 0000 [#1] PREEMPT SMP NOPTI"),
    ("bug", "BUG: kernel NULL pointer dereference, address: 0000000000000008"),
    ("bug", "BUG: unable to handle page fault for address: ffffc90000fff000"),
    ("bug", "kernel BUG at arch/x86/kvm/mmu/mmu.c:1746!"),
    ("bug", "BUG: sleeping function called from invalid context at mm/slab.h:739"),
    ("bug", "BUG: Bad page state in process dirty_log_test  pfn:10a2b3"),
    ("kasan", "BUG: KASAN: slab-out-of-bounds in mmu_spte_set+0x1/0x2"),
    ("kfence", "BUG: KFENCE: use-after-free read in kvm_mmu_free_shadow_page+0x2e/0x90"),
    ("ubsan", "UBSAN: shift-out-of-bounds in arch/x86/kvm/mmu/mmu.c:512:3"),
    ("soft-lockup", "watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [dirty_log_test:77]"),
    ("hard-lockup", "watchdog: Watchdog detected hard LOCKUP on cpu 1"),  # 6.12
    ("hard-lockup", "NMI watchdog: Watchdog detected hard LOCKUP on cpu 1"),  # 6.1
    ("rcu-stall", "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:"),
    ("rcu-stall", "rcu: INFO: rcu_sched self-detected stall on CPU"),
    ("rcu-stall", "rcu: INFO: rcu_preempt detected expedited stalls on CPUs/tasks: { 1-... } 21003 jiffies s: 405"
                  " root: 0x2/."),  # tree_exp.h
    ("rcu-stall", "rcu: INFO: rcu_preempt detected expedited stalls, but suppressed full report due to a stuck"
                  " CSD-lock."),
    ("rcu-stall", "INFO: rcu_tasks detected stalls on tasks:"),  # tasks.h, no "rcu: "
    ("rcu-stall", "INFO: rcu_tasks_trace detected stalls on tasks:"),
    ("slub", "BUG kmalloc-64 (Tainted: G    B             ): Poison overwritten"),  # mm/slub.c
    ("slub", "BUG kvm_mmu_page_header (Not tainted): Object already free"),
    ("slub", "BUG kmalloc-128 (Tainted: G        W          ): Objects remaining on __kmem_cache_shutdown()"),
    ("hung-task", HUNG.splitlines()[0].split("] ", 1)[1]),
    ("lockdep", "WARNING: possible circular locking dependency detected"),
    ("lockdep", "INFO: trying to register non-static key."),
    ("kmemleak", "kmemleak: 3 new suspected memory leaks (see /sys/kernel/debug/kmemleak)"),
    ("lockdep", "WARNING: inconsistent lock state"),
    ("lockdep", "WARNING: suspicious RCU usage"),
    ("lockdep", "WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected"),
    ("warning", "WARNING: CPU: 1 PID: 123 at arch/x86/kvm/mmu/mmu.c:1234 mmu_spte_set+0x50/0x60"),  # 6.1, 6.12
    ("warning", "WARNING: CPU: 0 PID: 1 at mmu_spte_set+0x50/0x60"),  # no file (CONFIG_DEBUG_BUGVERBOSE=n)
    ("warning", "WARNING: arch/x86/kvm/mmu/mmu.c:1512 at mmu_spte_update_no_track+0x1c4/0x210, CPU#1:"
                " dirty_log_test/231"),  # since v6.19
    ("warning", "WARNING: at mmu_spte_update_no_track+0x1c4/0x210, CPU#1: dirty_log_test/231"),  # v6.19, no file
    ("warning", "WARNING: can't access registers at asm_common_interrupt+0x1e/0x40"),  # unwind_orc.c orc_warn()
]


@pytest.mark.parametrize("kind,message", SAMPLES)
def test_each_report_kind_in_each_spelling(kind, message):
    found = health.scan(f"[    1.000000] {message}\n")
    assert [f.kind for f in found] == [kind], found
    assert found[0].line == message  # the message, without its timestamp


def test_a_user_space_fault_is_not_a_kernel_oops():
    # arch/x86/kernel/traps.c: a user process's #GP, printed with show_unhandled_signals: no "[#n]" die counter
    line = ("[   12.000000] traps: dirty_log_test[231] general protection fault ip:401d2a sp:7ffd2c9e8f40 error:0"
            " in dirty_log_test[401000+9e000]")
    assert health.scan(line + "\n") == []
    # nor are words of a report in the middle of a message (a test's own log line, a file name)
    assert health.scan("[    2.0] kvm-harness: running kernel BUG at tests, WARNING: CPU: 1 PID: 2 at x\n") == []


def test_a_report_that_starts_in_the_middle_of_a_console_line():
    # user space was writing to the serial console when the kernel's message came
    line = "kvm-harness: runn[   42.118377] WARNING: CPU: 1 PID: 231 at arch/x86/kvm/mmu/mmu.c:1512 f+0x1/0x2"
    found = health.scan(line + "\n")
    assert [f.kind for f in found] == ["warning"] and found[0].line.startswith("WARNING: CPU: 1")


LOGS = Path(__file__).parent / "data" / "kernel-logs"


def test_the_v6_19_banner_is_a_warning_like_the_old_one():
    for name in ("warn-v6.19-banner.txt", "warn-pre-v6.19-banner.txt"):
        found = health.scan((LOGS / name).read_text(), name)
        assert [f.kind for f in found] == ["warning"], name
        assert "mmu.c:1512" in found[0].line and found[0].excerpt.splitlines()[-1].endswith("]---")


def test_the_mutant_log_in_the_v6_19_spelling_gives_the_same_findings():
    """The project's own captured mutant dmesg, banners rewritten to the v6.19 format (../shared/field-cases):
    the same reports as the original, at the same lines."""
    old = health.scan((Path(__file__).parent / "data" / "real" / "dmesg-mutant-warn.txt").read_text())
    new = health.scan((LOGS / "mutant-warn-v6.19-banner.txt").read_text())
    assert len(old) == 2 and [f.kind for f in new] == [f.kind for f in old]
    assert ["mmu_log_possible_writable_spte" in f.line for f in new] == [True, False]


def test_clean_log_has_no_findings():
    clean = "[    0.0] Linux version 6.12.117\n[    1.2] kvm_amd: Nested Virtualization enabled\n" \
            "[    1.3] kvm_amd: Nested Paging enabled\n[    2.0] Run /init as init process\n"
    assert health.scan(clean) == []


def test_real_kvm_prove_mmu_warning_from_a_mutant_run():
    """dmesg captured by boot-test with the count-not-decremented mutant: the
    instrumentation's KVM_PROVE_MMU cross-check WARNs, and the scan names it."""
    from pathlib import Path
    text = (Path(__file__).parent / "data" / "real" / "dmesg-mutant-warn.txt").read_text()
    found = health.scan(text, "dmesg-shadow.txt")
    assert found and found[0].kind == "warning"
    assert "mmu_log_possible_writable_spte" in found[0].line
    assert "Call Trace" in found[0].excerpt or "RIP:" in found[0].excerpt
