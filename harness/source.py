"""Kernel source: Debian's linux-source tarball (default) or a user's git tree.

Either way the harness works in its own git workspace under the cache, so a
user's checkout and index are never touched: a tarball is unpacked once and
committed as the base; a tree is cloned with --shared (objects borrowed read
only) and its HEAD fetched. Patches are then applied as commits on top of the
base, and switching series only rewrites the files that differ, which keeps
the out-of-tree build incremental.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import cache, proc
from .errors import InfraError, UsageError
from .request import DEFAULT_TARBALL

log = logging.getLogger("kvm-harness")

# In every workspace the harness owns: `git am` would otherwise start a background
# `git gc --auto` (a repack of ~90k objects in a tarball's base) beside the kernel build.
NO_BACKGROUND_GC = (("gc.auto", "0"), ("maintenance.auto", "false"))
GIT_ID = ["-c", "user.name=kvm-harness", "-c", "user.email=kvm-harness@kvm-harness.invalid",
          "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null"]


@dataclass
class Workspace:
    """A git work tree the harness owns, with the out-of-tree build dir beside it."""

    src: Path
    obj: Path
    lock: Path
    base_commit: str
    identity: dict[str, object] = field(default_factory=dict)

    def git(self, *args: str, logfile: Path | None = None, check: bool = True) -> str:
        r = proc.run(["git", *GIT_ID, "-C", str(self.src), *args], logfile=logfile)
        if check and r.returncode != 0:
            raise InfraError(f"git {' '.join(args)} failed in {self.src}: {(r.stdout + r.stderr).strip()[-400:]}")
        return r.stdout.strip()

    def reset(self) -> None:
        """Back to the pristine base: no half-applied series survives a run.

        Called with the workspace lock held, so a leftover index.lock can only
        be from a git killed with the harness (SIGKILL): it is stale, remove it.
        """
        (self.src / ".git" / "index.lock").unlink(missing_ok=True)
        if (self.src / ".git" / "rebase-apply").exists():
            self.git("am", "--abort", check=False)
            shutil.rmtree(self.src / ".git" / "rebase-apply", ignore_errors=True)
        self.git("checkout", "-q", "-f", "--detach", self.base_commit)
        self.git("clean", "-q", "-f", "-d", "-x")


def kernel_version(src: Path) -> str:
    return version_from_makefile((src / "Makefile").read_text(errors="replace"))


def version_from_makefile(text: str) -> str:
    text = text[:2000]
    vals = {k: (re.search(rf"^{k}[ \t]*=[ \t]*(\S*)", text, re.M) or [None, ""])[1]
            for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL", "EXTRAVERSION")}
    return f"{vals['VERSION']}.{vals['PATCHLEVEL']}.{vals['SUBLEVEL']}{vals['EXTRAVERSION']}"


def tarball_sha(tarball: Path, root: Path) -> str:
    """sha256 of the tarball, remembered by (path, size, mtime) to spare warm runs the hash."""
    st = tarball.stat()
    memo = root / "sources" / "tarball-hashes.json"
    known = json.loads(memo.read_text()) if memo.exists() else {}
    tag = f"{tarball.resolve()}:{st.st_size}:{int(st.st_mtime)}"
    if tag not in known:
        known[tag] = cache.sha256_file(tarball)
        memo.parent.mkdir(parents=True, exist_ok=True)
        cache.write_json(memo, known)
    return str(known[tag])


def check_tarball(tarball: Path) -> None:
    if tarball.exists() and not tarball.is_file():
        raise UsageError(f"kernel source tarball is not a file: {tarball}")
    if not tarball.is_file():
        hint = " (install it with `make setup`, i.e. apt-get install linux-source-6.12)" \
            if tarball == DEFAULT_TARBALL else ""
        raise UsageError(f"kernel source tarball not found: {tarball}{hint}")


def check_tree(tree: Path, ref: str = "HEAD") -> None:
    """A kernel git tree with `ref` (a branch, tag or commit) in it; a UsageError naming what is wrong."""
    if not tree.is_dir():
        raise UsageError(f"kernel tree not found: {tree}")
    r = proc.run(["git", "-C", str(tree), "rev-parse", "--verify", "HEAD^{commit}"])
    if r.returncode != 0:
        raise UsageError(f"kernel tree is not a git repository with a commit: {tree}")
    if ref != "HEAD" and proc.run(["git", "-C", str(tree), "rev-parse", "--verify", "-q",
                                   f"{ref}^{{commit}}"]).returncode != 0:
        raise UsageError(f"kernel tree {tree} has no commit {ref!r} (a branch, tag or commit id)")
    if not (tree / "Makefile").is_file() or not (tree / "arch" / "x86").is_dir():
        raise UsageError(f"{tree} does not look like a Linux kernel tree (no Makefile or arch/x86)")


def from_tarball(tarball: Path, root: Path) -> Workspace:
    check_tarball(tarball)
    sha = tarball_sha(tarball, root)
    entry = root / "sources" / f"tarball-{sha[:16]}"
    with cache.locked(entry.with_suffix(".lock")):
        if not (entry / "base.json").exists():
            log.info("unpacking %s into the cache (once per tarball)", tarball)
            with cache.publishing(entry) as tmp:
                (tmp / "unpack").mkdir()
                # GNU tar, not Python's tarfile: 10 s instead of ~25 s for 87k files.
                r = proc.run(["tar", "-x", "--no-same-owner", "-f", str(tarball), "-C", str(tmp / "unpack")])
                if r.returncode != 0:
                    raise UsageError(f"kernel source tarball {tarball} cannot be unpacked: "
                                     f"{' '.join(r.stderr.split())[-300:]}")
                tops = list((tmp / "unpack").iterdir())
                if len(tops) != 1 or not tops[0].is_dir():
                    raise InfraError(f"{tarball}: expected one top-level directory, found {len(tops)}")
                os.rename(tops[0], tmp / "src")
                (tmp / "unpack").rmdir()
                src = tmp / "src"
                version = kernel_version(src)
                # Objects stay loose and uncompressed (hashing 1.4 GB is the cost, not zlib: 11 s
                # instead of 20 s), and automatic gc is off (NO_BACKGROUND_GC).
                for args in (["init", "-q"], *(["config", k, v] for k, v in NO_BACKGROUND_GC),
                             ["-c", "core.looseCompression=0", "add", "-A", "-f", "."],
                             ["commit", "-q", "-m", f"{tarball.name} {version} sha256:{sha}"]):
                    r = proc.run(["git", *GIT_ID, "-C", str(src), *args])
                    if r.returncode != 0:
                        raise InfraError(f"git {' '.join(args[:3])} in the unpacked source failed: {r.stderr[-400:]}")
                commit = proc.run(["git", "-C", str(src), "rev-parse", "HEAD"]).stdout.strip()
                cache.write_json(tmp / "base.json", {"commit": commit, "version": version})
    base = json.loads((entry / "base.json").read_text())
    identity = {"kind": "tarball", "tarball": str(tarball), "sha256": sha,
                "version": base["version"], "base_commit": base["commit"]}
    return Workspace(src=entry / "src", obj=entry / "obj", lock=entry / "workspace.lock",
                     base_commit=base["commit"], identity=identity)


def _clone_shared(tree: Path, dest: Path) -> None:
    r = proc.run(["git", "clone", "-q", "--shared", "--no-checkout", str(tree), str(dest)])
    if r.returncode != 0:
        raise InfraError(f"git clone --shared {tree} failed: {r.stderr[-400:]}")
    for key, val in NO_BACKGROUND_GC:
        proc.run(["git", "-C", str(dest), "config", key, val])


def objects_intact(src: Path) -> bool:
    """Every ref (and HEAD) of a workspace clone names an object it can still read: a `--shared` clone borrows
    the tree's objects, which a rebase and a gc in the tree may remove (git then says "bad object")."""
    refs = proc.run(["git", "-C", str(src), "for-each-ref", "--format=%(objectname)"]).stdout.split()
    head = proc.run(["git", "-C", str(src), "rev-parse", "-q", "--verify", "HEAD"]).stdout.split()
    ids = list(dict.fromkeys(refs + head))
    if not ids:
        return True
    r = proc.run(["git", "-C", str(src), "cat-file", "--batch-check"], input_text="\n".join(ids) + "\n")
    return r.returncode == 0 and "missing" not in r.stdout


def _reclone(tree: Path, entry: Path, why: str) -> None:
    """Replace a workspace clone whose borrowed objects are gone; the O= build directory beside it is kept,
    so ccache and make still find their files. Called with the entry's lock held."""
    log.warning("rebuilding the workspace of %s: %s; its build directory is kept", tree, why)
    fresh = entry / f"src.new-{os.getpid()}"
    shutil.rmtree(fresh, ignore_errors=True)
    _clone_shared(tree, fresh)
    with cache.locked(entry / "workspace.lock"):  # not under a build of another run
        shutil.rmtree(entry / "src")
        os.replace(fresh, entry / "src")


def from_tree(tree: Path, root: Path, ref: str = "HEAD") -> Workspace:
    """The harness's workspace of `tree` at `ref` (default HEAD): a --shared clone in the cache, the commit
    fetched into it; the user's checkout, index and refs are never touched."""
    tree = tree.resolve()
    check_tree(tree, ref)
    commit = proc.run(["git", "-C", str(tree), "rev-parse", f"{ref}^{{commit}}"]).stdout.strip()
    describe = proc.run(["git", "-C", str(tree), "describe", "--always", "--tags", commit]).stdout.strip()
    # --no-optional-locks: plain `git status` would refresh (rewrite) the user's index.
    dirty = ref == "HEAD" and bool(proc.run(["git", "--no-optional-locks", "-C", str(tree), "status",
                                             "--porcelain", "--untracked-files=no"]).stdout.strip())
    if dirty:
        log.warning("%s has uncommitted changes: they are NOT built (the harness builds HEAD %s)",
                    tree, commit[:12])
    entry = root / "sources" / f"tree-{cache.key_of(str(tree))}"
    with cache.locked(entry.with_suffix(".lock")):
        if not (entry / "src" / ".git").exists():
            with cache.publishing(entry) as tmp:
                _clone_shared(tree, tmp / "src")
        elif not objects_intact(entry / "src"):
            _reclone(tree, entry, "it borrowed objects the tree no longer has (rebased and garbage-collected?)")
        r = proc.run(["git", "-C", str(entry / "src"), "fetch", "-q", "--no-tags", str(tree), commit])
        if r.returncode != 0 and re.search(r"bad object|missing|did not send all necessary objects", r.stderr):
            _reclone(tree, entry, f"git fetch failed on its objects ({r.stderr.strip().splitlines()[-1][:200]})")
            r = proc.run(["git", "-C", str(entry / "src"), "fetch", "-q", "--no-tags", str(tree), commit])
        if r.returncode != 0:
            raise InfraError(f"git fetch of {commit} from {tree} failed: {r.stderr[-400:]}")
    # The version of the commit that is built, not of the user's work tree.
    version = version_from_makefile(proc.run(["git", "-C", str(tree), "show", f"{commit}:Makefile"]).stdout)
    ws = Workspace(src=entry / "src", obj=entry / "obj", lock=entry / "workspace.lock", base_commit=commit)
    ws.identity = {"kind": "tree", "tree": str(tree), "ref": ref, "commit": commit, "describe": describe,
                   "dirty": dirty, "version": version}
    return ws
