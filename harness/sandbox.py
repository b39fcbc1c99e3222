"""The build sandbox: every step that runs a series' own code on the host (the kernel's config targets and
merge_config.sh, the kernel build, the selftests' build) runs under bubblewrap.

A series that arrives by mail is untrusted, and a kernel build runs its Makefiles and scripts. Inside the
sandbox: no network (a new network namespace with loopback only), no capabilities, its own PID, IPC and UTS
namespaces, the host's filesystem read-only, a private /tmp, and the paths that must not be seen at all
hidden under empty tmpfs mounts: the user's home, the harness's cache (its keys, other builds) and every
results root of this process. Only the build's own workspace (source and O= directory) and the ccache
directory are mounted writable. A step that writes elsewhere gets the kernel build's own error ("Read-only
file system", naming the path) and is a build ERROR like any other.

Why bubblewrap (Debian's `bubblewrap`): the unprivileged sandbox of Flatpak, one small setuid-free
program, made for exactly this (a command with a chosen view of the filesystem and no network); a container
runtime would add a daemon or an image for no more isolation than the build needs. Its cost is measured in
docs/measurements.md.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from .errors import InfraError

BWRAP = "bwrap"
_hidden: set[Path] = set()
_lock = threading.Lock()


def hide(path: Path) -> None:
    """Hide `path` (a results root) from every sandboxed step of this process from now on."""
    with _lock:
        _hidden.add(path.resolve())


def hidden() -> list[Path]:
    with _lock:
        return sorted(_hidden)


PACKAGE = Path(__file__).resolve().parent   # its configs/ and tools/kbuild-cc, which the build reads


def command(cmd: list[str], writable: list[Path], hide_also: list[Path],
            readable: list[Path] | None = None) -> list[str]:
    """`cmd` wrapped in bwrap: `writable` bound read-write, `hide_also`, Path.home() and the registered
    results roots (hide) under empty tmpfs mounts, mounted first so that a path inside a hidden one is bound
    again after it: `writable`, the harness's package and `readable` (the user's fragments, say) read-only.
    Raises InfraError without bwrap."""
    if shutil.which(BWRAP) is None:
        raise InfraError("bubblewrap (bwrap) is not installed: the series' build steps run in its sandbox"
                         " (apt-get install bubblewrap; make setup installs it)")
    args = [BWRAP, "--die-with-parent", "--unshare-all", "--cap-drop", "ALL", "--new-session",
            "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    writable = [w.resolve() for w in writable]
    for w in writable:
        w.mkdir(parents=True, exist_ok=True)   # the build's own directories: it would make them anyway
    for h in sorted({Path.home().resolve(), *(p.resolve() for p in hide_also), *hidden()},
                    key=lambda p: len(p.parts)):
        # a hidden path inside a writable one (a results root in the workspace?) is not hidden: the build owns it
        if h.exists() and h.is_dir() and not any(w == h or h.is_relative_to(w) for w in writable):
            args += ["--tmpfs", str(h)]
    for r in [PACKAGE, *(readable or [])]:
        r = r.resolve()
        if r.exists():
            args += ["--ro-bind", str(r), str(r)]
    for w in writable:
        args += ["--bind", str(w), str(w)]
    return [*args, "--", *cmd]
