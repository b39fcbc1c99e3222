from pathlib import Path

import pytest

from harness import vm
from harness.errors import UsageError


def _spec(**kw):
    base = dict(kernel=Path("/k/bzImage"), initrd=Path("/k/initrd"), accel=vm.Accel("tcg", "max", "test"),
                append=["kvm_amd.npt=0"], ssh_port=40022)
    base.update(kw)
    return vm.VMSpec(**base)


def test_command_line_is_complete_and_private():
    cmd = vm.qemu_command(_spec(), Path("/r/console.log"), Path("/tmp/x/qmp.sock"))
    s = " ".join(cmd)
    assert cmd[0] == "qemu-system-x86_64"
    assert "-accel tcg -cpu max" in s and "-no-reboot" in s and "-device pvpanic-pci" in s and "-bios /usr/share/qemu/qboot.rom" in s
    # SSH forwarded on loopback only; the guest reaches nothing.
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in s and "restrict=on" in s
    assert "-qmp unix:/tmp/x/qmp.sock,server=on,wait=off" in s
    append = cmd[cmd.index("-append") + 1]
    assert "console=ttyS0,115200" in append and "panic=-1" in append and append.endswith("kvm_amd.npt=0")
    assert "path=/r/console.log" in s


def test_host_virt_flags():
    assert vm.host_has_virt_flags("flags\t\t: fpu vme svm sse\n") == "svm"
    assert vm.host_has_virt_flags("flags\t\t: fpu vmx\n") == "vmx"
    # What these machines show: no vmx/svm although /dev/kvm exists.
    assert vm.host_has_virt_flags("flags\t\t: fpu vme de pse hypervisor\n") is None


def test_tcg_request_needs_no_probe():
    a = vm.choose_accel("tcg")
    assert (a.name, a.cpu) == ("tcg", "max")


def test_kvm_request_on_unusable_kvm_is_one_line_usage_error(monkeypatch):
    monkeypatch.setattr(vm, "probe_kvm", lambda: (False, "/dev/kvm opens but the host CPU has no vmx/svm flag"))
    with pytest.raises(UsageError) as e:
        vm.choose_accel("kvm")
    assert "\n" not in str(e.value) and "no vmx/svm" in str(e.value)
    a = vm.choose_accel("auto")
    assert a.name == "tcg" and "no vmx/svm" in a.reason


def test_free_port_is_loopback_bindable():
    p = vm.free_port()
    assert 1024 < p < 65536


def test_qemu_runs_in_its_seccomp_sandbox(tmp_path):
    from harness.vm import qemu_command
    from harness.vmspec import Accel, VMSpec
    cmd = qemu_command(VMSpec(tmp_path / "bzImage", tmp_path / "initrd", Accel("tcg", "max", "test")),
                       tmp_path / "console.log", tmp_path / "qmp.sock")
    sandbox = cmd[cmd.index("-sandbox") + 1].split(",")
    assert sandbox[0] == "on" and {"obsolete=deny", "elevateprivileges=deny", "spawn=deny",
                                   "resourcecontrol=deny"} <= set(sandbox[1:])


def test_a_guest_that_floods_its_console_is_said_to_have(tmp_path):
    import signal

    from harness.vm import MAX_CONSOLE_BYTES, VM
    from harness.vmspec import Accel, VMSpec

    class Ended:
        def poll(self) -> int:
            return -signal.SIGXFSZ
    vm = VM(VMSpec(tmp_path / "bzImage", tmp_path / "initrd", Accel("tcg", "max", "test")), tmp_path, "shadow")
    vm.proc = Ended()  # type: ignore[assignment]
    assert vm.exit_description() == (f"killed by SIGXFSZ: the guest wrote more than {MAX_CONSOLE_BYTES >> 20} MiB"
                                     " to its serial console, the limit of every file QEMU writes")


def test_the_file_size_limit_stops_a_writer_as_it_will_stop_qemu(tmp_path):
    # the mechanism vm.start uses, on a real C program as QEMU is: prlimit(RLIMIT_FSIZE) after the spawn, and
    # SIGXFSZ past it (Popen restores SIGXFSZ, which Python itself ignores, to its default in the child)
    import resource
    import signal
    import subprocess
    p = subprocess.Popen(["sh", "-c", f"sleep 0.3; exec head -c 4M /dev/zero > {tmp_path / 'console'}"])
    resource.prlimit(p.pid, resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    assert p.wait(timeout=30) == -signal.SIGXFSZ
    assert (tmp_path / "console").stat().st_size == 1 << 20
