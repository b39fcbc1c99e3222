"""The command line without a kernel (kunit_tool's KUnitMainTest): each subcommand's argv -> the request its
runner receives, the runners replaced; the reproducers generated from requests; the README's synopsis."""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from pathlib import Path

import pytest

from harness import check, cli, options, pipeline, shell, walk
from harness.ab import run as ab_run
from harness.errors import EXIT_USAGE
from harness.nightly import plan as nightly_plan
from harness.nightly import run as nightly_run
from harness.request import RunRequest
from harness.series import load_default_list
from harness.workloads import Workload

REPO = Path(__file__).resolve().parent.parent
PATCHES = REPO / "kernel-patches"


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Every runner replaced by one that records what it was given."""
    got: dict[str, object] = {}
    monkeypatch.setattr(cli.signal, "signal", lambda *a: None)   # pytest keeps its own handlers
    monkeypatch.setattr(pipeline, "run_boot_test", lambda req, argv: got.update(req=req, argv=argv) or 0)
    monkeypatch.setattr(shell, "run", lambda req, mode, keep, cmd: got.update(req=req, mode=mode, keep=keep,
                                                                              cmd=cmd) or 0)
    monkeypatch.setattr(walk, "run", lambda req: got.update(req=req) or 0)
    monkeypatch.setattr(ab_run, "run", lambda req: got.update(ab=req) or 0)
    monkeypatch.setattr(nightly_plan, "load", lambda path: got.update(plan=path) or "PLAN")
    monkeypatch.setattr(nightly_run, "run", lambda plan, results: got.update(results=results) or 0)
    monkeypatch.setattr(check, "run", lambda run_dir: got.update(run_dir=run_dir) or 0)
    monkeypatch.setattr(cli, "cache_command", lambda action, age, size: got.update(cache=(action, age, size)) or 0)
    return got


def test_boot_test_takes_every_group_and_records_a_reproducer_from_the_request(seen, tmp_path):
    argv = ["boot-test", "--series", str(PATCHES / "dirty-log-enable-selftest"), "--modes", "shadow",
            "--vms", "1", "--only", "enable", "--timeout", "60", "--livelock-window", "0",
            "--append", "foo=1", "--results", str(tmp_path)]
    assert cli.main(argv) == 0
    req = seen["req"]
    assert isinstance(req, RunRequest)
    assert req.series_dirs == [PATCHES / "dirty-log-enable-selftest"] and req.modes == ["shadow"] and req.vms == 1
    assert req.plan.only == ("enable",) and req.plan.timeout_s == 60 and req.livelock.window_s == 0
    assert req.extra_append == ["foo=1"] and req.results_root == tmp_path
    assert seen["argv"] == ["boot-test", "--series", str(PATCHES / "dirty-log-enable-selftest"), "--modes",
                            "shadow", "--vms", "1", "--append", "foo=1", "--only", "enable", "--timeout", "60",
                            "--livelock-window", "0", "--results", str(tmp_path)]


def test_the_defaults_are_the_requests_own(seen):
    assert cli.main(["boot-test"]) == 0
    req = seen["req"]
    assert isinstance(req, RunRequest)
    assert req == replace(RunRequest(), series_dirs=load_default_list())
    assert seen["argv"] == ["boot-test"]   # nothing to say: every value is the default


@pytest.mark.parametrize("argv", [
    [],
    ["--no-series", "--modes", "tdp_mmu,shadow", "--smp", "4", "--memory", "4G", "--accel", "tcg"],
    ["--series", str(PATCHES / "instrumentation"), "--config-base", "defconfig", "--iterations", "2",
     "--perf-bytes", "64M", "--retries", "0", "--consistency", "off", "--boot-deadline", "90.5"],
    ["--tree", "/tmp/linux", "--ref", "v6.12.1", "--vms", "2", "--workload-cmd", "hang=sleep 1000"],
    ["--tarball", "/tmp/linux.tar.xz", "--only", "a", "--only", "b", "--config", "/tmp/x.config"],
])
def test_the_reproducer_makes_the_same_request(seen, argv):
    assert cli.main(["boot-test", *argv]) == 0
    first, again = seen["req"], seen["argv"]
    assert isinstance(again, list) and again[0] == "boot-test"
    assert cli.main(again) == 0
    assert seen["req"] == first and seen["argv"] == again


def test_shell_takes_one_mode_and_no_matrix_or_workload_options(seen, capsys):
    assert cli.main(["shell", "--mode", "shadow", "--timeout", "30", "--keep", "--", "uname", "-r"]) == 0
    assert (seen["mode"], seen["keep"], seen["cmd"]) == ("shadow", True, ["uname", "-r"])
    req = seen["req"]
    assert isinstance(req, RunRequest) and req.plan.timeout_s == 30 and req.modes == RunRequest().modes
    for unused in (["--modes", "shadow"], ["--vms", "1"], ["--retries", "0"], ["--only", "x"]):
        assert cli.main(["shell", *unused]) == EXIT_USAGE, unused
    assert "unrecognized arguments" in capsys.readouterr().err


def test_shell_help_says_how_the_commands_status_is_kept_apart(capsys):
    assert cli.main(["shell", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "the command's own status is never returned" in text and "2-8 and 130" in text


def test_walk_takes_what_boot_test_takes(seen, tmp_path):
    assert cli.main(["walk", "--series", str(REPO / "tests" / "data" / "walk"), "--modes", "shadow",
                     "--results", str(tmp_path)]) == 0
    req = seen["req"]
    assert isinstance(req, RunRequest) and req.modes == ["shadow"]
    assert options.run_argv(req) == ["--series", str(REPO / "tests" / "data" / "walk"), "--modes", "shadow",
                                     "--results", str(tmp_path)]


def test_a_walk_steps_reproducer_names_its_prefixs_patches():
    # what walk.run passes for step 2 of 3: boot-test of the same request on the first two patches
    mails = sorted((REPO / "tests" / "data" / "walk").glob("*.patch"))
    req = RunRequest(series_dirs=[REPO / "tests" / "data" / "walk"], modes=["shadow"])
    step = options.run_argv(replace(req, series_dirs=mails[:2]))
    assert step == ["--series", str(mails[0]), "--series", str(mails[1]), "--modes", "shadow"]
    assert options.run_argv(replace(req, series_dirs=[])) == ["--no-series", "--modes", "shadow"]


def test_ab_takes_the_shared_kernel_and_guest_groups(seen, tmp_path):
    assert cli.main(["ab", "--tree", str(tmp_path), "--ref", "v6.12.1", "--append", "x=1", "--sizes", "64M",
                     "--runs", "3", "--results", str(tmp_path)]) == 0
    req = seen["ab"]
    assert isinstance(req, ab_run.ABRequest)
    assert req.base.tree == tmp_path and req.base.tree_ref == "v6.12.1" and req.base.extra_append == ["x=1"]
    assert req.patched.series_dirs == [PATCHES / "fast-write-protect-6.12"] and req.base.series_dirs == []
    assert req.argv == ["--tree", str(tmp_path), "--ref", "v6.12.1", "--append", "x=1", "--results", str(tmp_path),
                        "--sizes", "64M", "--runs", "3"]
    assert cli.main(["ab", "--no-series"]) == EXIT_USAGE   # ab has no plain "patched" kernel
    assert cli.main(["ab", *req.argv]) == 0 and seen["ab"] == req


def test_an_ab_boots_reproducer_runs_its_points_as_commands():
    base = RunRequest(series_dirs=[], consistency="off", vms=1)
    ws = {Workload("dirty_log_perf_test", "64M-1vcpu", ("-v", "1", "-b", "64M", "-i", "3", "-g"), 900.0): (1, 1)}
    argv = ab_run.boot_argv(base, ws, ["shadow"])
    assert argv == ["boot-test", "--no-series", "--modes", "shadow", "--vms", "1", "--only", ".cmd.",
                    "--consistency", "off", "--workload-cmd",
                    "64M-1vcpu=/bin/dirty_log_perf_test -v 1 -b 64M -i 3 -g"]
    args = cli.parser().parse_args(argv)
    assert options.request_from(args).plan.commands == (("64M-1vcpu", "/bin/dirty_log_perf_test -v 1 -b 64M -i 3 -g"),)


def test_nightly_check_and_cache(seen, tmp_path):
    assert cli.main(["nightly", "--plan", str(tmp_path / "p.toml"), "--results", str(tmp_path)]) == 0
    assert seen["plan"] == tmp_path / "p.toml" and seen["results"] == tmp_path
    assert cli.main(["check", str(tmp_path)]) == 0 and seen["run_dir"] == tmp_path
    assert cli.main(["cache", "prune", "--max-age", "30", "--max-size", "40G"]) == 0
    assert seen["cache"] == ("prune", 30.0, "40G")
    assert cli.main(["check", str(tmp_path), "--results", "x"]) == EXIT_USAGE   # check writes no new run


def test_every_subcommand_is_in_the_top_level_help(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    sub = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    assert list(sub.choices) == list(cli.SUBCOMMANDS)
    assert all(name in out for name in cli.SUBCOMMANDS)


def test_the_readme_synopsis_is_the_parsers():
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- synopsis: generated by cli.synopsis\(\) -->\n```\n(.*?)```", text, re.S)
    assert m is not None, "README.md has no generated CLI synopsis"
    assert m.group(1).rstrip("\n") == cli.synopsis(), (
        "README.md's synopsis drifted from the parser: paste the output of\n"
        "  .venv/bin/python -c 'from harness import cli; print(cli.synopsis())'")


def test_outside_its_checkout_the_harness_refuses_rather_than_drops_the_series(seen, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(options, "DEFAULT_LIST", tmp_path / "kernel-patches" / "default")
    assert cli.main(["boot-test"]) == EXIT_USAGE and "req" not in seen
    assert "no default series" in capsys.readouterr().err
    assert cli.main(["boot-test", "--no-series"]) == 0   # said explicitly: the plain kernel


def test_outside_its_checkout_the_image_recipe_is_refused(monkeypatch, tmp_path):
    from harness import image, inputs
    from harness.errors import UsageError
    monkeypatch.setattr(image, "RECIPE_DIR", tmp_path / "vm-images")
    monkeypatch.setattr(inputs.source, "check_tarball", lambda path: None)
    with pytest.raises(UsageError, match="no guest image recipe"):
        inputs.validate_prepare(RunRequest(series_dirs=[]))


@pytest.mark.parametrize("option,value,said", [
    ("--memory", "0", "--memory must be at least 1G"),
    ("--memory", "512M", "--memory must be at least 1G"),
    ("--memory", "100000G", "more than this host has"),
    ("--smp", "0", "--smp must be between 1 and 64: 0"),
    ("--smp", "1000", "--smp must be between 1 and 64: 1000"),
    ("--vms", "0", "--vms must be between 1 and 16: 0"),
    ("--iterations", "0", "--iterations must be between 1 and 10000000: 0"),
    ("--timeout", "-5", "--timeout must be between 1 and 86400 s: -5"),
    ("--timeout", "inf", "--timeout must be between 1 and 86400 s: inf"),
    ("--boot-deadline", "0", "--boot-deadline must be between 5 and 3600 s: 0"),
    ("--livelock-window", "1", "--livelock-window must be between 4 and 3600 s (or 0: off): 1"),
    ("--perf-bytes", "2G", "--perf-bytes must be between 1M and half of --memory (1536M)"),
    ("--perf-bytes", "lots", "--perf-bytes wants a size like 128M or 1G: 'lots'"),
])
def test_every_number_is_checked_before_any_work(seen, capsys, tmp_path, option, value, said):
    # one line naming the option and its range, exit 2, before a run directory or a build
    rc = cli.main(["boot-test", option, value, "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE and said in err and err.count("\n") == 1, err
    assert "req" not in seen and not (tmp_path / "r").exists()
    assert cli.main(["walk", option, value, "--results", str(tmp_path / "r")]) == EXIT_USAGE


@pytest.mark.parametrize("argv,said", [
    (["--memory", "0"], "--memory must be at least 1G"),
    (["--runs", "1000"], "--runs must be between 3 and 100: 1000"),
    (["--iterations", "500"], "--iterations must be between 2 and 100: 500"),
    (["--vcpus", "1,200"], "--vcpus must be between 1 and 64: 200"),
    (["--sizes", "2G", "--vcpus", "2"], "--sizes x --vcpus (2G x 2) must fit in half of --memory 3G"),
    (["--smp", "0"], "--smp must be between 1 and 64: 0"),
])
def test_abs_numbers_are_checked_before_any_work(seen, capsys, argv, said):
    assert cli.main(["ab", *argv]) == EXIT_USAGE and "ab" not in seen
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1, err
