"""The guest KVM's MMU modes and what the guest says about its KVM (read, never assumed).

KVM is built in, so a mode is chosen by the guest kernel command line and
each mode gets its own boot (measured: a boot to SSH costs a few seconds,
less than reloading modules would save, and it gives each mode a clean
kernel log).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MmuMode:
    name: str
    append: tuple[str, ...]
    tdp: bool            # npt/ept expected on
    tdp_mmu: bool        # kvm.tdp_mmu expected on
    reaches_patched_code: bool


MODES: dict[str, MmuMode] = {m.name: m for m in (
    MmuMode("shadow", ("kvm_amd.npt=0", "kvm_intel.ept=0"), tdp=False, tdp_mmu=False,
            reaches_patched_code=True),
    MmuMode("tdp_legacy", ("kvm.tdp_mmu=0",), tdp=True, tdp_mmu=False,
            reaches_patched_code=True),
    MmuMode("tdp_mmu", ("kvm.tdp_mmu=1",), tdp=True, tdp_mmu=True,
            reaches_patched_code=False),
)}
DEFAULT_MODES = ("shadow", "tdp_legacy", "tdp_mmu")


@dataclass
class ModeFacts:
    """What the guest says about its KVM: read, never assumed."""

    vendor: str = ""          # kvm_amd / kvm_intel / ""
    dev_kvm: bool = False
    nested: str = ""
    tdp: str = ""             # npt or ept parameter
    tdp_mmu: str = ""         # in effect: Y only with tdp Y (parse_facts)
    cpus: int = 0             # CPUs the guest kernel brought up
    tsc_khz_unknown: bool = False
    instrumented: bool = False  # the kvmmmu:kvm_mmu_pw_spte tracepoint exists (the instrumentation series)
    dump: str = ""            # the pw_sptes dump is built in (1), is not (0), or cannot be told ("": no kallsyms)
    release: str = ""         # uname -r
    kvm_lines: list[str] = field(default_factory=list)

    def fingerprint(self, ssh_ready_s: float) -> dict[str, object]:
        """What metadata.json's timings.fingerprint keeps of one VM: the nested setup, as read."""
        return {"vendor": self.vendor, "nested": self.nested, "tdp": self.tdp, "tdp_mmu": self.tdp_mmu,
                "instrumented": self.instrumented, "cpus": self.cpus, "guest_kernel": self.release,
                "kvm_log": self.kvm_lines, "ssh_ready_s": round(ssh_ready_s, 2)}

    def partly_instrumented(self) -> str:
        """What the consistency check needs and the kernel lacks, when it has the tracepoints but not the
        dump (a walk's step between the instrumentation's patches); "" otherwise."""
        if self.instrumented and self.dump == "0":
            return ("the kernel is only partly instrumented: the kvm_mmu_pw_* tracepoints but no pw_sptes dump"
                    " (kernel-patches/instrumentation 0002), so the trace cannot be replayed")
        return ""

    def problems(self, mode: MmuMode) -> list[str]:
        p = []
        if not self.dev_kvm:
            p.append("/dev/kvm missing in the guest: KVM did not initialise")
        if self.vendor == "":
            p.append("neither kvm_amd nor kvm_intel initialised in the guest (no svm/vmx CPU flag, or no /dev/kvm)")
        if self.nested not in ("1", "Y"):
            p.append(f"nested virtualization not enabled in the guest (nested={self.nested or '?'})")
        want_tdp = "Y" if mode.tdp else "N"
        if self.tdp and self.tdp != want_tdp:
            p.append(f"{'npt' if self.vendor == 'kvm_amd' else 'ept'}={self.tdp}, mode {mode.name} needs {want_tdp}")
        want_mmu = "Y" if mode.tdp_mmu else "N"
        if self.tdp_mmu != want_mmu:
            p.append(f"kvm.tdp_mmu={self.tdp_mmu or '?'}, mode {mode.name} needs {want_mmu}")
        return p

    def tsc_problem(self) -> str:
        """KVM gives its vCPUs the host's TSC frequency: a guest kernel that could not calibrate its TSC
        (no HPET or ACPI PM timer to measure against, and the PIT is unreliable under TCG) makes every
        selftest abort in KVM_GET_TSC_KHZ. That is the environment's fault, not the series'."""
        if self.tsc_khz_unknown:
            return ("the guest kernel could not calibrate its TSC (\"could not calculate TSC khz\"): every KVM "
                    "selftest would abort on KVM_GET_TSC_KHZ; give it ACPI (HPET/PM timer) or tsc_early_khz=")
        return ""

    def cpu_problem(self, want: int) -> str:
        """The guest must run on every vCPU QEMU gave it: one CPU would serialise the workload and its
        capture, and hide the races between a vCPU's faults and the dirty-log ioctls the checks are for."""
        if want and self.cpus != want:
            return (f"the guest kernel brought up {self.cpus} CPU(s) of the {want} QEMU gave it (-smp {want}); "
                    "without ACPI it finds CPUs in the firmware's MP table (qboot writes them all)")
        return ""


FACTS_SCRIPT = r"""
v=; grep -qw svm /proc/cpuinfo && v=kvm_amd; grep -qw vmx /proc/cpuinfo && v=kvm_intel
echo "vendor=$v"
[ -e /dev/kvm ] && echo dev_kvm=1 || echo dev_kvm=0
p=/sys/module/$v/parameters
echo "nested=$(cat $p/nested 2>/dev/null)"
[ "$v" = kvm_amd ] && echo "tdp=$(cat $p/npt 2>/dev/null)"
[ "$v" = kvm_intel ] && echo "tdp=$(cat $p/ept 2>/dev/null)"
echo "tdp_mmu=$(cat /sys/module/kvm/parameters/tdp_mmu 2>/dev/null)"
echo "release=$(uname -r)"
echo "cpus=$(grep -c ^processor /proc/cpuinfo)"
dmesg | grep -q "could not calculate TSC khz" && echo tsc_khz_unknown=1
[ -d /sys/kernel/tracing/events/kvmmmu/kvm_mmu_pw_spte ] && echo instrumented=1 || echo instrumented=0
# the dump's debugfs file appears only with a VM; its open() in the kernel's symbols says it is built in
[ -r /proc/kallsyms ] && { grep -q ' pw_sptes_open$' /proc/kallsyms && echo dump=1 || echo dump=0; }
dmesg | grep -E 'kvm(_amd|_intel)?:' | sed 's/^/kvm_line=/'
"""


def parse_facts(text: str) -> ModeFacts:
    """FACTS_SCRIPT's output (key=value lines, kvm_line= repeated) -> ModeFacts."""
    f = ModeFacts()
    raw: dict[str, str] = {}
    for line in text.splitlines():
        k, _, v = line.partition("=")
        if k == "kvm_line":
            f.kvm_lines.append(v)
            continue
        raw[k] = v.strip()
    f.vendor = raw.get("vendor", "")
    f.dev_kvm = raw.get("dev_kvm") == "1"
    f.nested = raw.get("nested", "")
    tdp = raw.get("tdp", "")
    f.tdp = {"1": "Y", "0": "N"}.get(tdp, tdp)
    f.tdp_mmu = raw.get("tdp_mmu", "")
    f.cpus = int(raw["cpus"]) if raw.get("cpus", "").isdigit() else 0
    f.tsc_khz_unknown = raw.get("tsc_khz_unknown") == "1"
    f.instrumented = raw.get("instrumented") == "1"
    f.dump = raw.get("dump", "")
    f.release = raw.get("release", "")
    if not f.dev_kvm:
        # The CPU flag alone does not prove the vendor module initialised; /dev/kvm does: kvm_init()
        # registers it last, in 6.1 and 6.12 alike. (The log lines differ: 6.12's "kvm_amd: Nested
        # Paging disabled" is 6.1's "SVM: kvm: Nested Paging disabled".)
        f.vendor = ""
    if f.tdp == "N" and f.tdp_mmu == "Y":
        # Before 6.3 kvm.tdp_mmu is only the wish (0644, tdp_mmu.c): the TDP MMU is used only with TDP
        # on. From 6.3 it reads what is in effect (mmu.c: tdp_mmu_enabled = tdp_mmu_allowed && tdp_enabled).
        f.tdp_mmu = "N"
    return f
