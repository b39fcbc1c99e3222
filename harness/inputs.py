"""The check of every input of a request before any work starts: each problem a UsageError naming the
option or the path (exit 2), before a run directory, a cache entry or a VM exists."""

from __future__ import annotations

from . import cache, image, kconfig, schedule, source
from . import series as series_mod
from .errors import UsageError
from .modes import MODES
from .request import ACCELERATORS, PrepareRequest, RunOptions, RunRequest


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
