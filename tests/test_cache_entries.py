"""`kvm-harness cache list|prune` on a hand-made cache root (harness/cache_entries.py)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import cache, cache_entries
from harness.cache_entries import Entry, choose
from harness.cli import main
from harness.errors import UsageError

DAY = 86400


def _entry(path, size, days_ago, now):
    if path.suffix == ".gz":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    else:
        path.mkdir(parents=True)
        (path / "blob").write_bytes(b"x" * size)
    u = cache.use_file(path)
    u.touch()
    os.utime(u, (now - days_ago * DAY, now - days_ago * DAY))
    return path


@pytest.fixture
def root(tmp_path, monkeypatch):
    now = time.time()
    r = tmp_path / "cache"
    _entry(r / "sources" / "tree-old", 300_000, 40, now)
    _entry(r / "sources" / "tarball-new", 300_000, 1, now)
    _entry(r / "builds" / "k-old", 100_000, 20, now)
    _entry(r / "builds" / "k-mid", 100_000, 5, now)
    _entry(r / "builds" / "k-new", 100_000, 0, now)
    _entry(r / "images" / "img", 10_000, 50, now)
    _entry(r / "images" / "img+k-old.cpio.gz", 20_000, 20, now)
    _entry(r / "trees" / "linux-source-6.1", 500_000, 60, now)
    (r / "ccache").mkdir()
    monkeypatch.setenv("KVM_HARNESS_CACHE", str(r))
    return r


def test_entries_by_kind_with_size_and_last_use(root):
    found = {(e.kind, e.path.name): e for e in cache_entries.entries(root)}
    assert set(found) == {("workspace", "tree-old"), ("workspace", "tarball-new"), ("build", "k-old"),
                          ("build", "k-mid"), ("build", "k-new"), ("image", "img"),
                          ("initrd", "img+k-old.cpio.gz"), ("tree", "linux-source-6.1"), ("ccache", "ccache")}
    assert found[("build", "k-old")].size >= 100_000
    assert 19 < (time.time() - found[("build", "k-old")].last_use) / DAY < 21


def test_choose_by_age_then_least_recently_used_to_fit_never_trees_images_ccache():
    now = 100 * DAY
    e = [Entry("workspace", _p("w-old"), 300, now - 40 * DAY), Entry("build", _p("b-old"), 100, now - 20 * DAY),
         Entry("build", _p("b-mid"), 100, now - 5 * DAY), Entry("build", _p("b-new"), 100, now),
         Entry("tree", _p("t"), 1000, now - 90 * DAY), Entry("image", _p("i"), 10, now - 90 * DAY),
         Entry("ccache", _p("c"), 500, now - 90 * DAY)]
    assert [x.path.name for x in choose(e, now, 30 * DAY, None)] == ["w-old"]
    # 2110 bytes in all: to fit 1750, the least recently used go first (after the ones too old)
    assert [x.path.name for x in choose(e, now, 30 * DAY, 1750)] == ["w-old", "b-old"]
    assert [x.path.name for x in choose(e, now, None, 1500)] == ["w-old", "b-old", "b-mid", "b-new"]
    assert choose(e, now, None, None) == []


def _p(name):
    return Path("/c") / name


def test_prune_removes_what_it_chose_but_never_a_held_entry(root):
    held_build = root / "builds" / "k-mid"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_SH); "
        "print('held', flush=True); time.sleep(60)"), str(cache.use_file(held_build))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        removed, held = cache_entries.prune(root, max_age_days=3, max_size=None)
    finally:
        holder.kill()
        holder.wait()
    assert sorted(e.path.name for e in removed) == ["img+k-old.cpio.gz", "k-old", "tree-old"]
    assert [e.path.name for e in held] == ["k-mid"] and held_build.exists()
    assert not (root / "sources" / "tree-old").exists() and not cache.use_file(root / "builds" / "k-old").exists()
    assert (root / "trees" / "linux-source-6.1").exists() and (root / "images" / "img").exists()
    assert not list(root.rglob("*.pruning-*"))


def test_hold_marks_use_and_a_prune_in_another_process_skips_it(root):
    build = root / "builds" / "k-old"
    assert cache.hold(build)
    assert time.time() - cache.use_file(build).stat().st_mtime < 60
    r = subprocess.run([sys.executable, "-m", "harness", "cache", "prune", "--max-age", "0"],
                       capture_output=True, text=True, env=dict(os.environ, KVM_HARNESS_CACHE=str(root)))
    assert r.returncode == 0, r.stderr
    assert f"kept build {build}: a running harness holds it" in r.stdout and build.exists()
    assert "removed workspace" in r.stdout


def test_cache_usage_errors(root, capsys):
    assert main(["cache", "prune"]) == 2
    assert "needs --max-age DAYS and/or --max-size SIZE" in capsys.readouterr().err
    assert main(["cache", "prune", "--max-size", "12Q"]) == 2
    with pytest.raises(UsageError):
        cache_entries.parse_size("G")
    assert main(["cache", "list"]) == 0
    assert "total" in capsys.readouterr().out


def test_a_killed_publishers_temporary_entry_is_swept_a_live_ones_is_not(tmp_path):
    """`kill -9` during a build leaves `.KEY.tmp-*` behind; the next publisher in the directory removes it.
    One whose `.publishing` lock is held (a build running now), or too fresh to be locked yet, stays."""
    import fcntl
    import os
    import time

    from harness import cache

    builds = tmp_path / "builds"
    dead = builds / ".aaaa.tmp-dead"
    live = builds / ".bbbb.tmp-live"
    legacy = builds / ".cccc.tmp-old"  # made before the lock file existed
    fresh = builds / ".dddd.tmp-new"
    for d in (dead, live, legacy, fresh):
        d.mkdir(parents=True)
    (dead / cache.PUBLISHING).touch()
    (live / cache.PUBLISHING).touch()
    old = time.time() - 2 * cache.ORPHAN_AGE_S
    os.utime(legacy, (old, old))
    with open(live / cache.PUBLISHING) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with cache.publishing(builds / "eeee") as out:
            (out / "build.json").write_text("{}")
        assert sorted(p.name for p in builds.iterdir()) == [".bbbb.tmp-live", ".dddd.tmp-new", "eeee"]
    assert sorted(p.name for p in (builds / "eeee").iterdir()) == ["build.json"]  # no lock file left in it
    assert cache.sweep_orphans(builds) == [".bbbb.tmp-live"]  # its publisher is gone now
