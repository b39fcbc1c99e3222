"""Kernel and KVM selftest build, keyed and cached.

The key is computed from the inputs (source identity, each patch's hash, the
config request, this recipe's version) without running make, so a warm run
with nothing changed costs no make at all. A new key reuses the source's
persistent O= directory: git only rewrites the files that differ between
series, make rebuilds only what depends on them, and ccache catches the rest.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import cache, kconfig, proc, progress, sandbox
from . import series as series_mod
from .configreq import ConfigRequest
from .errors import BuildError
from .source import Workspace

log = logging.getLogger("kvm-harness")

RECIPE_VERSION = 2  # 2: assembler sources never through ccache (kbuild-cc), payload checked
# The KVM selftests the workloads run, relative to tools/testing/selftests/kvm/ (6.12's layout). The
# first two are in every tree since 5.x; dirty_log_enable_test comes with the series'
# kernel-patches/dirty-log-enable-selftest and is built wherever the tree has it.
SELFTESTS = ("dirty_log_test", "dirty_log_perf_test")
OPTIONAL_SELFTESTS = ("x86_64/dirty_log_enable_test",)


def selftests_in(src: Path) -> list[str]:
    """The selftests (SELFTESTS, then the OPTIONAL_SELFTESTS whose source the tree has) to build."""
    kvm = src / "tools/testing/selftests/kvm"
    return [*SELFTESTS, *(t for t in OPTIONAL_SELFTESTS if (kvm / f"{t}.c").is_file())]
_CC_ERROR = re.compile(r"^(?P<file>[^\s:]+):(?P<line>\d+):(?:(?P<col>\d+):)? (?:fatal )?error: (?P<msg>.*)$", re.M)
_MAKE_ERROR = re.compile(r"^make(?:\[\d+\])?: \*\*\* .*$", re.M)
# ld: "dirty_log_test.c:775: undefined reference to `TEST_ASSERT_EQ'" (or "file.c:(.text+0x1a)")
_LD_ERROR = re.compile(r"(?P<file>[^\s:]+\.[chS]):(?P<line>\d+|\([^)]*\)): (?P<msg>undefined reference to \S+)")


@dataclass
class BuildRequest:
    workspace: Workspace
    series: list[series_mod.Series]
    config: ConfigRequest
    jobs: int = (os.cpu_count() or 2) + 1

    def key(self) -> str:
        ident = {k: self.workspace.identity.get(k) for k in ("kind", "sha256", "commit")}
        return cache.key_of({"recipe": RECIPE_VERSION, "source": ident,
                             # the patches in apply order, however they were grouped into series: a walk step's
                             # prefix and its reproducer (one --series per patch) are the same kernel
                             "patches": [p.sha256 if p.strip == 1 else f"{p.sha256}:-p{p.strip}"
                                         for s in self.series for p in s.patches],
                             "config": kconfig.config_key(self.config)})


@dataclass
class BuildResult:
    key: str
    dir: Path
    cached: bool
    meta: dict[str, object]

    @property
    def bzimage(self) -> Path:
        return self.dir / "bzImage"

    @property
    def selftests(self) -> Path:
        return self.dir / "selftests"


# kbuild's CC: ccache gcc for C, plain gcc for assembler sources (the script says why: a stale piggy.o).
KBUILD_CC = Path(__file__).resolve().parent / "tools" / "kbuild-cc"


def check_payload(obj: Path) -> None:
    """The bzImage must carry the kernel just linked: its compressed payload (arch/x86/boot/compressed/
    vmlinux.bin.gz, of this vmlinux) must be inside arch/x86/boot/bzImage. A cached piggy.o of another build
    breaks that silently; this makes it a BuildError instead of a run on the wrong kernel."""
    boot = obj / "arch/x86/boot"
    payloads = sorted((boot / "compressed").glob("vmlinux.bin.*"), key=lambda p: p.stat().st_mtime)
    payloads = [p for p in payloads if p.suffix in (".gz", ".xz", ".zst", ".lz4", ".lzma", ".lzo", ".bz2")]
    if not payloads:
        return  # an uncompressed kernel (no payload to compare)
    payload = payloads[-1].read_bytes()
    if payload not in (boot / "bzImage").read_bytes():
        raise BuildError(f"arch/x86/boot/bzImage does not carry the kernel just linked ({payloads[-1].name} is not"
                         " in it): a stale object reached the image; the build is not published")


def first_compiler_error(log_text: str, src: Path | None = None) -> str:
    """The first `file:line: error:` of a build log (file relative to the source tree), else make's error."""
    m = _CC_ERROR.search(log_text)
    if m:
        return f"{_relative(m.group('file'), src)}:{m.group('line')}: error: {m.group('msg')}"
    m = _LD_ERROR.search(log_text)
    if m:
        return f"{_relative(m.group('file'), src)}:{m.group('line')}: {m.group('msg')}"
    m = _MAKE_ERROR.search(log_text)
    return m.group(0) if m else (log_text.strip().splitlines() or ["(empty build log)"])[-1]


def _relative(path: str, src: Path | None) -> str:
    """`/cache/.../src/arch/x86/kvm/mmu/mmu.c` or `../src/arch/...` -> `arch/x86/kvm/mmu/mmu.c`."""
    if src is not None:
        for prefix in (f"{src}/", f"../{src.name}/"):
            if path.startswith(prefix):
                return path[len(prefix):]
    return path


def _env(root: Path) -> dict[str, str]:
    return {
        "CCACHE_DIR": str(root / "ccache"),
        "CCACHE_MAXSIZE": "5G",
        "CCACHE_NOHASHDIR": "1",   # no debug info: the build dir does not matter to the object
        # Paths under the cache become relative (../src from every O= dir), so
        # two workspaces of the same tree share ccache hits.
        "CCACHE_BASEDIR": str(root / "sources"),
        "CCACHE_SLOPPINESS": "time_macros,include_file_mtime,include_file_ctime",
        # Depend mode: a miss compiles once and takes the include list from the
        # compiler's own -MMD file. The default mode preprocesses every file a
        # second time: measured here, a cold build took 7 min with it and 4.5
        # without ccache; in depend mode ccache costs ~4% of a cold build.
        "CCACHE_DEPEND": "1",
        "KBUILD_BUILD_USER": "kvm-harness",
        "KBUILD_BUILD_HOST": "kvm-harness",
        "KBUILD_BUILD_TIMESTAMP": "1970-01-01",
    }


def sandboxed(cmd: list[str], ws: Workspace, root: Path, fragments: list[Path]) -> list[str]:
    """`cmd`, a step that runs the series' code, in the build sandbox (sandbox.py): the workspace and ccache
    writable, the cache and the user's home hidden, the user's fragments and tree readable."""
    tree = ws.identity.get("tree")
    (root / "ccache").mkdir(parents=True, exist_ok=True)
    return sandbox.command(cmd, [ws.src, ws.obj, root / "ccache"], [root],
                           [*fragments, *([Path(str(tree))] if tree else [])])


def _make(req: BuildRequest, root: Path, args: list[str], logfile: Path, what: str,
          cwd: Path | None = None) -> None:
    r = proc.run(sandboxed(["make", *args], req.workspace, root, req.config.user_fragments), cwd=cwd,
                 env=_env(root), logfile=logfile)
    proc.check_interrupted()
    if r.returncode != 0:
        raise BuildError(f"{what} failed: {first_compiler_error(r.stdout, req.workspace.src)} "
                         f"(full log: {logfile})", detail=r.stdout[-20000:])


def build_selftests(req: BuildRequest, root: Path, kst: Path, logfile: Path) -> tuple[list[str], dict[str, str]]:
    """Build the KVM selftests (`selftests_in`) each on its own account: trees carry breakage (a stable
    backport using a helper the branch lacks), and one that does not build must not stop the others.
    Returns (the tests built, {test name: its first compiler or linker error}). Raises BuildError only if
    none builds (the selftests' library itself is broken, or no test exists)."""
    src = req.workspace.src
    common = ["-C", str(src / "tools/testing/selftests/kvm"), f"OUTPUT={kst}",
              f"KHDR_INCLUDES=-isystem {req.workspace.obj / 'usr/include'}", "EXTRA_CFLAGS=-static", "LDFLAGS=-static"]
    wanted = selftests_in(src)
    frags = req.config.user_fragments
    r = proc.run(sandboxed(["make", "-k", f"-j{req.jobs}", *common, *[str(kst / t) for t in wanted]],
                           req.workspace, root, frags), env=_env(root), logfile=logfile)
    proc.check_interrupted()
    built = [t for t in wanted if (kst / t).is_file()]
    errors: dict[str, str] = {}
    for t in wanted:
        if t in built:
            continue
        # again alone: with -j and -k the log interleaves every test's errors; alone, the first is its own
        alone = proc.run(sandboxed(["make", *common, str(kst / t)], req.workspace, root, frags), env=_env(root),
                         logfile=logfile)
        errors[Path(t).name] = first_compiler_error(alone.stdout, src)
        log.warning("KVM selftest %s did not build: %s", Path(t).name, errors[Path(t).name])
    if not built:
        raise BuildError(f"KVM selftests build failed: {first_compiler_error(r.stdout, src)} (full log: {logfile})",
                         detail=r.stdout[-20000:])
    return built, errors


def _reset_quietly(ws: Workspace) -> None:
    try:
        ws.reset()
        log.info("workspace %s reset to its base %s", ws.src, ws.base_commit[:12])
    except Exception as e:  # never hide the error that got us here
        log.error("could not reset the workspace %s: %s", ws.src, e)


def build(req: BuildRequest, root: Path, logfile: Path) -> BuildResult:
    key = req.key()
    final = root / "builds" / key
    if (final / "build.json").exists():
        log.info("build cache hit %s: not running make", key)
        return BuildResult(key, final, True, json.loads((final / "build.json").read_text()))
    ws = req.workspace
    with cache.locked(ws.lock):
        if (final / "build.json").exists():  # another run built it while we waited
            return BuildResult(key, final, True, json.loads((final / "build.json").read_text()))
        with cache.publishing(final) as out:
            t0 = time.monotonic()
            try:
                ws.reset()
                applied = series_mod.apply_series(ws, req.series, logfile)
                t_apply = time.monotonic()
                verified = kconfig.configure(ws.src, ws.obj, req.config, logfile,
                                             wrap=lambda cmd: sandboxed(cmd, ws, root, req.config.user_fragments))
                t_config = time.monotonic()
                hostcc = "ccache gcc" if shutil.which("ccache") else "gcc"
                mk = ["-C", str(ws.src), f"O={ws.obj}", f"-j{req.jobs}", f"CC={KBUILD_CC}", f"HOSTCC={hostcc}"]
                # headers_install (for the selftests) in the same make: it runs beside the
                # compile instead of after it (~10 s of mostly serial shell work).
                # a cold build (no vmlinux in O= yet) is measured against the last cold build of the same
                # kernel version and config base; an incremental one is just counted
                cold = not (ws.obj / "vmlinux").exists()
                steps_key = f"{ws.identity.get('version')}:{req.config.base}"
                before = logfile.stat().st_size if logfile.exists() else 0
                with progress.watching("kernel build", logfile, progress.cold_steps(root, steps_key) if cold else None):
                    _make(req, root, [*mk, "bzImage", "headers_install"], logfile, "kernel build")
                if cold:
                    progress.record_cold_steps(root, steps_key, progress.count_steps(logfile, before))
                check_payload(ws.obj)
                t_kernel = time.monotonic()
                kst = ws.obj / "kselftest" / "kvm"
                tests, selftest_errors = build_selftests(req, root, kst, logfile)
                t_selftests = time.monotonic()
            except BaseException:
                # Failed or interrupted: no half-applied series stays in the workspace.
                _reset_quietly(ws)
                raise
            shutil.copy2(ws.obj / "arch/x86/boot/bzImage", out / "bzImage")
            shutil.copy2(ws.obj / ".config", out / "config")
            shutil.copy2(ws.obj / "System.map", out / "System.map")
            (out / "selftests").mkdir()
            for t in tests:
                # flat, by name: the guest runs them as /bin/<name>
                shutil.copy2(kst / t, out / "selftests" / Path(t).name)
            meta: dict[str, object] = {
                "key": key, "source": ws.identity, "series": [s.describe() for s in req.series],
                "applied": applied, "config_base": req.config.base,
                "selftests": [Path(t).name for t in tests],
                # selftests of the tree that did not build: name -> the first compiler or linker error
                "selftest_errors": selftest_errors,
                "config_fragments": [str(f) for f in req.config.fragments(ws.src)],
                # checks this tree cannot have (an optional fragment's symbol it lacks): run without them
                "unavailable_checks": verified.unavailable,
                # the harness's own settings a user fragment changed (its fragments come last and win)
                "config_overrides": kconfig.overrides(req.config.fragments(ws.src), req.config.user_fragments),
                "kernel_release": (ws.obj / "include/config/kernel.release").read_text().strip(),
                "durations_s": {"apply": round(t_apply - t0, 1), "config": round(t_config - t_apply, 1),
                                "kernel": round(t_kernel - t_config, 1),
                                "selftests": round(t_selftests - t_kernel, 1)},
                "ccache": proc.run(["ccache", "-s"], env=_env(root)).stdout if shutil.which("ccache") else "",
            }
            shutil.copy2(logfile, out / "build.log")
            cache.write_json(out / "build.json", meta)
    log.info("built %s in %.0f s", key, time.monotonic() - t0)
    return BuildResult(key, final, False, meta)
