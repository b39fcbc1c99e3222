"""The stages before any VM: source -> series -> config -> build -> image, composed into a `Prepared`
build that any number of runs can boot (each stage is its own module and callable on its own).

Everything heavy is keyed and cached under cache.cache_root(): a second `prepare` of the same inputs
runs no make and packs no image.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from . import build as build_mod
from . import cache, proc, source
from . import image as image_mod
from . import series as series_mod
from . import vm as vm_mod
from .request import PrepareRequest
from .vmspec import Accel

T = TypeVar("T")


@dataclass
class Prepared:
    """A built kernel with its selftests, the guest image and its initramfs, the accelerator."""

    build: build_mod.BuildResult
    initrd: Path
    image: image_mod.Image
    accel: Accel
    qemu_version: str
    source: dict[str, object]          # the source's identity (kind, sha256 or commit, ...)
    build_s: float = 0.0               # what the stages took in this prepare (0 make on a cache hit)
    image_s: float = 0.0

    @property
    def key(self) -> str:
        """The cache key of the kernel build and of the image: equal keys boot the same bits."""
        return f"{self.build.key}+{self.image.key}"

    @property
    def selftests(self) -> tuple[str, ...]:
        """The KVM selftests this build has, by name (builds made before the list was recorded: the two
        every tree has)."""
        names = self.build.meta.get("selftests")
        return tuple(str(n) for n in names) if isinstance(names, list) else build_mod.SELFTESTS

    @property
    def selftest_errors(self) -> dict[str, str]:
        """The tree's selftests that did not build: name -> first compiler or linker error."""
        errors = self.build.meta.get("selftest_errors")
        return {str(k): str(v) for k, v in errors.items()} if isinstance(errors, dict) else {}

    @property
    def instrumented(self) -> bool:
        """Does the kernel carry the instrumentation (the kvm_mmu_pw_* tracepoints)? Read from the build's
        System.map (KVM is built in), not from the series' names: a build is cached by its patches, and the
        run that made it may have grouped them otherwise (a walk's prefix); a series named `instrumentation`
        counts too, for a kernel whose KVM is a module."""
        try:
            if "__tracepoint_kvm_mmu_pw_spte" in (self.build.dir / "System.map").read_text(errors="replace"):
                return True
        except OSError:
            pass
        applied = self.build.meta.get("series", [])
        return isinstance(applied, list) and any(s.get("name") == "instrumentation" for s in applied)


def prepare(req: PrepareRequest, series: list[series_mod.Series], log_dir: Path,
            accel: Accel | None = None,
            on_source: Callable[[dict[str, object]], None] | None = None) -> Prepared:
    """Build (or find in the cache) the kernel and image for `req`.

    `series`: request.validate's (loaded and hashed). `log_dir` receives build.log (a note and the
    original build's log on a cache hit) and .config. `on_source` is told the source's identity as
    soon as it is known, before the build (metadata.json records it early). Raises the stages'
    errors: UsageError, ApplyError, ConfigError, BuildError, InfraError.
    """
    root = cache.cache_root()
    t0 = time.monotonic()
    # Each cache entry this run uses is held until the process exits (cache.hold): `kvm-harness cache
    # prune` skips it. One that a prune removed just before the hold is made again.
    ws = _held(lambda: source.from_tree(req.tree, root, req.tree_ref) if req.tree
               else source.from_tarball(req.tarball, root), lambda w: w.src.parent)
    if on_source is not None:
        on_source(ws.identity)
    b = _held(lambda: build_mod.build(build_mod.BuildRequest(ws, series, req.config), root, log_dir / "build.log"),
              lambda b: b.dir)
    build_s = round(time.monotonic() - t0, 1)
    record_build(b, log_dir, built_here=not b.cached)
    t1 = time.monotonic()
    img = image_mod.build_image(root)
    cache.hold(img.dir)
    initrd = _held(lambda: image_mod.initrd_for(img, b, root), lambda p: p)
    image_s = round(time.monotonic() - t1, 1)
    proc.check_interrupted()
    if accel is None:
        accel = vm_mod.choose_accel(req.accel)
    return Prepared(b, initrd, img, accel, vm_mod.qemu_version(), dict(ws.identity), build_s, image_s)


def _held(make: Callable[[], T], entry: Callable[[T], Path]) -> T:
    """make(), held in the cache; made once more if a prune removed it before the hold took."""
    made = make()
    if not cache.hold(entry(made)):
        made = make()
        cache.hold(entry(made))
    return made


def record_build(b: build_mod.BuildResult, log_dir: Path, built_here: bool) -> None:
    """The build's final .config into `log_dir`; and unless make ran for it (`built_here`: build.build()
    wrote the log there), a build.log that says make was not run, then the original build's log."""
    shutil.copy2(b.dir / "config", log_dir / ".config")
    if built_here:
        return
    with open(log_dir / "build.log", "w") as f:
        f.write(f"# build cache hit {b.key}: make was not run. The original build's log follows "
                f"({b.dir / 'build.log'}).\n")
        f.write((b.dir / "build.log").read_text(errors="replace"))
