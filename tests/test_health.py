from harness.checks import health

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


def test_each_kind():
    cases = {
        "panic": "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100",
        "oops": "Oops: general protection fault, probably for non-canonical address",
        "bug": "BUG: kernel NULL pointer dereference, address: 0000000000000008",
        "kasan": "BUG: KASAN: slab-out-of-bounds in mmu_spte_set+0x1/0x2",
        "soft-lockup": "watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [dirty_log_test:77]",
        "rcu-stall": "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
        "lockdep": "WARNING: possible circular locking dependency detected",
        "hung-task": HUNG.splitlines()[0],
    }
    for kind, line in cases.items():
        found = health.scan(f"[    1.0] {line}\n")
        assert found and found[0].kind == kind, (kind, found)


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
