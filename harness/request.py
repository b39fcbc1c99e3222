"""What a run is asked to do, as typed values, and the check of every input before any work starts.

Like kunit_tool's requests: `PrepareRequest` (what to build), `RunOptions` (how the cells run) and
`RunRequest`, the two together plus the modes and the results root, which is what `boot-test` and
`shell` take. Every default lives here (or in the dataclass it comes from); the CLI reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import cache, capture, kconfig, schedule, source
from . import series as series_mod
from .checks import livelock
from .errors import UsageError
from .modes import DEFAULT_MODES, MODES
from .vm import VMSpec
from .workloads import WorkloadPlan

ACCELERATORS = ("auto", "kvm", "tcg")


@dataclass
class PrepareRequest:
    """The build: kernel source, series applied in order, config; and the accelerator to run it with."""

    tarball: Path = source.DEFAULT_TARBALL
    tree: Path | None = None
    tree_ref: str = "HEAD"      # the commit of `tree` built (a branch, tag or id); the checkout is never used
    series_dirs: list[Path] = field(default_factory=list)
    config: kconfig.ConfigRequest = field(default_factory=lambda: kconfig.ConfigRequest("trim"))
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
    capture: capture.CaptureSettings = field(default_factory=capture.CaptureSettings)
    vms: int | None = None      # VMs at once (None: auto, see schedule.lanes_for)


@dataclass
class RunRequest(RunOptions, PrepareRequest):
    """`boot-test`: build, then every selected workload in every mode; artifacts under results_root."""

    modes: list[str] = field(default_factory=lambda: list(DEFAULT_MODES))
    results_root: Path = Path("results")


def validate_options(opts: RunOptions) -> None:
    """The run options alone; a UsageError naming the option otherwise."""
    if opts.boot_deadline_s <= 0 or opts.plan.timeout_s <= 0:
        raise UsageError("--boot-deadline and --timeout must be positive numbers of seconds")
    schedule.memory_bytes(opts.memory)
    if not 0 <= opts.livelock.window_s < float("inf"):
        raise UsageError(f"--livelock-window is a number of seconds, 0 to turn the watchdog off: "
                         f"{opts.livelock.window_s:g}")
    if opts.vms is not None and opts.vms < 1:
        raise UsageError(f"--vms must be at least 1 (or auto): {opts.vms}")
    if opts.consistency not in ("auto", "off"):
        raise UsageError(f"--consistency is auto or off: {opts.consistency!r}")
    names = [n for n, _ in opts.plan.commands]
    if len(set(names)) != len(names):
        raise UsageError(f"--workload-cmd names must be unique: {', '.join(names)}")


def validate_modes(modes: list[str]) -> None:
    if not modes:
        raise UsageError("no MMU mode given (--modes)")
    for m in modes:
        if m not in MODES:
            raise UsageError(f"unknown MMU mode {m!r} (choose from {', '.join(MODES)})")


def validate_prepare(req: PrepareRequest) -> list[series_mod.Series]:
    """The build's inputs; returns the series, loaded (each patch read and hashed), in apply order."""
    if req.tree is not None:
        source.check_tree(req.tree, req.tree_ref)
    elif req.tree_ref != "HEAD":
        raise UsageError(f"--ref {req.tree_ref} names a commit of a git tree: give the tree with --tree")
    else:
        source.check_tarball(req.tarball)
    series = [series_mod.load_series(d) for d in req.series_dirs]
    req.config.validate()
    # not created here: a run refused for any reason leaves no cache behind
    cache.writable_dir(cache.cache_root(), "the cache (KVM_HARNESS_CACHE or XDG_CACHE_HOME)", create=False)
    if req.accel not in ACCELERATORS:
        raise UsageError(f"unknown accelerator {req.accel!r} (auto, kvm or tcg)")
    return series


def validate(req: RunRequest) -> list[series_mod.Series]:
    """Every input checked before any work starts; problems are UsageErrors naming the path.

    Returns the series, loaded (each patch read and hashed), in the order they apply.
    """
    series = validate_prepare(req)
    validate_modes(req.modes)
    validate_options(req)
    return series
