"""One booted VM and its SSH connection: boot, run, cut the kernel log, collect forensics, stop.

The public face of vm.py and guest.py for everything above them (the lanes, `shell`, the fault
tests). A Session is always stopped: `boot` stops the VM itself when it raises, and every caller
stops a session it got.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import forensics, proc
from . import vm as vm_mod
from .errors import HarnessError
from .evidence import safe_name
from .guest import Guest
from .guestcheck import health
from .modes import FACTS_SCRIPT, MmuMode, ModeFacts, parse_facts
from .prepare import Prepared
from .request import RunOptions
from .results import RunResult
from .vmspec import VMSpec

log = logging.getLogger("kvm-harness")

PORT_ATTEMPTS = 3
_TAINT_MARK = "### kvm-harness tainted "  # ends the log in cut_dmesg's output; the taint follows it


@dataclass
class Session:
    vm: vm_mod.VM
    guest: Guest
    mode: MmuMode
    out: Path           # the run directory: console-<tag>.log, dmesg-<tag>.txt, ... go there
    ready_s: float      # QEMU start to SSH ready
    taint: int = 0          # /proc/sys/kernel/tainted at the last cut_dmesg()
    taint_before: int = 0   # ... and at the one before it
    unjudgeable: str = ""   # why its workloads' consistency cases are a SKIP (ModeFacts.partly_instrumented)

    @property
    def tag(self) -> str:
        """Names the VM's artifacts: the mode, then -2, -3... for the mode's later VMs."""
        return self.vm.tag

    @classmethod
    def boot(cls, prepared: Prepared, opts: RunOptions, mode: MmuMode, out: Path, tag: str) -> Session:
        """Start QEMU and wait for SSH. Raises BootError (panic, QEMU exit, deadline) with the console's
        tail, UsageError without QEMU; the VM is always stopped when this raises."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            proc.check_interrupted()
            spec = VMSpec(kernel=prepared.build.bzimage, initrd=prepared.initrd, accel=prepared.accel,
                                 append=list(mode.append) + opts.extra_append, smp=opts.smp, memory=opts.memory,
                                 ssh_port=vm_mod.free_port(), name=f"kvm-harness-{out.name}-{tag}")
            vm = vm_mod.VM(spec, out, tag)
            try:
                vm.start()
                guest = Guest.wait_ready(vm, spec.ssh_port, prepared.image.client_key, prepared.image.known_hosts,
                                         opts.boot_deadline_s)
            except vm_mod.PortInUse as e:
                vm.stop()
                # Another run took the port between free_port() and QEMU's bind: pick another.
                if attempt == PORT_ATTEMPTS:
                    raise
                log.warning("%s; retrying with another port", e)
                continue
            except Exception:
                vm.stop(fast=proc.interrupted() is not None)
                raise
            except BaseException:  # KeyboardInterrupt, SystemExit: just be gone
                vm.stop(fast=True)
                raise
            return cls(vm, guest, mode, out, time.monotonic() - vm.started_at)
        raise AssertionError("unreachable")

    def run(self, cmd: str, timeout_s: float, watch: Callable[[], str] | None = None,
            hold: bool = False) -> RunResult:
        """guest.run: rc None on timeout or when `watch` stopped it (left running until `forensics` with
        `hold`); GuestError when the guest goes away."""
        return self.guest.run(cmd, timeout_s, watch, hold=hold)

    def facts(self) -> ModeFacts:
        """What the guest says about its KVM (modes.FACTS_SCRIPT)."""
        return parse_facts(self.guest.check(FACTS_SCRIPT, 30))

    def cut_dmesg(self, after: str | None = None) -> tuple[str, list[health.Finding]]:
        """The kernel log since the last cut (`dmesg -c`), appended to dmesg-<tag>.txt under
        `### after <after>` (None: the boot's, which starts the file), and its health findings. The kernel's
        taint is read with it into `taint_before`/`taint` (health.taint_finding() compares them); a bug taint
        gained with no report in the log is a finding too."""
        out = self.guest.check(f"dmesg -c; echo '{_TAINT_MARK}'$(cat /proc/sys/kernel/tainted)", 30)
        dmesg, _, taint = out.rpartition(_TAINT_MARK)
        self.taint_before, self.taint = self.taint, int(taint.strip() or 0)
        name = f"dmesg-{self.tag}.txt"
        if after is None:
            (self.out / name).write_text(dmesg)
        else:
            with open(self.out / name, "a") as f:
                f.write(f"### after {after}\n{dmesg}")
        findings = health.scan(dmesg, name)
        gained = health.taint_finding(self.taint_before, self.taint, name)
        return dmesg, findings or ([gained] if gained else [])

    def forensics(self, path: str, why: str, trace: bool = True) -> tuple[dict[str, object], str]:
        """What the guest and QEMU look like now, into forensics/<path>/: (summary, artifact dir
        relative to the run directory); `trace` as forensics.collect. Never raises for a guest that dies
        meanwhile."""
        dest = self.out / "forensics" / safe_name(path)
        try:
            summary = forensics.collect(self.vm, self.guest, dest, why, trace)
        except HarnessError:
            raise
        except Exception as e:  # forensics must never turn an ERROR into a crash
            log.warning("forensics for %s failed: %s", path, e)
            summary = {"error": f"{type(e).__name__}: {e}"}
        finally:
            ended = self.guest.held_ended()
            self.guest.release()   # the hung or spinning command, seen; now it may end
        if ended:
            summary["ended_meanwhile"] = ended
        return summary, str(dest.relative_to(self.out))

    def end_workload(self, program: str, wait_s: float = 20.0) -> None:
        """SIGKILL every process named `program` (a test left running by run(hold=True)) and wait up to `wait_s`
        for them to be gone: their VMs' teardown then happens under the capture's trace. GuestError when
        the guest is gone."""
        # the whole name: busybox's killall/pidof match a 15-character comm against argv[0]'s basename too
        name = program.rsplit("/", 1)[-1]
        steps = max(1, int(wait_s / 0.2))
        self.guest.release()
        q = shlex.quote(name)
        self.guest.run(f"killall -9 {q} 2>/dev/null; i=0; "
                       f"while pidof {q} >/dev/null && [ $i -lt {steps} ]; do sleep 0.2; i=$((i+1)); done", wait_s + 10)

    def stop(self, fast: bool = False) -> None:
        """Power the guest off and stop QEMU; `fast` (interrupt, error) skips the courtesy."""
        t0 = time.monotonic()
        fast = fast or proc.interrupted() is not None
        try:
            if not fast:
                try:
                    # reboot, not poweroff: QEMU runs with -no-reboot, so this ends it
                    # whatever the guest kernel's config (poweroff needs ACPI).
                    self.guest.run("sync; reboot -f", 5)
                except Exception:
                    pass  # the connection drops as the guest powers off
            self.guest.close()
            if self.vm.proc is not None and not fast:
                try:
                    self.vm.proc.wait(timeout=5)
                except Exception:
                    pass
            self.vm.stop(fast=fast)
        finally:
            log.debug("VM %s stopped in %.1f s", self.tag, time.monotonic() - t0)
