"""QEMU: accelerator probe, command line, QMP (qemu.qmp), console capture, teardown.

The command line is built by a pure function (unit-tested, logged, and
stored in the artifacts as qemu-<tag>.cmdline) so a reviewer can rerun it by hand.
QEMU runs in its own process group; every exit path of the harness kills it.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from qemu.qmp.legacy import QEMUMonitorProtocol

from . import proc
from .errors import InfraError, UsageError
from .guestcheck.health import printable
from .vmspec import Accel, VMSpec

log = logging.getLogger("kvm-harness")

QEMU = "qemu-system-x86_64"
# reboot=t: reset by triple fault at once (QEMU runs with -no-reboot, so a reset is how the guest
# ends the VM, after the tests and after a panic alike). The kernel's default order tries the PS/2
# controller, which this machine does not have, and that cost up to 10 s per VM.
BASE_APPEND = ["console=ttyS0,115200", "panic=-1", "reboot=t", "printk.time=1", "no_hash_pointers",
               "hung_task_panic=0", "softlockup_panic=0"]


def host_has_virt_flags(cpuinfo: str) -> str | None:
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return "vmx" if "vmx" in flags else ("svm" if "svm" in flags else None)


def probe_kvm() -> tuple[bool, str]:
    """Can QEMU really run a KVM guest here that offers nested vmx/svm?

    Opening /dev/kvm is not enough: on these machines it is a paravirtual KVM
    on which QEMU aborts at vCPU setup. So start QEMU paused with KVM and ask
    it over QMP for the expanded host CPU model.
    """
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
    except OSError as e:
        return False, f"/dev/kvm cannot be opened: {e.strerror}"
    virt = host_has_virt_flags(Path("/proc/cpuinfo").read_text())
    if virt is None:
        return False, "/dev/kvm opens but the host CPU has no vmx/svm flag (no nested virtualization)"
    cmds = [{"execute": "qmp_capabilities"},
            {"execute": "query-cpu-model-expansion", "arguments": {"type": "full", "model": {"name": "host"}}},
            {"execute": "quit"}]
    try:
        r = subprocess.run([QEMU, "-accel", "kvm", "-cpu", "host", "-machine", "pc", "-nodefaults",
                            "-display", "none", "-S", "-monitor", "none", "-qmp", "stdio"],
                           input="".join(json.dumps(c) + "\n" for c in cmds), text=True,
                           capture_output=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False, "QEMU with -accel kvm did not answer within 20 s"
    if r.returncode != 0 or "query-cpu-model-expansion" in r.stderr:
        last = (r.stderr.strip().splitlines() or ["no error output"])[-1]
        return False, f"QEMU -accel kvm -cpu host failed (exit {r.returncode}): {last}"
    for line in r.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        ret = msg.get("return")
        props = ret.get("model", {}).get("props", {}) if isinstance(ret, dict) else {}
        if props:
            if props.get("vmx") or props.get("svm"):
                return True, f"KVM usable, host CPU model offers {'vmx' if props.get('vmx') else 'svm'}"
            return False, "KVM usable but the host CPU model offers neither vmx nor svm"
    return False, "QEMU -accel kvm gave no CPU model expansion"


def choose_accel(request: str) -> Accel:
    """`auto`: KVM when it really works with nesting, else TCG; `kvm`: KVM or a one-line error."""
    if request == "tcg":
        return Accel("tcg", "max", "TCG requested")
    ok, why = probe_kvm()
    if ok:
        return Accel("kvm", "host", why)
    if request == "kvm":
        raise UsageError(f"--accel kvm requested but KVM is not usable here: {why}")
    log.info("accelerator: TCG -cpu max (%s)", why)
    return Accel("tcg", "max", f"TCG fallback: {why}")


def qemu_version() -> str:
    r = proc.run([QEMU, "--version"])
    return r.stdout.splitlines()[0].strip() if r.returncode == 0 and r.stdout else "unknown"


class PortInUse(InfraError):
    """QEMU could not bind the SSH forward: another process took the port after free_port() chose it."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


MAX_CONSOLE_BYTES = 64 << 20   # a run's console is well under 1 MiB; a flood stops here (RLIMIT_FSIZE)
QBOOT = Path("/usr/share/qemu/qboot.rom")  # Debian's qemu-system-data


def qemu_command(spec: VMSpec, console_log: Path, qmp_sock: Path) -> list[str]:
    """The full QEMU command line (pure: no side effects, easy to test and to print)."""
    # No PS/2 controller or SMBus: nothing to probe at boot, nothing the tests use.
    cmd = [QEMU, "-name", spec.name, "-machine", "pc,i8042=off,smbus=off,vmport=off",
           "-accel", spec.accel.name, "-cpu", spec.accel.cpu,
           # qboot: as fast as SeaBIOS here, and its MP table lists every vCPU (SeaBIOS's lists
           # one), so even a kernel built without ACPI (--config) runs on all of them.
           "-bios", str(QBOOT),
           "-smp", str(spec.smp), "-m", spec.memory, "-nodefaults", "-display", "none", "-no-reboot",
           "-kernel", str(spec.kernel), "-initrd", str(spec.initrd),
           "-append", " ".join(BASE_APPEND + spec.append),
           "-chardev", f"file,id=ser0,path={console_log}", "-serial", "chardev:ser0",
           "-monitor", "none", "-qmp", f"unix:{qmp_sock},server=on,wait=off",
           # restrict=on: the guest reaches nothing; SSH reaches it from loopback only.
           "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22",
           "-device", "virtio-net-pci,netdev=n0",
           "-device", "pvpanic-pci",
           # seccomp: the guest is untrusted (a series' kernel), and QEMU never needs to run a program, raise
           # its privileges, change its scheduling or use a deprecated syscall (QEMU's -sandbox options)
           "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
    return cmd


class VM:
    """One QEMU process: start, watch (console, QMP events), stop. Always stop it."""

    def __init__(self, spec: VMSpec, artifacts: Path, tag: str) -> None:
        self.spec = spec
        self.artifacts = artifacts
        self.tag = tag
        self.console_log = artifacts / f"console-{tag}.log"
        self.qemu_log = artifacts / f"qemu-{tag}.log"
        self.private = Path(tempfile.mkdtemp(prefix="kvm-harness-qmp-"))  # 0700: QMP is root's console
        self.qmp_sock = self.private / "qmp.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        self.events: list[dict[str, object]] = []
        self.started_at = 0.0

    @property
    def command(self) -> list[str]:
        return qemu_command(self.spec, self.console_log, self.qmp_sock)

    def start(self) -> None:
        if shutil.which(QEMU) is None:
            raise UsageError(f"{QEMU} not found: install qemu-system-x86 (`make setup`)")
        cmd = self.command
        (self.artifacts / f"qemu-{self.tag}.cmdline").write_text(proc.quote(cmd) + "\n")
        log.info("starting QEMU (%s, %s): %s", self.tag, self.spec.accel.name, proc.quote(cmd))
        self.started_at = time.monotonic()
        with open(self.qemu_log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        proc.register_group(self.proc.pid)
        # Every file QEMU writes (the serial console above all, which the guest fills) stops at
        # MAX_CONSOLE_BYTES: a guest that floods its console gets QEMU killed by SIGXFSZ, said as such.
        resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, (MAX_CONSOLE_BYTES, MAX_CONSOLE_BYTES))
        deadline = time.monotonic() + 10
        while not self.qmp_sock.exists():
            if self.proc.poll() is not None:
                self._failed_at_start()
            if time.monotonic() > deadline:
                self.stop()
                raise InfraError("QEMU did not create its QMP socket within 10 s")
            time.sleep(0.02)
        qmp = QEMUMonitorProtocol(str(self.qmp_sock))
        try:
            with proc.deferred_interrupts():
                qmp.connect(negotiate=True)
        except Exception as e:
            # QEMU makes the socket before it sets up the network: a bad
            # netdev (a taken port) ends it right after. Say that, not "refused".
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            if self.proc.poll() is not None:
                self._failed_at_start()
            self.stop()
            raise InfraError(f"cannot connect to QEMU's monitor {self.qmp_sock}: {e}") from e
        self.qmp = qmp
        self.qmp.settimeout(10)

    def _failed_at_start(self) -> None:
        tail = self.qemu_tail()
        self.stop()
        if "host forwarding rule" in tail:
            raise PortInUse(f"QEMU could not forward 127.0.0.1:{self.spec.ssh_port}: {tail}")
        raise InfraError(f"QEMU exited at start ({self.exit_description()}): {tail}")

    def qemu_tail(self, n: int = 5) -> str:
        try:
            lines = self.qemu_log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_description(self) -> str:
        """How QEMU ended: 'running', 'exit code N' or 'killed by SIGKILL'."""
        if self.proc is None:
            return "not started"
        rc = self.proc.poll()
        if rc is None:
            return "running"
        if rc == -signal.SIGXFSZ:
            return (f"killed by SIGXFSZ: the guest wrote more than {MAX_CONSOLE_BYTES >> 20} MiB to its serial"
                    " console, the limit of every file QEMU writes")
        if rc < 0:
            try:
                return f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"killed by signal {-rc}"
        return f"exit code {rc}"

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except OSError:
            return ""

    def console_tail(self, n: int = 40) -> str:
        """The console's last `n` lines, printable (they go into reports)."""
        return printable("\n".join(self.console().splitlines()[-n:]))

    def poll_events(self) -> list[dict[str, object]]:
        """QMP events since the last call (GUEST_PANICKED, SHUTDOWN, ...)."""
        new: list[dict[str, object]] = []
        # Also after QEMU exited: a GUEST_PANICKED sent just before the exit
        # may still be waiting in the monitor's buffer.
        if self.qmp is not None:
            try:
                with proc.deferred_interrupts():
                    new = list(self.qmp.get_events(wait=False))
                    self.qmp.clear_events()
            except Exception:  # QEMU went away between poll() and the read
                new = []
        self.events.extend(new)
        return new

    def panicked(self) -> bool:
        self.poll_events()
        return any(e.get("event") == "GUEST_PANICKED" for e in self.events)

    def wait_panicked(self, timeout_s: float) -> bool:
        """Wait (at most `timeout_s`) for pvpanic's GUEST_PANICKED event. The console shows the panic line
        before the kernel dumps the stack and runs its panic notifiers, pvpanic's among them: under TCG
        that can take a second or more, and stopping QEMU first would lose the event."""
        deadline = time.monotonic() + timeout_s
        while not self.panicked():
            if not self.alive() or time.monotonic() > deadline:
                return self.panicked()
            time.sleep(0.05)
        return True

    def query(self, command: str) -> object:
        if self.qmp is None or not self.alive():
            return None
        try:
            with proc.deferred_interrupts():
                return self.qmp.cmd(command)
        except Exception as e:  # a dying QEMU is reported, not raised, by forensics
            return {"error": str(e)}

    def stop(self, timeout: float = 10.0, fast: bool = False) -> int | None:
        """Quit over QMP, then SIGTERM, then SIGKILL the whole group. Idempotent.

        `fast` (an interrupted run): no QMP, straight to SIGKILL; the guest's
        state does not matter any more, only that QEMU is gone at once.
        """
        if self.proc is None:
            return None
        if self.alive() and fast:
            proc.kill_group(self.proc.pid, signal.SIGKILL)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        elif self.alive():
            self.poll_events()
            try:
                if self.qmp is not None:
                    with proc.deferred_interrupts():
                        self.qmp.cmd("quit")
            except Exception:
                pass
            try:
                self.proc.wait(timeout=timeout / 2)
            except subprocess.TimeoutExpired:
                proc.kill_group(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout / 2)
                except subprocess.TimeoutExpired:
                    proc.kill_group(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
        else:
            self.poll_events()
        proc.kill_group(self.proc.pid, signal.SIGKILL)  # stray children of the group, if any
        proc.unregister_group(self.proc.pid)
        if self.qmp is not None:
            try:
                with proc.deferred_interrupts():
                    self.qmp.close()
            except Exception:
                pass
            self.qmp = None
        shutil.rmtree(self.private, ignore_errors=True)
        (self.artifacts / f"qmp-events-{self.tag}.json").write_text(json.dumps(self.events, indent=1) + "\n")
        return self.proc.returncode

