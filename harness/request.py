"""What a run is asked to do, as typed values (inputs.py checks them before any work starts).

Like kunit_tool's requests: `PrepareRequest` (what to build), `RunOptions` (how the cells run) and
`RunRequest`, the two together plus the modes and the results root, which is what `boot-test` and
`shell` take. Every default lives here (or in the dataclass it comes from); the CLI reads them. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .configreq import ConfigRequest
from .evidence import CaptureSettings
from .guestcheck import livelock
from .modes import DEFAULT_MODES
from .vmspec import VMSpec
from .workloads import WorkloadPlan

ACCELERATORS = ("auto", "kvm", "tcg")
DEFAULT_TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")  # Debian's linux-source-6.12


@dataclass
class PrepareRequest:
    """The build: kernel source, series applied in order, config; and the accelerator to run it with."""

    tarball: Path = DEFAULT_TARBALL
    tree: Path | None = None
    tree_ref: str = "HEAD"      # the commit of `tree` built (a branch, tag or id); the checkout is never used
    series_dirs: list[Path] = field(default_factory=list)
    config: ConfigRequest = field(default_factory=lambda: ConfigRequest("trim"))
    accel: str = "auto"


@dataclass
class RunOptions:
    """How the cells of a prepared build run: the VMs, the workloads' knobs, the checks."""

    plan: WorkloadPlan = field(default_factory=WorkloadPlan)
    boot_deadline_s: float = 60.0
    smp: int = VMSpec.smp
    memory: str = VMSpec.memory
    extra_append: list[str] = field(default_factory=list)
    consistency: str = "auto"   # auto: check wherever the guest kernel carries the instrumentation; off
    retries: int = 1            # a failing selftest is run once more before it is called a FAIL
    livelock: livelock.Policy = field(default_factory=livelock.Policy)  # the fault-path watchdog
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    vms: int | None = None      # VMs at once (None: auto, see schedule.lanes_for)


@dataclass
class RunRequest(RunOptions, PrepareRequest):
    """`boot-test`: build, then every selected workload in every mode; artifacts under results_root."""

    modes: list[str] = field(default_factory=lambda: list(DEFAULT_MODES))
    results_root: Path = Path("results")
