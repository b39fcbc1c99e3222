"""The check of every input of a request before any work starts: each problem a UsageError naming the
option or the path (exit 2), before a run directory, a cache entry or a VM exists."""

from __future__ import annotations

from . import cache, image, kconfig, schedule, sizes, source
from . import series as series_mod
from .errors import UsageError
from .modes import MODES
from .request import ACCELERATORS, PrepareRequest, RunOptions, RunRequest

# The range of every numeric run option, and why its bounds: a value outside is one usage line (exit 2)
# before any work, never a matrix that starts and ends in QEMU's own defaults, soft lockups or a full disk.
SMP = (1, 64)                      # QEMU's -smp; the selftests use 1 or 2 vCPUs
MIN_MEMORY = 1 << 30               # the guest holds the selftests, their memory and a 64 MiB ring buffer a vCPU
VMS = (1, 16)
ITERATIONS = (1, 10_000_000)       # dirty_log_test -i; a soak test (or a "forever") is the user's to ask
TIMEOUT_S = (1.0, 86400.0)         # a test's; a day at most
BOOT_DEADLINE_S = (5.0, 3600.0)
LIVELOCK_WINDOW_S = (4.0, 3600.0)  # or 0 (off): at least two of the watchdog's 2 s samples
MIN_PERF_BYTES = 1 << 20


def in_range(option: str, value: float, bounds: tuple[float, float], unit: str = "") -> None:
    """A UsageError "OPTION must be between LOW and HIGH: VALUE" unless low <= value <= high."""
    low, high = bounds

    def shown(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"
    if not low <= value <= high:
        raise UsageError(f"{option} must be between {shown(low)} and {shown(high)}{unit}: {shown(value)}")


def host_memory() -> int | None:
    """MemTotal of this host, bytes (None where /proc/meminfo does not say)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def validate_options(opts: RunOptions) -> None:
    """The run options alone, every number in its range (the constants above); a UsageError naming the
    option otherwise."""
    in_range("--smp", opts.smp, SMP)
    memory = schedule.memory_bytes(opts.memory)
    if memory < MIN_MEMORY:
        raise UsageError(f"--memory must be at least 1G (the guest holds the selftests, their memory and the trace"
                         f" ring buffer): {opts.memory}")
    total = host_memory()
    if total is not None and memory > total:
        raise UsageError(f"--memory {opts.memory} is more than this host has ({total >> 20} MiB)")
    if opts.vms is not None:
        in_range("--vms", opts.vms, VMS)
    in_range("--iterations", opts.plan.iterations, ITERATIONS)
    in_range("--timeout", opts.plan.timeout_s, TIMEOUT_S, " s")
    in_range("--boot-deadline", opts.boot_deadline_s, BOOT_DEADLINE_S, " s")
    if opts.livelock.window_s != 0:
        in_range("--livelock-window", opts.livelock.window_s, LIVELOCK_WINDOW_S, " s (or 0: off)")
    perf = sizes.parse(opts.plan.perf_bytes, "--perf-bytes wants a size like 128M or 1G", units="KMG")
    if not MIN_PERF_BYTES <= perf <= memory // 2:
        raise UsageError(f"--perf-bytes must be between 1M and half of --memory ({memory >> 21}M), the rest being"
                         f" the guest's own: {opts.plan.perf_bytes}")
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
    if not image.RECIPE_DIR.is_dir():
        raise UsageError(f"no guest image recipe: {image.RECIPE_DIR} is missing (kvm-harness runs from its git"
                         " checkout, installed with pip install -e)")
    series = [series_mod.load_series(d) for d in req.series_dirs]
    kconfig.validate_config(req.config)
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
