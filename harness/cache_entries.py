"""`kvm-harness cache`: what the cache holds (workspaces, builds, images, initramfs, ccache, trees) and
pruning it by age and total size, least recently used first, never an entry a running harness holds.

Last use is the mtime of the entry's `.NAME.use` file (cache.hold() touches it whenever a run uses the
entry), else the entry's own mtime. A running harness holds a shared flock on that file until it exits;
pruning takes the exclusive flock without waiting, so a held entry is skipped and said to be.
Kinds never pruned: `ccache` (it bounds itself: `ccache -M`), `image` base images (tiny, and every
initramfs is made from them) and `tree` (git trees made by scripts/tree-from-linux-source.sh: inputs,
whose objects the workspaces borrow).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import cache, proc, sizes
from .errors import UsageError

PRUNABLE = ("workspace", "build", "initrd")


@dataclass(frozen=True)
class Entry:
    kind: str          # workspace, build, initrd, image, ccache, tree
    path: Path
    size: int          # bytes on disk (du)
    last_use: float    # epoch seconds


def _size(path: Path) -> int:
    r = proc.run(["du", "-sb", str(path)])
    try:
        return int(r.stdout.split()[0])
    except (IndexError, ValueError):
        return 0


def _last_use(path: Path) -> float:
    u = cache.use_file(path)
    try:
        return u.stat().st_mtime
    except OSError:
        return path.stat().st_mtime


def entries(root: Path) -> list[Entry]:
    """Every entry under the cache root, by kind: sources/* workspaces, builds/*, images/*.cpio.gz
    initramfs (one per image and build), images/* base images, ccache/, trees/*."""
    found: list[tuple[str, Path]] = []
    for kind, sub, want_dir in (("workspace", "sources", True), ("build", "builds", True),
                                ("image", "images", True), ("initrd", "images", False), ("tree", "trees", True)):
        d = root / sub
        if d.is_dir():
            found += [(kind, p) for p in sorted(d.iterdir())
                      if not p.name.startswith(".") and p.is_dir() == want_dir
                      and (want_dir or p.name.endswith(".cpio.gz"))]
    if (root / "ccache").is_dir():
        found.append(("ccache", root / "ccache"))
    return [Entry(k, p, _size(p), _last_use(p)) for k, p in found]


def choose(found: list[Entry], now: float, max_age_s: float | None, max_bytes: int | None) -> list[Entry]:
    """What to remove, pure: every prunable entry older than `max_age_s`, then least recently used first
    until the whole cache fits `max_bytes`. The caller still skips entries that turn out to be held."""
    prunable = sorted((e for e in found if e.kind in PRUNABLE), key=lambda e: e.last_use)
    out = [e for e in prunable if max_age_s is not None and now - e.last_use > max_age_s]
    total = sum(e.size for e in found) - sum(e.size for e in out)
    if max_bytes is not None:
        for e in prunable:
            if total <= max_bytes:
                break
            if e not in out:
                out.append(e)
                total -= e.size
    return out


def remove(e: Entry) -> bool:
    """Remove one entry unless a running harness holds it; True if removed."""
    u = cache.use_file(e.path)
    with open(u, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        # Renamed first: a reader never sees half an entry.
        gone = e.path.with_name(f".{e.path.name}.pruning-{os.getpid()}")
        os.rename(e.path, gone)
        if gone.is_dir():
            shutil.rmtree(gone, ignore_errors=True)
        else:
            gone.unlink()
        if e.kind == "workspace":
            e.path.with_suffix(".lock").unlink(missing_ok=True)
        u.unlink()
    return True


def parse_size(text: str) -> int:
    """40G, 500M, 2T -> bytes; a UsageError otherwise."""
    return sizes.parse(text, "a cache size is a number of M, G or T (like 40G)", units="MGT")


def human(n: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}T"


def table(found: list[Entry], now: float) -> str:
    """`cache list`'s lines: kind, size, days since last use, path; then the total."""
    lines = [f"{'kind':9} {'size':>7} {'unused':>7}  path"]
    for e in sorted(found, key=lambda e: (e.kind, -e.last_use)):
        lines.append(f"{e.kind:9} {human(e.size):>7} {(now - e.last_use) / 86400:6.1f}d  {e.path}")
    lines.append(f"total {human(sum(e.size for e in found))} in {len(found)} entries")
    return "\n".join(lines)


def prune(root: Path, max_age_days: float | None, max_size: str | None) -> tuple[list[Entry], list[Entry]]:
    """Prune the cache at `root`; returns (removed, held: chosen but in use by a running harness). The
    temporary entries of harness processes that were killed outright go first (cache.sweep_orphans)."""
    if max_age_days is None and max_size is None:
        raise UsageError("cache prune needs --max-age DAYS and/or --max-size SIZE")
    for kind in ("builds", "images", "sources"):
        if (root / kind).is_dir():
            cache.sweep_orphans(root / kind)
    found = entries(root)
    chosen = choose(found, time.time(), None if max_age_days is None else max_age_days * 86400,
                    None if max_size is None else parse_size(max_size))
    removed: list[Entry] = []
    held: list[Entry] = []
    for e in chosen:
        (removed if remove(e) else held).append(e)
    return removed, held
