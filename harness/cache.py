"""The cache root (XDG style, overridable), content keys, locks, atomic publish.

Everything heavy (kernel source, build trees, ccache, images) lives under one
directory outside the repository. A cache entry is published by renaming a
finished temporary directory into place, so a failed or killed run never
leaves a half-made entry behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import UsageError


def cache_root() -> Path:
    env = os.environ.get("KVM_HARNESS_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser().resolve() / "kvm-harness"


def writable_dir(path: Path, what: str, create: bool = True) -> None:
    """Check that `path` is a directory this process can write in (made, with its parents, if `create`), or
    raise UsageError naming it and the system's reason: before any work, so that a read-only or full location
    is never found out after a build. An existing directory gets a file created and removed (permissions alone
    do not say it for root); without `create`, a missing one is judged by its nearest existing parent, which
    stays untouched (os.access: a read-only mount is refused even to root)."""
    try:
        if path.is_dir() or create:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".kvm-harness-write-test-"):
                pass
            return
        parent = path
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(parent))
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(parent))
    except OSError as e:
        raise UsageError(f"{what} is not a writable directory: {path}: {e.strerror or e}") from e


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def key_of(obj: object) -> str:
    """A short stable key for a JSON-serialisable description."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (created if needed), held for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


PUBLISHING = ".publishing"  # in a temporary entry: flocked by the process that builds it, until renamed
ORPHAN_AGE_S = 60  # a temporary entry without its lock file (made before it existed) older than this is orphaned


def sweep_orphans(parent: Path) -> list[str]:
    """Remove the temporary entries under `parent` whose publisher died (SIGKILL, a lost machine): their
    `.publishing` lock can be taken. A live publisher's stays. Returns the names removed."""
    gone = []
    for d in parent.glob(".*.tmp-*"):
        if not d.is_dir():
            continue  # write_json's temporary files are renamed at once, never left to sweep
        try:
            with open(d / PUBLISHING) as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # being built right now
        except FileNotFoundError:
            try:
                if os.stat(d).st_mtime > time.time() - ORPHAN_AGE_S:
                    continue  # just made: its publisher may not have locked it yet
            except FileNotFoundError:
                continue
        shutil.rmtree(d, ignore_errors=True)
        gone.append(d.name)
    return gone


@contextlib.contextmanager
def publishing(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; rename it into place on success.

    On any exception (including KeyboardInterrupt) the temporary directory is
    removed and `final` is left as it was. A process killed outright cannot remove
    it: the temporary directory holds a flocked `.publishing` file while it is
    built, so the next publisher in the same directory (sweep_orphans) removes it.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_orphans(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    with open(tmp / PUBLISHING, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield tmp
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            (final / PUBLISHING).unlink()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def write_json(path: Path, data: object) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


# Entries this process uses: their .use files stay open with a shared flock until it exits, so that
# `kvm-harness cache prune` (cache_entries.py), which takes the exclusive flock, never removes them under it.
_HELD: dict[Path, IO[str]] = {}


def use_file(entry: Path) -> Path:
    """The sibling `.NAME.use` of a cache entry: its mtime is the entry's last use, its flock the hold."""
    return entry.parent / f".{entry.name}.use"


def hold(entry: Path) -> bool:
    """Mark `entry` used now and hold it (shared) until this process exits. Returns whether the entry still
    exists once held: a prune that had it locked may have removed it meanwhile (the caller then rebuilds)."""
    u = use_file(entry)
    if u not in _HELD:
        u.parent.mkdir(parents=True, exist_ok=True)
        f = open(u, "a")  # noqa: SIM115 - kept open on purpose: the flock lives as long as the process
        fcntl.flock(f, fcntl.LOCK_SH)
        _HELD[u] = f
    os.utime(u)
    return entry.exists()
