import subprocess
from pathlib import Path

import pytest

from harness import source
from harness.errors import UsageError


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def user_tree(tmp_path: Path) -> Path:
    """A minimal kernel-shaped git tree standing in for a user's checkout."""
    t = tmp_path / "linux"
    (t / "arch/x86/kvm").mkdir(parents=True)
    (t / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 13\nSUBLEVEL = 0\nEXTRAVERSION = -rc1\nNAME = Baby\n")
    (t / "arch/x86/kvm/mmu.c").write_text("int x;\n")
    _git(t, "init", "-q")
    _git(t, "add", "-A")
    _git(t, "commit", "-q", "-m", "base")
    _git(t, "tag", "v6.13-rc1")
    return t


def _fingerprint(repo: Path) -> tuple:
    git = repo / ".git"
    files = sorted((p.relative_to(git), p.stat().st_mtime_ns) for p in git.rglob("*") if p.is_file())
    return subprocess.run(["git", "--no-optional-locks", "-C", str(repo), "status", "--porcelain"], check=True,
                          capture_output=True, text=True).stdout, files


def test_tree_is_cloned_not_touched(tmp_path, user_tree):
    (user_tree / "arch/x86/kvm/mmu.c").write_text("int y; /* uncommitted */\n")
    before = _fingerprint(user_tree)
    ws = source.from_tree(user_tree, tmp_path / "cache")
    assert _fingerprint(user_tree) == before, "the user's repository changed"
    assert ws.identity["commit"] == _git(user_tree, "rev-parse", "HEAD")
    assert ws.identity["describe"] == "v6.13-rc1" and ws.identity["dirty"] is True
    assert ws.identity["version"] == "6.13.0-rc1"
    ws.reset()
    # the workspace has the committed content, not the uncommitted edit
    assert (ws.src / "arch/x86/kvm/mmu.c").read_text() == "int x;\n"
    assert ws.src.is_relative_to(tmp_path / "cache")


def test_a_ref_other_than_head_is_built_and_the_checkout_left_alone(tmp_path, user_tree):
    base = _git(user_tree, "rev-parse", "HEAD")
    _git(user_tree, "checkout", "-q", "-b", "next")
    (user_tree / "arch/x86/kvm/mmu.c").write_text("int z;\n")
    _git(user_tree, "commit", "-q", "-am", "next")
    (user_tree / "arch/x86/kvm/mmu.c").write_text("int w; /* uncommitted, on next */\n")
    before = _fingerprint(user_tree)
    ws = source.from_tree(user_tree, tmp_path / "cache", "v6.13-rc1")
    assert _fingerprint(user_tree) == before
    assert ws.identity["commit"] == base and ws.identity["ref"] == "v6.13-rc1" and ws.identity["dirty"] is False
    ws.reset()
    assert (ws.src / "arch/x86/kvm/mmu.c").read_text() == "int x;\n"
    assert source.from_tree(user_tree, tmp_path / "cache", "next").identity["commit"] != base
    with pytest.raises(UsageError, match="has no commit 'no-such-branch'"):
        source.check_tree(user_tree, "no-such-branch")


def test_a_workspace_whose_borrowed_objects_were_pruned_is_rebuilt(tmp_path, user_tree, caplog):
    """Issue 13 item 5: the user rebases and git gc prunes the old commits the --shared clone borrowed; the
    next run rebuilds the workspace (saying so, keeping the O= build directory) instead of failing forever."""
    caplog.set_level("WARNING", logger="kvm-harness")
    ws = source.from_tree(user_tree, tmp_path / "cache")
    ws.reset()
    (ws.obj / "kept").parent.mkdir(parents=True, exist_ok=True)
    (ws.obj / "kept").write_text("ccache and make outputs")
    # the user rewrites history: a new root commit replaces the old one, and the old objects are pruned
    (user_tree / "arch/x86/kvm/mmu.c").write_text("int z;\n")
    _git(user_tree, "checkout", "-q", "--orphan", "rewritten")
    _git(user_tree, "add", "-A")
    _git(user_tree, "commit", "-q", "-m", "rebased")
    _git(user_tree, "branch", "-q", "-D", "master" if "master" in _git(user_tree, "branch") else "main")
    _git(user_tree, "tag", "-d", "v6.13-rc1")
    _git(user_tree, "reflog", "expire", "--expire=now", "--all")
    _git(user_tree, "gc", "-q", "--prune=now")
    assert not source.objects_intact(ws.src)  # what git itself would report as "bad object"
    ws2 = source.from_tree(user_tree, tmp_path / "cache")
    ws2.reset()
    assert (ws2.src / "arch/x86/kvm/mmu.c").read_text() == "int z;\n"
    assert (ws2.obj / "kept").read_text() == "ccache and make outputs"
    assert "rebuilding the workspace of" in caplog.text and "rebased and garbage-collected" in caplog.text
    assert source.objects_intact(ws2.src)


def test_tree_errors_name_the_path(tmp_path):
    with pytest.raises(UsageError, match="kernel tree not found"):
        source.check_tree(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(UsageError, match="not a git repository"):
        source.check_tree(tmp_path / "plain")


def test_missing_tarball_names_it_and_the_setup(tmp_path):
    with pytest.raises(UsageError, match="tarball not found: .*nope.tar.xz"):
        source.check_tarball(tmp_path / "nope.tar.xz")


def test_kernel_version_reads_the_makefile(tmp_path):
    (tmp_path / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 117\nEXTRAVERSION =\nNAME = Baby Opossum Posse\n")
    assert source.kernel_version(tmp_path) == "6.12.117"


def test_corrupt_tarball_is_named_and_leaves_no_cache_entry(tmp_path):
    bad = tmp_path / "linux-source-6.12.tar.xz"
    bad.write_bytes(b"\xfd7zXZ\x00 not really xz")
    with pytest.raises(UsageError, match=r"linux-source-6.12.tar.xz cannot be unpacked: .*tar"):
        source.from_tarball(bad, tmp_path / "cache")
    entries = [p.name for p in (tmp_path / "cache" / "sources").iterdir()]
    assert not any(n.startswith("tarball-") and n.rsplit(".", 1)[-1] not in ("lock", "json") for n in entries), entries
