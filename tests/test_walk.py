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

    def good(k):
        calls.append(k)
        return bad_from is None or k < bad_from

    assert walk.first_bad(n, good) == bad_from
    if n <= walk.LINEAR_MAX:
        assert calls == list(range(1, (bad_from or n) + 1))   # in order, stopping at the first bad
    else:
        assert len(set(calls)) <= n.bit_length() + 1   # log2(n) builds, not n


def test_stage_of_a_step():
    assert walk.stage_of(0, None, []) == ("", "")
    assert walk.stage_of(3, "apply", []) == ("apply", "")
    res = [TestResult("kvm.shadow.boot", "PASS"),
           TestResult("kvm.shadow.dirty_log_test.dirty-log.consistency", "FAIL", reason="3 inconsistencies")]
    assert walk.stage_of(1, None, res) == ("consistency", "kvm.shadow.dirty_log_test.dirty-log.consistency: "
                                                          "3 inconsistencies")
    assert walk.stage_of(8, None, [TestResult("kvm.shadow.x", "ERROR", reason="timeout")])[0] == "test"


def test_a_series_as_one_mbox_is_one_step_per_patch_mail(tmp_path):
    mbx = series_mod.load_series(DATA / "series-intake" / "fast-write-protect-2019-v1.mbx")
    steps = walk.flatten([mbx], tmp_path)
    assert len(steps) == 4      # the cover letter is no step
    assert steps[0].name.endswith("mail 2") and all(series_mod.is_mbox(p.path) for p in steps)
    fixture = series_mod.load_series(DATA / "walk")
    assert [p.path.name[:4] for p in walk.flatten([fixture], tmp_path / "w")] == ["0001", "0002", "0003"]
