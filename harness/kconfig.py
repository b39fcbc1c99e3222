"""Kernel config: base + the kernel's kvm_guest.config + harness fragments + user fragments.

Merged with the kernel's own scripts/kconfig/merge_config.sh, then olddefconfig;
then every requested symbol is checked in the final .config. Kconfig drops a
symbol silently when a dependency is unmet; here that stops the run before
any compile, naming the symbol and what Kconfig says it depends on.
"""

from __future__ import annotations

import filecmp
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import cache, proc
from .configreq import BASES, HARNESS_FRAGMENTS, ConfigRequest
from .errors import ConfigError, UsageError
from .kconfig_tree import dependency_values, eval_dependency, kconfig_depends, kconfig_type, symbol_exists

log = logging.getLogger("kvm-harness")

# Fragments that only add checks: a symbol of theirs the tree cannot give is recorded as unavailable (one
# warning line), not a config error; the harness runs on every tree that has KVM (6.1 LTS has no KVM_PROVE_MMU).
OPTIONAL_FRAGMENTS = frozenset({"health.config", "checks.config"})

# kvm_guest.config is generic (all arches, SCSI/DRM guests). On the trimmed
# base these cannot hold, by design; they are reported, not enforced.
NOT_ENFORCED_ON_TRIM = {
    "S390_GUEST": "s390 only",
    "SCSI_LOWLEVEL": "the trimmed base has no SCSI (the guest runs from an initramfs)",
    "SCSI_VIRTIO": "the trimmed base has no SCSI (the guest runs from an initramfs)",
    "DRM_VIRTIO_GPU": "the trimmed base has no DRM (serial console only)",
    # Turned off by trim-after-kvm-guest.config (build time; the guest never uses them):
    "9P_FS": "no shared folder: the guest runs from an initramfs",
    "NET_9P": "no shared folder: the guest runs from an initramfs",
    "NET_9P_VIRTIO": "no shared folder: the guest runs from an initramfs",
    "VIRTIO_INPUT": "no input devices: serial console and SSH only",
}
NOT_ENFORCED_ANYWHERE = {"S390_GUEST": "s390 only"}

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def validate_config(req: ConfigRequest) -> None:
    """The base is known and every user fragment a readable file of Kconfig lines; UsageError otherwise."""
    if req.base not in BASES:
        raise UsageError(f"unknown config base {req.base!r} (choose from {', '.join(BASES)})")
    for f in req.user_fragments:
        if not f.exists():
            raise UsageError(f"config fragment not found: {f}")
        if not f.is_file():
            raise UsageError(f"config fragment is not a regular file: {f}")
        try:
            text = f.read_text()
        except OSError as e:
            raise UsageError(f"config fragment unreadable: {f}: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise UsageError(f"config fragment unreadable: {f}: not text ({e.reason} at byte {e.start})") from e
        for n, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if s and not s.startswith("#") and not _SET.match(s):
                raise UsageError(f"{f}:{n}: not a Kconfig line: {s!r}")


def config_key(req: ConfigRequest) -> dict[str, object]:
    """What decides the config, for the build key (computed without running make)."""
    _, base_frag, after_guest = BASES[req.base]
    frags = [f for f in (base_frag, after_guest) if f] + HARNESS_FRAGMENTS + list(req.user_fragments)
    return {"base": req.base, "fragments": [cache.sha256_file(f) for f in frags]}


def parse_fragment(path: Path) -> dict[str, str]:
    """Requested values: CONFIG_X -> 'y'/'m'/'"str"'/'n' (for `# ... is not set`)."""
    want: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        m = _SET.match(line)
        if m:
            want[m.group(1)] = m.group(2)
            continue
        m = _UNSET.match(line)
        if m:
            want[m.group(1)] = "n"
    return want


def parse_config(text: str) -> dict[str, str]:
    have: dict[str, str] = {}
    for line in text.splitlines():
        m = _SET.match(line)
        if m:
            have[m.group(1)] = m.group(2)
    return have


def requested(fragments: list[Path]) -> dict[str, tuple[str, Path]]:
    """Each symbol's last requested value and the fragment that asked for it: merge_config.sh's rule (a later
    fragment redefines an earlier one's value), so the user's fragments, which come last, win."""
    out: dict[str, tuple[str, Path]] = {}
    for frag in fragments:
        for sym, val in parse_fragment(frag).items():
            out[sym] = (val, frag)
    return out


def overrides(fragments: list[Path], user_fragments: list[Path]) -> list[str]:
    """The harness's own settings a user fragment changed: 'CONFIG_X: 60 (health.config) -> 240 (mine.config)'."""
    users = {f.resolve() for f in user_fragments}
    harness: dict[str, tuple[str, Path]] = {}
    out = []
    for frag in fragments:
        for sym, val in parse_fragment(frag).items():
            if frag.resolve() not in users:
                harness[sym] = (val, frag)
            elif sym in harness and harness[sym][0] != val:
                out.append(f"{sym}: {harness[sym][0]} ({harness[sym][1].name}) -> {val} ({frag.name})")
    return out


# scripts/kconfig/confdata.c conf_set_sym_val(): "<file>:<line>:warning: symbol value '%s' invalid for %s"
_INVALID_VALUE = re.compile(r"warning: symbol value '([^']*)' invalid for (\w+)")


@dataclass
class Verified:
    """What verify() found: `problems` stop the build (exit 5); `notes` are taken otherwise than written but
    fine; `unavailable` are checks this tree cannot have (a symbol of OPTIONAL_FRAGMENTS it cannot give)."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)


def verify(src: Path, final_text: str, fragments: list[Path], base: str, kconfig_output: str = "") -> Verified:
    """Every symbol whose last requested value (`requested`) is not in the final .config, with Kconfig's own
    reason: a problem, or, if an optional fragment (OPTIONAL_FRAGMENTS) asked for it last, an unavailable
    check; and notes on what was taken otherwise than written but is fine (`m` as `y` in a kernel without
    modules). `kconfig_output` is what merge_config.sh and olddefconfig printed (their warnings)."""
    have = parse_config(final_text)
    exempt = NOT_ENFORCED_ON_TRIM if base == "trim" else NOT_ENFORCED_ANYWHERE
    invalid = {m[2]: m[1] for m in _INVALID_VALUE.finditer(kconfig_output)}
    out = Verified()
    for sym, (val, frag) in requested(fragments).items():
        got = have.get(sym, "n")
        if got == val or (frag.name == "kvm_guest.config" and sym.removeprefix("CONFIG_") in exempt):
            continue
        name = sym.removeprefix("CONFIG_")
        if val == "m" and got == "y" and have.get("CONFIG_MODULES", "n") == "n":
            out.notes.append(f"{sym}=m taken as y (from {frag.name}): this kernel is built without modules"
                             " (CONFIG_MODULES is not set)")
            continue
        if name in invalid:
            kind = kconfig_type(src, sym)
            why = f"; Kconfig: symbol value '{invalid[name]}' invalid for {name}" + (
                f" (a {kind}: y or n)" if kind == "bool" else f" (a {kind})" if kind else "")
        elif not symbol_exists(src, sym):
            why = "; no such symbol in this tree's Kconfig"
        else:
            deps = kconfig_depends(src, sym)
            unmet = [d for d in deps if eval_dependency(d, have) == "n"]
            if unmet:
                why = f"; Kconfig: depends on {' && '.join(unmet)} [{dependency_values(unmet, have)}]"
            else:
                why = ("; its own `depends on` are met" + (f" [{dependency_values(deps, have)}]" if deps else "") +
                       ": an enclosing menu/if/choice, a `select`, or the value's range decides")
        shown = "not set" if got == "n" else got
        line = f"{sym}: requested {val}, got {shown} (from {frag.name}){why}"
        (out.unavailable if frag.name in OPTIONAL_FRAGMENTS else out.problems).append(line)
    return out


def configure(src: Path, obj: Path, req: ConfigRequest, logfile: Path,
              wrap: Callable[[list[str]], list[str]] = lambda cmd: cmd) -> Verified:
    """Write obj/.config for `req` (keeping the old file and mtime if identical); return what verify() found
    (its problems raised as ConfigError, exit 5; the checks this tree cannot have in `unavailable`). `wrap`
    puts each step that runs the tree's own code (make's config targets, merge_config.sh) in the build
    sandbox (build.sandboxed).

    The O= directory is shared by every build of the workspace: when this
    fails (or is interrupted), obj/.config is put back as it was, content and
    mtime, so the next good build stays incremental.
    """
    obj.mkdir(parents=True, exist_ok=True)
    cfg = obj / ".config"
    prev = obj / ".config.harness-prev"
    had_config = cfg.exists()
    if had_config:
        shutil.copy2(cfg, prev)
    try:
        verified = _configure(src, obj, req, logfile, wrap)
    except BaseException:
        if had_config:
            os.replace(prev, cfg)   # the previous file itself: same content, same mtime
        else:
            cfg.unlink(missing_ok=True)
        raise
    if had_config:
        if filecmp.cmp(prev, cfg, shallow=False):
            os.replace(prev, cfg)  # same content: keep the old mtime, make has nothing to redo
        else:
            prev.unlink()
    return verified


def _configure(src: Path, obj: Path, req: ConfigRequest, logfile: Path,
               wrap: Callable[[list[str]], list[str]]) -> Verified:
    cfg = obj / ".config"
    target = BASES[req.base][0]
    frags = req.fragments(src)
    steps = [
        ["make", "-s", "-C", str(src), f"O={obj}", target],
        [str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(obj), str(cfg), *map(str, frags)],
        ["make", "-s", "-C", str(src), f"O={obj}", "olddefconfig"],
    ]
    said = []
    for cmd in steps:
        r = proc.run(wrap(cmd), cwd=obj, logfile=logfile)
        said.append(r.stdout)
        if r.returncode != 0:
            raise ConfigError(f"config step failed ({' '.join(cmd[:4])} ...): "
                              f"{r.stdout.strip().splitlines()[-1:] or ['no output']}", detail=r.stdout)
    text = cfg.read_text()
    for o in overrides(frags, req.user_fragments):
        log.info("config: your fragment overrides the harness: %s", o)
    verified = verify(src, text, frags, req.base, "".join(said))
    for n in verified.notes:
        log.warning("config: %s", n)
    for u in verified.unavailable:
        log.warning("config: a check this tree cannot have, run without it: %s", u)
    if verified.problems:
        raise ConfigError(f"{len(verified.problems)} requested config symbol(s) not in the final .config "
                          f"(olddefconfig dropped them; nothing was compiled):\n  " + "\n  ".join(verified.problems),
                          detail=text)
    return verified
