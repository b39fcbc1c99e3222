"""Patch series: directories with a quilt-style `series` file, applied as git commits.

Validation (missing directory, empty series, missing patch) happens before any
work starts. A patch that is not well-formed, or does not apply, is reported
with the patch, the file and the hunk (or the corrupt line) named; the
workspace is then reset by the caller, so no half-applied tree survives.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from . import cache, proc
from .errors import ApplyError, UsageError
from .source import GIT_ID, Workspace

log = logging.getLogger("kvm-harness")
# The series `make boot-test` applies when none is given: the list file of kernel-patches/default.
DEFAULT_LIST = Path(__file__).resolve().parent.parent / "kernel-patches" / "default"


@dataclass(frozen=True)
class Patch:
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"


@dataclass(frozen=True)
class Series:
    name: str
    path: Path
    patches: tuple[Patch, ...]

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "path": str(self.path),
                "patches": [{"file": p.path.name, "sha256": p.sha256} for p in self.patches]}


def load_series(path: Path) -> Series:
    """Read a series directory; every problem is a UsageError naming the path."""
    if not path.is_dir():
        raise UsageError(f"series directory not found: {path}" if not path.exists()
                         else f"series path is not a directory: {path}")
    sfile = path / "series"
    if not sfile.is_file():
        raise UsageError(f"series directory has no `series` file: {sfile}")
    try:
        text = sfile.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"series file unreadable: {sfile}: {getattr(e, 'strerror', None) or e}") from e
    patches = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.split()[0]  # quilt allows options such as -p1 after the name
        ppath = path / name
        if not ppath.is_file():
            raise UsageError(f"{sfile}:{n}: names a missing patch: {ppath}")
        try:
            sha = cache.sha256_file(ppath)
        except OSError as e:
            raise UsageError(f"{sfile}:{n}: cannot read patch {ppath}: {e.strerror}") from e
        if ppath.stat().st_size == 0:
            raise UsageError(f"{sfile}:{n}: names an empty patch file: {ppath}")
        patches.append(Patch(ppath, sha))
    if not patches:
        raise UsageError(f"series is empty (no patch listed in {sfile})")
    return Series(path.name, path.resolve(), tuple(patches))


def load_default_list(list_file: Path = DEFAULT_LIST) -> list[Path]:
    """The default series of `make boot-test`: one directory per line, relative to the file."""
    dirs = []
    for raw in list_file.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            dirs.append((list_file.parent / line).resolve())
    return dirs


_CORRUPT = re.compile(r"corrupt patch at line (\d+)")
_FAILED_AT = re.compile(r"error: patch failed: (\S+):(\d+)")
_FILE_ERR = re.compile(r"error: (\S+): (does not exist in index|patch does not apply|No such file or directory"
                       r"|already exists in (?:index|working directory))")
_NO_ANCESTOR = re.compile(r"sha1 information is lacking or useless \((\S+)\)")
_CONFLICT = re.compile(r"CONFLICT \([^)]*\): Merge conflict in (\S+)")


def check_well_formed(ws: Workspace, patch: Patch) -> None:
    """Parse the patch without applying it; a mangled patch fails here, naming its line."""
    r = proc.run(["git", "-C", str(ws.src), "apply", "--stat", str(patch.path)])
    out = "\n".join(t.strip() for t in (r.stdout, r.stderr) if t.strip())
    m = _CORRUPT.search(out)
    if m:
        n = int(m.group(1))
        lines = patch.path.read_text(errors="replace").splitlines()
        text = lines[n - 1] if 0 < n <= len(lines) else ""
        raise ApplyError(f"corrupt patch {patch.name}: malformed at line {n}: {text!r}",
                         patch=patch.name, line=n, detail=out.strip())
    if r.returncode != 0 or not r.stdout.strip():
        raise ApplyError(f"{patch.name} is not a patch git can read: {out.strip()[:300] or 'no diff found'}",
                         patch=patch.name, detail=out.strip())


def is_mbox(path: Path) -> bool:
    head = path.read_text(errors="replace")[:4000]
    return head.startswith("From ") or (re.search(r"^From: ", head, re.M) is not None
                                         and re.search(r"^Subject: ", head, re.M) is not None)


def explain_failure(patch: Patch, output: str) -> ApplyError:
    files: list[str] = []
    hunks: list[str] = []
    failed_at: dict[str, str] = {}
    for m in _FAILED_AT.finditer(output):
        hunks.append(f"{m.group(1)}:{m.group(2)}")
        failed_at.setdefault(m.group(1), m.group(2))
        files.append(m.group(1))
    reasons = []
    for m in _FILE_ERR.finditer(output):
        files.append(m.group(1))
        if m.group(2) == "patch does not apply" and m.group(1) in failed_at:
            reasons.append(f"{m.group(1)}: the hunk at line {failed_at[m.group(1)]} does not apply")
        else:
            reasons.append(f"{m.group(1)}: {m.group(2)}")
    for m in _NO_ANCESTOR.finditer(output):
        files.append(m.group(1))
    for m in _CONFLICT.finditer(output):
        files.append(m.group(1))
        reasons.append(f"{m.group(1)}: merge conflict")
    files = list(dict.fromkeys(files))
    where = "; ".join(list(dict.fromkeys(reasons)) + [f"hunk at {h} failed" for h in hunks if
                                                      not any(h.startswith(r.split(':')[0]) for r in reasons)])
    if not where:
        where = output.strip().splitlines()[-1] if output.strip() else "git gave no reason"
    return ApplyError(f"patch {patch.name} does not apply: {where}", patch=patch.name, files=files,
                      detail=output.strip())


def apply_series(ws: Workspace, series: list[Series], logfile: Path) -> list[dict[str, object]]:
    """Apply every patch as a commit; return what was applied (patch, sha256, commit)."""
    applied: list[dict[str, object]] = []
    for s in series:
        for p in s.patches:
            check_well_formed(ws, p)
            if is_mbox(p.path):
                cmd = ["git", *GIT_ID, "-C", str(ws.src), "am", "-3", "--keep-cr", str(p.path)]
                r = proc.run(cmd, logfile=logfile)
            else:
                cmd = ["git", *GIT_ID, "-C", str(ws.src), "apply", "--3way", "--index", str(p.path)]
                r = proc.run(cmd, logfile=logfile)
                if r.returncode == 0:
                    r = proc.run(["git", *GIT_ID, "-C", str(ws.src), "commit", "-q", "-m", p.name],
                                 logfile=logfile)
            if r.returncode != 0:
                # git am -3 says little ("sha1 information is lacking"); a plain
                # --check names the missing file or the failing hunk.
                if (ws.src / ".git" / "rebase-apply").exists():
                    ws.git("am", "--abort", check=False)
                diag = proc.run(["git", "-C", str(ws.src), "apply", "--check", "-v", str(p.path)])
                raise explain_failure(p, "\n".join(t.strip() for t in (diag.stdout, diag.stderr, r.stdout, r.stderr)
                                                   if t.strip()))
            commit = ws.git("rev-parse", "HEAD")
            log.info("applied %s", p.name)
            applied.append({"series": s.name, "patch": p.path.name, "path": str(p.path.resolve()),
                            "sha256": p.sha256, "commit": commit})
    return applied
