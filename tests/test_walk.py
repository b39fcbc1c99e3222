"""kvm-harness walk's decisions (harness/walk.py): which prefix to run next, where a step went wrong, and a
series split into steps. No VM."""

from pathlib import Path

import pytest

from harness import series as series_mod
from harness import walk
from harness.results import TestResult

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("n, bad_from", [(3, 3), (3, None), (8, 1), (20, 13), (20, 20), (20, None), (100, 1)])
def test_first_bad_walks_short_series_and_bisects_long_ones(n, bad_from):
    calls = []

    def outcome(k):
        calls.append(k)
        return walk.GOOD if bad_from is None or k < bad_from else walk.BAD

    assert walk.first_bad(n, outcome) == (bad_from, [])
    if n <= walk.LINEAR_MAX:
        assert calls == list(range(1, (bad_from or n) + 1))   # in order, stopping at the first bad
    else:
        assert len(set(calls)) <= n.bit_length() + 1   # log2(n) builds, not n


def _series(bad_from, untestable):
    def outcome(k):
        if k in untestable:
            return walk.UNTESTABLE
        return walk.BAD if bad_from is not None and k >= bad_from else walk.GOOD
    return outcome


@pytest.mark.parametrize("n", [9, 10, 20])
def test_untestable_steps_are_gone_around_not_blamed(n):
    # the default series and a mutant: the instrumentation's first patches leave the kernel partly
    # instrumented (untestable), the mutant at the end is the culprit
    assert walk.first_bad(n, _series(n, {n - 4, n - 3, n - 2})) == (n, [])
    # an untestable step right before the bad one could be the culprit: it is said
    assert walk.first_bad(n, _series(n - 1, {n - 3, n - 2})) == (n - 1, [n - 3, n - 2])
    # bad from 5 on, 5 and 6 untestable: 7 is the first testable bad one, 5 and 6 could be it
    assert walk.first_bad(n, _series(5, {5, 6})) == (7, [5, 6])
    # nothing bad where it can be tested; the untestable tail is said
    assert walk.first_bad(n, _series(None, {n})) == (None, [n])
    assert walk.first_bad(n, _series(None, set(range(1, n + 1)))) == (None, list(range(1, n + 1)))


def test_a_step_is_good_bad_or_untestable_by_its_exit_code():
    def step(code):
        return walk.Step(1, "p", code, "", "")
    assert step(0).outcome == walk.GOOD
    assert [step(c).outcome for c in (1, 3, 5, 6, 7)] == [walk.BAD] * 5       # FAIL, apply, config, build, boot
    assert [step(c).outcome for c in (2, 4, 8)] == [walk.UNTESTABLE] * 3       # usage, all SKIP, ERROR only


def test_stage_of_a_step():
    assert walk.stage_of(0, None, []) == ("", "")
    assert walk.stage_of(3, "apply", []) == ("apply", "")
    res = [TestResult("kvm.shadow.boot", "PASS"),
           TestResult("kvm.shadow.dirty_log_test.dirty-log.consistency", "FAIL", reason="3 inconsistencies")]
    assert walk.stage_of(1, None, res) == ("consistency", "kvm.shadow.dirty_log_test.dirty-log.consistency: "
                                                          "3 inconsistencies")
    assert walk.stage_of(8, None, [TestResult("kvm.shadow.x", "ERROR", reason="timeout")])[0] == "test"
    # a workload FAIL (a kernel WARN) and its consistency FAIL: the consistency case is named
    both = [TestResult("kvm.shadow.t", "FAIL", reason="WARNING"), res[1]]
    assert walk.stage_of(1, None, both)[0] == "consistency"


def test_a_series_as_one_mbox_is_one_step_per_patch_mail(tmp_path):
    mbx = series_mod.load_series(DATA / "series-intake" / "fast-write-protect-2019-v1.mbx")
    steps = walk.flatten([mbx], tmp_path)
    assert len(steps) == 4      # the cover letter is no step
    assert steps[0].name.endswith("mail 2") and all(series_mod.is_mbox(p.path) for p in steps)
    fixture = series_mod.load_series(DATA / "walk")
    assert [p.path.name[:4] for p in walk.flatten([fixture], tmp_path / "w")] == ["0001", "0002", "0003"]


def test_two_walks_in_one_second_get_two_directories(tmp_path):
    from harness.report import run_dir
    a, b = run_dir.create(tmp_path, "walk"), run_dir.create(tmp_path, "walk")
    assert a != b and a.name.split("-")[1] == b.name.split("-")[1] == "walk"



def test_a_cover_letter_in_a_directory_of_mails_is_no_step(tmp_path):
    import shutil
    d = tmp_path / "series"
    shutil.copytree(DATA / "walk", d)
    (d / "0000-cover-letter.patch").write_text(
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\nFrom: A <a@example.invalid>\n"
        "Subject: [PATCH 0/3] the walk's fixture\n\nWhat the three patches do.\n\n-- \n2.39.5\n")
    s = series_mod.load_series(d)
    assert [p.path.name[:4] for p in walk.flatten([s], tmp_path / "w")] == ["0001", "0002", "0003"]
