import subprocess
from pathlib import Path

import pytest

from harness import build, kconfig
from harness.build import first_compiler_error
from harness.errors import BuildError
from harness.source import Workspace

LOG = """  CC      arch/x86/kvm/mmu/page_track.o
  CC      arch/x86/kvm/mmu/mmu.o
/root/.cache/kvm-harness/sources/tarball-x/src/arch/x86/kvm/mmu/mmu.c: In function 'mmu_spte_set':
/root/.cache/kvm-harness/sources/tarball-x/src/arch/x86/kvm/mmu/mmu.c:487:9: error: implicit declaration of function 'mmu_log_possible_writable_spte' [-Werror=implicit-function-declaration]
  487 |         mmu_log_possible_writable_spte(sptep, 0ull, new_spte);
/root/.cache/kvm-harness/sources/tarball-x/src/arch/x86/kvm/mmu/mmu.c:500:1: error: second error
make[5]: *** [/src/scripts/Makefile.build:229: arch/x86/kvm/mmu/mmu.o] Error 1
"""


def test_first_compiler_error_has_file_and_line():
    e = first_compiler_error(LOG)
    assert e.endswith("mmu.c:487: error: implicit declaration of function 'mmu_log_possible_writable_spte' "
                      "[-Werror=implicit-function-declaration]")


def test_make_error_when_no_compiler_error():
    assert first_compiler_error("foo\nmake: *** [Makefile:1: all] Error 2\n") == "make: *** [Makefile:1: all] Error 2"


# --- a tree whose own selftest does not build (issue 13 item 4): its test cases are ERRORs, the others run ------

LD_LOG = """\
dirty_log_test.c: In function 'vm_dirty_log_verify':
dirty_log_test.c:775:25: warning: implicit declaration of function 'TEST_ASSERT_EQ' [-Wimplicit-function-declaration]
  775 |                         TEST_ASSERT_EQ(val, iteration);
/usr/bin/ld: /tmp/ccAbCdEf.o: in function `vm_dirty_log_verify':
/src/tools/testing/selftests/kvm/dirty_log_test.c:775: undefined reference to `TEST_ASSERT_EQ'
collect2: error: ld returned 1 exit status
make: *** [../lib.mk:155: /obj/kselftest/kvm/dirty_log_test] Error 1
"""


def test_the_first_linker_error_is_named_not_makes_line():
    assert build.first_compiler_error(LD_LOG, Path("/src")) == \
        "tools/testing/selftests/kvm/dirty_log_test.c:775: undefined reference to `TEST_ASSERT_EQ'"


def test_a_selftest_that_does_not_build_is_named_and_the_others_are_built(tmp_path, monkeypatch):
    src = tmp_path / "src"
    kvm = src / "tools/testing/selftests/kvm"
    (kvm / "x86_64").mkdir(parents=True)
    (kvm / "x86_64/dirty_log_enable_test.c").write_text("")
    # a Makefile that builds every test but dirty_log_test, which fails at link time like 6.1.192's
    (kvm / "Makefile").write_text(
        "$(OUTPUT)/dirty_log_test:\n\t@printf '%s' \"$$LDLOG\"; exit 1\n"
        "$(OUTPUT)/%:\n\tmkdir -p $(dir $@) && touch $@\n")
    ws = Workspace(src=src, obj=tmp_path / "obj", lock=tmp_path / "lock", base_commit="0" * 40)
    req = build.BuildRequest(ws, [], kconfig.ConfigRequest("trim"), jobs=2)
    monkeypatch.setenv("LDLOG", LD_LOG.replace("/src/", f"{src}/"))
    built, errors = build.build_selftests(req, tmp_path / "cache", tmp_path / "obj" / "kst", tmp_path / "log")
    assert built == ["dirty_log_perf_test", "x86_64/dirty_log_enable_test"]
    assert errors == {"dirty_log_test":
                      "tools/testing/selftests/kvm/dirty_log_test.c:775: undefined reference to `TEST_ASSERT_EQ'"}


def test_the_workloads_of_an_unbuilt_selftest_are_errors_of_their_own():
    from harness.verdicts import unbuilt_results
    from harness.workloads import WorkloadPlan
    res = unbuilt_results("shadow", WorkloadPlan(), {"dirty_log_test": "dirty_log_test.c:775: undefined reference"})
    assert [(r.path, r.status) for r in res] == [(f"kvm.shadow.dirty_log_test.{m}", "ERROR")
                                                 for m in ("dirty-log", "clear-log", "dirty-ring")]
    assert res[0].reason == "dirty_log_test did not build: dirty_log_test.c:775: undefined reference"


# --- the image carries the kernel just built (a stale piggy.o from ccache once put another kernel in it) -------

def test_assembler_sources_bypass_ccache(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("gcc", "ccache"):
        tool = bin_dir / name
        tool.write_text(f"#!/bin/sh\necho {name} \"$@\" >> {tmp_path / 'calls'}\n")
        tool.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    for args in (["-c", "-o", "piggy.o", "arch/x86/boot/compressed/piggy.S"], ["-c", "-o", "mmu.o", "mmu.c"]):
        subprocess.run([str(build.KBUILD_CC), *args], env=env, check=True)
    assert (tmp_path / "calls").read_text().splitlines() == [
        "gcc -c -o piggy.o arch/x86/boot/compressed/piggy.S", "ccache gcc -c -o mmu.o mmu.c"]


def test_a_bzimage_without_this_builds_payload_is_refused(tmp_path):
    boot = tmp_path / "arch/x86/boot"
    (boot / "compressed").mkdir(parents=True)
    (boot / "compressed/vmlinux.bin.gz").write_bytes(b"\x1f\x8b\x08 this kernel")
    (boot / "bzImage").write_bytes(b"setup" + b"\x1f\x8b\x08 this kernel" + b"trailer")
    build.check_payload(tmp_path)  # the image carries it
    (boot / "bzImage").write_bytes(b"setup" + b"\x1f\x8b\x08 another kernel" + b"trailer")
    with pytest.raises(BuildError, match="does not carry the kernel just linked"):
        build.check_payload(tmp_path)


def test_the_build_key_is_the_patches_in_order_however_they_are_grouped(tmp_path):
    # a walk step (one series of its prefix's patches) and its reproducer (one --series per patch) build the
    # same tree, so they are one cache entry; the order and the patches themselves still decide
    from harness.build import BuildRequest
    from harness.configreq import ConfigRequest
    from harness.series import Patch, Series
    from harness.source import Workspace
    ws = Workspace(tmp_path, tmp_path, tmp_path, "0" * 40, {"kind": "tarball", "sha256": "ab"})
    a, b = Patch(tmp_path / "1.patch", "11"), Patch(tmp_path / "2.patch", "22")

    def key(*groups: tuple[Patch, ...]) -> str:
        return BuildRequest(ws, [Series(f"s{i}", tmp_path, g) for i, g in enumerate(groups)], ConfigRequest("trim")).key()
    assert key((a, b)) == key((a,), (b,))
    assert key((a, b)) != key((b, a)) and key((a,)) != key((a, b))


def test_a_series_build_step_is_wrapped_in_bubblewrap(tmp_path, monkeypatch):
    # what build.sandboxed hands proc.run: no network, no capabilities, the host read-only, the home, the cache
    # and the results hidden, the workspace and ccache writable, the harness's package readable
    from harness import sandbox
    from harness.build import sandboxed
    from harness.source import Workspace
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: "/usr/bin/bwrap")
    monkeypatch.setattr(sandbox, "_hidden", {tmp_path / "results"})
    (tmp_path / "results").mkdir()
    root = tmp_path / "cache"
    ws = Workspace(root / "sources" / "x" / "src", root / "sources" / "x" / "obj", root / "lock", "0" * 40)
    ws.src.mkdir(parents=True)
    ws.obj.mkdir()
    frag = tmp_path / "my.config"
    frag.write_text("CONFIG_X=y\n")
    cmd = sandboxed(["make", "bzImage"], ws, root, [frag])
    assert cmd[:2] == ["bwrap", "--die-with-parent"] and cmd[-3:] == ["--", "make", "bzImage"]
    text = " ".join(cmd)
    assert "--unshare-all" in cmd and "--cap-drop ALL" in text and "--ro-bind / /" in text
    for hidden in (Path.home(), root, tmp_path / "results"):
        assert f"--tmpfs {hidden.resolve()}" in text, hidden
    for writable in (ws.src, ws.obj, root / "ccache"):
        assert f"--bind {writable.resolve()} {writable.resolve()}" in text, writable
    assert f"--ro-bind {frag} {frag}" in text and f"--ro-bind {sandbox.PACKAGE} {sandbox.PACKAGE}" in text
    # the hidden paths are mounted first, so that the workspace inside the cache is bound again after them
    assert cmd.index(str(root.resolve())) < cmd.index(str(ws.src.resolve()))


def test_without_bubblewrap_the_build_refuses_to_run_a_series_code(monkeypatch, tmp_path):
    from harness import sandbox
    from harness.errors import InfraError
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    with pytest.raises(InfraError, match="bubblewrap"):
        sandbox.command(["make"], [tmp_path], [])


def test_a_cached_build_is_instrumented_by_its_symbols_whatever_its_series_were_called(tmp_path):
    # the default series' kernel, cached by a walk step that grouped its patches as "walk-9"
    from harness.build import BuildResult
    from harness.prepare import Prepared
    from harness.vmspec import Accel

    def prepared(system_map: str, series: str) -> Prepared:
        d = tmp_path / series
        d.mkdir()
        (d / "System.map").write_text(system_map)
        return Prepared(BuildResult("k", d, True, {"series": [{"name": series}]}), d / "initrd", None,  # type: ignore[arg-type]
                        Accel("tcg", "max", "test"), "QEMU 7.2", {})
    assert prepared("ffffffff8300a000 D __tracepoint_kvm_mmu_pw_spte\n", "walk-9").instrumented
    assert not prepared("ffffffff8300a000 D __tracepoint_kvm_mmu_get_page\n", "walk-4").instrumented
    assert prepared("", "instrumentation").instrumented   # KVM as a module: the series' name still says
