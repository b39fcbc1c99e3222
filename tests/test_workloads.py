from pathlib import Path

from harness.modes import MODES, parse_facts
from harness.perf import phases
from harness.workloads import WorkloadPlan

REAL = Path(__file__).parent / "data" / "real"

FACTS_AMD_SHADOW = """vendor=kvm_amd
dev_kvm=1
nested=1
tdp=N
tdp_mmu=N
release=6.12.117
cpus=2
kvm_line=[    1.523000] kvm_amd: TSC scaling supported
kvm_line=[    1.523600] kvm_amd: Nested Virtualization enabled
kvm_line=[    1.523700] kvm_amd: Nested Paging disabled
"""


def test_facts_parse_and_mode_check():
    f = parse_facts(FACTS_AMD_SHADOW)
    assert f.vendor == "kvm_amd" and f.dev_kvm and f.nested == "1" and f.tdp == "N" and f.tdp_mmu == "N"
    assert f.release == "6.12.117"
    assert f.problems(MODES["shadow"]) == []
    assert any("tdp_mmu" in p for p in f.problems(MODES["tdp_mmu"]))
    assert any("npt=N" in p for p in f.problems(MODES["tdp_legacy"]))


def test_a_kernel_with_the_tracepoints_but_not_the_dump_is_partly_instrumented():
    both = parse_facts(FACTS_AMD_SHADOW + "instrumented=1\ndump=1\n")
    assert both.instrumented and both.partly_instrumented() == ""
    partly = parse_facts(FACTS_AMD_SHADOW + "instrumented=1\ndump=0\n")
    assert partly.partly_instrumented().startswith("the kernel is only partly instrumented: the kvm_mmu_pw_*")
    # no kallsyms: nothing to tell, the check runs as before; no tracepoint: not instrumented at all
    assert parse_facts(FACTS_AMD_SHADOW + "instrumented=1\n").partly_instrumented() == ""
    assert parse_facts(FACTS_AMD_SHADOW + "instrumented=0\ndump=0\n").partly_instrumented() == ""


def test_vendor_needs_dev_kvm():
    f = parse_facts("vendor=kvm_amd\ndev_kvm=0\nnested=\ntdp_mmu=\n")
    assert f.vendor == ""
    problems = f.problems(MODES["tdp_mmu"])
    assert any("/dev/kvm missing" in p for p in problems) and any("neither kvm_amd" in p for p in problems)


# 6.1.192 in shadow mode (kvm_amd.npt=0), as its guest printed it: other log prefixes, and kvm.tdp_mmu
# still Y (before 6.3 the parameter is the wish, not what is in effect).
FACTS_AMD_SHADOW_6_1 = """vendor=kvm_amd
dev_kvm=1
nested=1
tdp=0
tdp_mmu=Y
release=6.1.192+
cpus=2
kvm_line=[    0.817540] kvm: no hardware support for 'kvm_intel'
kvm_line=[    0.825521] kvm: Nested Virtualization enabled
kvm_line=[    0.825729] SVM: kvm: Nested Paging disabled
"""


def test_facts_of_a_6_1_guest():
    f = parse_facts(FACTS_AMD_SHADOW_6_1)
    assert f.vendor == "kvm_amd" and f.tdp == "N" and f.tdp_mmu == "N"
    assert f.problems(MODES["shadow"]) == []
    legacy = parse_facts(FACTS_AMD_SHADOW_6_1.replace("tdp=0", "tdp=1").replace("tdp_mmu=Y", "tdp_mmu=N"))
    assert legacy.problems(MODES["tdp_legacy"]) == []
    tdp_mmu = parse_facts(FACTS_AMD_SHADOW_6_1.replace("tdp=0", "tdp=1"))
    assert tdp_mmu.tdp_mmu == "Y" and tdp_mmu.problems(MODES["tdp_mmu"]) == []


def test_plan_has_three_log_modes_and_perf_per_mode():
    plan = WorkloadPlan()
    paths = [w.path("shadow") for w in plan.workloads()]
    assert paths == ["kvm.shadow.dirty_log_test.dirty-log", "kvm.shadow.dirty_log_test.clear-log",
                     "kvm.shadow.dirty_log_test.dirty-ring", "kvm.shadow.dirty_log_perf_test",
                     "kvm.shadow.dirty_log_enable_test"]
    assert plan.workloads()[0].command().startswith("/bin/dirty_log_test -M dirty-log")
    assert "-g" in plan.workloads()[3].argv
    assert [w.variant for w in WorkloadPlan(only=("dirty-ring",)).selected("tdp_mmu")] == ["dirty-ring"]
    # a tree without the series' selftest (plain 6.12) runs the others only
    built = ("dirty_log_test", "dirty_log_perf_test")
    assert [w.test for w in plan.selected("shadow", built)] == ["dirty_log_test"] * 3 + ["dirty_log_perf_test"]
    assert plan.workloads()[4].command() == "/bin/dirty_log_enable_test -c 2 -m 64 -v 2"


def test_perf_phases_of_a_real_run():
    out = (REAL / "dirty_log_perf_test-g-tdp_mmu.txt").read_text()
    p = phases(out)
    assert list(p) == ["populate", "enable_dirty_logging", "dirty_memory_first", "dirty_memory_later",
                       "get_dirty_log", "disable_dirty_logging"]   # -g: no clear
    assert p["populate"] == 7.911211859 and p["enable_dirty_logging"] == 0.037301117
    assert p["dirty_memory_first"] == 3.568717783
    assert p["dirty_memory_later"] == (3.360743820 + 2.562233877) / 2
    assert abs(p["get_dirty_log"] - 0.019043611) < 1e-9 and p["disable_dirty_logging"] == 0.004531316
    # manual protect prints a clear phase; -i 1 has no later iterations
    manual = "Iteration 1 dirty memory time: 1.5s\nIteration 1 clear dirty log time: 0.25s\n"
    assert phases(manual) == {"dirty_memory_first": 1.5, "clear_dirty_log": 0.25}
    assert phases("==== Test Assertion Failure ====\n") == {}


def test_a_guest_on_fewer_cpus_than_qemu_gave_is_named():
    f = parse_facts(FACTS_AMD_SHADOW)
    assert f.cpus == 2 and f.cpu_problem(2) == ""
    one = parse_facts(FACTS_AMD_SHADOW.replace("cpus=2", "cpus=1"))
    assert "brought up 1 CPU(s) of the 2 QEMU gave it (-smp 2)" in one.cpu_problem(2)
    unknown = parse_facts(FACTS_AMD_SHADOW.replace("cpus=2\n", ""))
    assert unknown.cpus == 0 and "brought up 0 CPU(s)" in unknown.cpu_problem(2)


def test_a_guest_without_a_tsc_frequency_is_named():
    f = parse_facts(FACTS_AMD_SHADOW)
    assert f.tsc_problem() == ""
    bad = parse_facts(FACTS_AMD_SHADOW + "tsc_khz_unknown=1\n")
    assert "could not calibrate its TSC" in bad.tsc_problem() and "KVM_GET_TSC_KHZ" in bad.tsc_problem()
