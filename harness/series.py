"""Patch series as reviewers receive them, applied as git commits.

`--series` takes a directory with a quilt `series` file (its `-pN` options honoured, any other option refused
by name), a directory of `git format-patch` files or mails without one (applied in name order), or one mail
file (an mbox, a b4 `.mbx`, an `.eml`). Mail is read by git's own tools: `git mailsplit` cuts an mbox into
mails (a cover letter, a mail without a diff, is skipped and said), `git mailinfo` decodes each
(quoted-printable, base64, 8-bit, CRLF) before the patch is checked, and `git am -3` applies it as sent.

Validation (missing directory, empty series, missing patch, unknown option) happens before any work starts.
A patch that is not well-formed, or does not apply, is reported with the patch (and mail), the file and the
hunk (or the corrupt line) named, from git's first `error:` (never a hint line); the workspace is then reset
by the caller, so no half-applied tree survives.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import cache, proc
from .errors import ApplyError, UsageError
from .source import GIT_ID, Workspace

log = logging.getLogger("kvm-harness")
# The series `make boot-test` applies when none is given: the list file of kernel-patches/default.
DEFAULT_LIST = Path(__file__).resolve().parent.parent / "kernel-patches" / "default"


# What a directory without a `series` file offers as patches, and what is read as mail whatever its name.
PATCH_SUFFIXES = (".patch", ".diff", ".mbx", ".mbox", ".eml")
_QUILT_STRIP = re.compile(r"-p(\d+)")


@dataclass(frozen=True)
class Patch:
    path: Path
    sha256: str
    strip: int = 1  # quilt's -pN: leading path components removed from the diff's file names
    label: str = ""  # how messages name it; default <series dir>/<file>

    @property
    def name(self) -> str:
        return self.label or f"{self.path.parent.name}/{self.path.name}"


@dataclass(frozen=True)
class Series:
    name: str
    path: Path
    patches: tuple[Patch, ...]

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "path": str(self.path),
                "patches": [{"file": p.path.name, "sha256": p.sha256, **({"strip": p.strip} if p.strip != 1 else {})}
                            for p in self.patches]}


def _read_patch(ppath: Path, where: str, strip: int = 1, label: str = "") -> Patch:
    try:
        sha = cache.sha256_file(ppath)
    except OSError as e:
        raise UsageError(f"{where}cannot read patch {ppath}: {e.strerror}") from e
    if ppath.stat().st_size == 0:
        raise UsageError(f"{where}names an empty patch file: {ppath}")
    return Patch(ppath, sha, strip, label)


def load_series(path: Path) -> Series:
    """Read a series (a directory, with or without a quilt `series` file, or one mail file); every problem
    is a UsageError naming the path, the line and the option."""
    if path.is_file():
        if path.stat().st_size == 0:
            raise UsageError(f"series file is empty: {path}")
        return Series(path.name, path.resolve(), (_read_patch(path, "", label=path.name),))
    if not path.is_dir():
        raise UsageError(f"series directory not found: {path}" if not path.exists()
                         else f"series path is neither a directory nor a file: {path}")
    sfile = path / "series"
    if not sfile.is_file():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in PATCH_SUFFIXES)
        if not found:
            raise UsageError(f"series directory has no `series` file and no patch or mail"
                             f" ({', '.join('*' + x for x in PATCH_SUFFIXES)}): {path}")
        return Series(path.name, path.resolve(), tuple(_read_patch(p, "") for p in found))
    try:
        text = sfile.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"series file unreadable: {sfile}: {getattr(e, 'strerror', None) or e}") from e
    patches = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, *options = line.split()
        strip = 1
        for opt in options:  # quilt series options: only the strip level is a property of the patch itself
            m = _QUILT_STRIP.fullmatch(opt)
            if m is None:
                raise UsageError(f"{sfile}:{n}: quilt option {opt!r} of {name} is not supported (only -pN)")
            strip = int(m[1])
        ppath = path / name
        if not ppath.is_file():
            raise UsageError(f"{sfile}:{n}: names a missing patch: {ppath}")
        patches.append(_read_patch(ppath, f"{sfile}:{n}: ", strip))
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


def check_well_formed(ws: Workspace, patch: Patch, diff: Path | None = None, name: str = "") -> None:
    """Parse the patch (or `diff`, the patch a mail decodes to) without applying it; a mangled patch fails
    here, naming its line (in `diff`'s own numbering for a mail: the decoded text is what git reads)."""
    diff = diff or patch.path
    name = name or patch.name
    r = proc.run(["git", "-C", str(ws.src), "apply", "--stat", f"-p{patch.strip}", str(diff)])
    out = "\n".join(t.strip() for t in (r.stdout, r.stderr) if t.strip())
    m = _CORRUPT.search(out)
    if m:
        n = int(m.group(1))
        lines = diff.read_text(errors="replace").splitlines()
        text = lines[n - 1] if 0 < n <= len(lines) else ""
        where = f"line {n}" if diff == patch.path else f"line {n} of its decoded diff"
        raise ApplyError(f"corrupt patch {name}: malformed at {where}: {text!r}",
                         patch=name, line=n, detail=out.strip())
    if r.returncode != 0 or not r.stdout.strip():
        raise ApplyError(f"{name} is not a patch git can read: {first_error(out)[:300] or 'no diff found'}",
                         patch=name, detail=out.strip())


def first_error(output: str) -> str:
    """git's first `error:`/`fatal:` line, else its first line that is not a hint (git am ends with hints such
    as "To restore the original branch...", which are never the cause)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("error:", "fatal:")):
            return ln
    hints = ("hint:", "To restore", "If you prefer", "When you have resolved", "Use 'git am", "Patch failed at",
             "Applying:", "Using index info", "Falling back")
    return next((ln for ln in lines if not ln.startswith(hints)), "")


def is_mbox(path: Path) -> bool:
    head = path.read_text(errors="replace")[:4000]
    return head.startswith("From ") or (re.search(r"^From: ", head, re.M) is not None
                                         and re.search(r"^Subject: ", head, re.M) is not None)


def explain_failure(patch: Patch, output: str, name: str = "") -> ApplyError:
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
        where = first_error(output) or "git gave no reason"
    return ApplyError(f"patch {name or patch.name} does not apply: {where}", patch=name or patch.name, files=files,
                      detail=output.strip())


def apply_series(ws: Workspace, series: list[Series], logfile: Path) -> list[dict[str, object]]:
    """Apply every patch as a commit (every patch mail of a mail file); return what was applied (patch,
    path, sha256, commit)."""
    applied: list[dict[str, object]] = []
    for s in series:
        for p in s.patches:
            if is_mbox(p.path):
                applied += _apply_mails(ws, s, p, logfile)
                continue
            check_well_formed(ws, p)
            r = proc.run(["git", *GIT_ID, "-C", str(ws.src), "apply", "--3way", "--index", f"-p{p.strip}",
                          str(p.path)], logfile=logfile)
            if r.returncode == 0:
                r = proc.run(["git", *GIT_ID, "-C", str(ws.src), "commit", "-q", "-m", p.name], logfile=logfile)
            if r.returncode != 0:
                _fail(ws, p, p.path, r.stdout + r.stderr, p.name)
            log.info("applied %s", p.name)
            applied.append({"series": s.name, "patch": p.path.name, "path": str(p.path.resolve()),
                            "sha256": p.sha256, "commit": ws.git("rev-parse", "HEAD")})
    return applied


def _apply_mails(ws: Workspace, s: Series, p: Patch, logfile: Path) -> list[dict[str, object]]:
    """Each mail of `p` (an mbox of one or more mails) decoded by git mailinfo, checked, applied by git am."""
    applied: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="kvm-harness-mail-") as tmp:
        t = Path(tmp)
        r = proc.run(["git", "mailsplit", "-b", f"-o{t}", str(p.path)], logfile=logfile)
        mails = sorted(m for m in t.iterdir() if m.name.isdigit())
        if r.returncode != 0 or not mails:
            raise ApplyError(f"{p.name} is not mail git can split: {first_error(r.stdout + r.stderr) or 'no mail'}",
                             patch=p.name, detail=r.stdout + r.stderr)
        for i, mail in enumerate(mails, 1):
            # mailinfo reads the mail on stdin, as bytes (8-bit mail stays as sent)
            # -k: the subject as sent, "[PATCH 1/4]" included, which says which patch of the series it is
            info = proc.run(["sh", "-c", 'exec git mailinfo -k "$1" "$2" < "$3"', "sh", t / "msg", t / "diff", mail])
            subject = next((ln[9:] for ln in info.stdout.splitlines() if ln.startswith("Subject: ")), "")
            name = p.name + (f" mail {i} ({subject})" if len(mails) > 1 else "")
            if info.returncode != 0:
                raise ApplyError(f"{name} is not mail git can read: {first_error(info.stdout + info.stderr)}",
                                 patch=name, detail=info.stdout + info.stderr)
            if not (t / "diff").read_text(errors="replace").strip():
                log.info("skipped %s: a mail without a diff (a cover letter)", name)
                continue
            check_well_formed(ws, p, t / "diff", name)
            r = proc.run(["git", *GIT_ID, "-C", str(ws.src), "am", "-3", f"-p{p.strip}", str(mail)], logfile=logfile)
            if r.returncode != 0:
                _fail(ws, p, t / "diff", r.stdout + r.stderr, name)
            log.info("applied %s", name)
            applied.append({"series": s.name, "patch": p.path.name + (f" [{i}/{len(mails)}]" if len(mails) > 1 else ""),
                            "path": str(p.path.resolve()), "sha256": cache.sha256_file(mail),
                            "commit": ws.git("rev-parse", "HEAD")})
    return applied


def _fail(ws: Workspace, p: Patch, diff: Path, output: str, name: str) -> None:
    """Abort what git left half done and raise the ApplyError naming the file and hunk: git am -3 says little
    ("sha1 information is lacking"), a plain --check of the decoded diff names the missing file or the hunk."""
    if (ws.src / ".git" / "rebase-apply").exists():
        ws.git("am", "--abort", check=False)
    diag = proc.run(["git", "-C", str(ws.src), "apply", "--check", "-v", f"-p{p.strip}", str(diff)])
    raise explain_failure(p, "\n".join(t.strip() for t in (diag.stdout, diag.stderr, output) if t.strip()), name)
