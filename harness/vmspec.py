"""What a VM is, as values: the accelerator (Accel) and everything QEMU is started with (VMSpec).
No I/O: vm.py starts and stops the QEMU process of a VMSpec, request.py takes its defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Accel:
    name: str          # "kvm" or "tcg"
    cpu: str           # "host" or "max"
    reason: str        # why this accelerator was chosen (logged, kept in results)


@dataclass
class VMSpec:
    kernel: Path
    initrd: Path
    accel: Accel
    append: list[str] = field(default_factory=list)
    smp: int = 2         # the one default of --smp
    memory: str = "3G"   # the one default of --memory: the trace ring buffer lives in the guest's RAM too
    ssh_port: int = 0
    name: str = "kvm-harness"
