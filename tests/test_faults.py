"""Fast tests of the failure paths (issue 5): real files, real git, real processes and
signals, no kernel and no QEMU (those are in test_integration_faults.py)."""

import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from harness import build, cache, cli, forensics, kconfig, kconfig_tree, proc, series, source, vm
from harness.errors import ApplyError, ConfigError, Interrupted, UsageError, exit_code_for
from harness.guestcheck.health import last_line, panic_excerpt, printable
from harness.inputs import validate
from harness.report import ktap
from harness.report import run_dir as run_dir_mod
from harness.request import RunRequest
from harness.results import ERROR, PASS, TestResult
from harness.workloads import WorkloadPlan, parse_workload_cmd

REPO = Path(__file__).resolve().parent.parent
FAULTS = Path(__file__).resolve().parent / "data" / "faults"


# --- 1. a series that does not apply / a mangled patch --------------------------------------------------------

# What `git apply --check -v` and `git am -3` print for the repaired 2017 patch on 6.12 (captured).
V2_ON_612 = """Checking patch arch/x86/include/asm/kvm_host.h...
error: while searching for:
#define KVM_MIN_ALLOC_MMU_PAGES 64

error: patch failed: arch/x86/include/asm/kvm_host.h:114
error: arch/x86/include/asm/kvm_host.h: patch does not apply
Checking patch arch/x86/kvm/mmu.c...
error: arch/x86/kvm/mmu.c: No such file or directory
Applying: KVM: MMU: introduce possible_writable_spte_bitmap
error: sha1 information is lacking or useless (arch/x86/include/asm/kvm_host.h).
error: could not build fake ancestor
Patch failed at 0001 KVM: MMU: introduce possible_writable_spte_bitmap"""


def test_apply_failure_names_patch_hunk_and_missing_file():
    p = series.Patch(Path("fast-write-protect-v2/0002-KVM-MMU-introduce-possible_writable_spte_bitmap.patch"), "0" * 64)
    err = series.explain_failure(p, V2_ON_612)
    msg = str(err)
    assert "fast-write-protect-v2/0002-KVM-MMU-introduce-possible_writable_spte_bitmap.patch" in msg
    assert "arch/x86/kvm/mmu.c: No such file or directory" in msg
    assert "arch/x86/include/asm/kvm_host.h: the hunk at line 114 does not apply" in msg
    assert err.exit_code == 3


def test_partly_applied_series_leaves_the_workspace_at_its_base(tmp_path, git_repo):
    """Patch 1 applies, patch 2 does not: build() resets, nothing half-applied survives."""
    ok = _mbox("change line 20", "line 19\n-line 20\n+line twenty\n line 21", 19)
    bad = _mbox("change a line that is not there", "line 29\n-line XX\n+line thirty\n line 31", 29)
    d = tmp_path / "s"
    d.mkdir()
    (d / "0001-ok.patch").write_text(ok)
    (d / "0002-bad.patch").write_text(bad)
    (d / "series").write_text("0001-ok.patch\n0002-bad.patch\n")
    ws = _ws(git_repo)
    breq = build.BuildRequest(ws, [series.load_series(d)], kconfig.ConfigRequest("trim"))
    with pytest.raises(ApplyError) as e:
        build.build(breq, tmp_path / "cache", tmp_path / "build.log")
    assert "s/0002-bad.patch" in str(e.value) and "arch/x86/kvm/mmu/mmu.c" in str(e.value)
    assert _git(git_repo, "rev-parse", "HEAD") == ws.base_commit
    assert _git(git_repo, "status", "--porcelain") == ""
    assert not (git_repo / ".git" / "rebase-apply").exists()
    assert not list((tmp_path / "cache" / "builds").glob("*")), "nothing published"


def test_reset_removes_a_stale_index_lock(git_repo):
    ws = _ws(git_repo)
    (git_repo / ".git" / "index.lock").write_text("")
    (git_repo / "arch/x86/kvm/mmu/mmu.c").write_text("dirty\n")
    ws.reset()
    assert _git(git_repo, "status", "--porcelain") == "" and not (git_repo / ".git" / "index.lock").exists()


# --- 2. usage errors before any work --------------------------------------------------------------------------

def test_series_problems_are_usage_errors_naming_the_path(tmp_path):
    f = tmp_path / "plainfile"
    f.write_text("")
    with pytest.raises(UsageError, match="series file is empty: .*plainfile"):  # a file is a series of mails
        series.load_series(f)
    d = tmp_path / "binary"
    d.mkdir()
    (d / "series").write_bytes(b"\xff\xfe0001.patch\n")
    with pytest.raises(UsageError, match=r"series file unreadable: .*binary/series"):
        series.load_series(d)
    d = tmp_path / "emptypatch"
    d.mkdir()
    (d / "0001.patch").write_text("")
    (d / "series").write_text("0001.patch\n")
    with pytest.raises(UsageError, match=r"series:1: names an empty patch file: .*0001.patch"):
        series.load_series(d)


def test_fragment_problems_are_usage_errors_naming_the_path(tmp_path):
    binary = tmp_path / "binary.config"
    binary.write_bytes(b"CONFIG_KVM=y\n\xff\xfe\n")
    with pytest.raises(UsageError, match=r"config fragment unreadable: .*binary.config: not text"):
        kconfig.validate_config(kconfig.ConfigRequest("trim", [binary]))
    with pytest.raises(UsageError, match=r"config fragment is not a regular file: .*"):
        kconfig.validate_config(kconfig.ConfigRequest("trim", [tmp_path]))


def test_fragment_without_read_permission_is_a_usage_error():
    """Permission denied, for real (as root: checked with the effective uid of an unprivileged user)."""
    d = Path(tempfile.mkdtemp(prefix="kvm-harness-perm-"))
    try:
        d.chmod(0o755)
        frag = d / "secret.config"
        frag.write_text("CONFIG_KVM=y\n")
        frag.chmod(0o000)
        euid = os.geteuid()
        if euid == 0:
            os.seteuid(65534)
        try:
            with pytest.raises(UsageError) as e:
                kconfig.validate_config(kconfig.ConfigRequest("trim", [frag]))
        finally:
            if euid == 0:
                os.seteuid(0)
        assert str(e.value) == f"config fragment unreadable: {frag}: Permission denied"
    finally:
        shutil.rmtree(d)


def test_validate_checks_every_input_before_any_work(tmp_path):
    req = RunRequest(tarball=tmp_path / "nope.tar.xz")
    with pytest.raises(UsageError, match="kernel source tarball not found: .*nope.tar.xz"):
        validate(req)
    with pytest.raises(UsageError, match="kernel source tarball is not a file"):
        validate(RunRequest(tarball=tmp_path))
    with pytest.raises(UsageError, match="kernel tree not found: .*/missing-tree"):
        validate(RunRequest(tree=tmp_path / "missing-tree"))
    tarball = tmp_path / "linux.tar.xz"
    tarball.write_bytes(b"x")
    with pytest.raises(UsageError, match="--boot-deadline must be between 5 and 3600 s: 0"):
        validate(RunRequest(tarball=tarball, boot_deadline_s=0))
    with pytest.raises(UsageError, match="unique"):
        validate(RunRequest(tarball=tarball, plan=WorkloadPlan(commands=(("a", "true"), ("a", "false")))))


# --- 3. a requested symbol olddefconfig drops -------------------------------------------------------------------

def test_dependency_values_show_what_is_unmet():
    deps = ["KVM_AMD && X86_64", "CRYPTO_DEV_SP_PSP && !(KVM_AMD=y && CRYPTO_DEV_CCP_DD=m)"]
    have = {"CONFIG_KVM_AMD": "y", "CONFIG_X86_64": "y"}
    assert kconfig_tree.dependency_values(deps, have) == \
        "KVM_AMD=y, X86_64=y, CRYPTO_DEV_SP_PSP=n, CRYPTO_DEV_CCP_DD=n"


def _fake_kernel(tmp_path: Path, olddefconfig_rc: int = 0) -> Path:
    """A source tree whose Makefile and merge_config.sh behave like the kernel's, with real make.

    olddefconfig "drops" CONFIG_WANTED (its dependency CONFIG_DEP is not set).
    """
    src = tmp_path / "src"
    (src / "scripts/kconfig").mkdir(parents=True)
    (src / "kernel/configs").mkdir(parents=True)
    (src / "kernel/configs/kvm_guest.config").write_text("")
    (src / "init").mkdir()
    (src / "init/Kconfig").write_text("config WANTED\n\tbool \"wanted\"\n\tdepends on DEP\n\nconfig DEP\n\tbool\n")
    (src / "Makefile").write_text(
        "tinyconfig defconfig:\n\tprintf 'CONFIG_BASE=y\\n' > $(O)/.config\n"
        f"olddefconfig:\n\tgrep -v WANTED $(O)/.config > $(O)/.config.new; mv $(O)/.config.new $(O)/.config; "
        f"exit {olddefconfig_rc}\n")
    merge = src / "scripts/kconfig/merge_config.sh"
    merge.write_text("#!/bin/sh\n# -m -O OBJ BASE FRAGMENTS...\nshift; shift; obj=$1; shift; base=$1; shift\n"
                     "cat \"$@\" >> \"$base\"\n")
    merge.chmod(0o755)
    return src


@pytest.mark.parametrize("olddefconfig_rc", [0, 2])
def test_failed_configure_restores_the_shared_config(tmp_path, monkeypatch, olddefconfig_rc):
    src = _fake_kernel(tmp_path, olddefconfig_rc)
    obj = tmp_path / "obj"
    obj.mkdir()
    cfg = obj / ".config"
    cfg.write_text("CONFIG_PREVIOUS_GOOD_BUILD=y\n")
    os.utime(cfg, (1_000_000_000, 1_000_000_000))
    frag = tmp_path / "want.config"
    frag.write_text("CONFIG_WANTED=y\n")
    monkeypatch.setattr(kconfig, "HARNESS_FRAGMENTS", [])
    monkeypatch.setitem(kconfig.BASES, "trim", ("tinyconfig", None, None))
    with pytest.raises(ConfigError) as e:
        kconfig.configure(src, obj, kconfig.ConfigRequest("trim", [frag]), tmp_path / "build.log")
    if olddefconfig_rc == 0:
        msg = str(e.value)
        assert "CONFIG_WANTED: requested y, got not set (from want.config)" in msg
        assert "depends on DEP [DEP=n]" in msg and "nothing was compiled" in msg
    assert cfg.read_text() == "CONFIG_PREVIOUS_GOOD_BUILD=y\n"
    assert cfg.stat().st_mtime == 1_000_000_000, "mtime kept: the next build stays incremental"
    assert not (obj / ".config.harness-prev").exists()


def test_interrupted_configure_restores_the_shared_config(tmp_path, monkeypatch):
    src = _fake_kernel(tmp_path)
    obj = tmp_path / "obj"
    obj.mkdir()
    (obj / ".config").write_text("CONFIG_PREVIOUS_GOOD_BUILD=y\n")
    monkeypatch.setattr(kconfig, "HARNESS_FRAGMENTS", [])
    monkeypatch.setitem(kconfig.BASES, "trim", ("tinyconfig", None, None))
    real_run = proc.run

    def interrupted_at_olddefconfig(cmd, **kw):
        if "olddefconfig" in cmd:
            raise Interrupted("interrupted by SIGINT")
        return real_run(cmd, **kw)
    monkeypatch.setattr(proc, "run", interrupted_at_olddefconfig)
    with pytest.raises(Interrupted):
        kconfig.configure(src, obj, kconfig.ConfigRequest("trim"), tmp_path / "build.log")
    assert (obj / ".config").read_text() == "CONFIG_PREVIOUS_GOOD_BUILD=y\n"


# --- 4. a patch that breaks the build ----------------------------------------------------------------------------

def test_first_compiler_error_is_relative_to_the_source_tree():
    src = Path("/root/.cache/kvm-harness/sources/tarball-x/src")
    log = (f"  CC      arch/x86/kvm/mmu/mmu.o\n{src}/arch/x86/kvm/mmu/mmu.c:109:40: error: expected expression "
           "before ';' token\n  109 | static int kvm_harness_build_break = ;\n")
    assert build.first_compiler_error(log, src) == \
        "arch/x86/kvm/mmu/mmu.c:109: error: expected expression before ';' token"
    assert build.first_compiler_error(log.replace(str(src), "../src"), src).startswith("arch/x86/kvm/mmu/mmu.c:109:")


def test_build_break_fixture_is_a_well_formed_series():
    s = series.load_series(FAULTS / "build-break")
    text = s.patches[0].path.read_text()
    assert "arch/x86/kvm/mmu/mmu.c" in text and "= ;" in text
    assert series.is_mbox(s.patches[0].path)
    assert series.load_series(FAULTS / "rebuild").patches
    assert kconfig.parse_fragment(FAULTS / "unmet-dependency.config") == {"CONFIG_KVM_AMD_SEV": "y"}


# --- 5/6. boot errors: the console, cleaned ----------------------------------------------------------------------

CONSOLE = ("[    2.72] Run /bin/false as init process\n"
           "[    2.82] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n"
           "[    2.83] CPU: 1 UID: 0 PID: 1 Comm: false Not tainted 6.12.117+ #2\n"
           "[    2.84] Call Trace:\n")


def test_panic_excerpt_has_the_cause_and_the_trace():
    ex = panic_excerpt(CONSOLE)
    assert ex.splitlines()[0].endswith("Run /bin/false as init process") and "Call Trace" in ex


def test_console_text_is_made_printable_for_the_reports():
    raw = "/ # \x1b[6n[    2.43] clocksource: Switched to clocksource tsc\r\n\x07"
    assert printable(raw) == "/ # [    2.43] clocksource: Switched to clocksource tsc\n"
    assert last_line(raw) == "'/ # [    2.43] clocksource: Switched to clocksource tsc'"
    assert last_line("") == "(console empty)"


# --- 7. a workload that hangs: the hook, classification, forensics -----------------------------------------------

def test_workload_cmd_hook():
    assert parse_workload_cmd("hang=sleep 600") == ("hang", "sleep 600")
    assert parse_workload_cmd("x=a=b") == ("x", "a=b")
    for bad in ("nocommand", "=true", "sp ace=true", "x="):
        with pytest.raises(UsageError, match="NAME=COMMAND"):
            parse_workload_cmd(bad)
    req = RunRequest(plan=WorkloadPlan(only=("cmd.", "dirty-ring"), timeout_s=7, commands=(("hang", "sleep 600"),)))
    ws = req.plan.selected("shadow")
    assert [w.path("shadow") for w in ws] == ["kvm.shadow.dirty_log_test.dirty-ring", "kvm.shadow.cmd.hang"]
    assert ws[-1].command() == "sleep 600" and ws[-1].timeout_s == 7


def test_timeout_is_an_error_with_ktap_timeout_and_exit_8():
    res = [TestResult("kvm.shadow.boot", PASS),
           TestResult("kvm.shadow.cmd.hang", ERROR, reason="timeout after 5 s (--timeout)", failure="timeout"),
           TestResult("kvm.shadow.cmd.after", PASS)]
    assert exit_code_for(res) == 8
    text = ktap.render(res)
    assert "not ok 2 kvm.shadow.cmd.hang # TIMEOUT timeout after 5 s (--timeout)" in text
    assert "ok 3 kvm.shadow.cmd.after" in text


def _dead_vm(tmp_path: Path) -> vm.VM:
    spec = vm.VMSpec(kernel=Path("/k"), initrd=Path("/i"), accel=vm.Accel("tcg", "max", "test"))
    v = vm.VM(spec, tmp_path, "shadow")
    v.proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    v.proc.kill()
    v.proc.wait()
    return v


def test_forensics_without_ssh_records_qemus_end_and_what_is_missing(tmp_path):
    v = _dead_vm(tmp_path)
    summary = forensics.collect(v, None, tmp_path / "forensics" / "x", "guest lost during the test")
    v.stop()
    d = tmp_path / "forensics" / "x"
    assert json.loads((d / "qmp.json").read_text())["qemu"] == "killed by SIGKILL"
    saved = json.loads((d / "forensics.json").read_text())
    assert saved == summary and summary["collected"] == ["qmp.json"]
    assert set(summary["missing"]) == {"sysrq-tw.txt", "dmesg.txt", "ps.txt", "pw_sptes.txt.gz", "trace.txt.gz"}
    assert "QEMU killed by SIGKILL" in summary["missing"]["trace.txt.gz"]
    from harness.evidence import safe_name
    assert safe_name("kvm.shadow.dirty_log_test.dirty-log") == "kvm.shadow.dirty_log_test.dirty-log"
    assert safe_name("a/b c") == "a_b_c"


# --- 8. QEMU killed: how its end is told; stopping is idempotent and fast -----------------------------------------

def test_vm_exit_description_and_fast_stop(tmp_path):
    v = _dead_vm(tmp_path)
    assert v.exit_description() == "killed by SIGKILL"
    assert v.stop() == -signal.SIGKILL and v.stop() == -signal.SIGKILL  # idempotent
    spec = vm.VMSpec(kernel=Path("/k"), initrd=Path("/i"), accel=vm.Accel("tcg", "max", "test"))
    live = vm.VM(spec, tmp_path, "live")
    assert (live.private.stat().st_mode & 0o777) == 0o700, "the QMP socket's directory is private"
    live.proc = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 60 & wait"], start_new_session=True)
    proc.register_group(live.proc.pid)
    t0 = time.monotonic()
    live.stop(fast=True)
    assert live.exit_description() == "killed by SIGKILL"
    while proc.group_alive(live.proc.pid) and time.monotonic() - t0 < 30:  # orphans: reaped by init
        time.sleep(0.05)
    assert not proc.group_alive(live.proc.pid)
    assert not live.private.exists()


# --- 10. interrupts: process groups, the interrupt flag ----------------------------------------------------------

def test_interrupted_command_stops_its_whole_group_politely(tmp_path):
    """A `make`-like parent with a child that cleans up on SIGTERM: both gone, the cleanup ran."""
    marker, ready = tmp_path / "cleaned", tmp_path / "ready"
    script = f"sh -c 'trap \"touch {marker}; exit 1\" TERM; touch {ready}; sleep 60 & wait' & wait"

    class Stop(Exception):
        pass

    def raise_stop(*_):
        raise Stop()

    def interrupt_when_ready():
        while not ready.exists():
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGUSR1)   # as the CLI's SIGINT handler would, in the main thread

    old = signal.signal(signal.SIGUSR1, raise_stop)
    try:
        threading.Thread(target=interrupt_when_ready, daemon=True).start()
        with pytest.raises(Stop):
            proc.run(["sh", "-c", script], timeout=120)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert marker.exists(), "the child got SIGTERM first (make/gcc delete their half-written target)"
    assert not proc.live_groups()


def test_stop_group_kills_what_ignores_sigterm(tmp_path):
    p = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 60 & wait"], start_new_session=True)
    proc.stop_group(p.pid, lambda: p.poll() is not None, grace_s=0.5)
    assert p.poll() is not None and not proc.group_alive(p.pid)


def test_interrupt_flag_is_raised_at_the_next_checkpoint(monkeypatch):
    monkeypatch.setattr(proc, "_interrupted_by", None)
    proc.check_interrupted()  # nothing pending
    with proc.deferred_interrupts():
        assert proc.interrupts_deferred()
        assert proc.note_interrupt("SIGTERM") is True
    assert not proc.interrupts_deferred()
    assert proc.note_interrupt("SIGINT") is False, "a second signal does not restart the cleanup"
    with pytest.raises(Interrupted, match="interrupted by SIGTERM"):
        proc.check_interrupted()


def test_sigint_to_the_cli_kills_children_and_exits_130(tmp_path):
    """The real handler in a real process: SIGINT while a child runs -> Interrupted, child group gone."""
    code = ("import signal, sys\nfrom harness import cli, proc\nfrom harness.errors import Interrupted\n"
            "signal.signal(signal.SIGINT, cli._on_signal)\n"
            "try:\n proc.run(['sh', '-c', 'echo $$ > " + str(tmp_path / "pid") + "; sleep 60'])\n"
            "except Interrupted as e:\n print(e); sys.exit(130)\n")
    p = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)),
                         stdout=subprocess.PIPE, text=True)
    for _ in range(1200):  # safety net: 60 s for the child's Python to start
        if (tmp_path / "pid").exists() and (tmp_path / "pid").read_text().strip():
            break
        time.sleep(0.05)
    child = int((tmp_path / "pid").read_text())
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 130 and "interrupted by SIGINT" in out
    # SIGKILL is delivered asynchronously: on a loaded machine the child may take a moment to die
    for _ in range(200):
        if _gone(child):
            break
        time.sleep(0.05)
    assert _gone(child), "the child of the interrupted command was left running (10 s after the exit)"


def test_publishing_leaves_nothing_when_interrupted(tmp_path):
    final = tmp_path / "builds" / "key"
    with pytest.raises(KeyboardInterrupt), cache.publishing(final) as tmp:
        (tmp / "bzImage").write_text("half")
        raise KeyboardInterrupt
    assert not final.exists() and list((tmp_path / "builds").iterdir()) == []


# --- 11. two runs at once ------------------------------------------------------------------------------------

def test_two_run_directories_in_the_same_second_do_not_collide(tmp_path):
    a = run_dir_mod.create(tmp_path, "boot-test")
    b = run_dir_mod.create(tmp_path, "boot-test")
    assert a != b and a.is_dir() and b.is_dir()


def test_cache_lock_excludes_another_process(tmp_path):
    lock = tmp_path / "workspace.lock"
    with cache.locked(lock):
        code = ("import fcntl, sys\nf = open(sys.argv[1], 'a')\n"
                "try:\n fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n sys.exit(3)\n")
        r = subprocess.run([sys.executable, "-c", code, str(lock)], timeout=30)
        assert r.returncode == 3, "another process must not get the workspace while a run holds it"
    with open(lock) as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released afterwards


# --- 12. security ---------------------------------------------------------------------------------------------

def test_qemu_command_forwards_ssh_on_loopback_only():
    spec = vm.VMSpec(kernel=Path("/k"), initrd=Path("/i"), accel=vm.Accel("tcg", "max", "t"), ssh_port=40022)
    cmd = vm.qemu_command(spec, Path("/r/console.log"), Path("/tmp/x/qmp.sock"))
    netdev = cmd[cmd.index("-netdev") + 1]
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in netdev and "restrict=on" in netdev
    assert netdev.count("hostfwd") == 1 and "guestfwd" not in netdev
    assert "-monitor" in cmd and cmd[cmd.index("-monitor") + 1] == "none"


def test_no_private_key_or_secret_in_the_repository():
    skip_dirs = {".git", ".venv", "results", "__pycache__", ".mypy_cache", ".pytest_cache", ".benchmarks"}
    offenders = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in skip_dirs]
        for f in files:
            p = Path(root) / f
            try:
                text = p.read_bytes()[:200_000]
            except OSError:
                continue
            if b"PRIVATE KEY-----" in text and p.name != Path(__file__).name:
                offenders.append(str(p.relative_to(REPO)))
            if f in ("id_ecdsa", "id_rsa", "id_ed25519") or f.endswith("_host_key"):
                offenders.append(str(p.relative_to(REPO)))
    assert not offenders, f"secrets in the repository: {offenders}"
    gitignore = (REPO / ".gitignore").read_text()
    assert "results" in gitignore


# --- helpers -----------------------------------------------------------------------------------------------------

def _gone(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def _ws(repo: Path) -> source.Workspace:
    return source.Workspace(src=repo, obj=repo.parent / "obj", lock=repo.parent / "ws.lock",
                            base_commit=_git(repo, "rev-parse", "HEAD"), identity={"kind": "test"})


def _mbox(subject: str, body: str, start: int) -> str:
    return (f"From: Someone <s@example.invalid>\nSubject: [PATCH] {subject}\n\n---\n"
            "diff --git a/arch/x86/kvm/mmu/mmu.c b/arch/x86/kvm/mmu/mmu.c\n"
            "--- a/arch/x86/kvm/mmu/mmu.c\n+++ b/arch/x86/kvm/mmu/mmu.c\n"
            f"@@ -{start},3 +{start},3 @@\n {body}\n--\n2.39.5\n")


def test_no_series_with_series_is_a_usage_error_not_a_silent_choice(tmp_path, capsys):
    rc = cli.main(["boot-test", "--no-series", "--series", str(tmp_path), "--results", str(tmp_path / "r")])
    assert rc == 2
    assert "kvm-harness: usage error: --no-series and --series contradict each other" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()   # refused before any work


# --- the environment (issue 13 item 6): unwritable roots are usage errors, a disk fault is infra, named ---------

def test_a_results_root_that_cannot_be_written_is_a_usage_error_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert cli.main(["boot-test", "--results", str(blocker / "results")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"kvm-harness: usage error: the results directory (--results) is not a writable directory:"
                   f" {blocker / 'results'}: Not a directory"]


def test_a_cache_that_cannot_be_written_is_a_usage_error_before_any_work(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("KVM_HARNESS_CACHE", str(blocker / "cache"))
    assert cli.main(["boot-test", "--results", str(tmp_path / "results")]) == 2
    assert "the cache (KVM_HARNESS_CACHE or XDG_CACHE_HOME) is not a writable directory" in capsys.readouterr().err
    # refused before any build; like every usage error found once the run directory exists, it is recorded there
    run = next((tmp_path / "results").glob("*boot-test*"))
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["exit_code"] == 2 and "build" not in meta


def test_a_full_disk_mid_run_is_an_infra_error_naming_the_path_and_keeps_what_was_written(tmp_path, monkeypatch):
    from harness import pipeline

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "cache/builds/x/bzImage"))
    monkeypatch.setattr(pipeline, "_prepared", full)
    out = pipeline.boot_test(RunRequest(results_root=tmp_path / "results"), ["boot-test"])
    assert out.exit_code == 8 and out.status == "error"
    assert out.error == {"kind": "infra", "message": f"No space left on device: {tmp_path}/cache/builds/x/bzImage"}
    meta = json.loads((out.run_dir / "metadata.json").read_text())
    assert meta["exit_code"] == 8 and meta["error"]["kind"] == "infra"
    assert (out.run_dir / "ktap.txt").exists()


def test_a_report_the_disk_refuses_says_the_tests_own_outcome(tmp_path, monkeypatch, capsys):
    from harness import pipeline

    def config_error(*_a, **_k):
        raise ConfigError("CONFIG_X: requested y, got not set")

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "results/junit.xml"))
    monkeypatch.setattr(pipeline, "_prepared", config_error)
    monkeypatch.setattr(pipeline, "write_reports", full)
    out = pipeline.boot_test(RunRequest(results_root=tmp_path / "results"), ["boot-test"])
    assert out.exit_code == 8
    assert out.error is not None and out.error["message"] == (
        f"reports not written: No space left on device: {tmp_path}/results/junit.xml; the tests themselves:"
        " ERROR (exit 5)")
    assert "the tests themselves: ERROR (exit 5)" in capsys.readouterr().out


def test_the_cache_check_creates_nothing(tmp_path):
    """A refused run leaves no cache behind: a missing cache root is judged by its nearest existing parent."""
    missing = tmp_path / "a" / "b" / "cache"
    cache.writable_dir(missing, "the cache", create=False)
    assert not (tmp_path / "a").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="the cache is not a writable directory: .*file/cache: Not a directory"):
        cache.writable_dir(blocker / "cache", "the cache", create=False)
