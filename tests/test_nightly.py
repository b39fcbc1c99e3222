"""The nightly's plan, history and night-to-night verdicts (harness/nightly/), on hand-made inputs: no VM."""

import json
from pathlib import Path

import pytest
from kcidb_io.schema import V4_3

from harness.errors import UsageError
from harness.nightly import changes, page, plan
from harness.nightly.changes import Observed, classify, inputs_key
from harness.nightly.history import History
from harness.nightly.run import merge_kcidb, request_for, summary

REPO = Path(__file__).resolve().parent.parent


def _plan(tmp_path, text):
    (tmp_path / "linux").mkdir(exist_ok=True)
    (tmp_path / "frag.config").write_text("CONFIG_DEFAULT_HUNG_TASK_TIMEOUT=240\n")
    p = tmp_path / "plan.toml"
    p.write_text(text)
    return p


GOOD = f"""
modes = ["shadow", "tdp_mmu"]
only = ["dirty_log_perf_test"]

[[tree]]
name = "kvm-next"
path = "linux"
ref = "next"

[[series]]
name = "fwp"
paths = ["{REPO}/kernel-patches/fast-write-protect-6.12", "{REPO}/kernel-patches/dirty-log-enable-selftest"]

[[config]]
name = "default"

[[config]]
name = "hung-240"
fragments = ["frag.config"]
"""


def test_a_plan_gives_every_combination_plain_first(tmp_path):
    p = plan.load(_plan(tmp_path, GOOD))
    keys = [c.key for c in p.combinations()]
    assert keys == ["kvm-next/plain/default", "kvm-next/plain/hung-240", "kvm-next/fwp/default", "kvm-next/fwp/hung-240"]
    assert p.modes == ["shadow", "tdp_mmu"] and p.only == ("dirty_log_perf_test",)
    req, argv = request_for(p, p.combinations()[3], tmp_path / "runs")
    assert req.tree == tmp_path / "linux" and req.tree_ref == "next" and len(req.series_dirs) == 2
    assert req.config.user_fragments == [tmp_path / "frag.config"] and req.plan.only == ("dirty_log_perf_test",)
    assert argv[:5] == ["boot-test", "--tree", str(tmp_path / "linux"), "--ref", "next"] and "--config" in argv
    assert "--no-series" in request_for(p, p.combinations()[0], tmp_path / "runs")[1]


@pytest.mark.parametrize("text, message", [
    ("modes = [", "not TOML"),
    ("", "no [[tree]]"),
    ('[[tree]]\npath = "nowhere"\n', "nowhere does not exist"),
    ('[[tree]]\npath = "linux"\nbranch = "x"\n', "unknown key(s) branch"),
    ('modes = ["npt"]\n[[tree]]\npath = "linux"\n', "unknown MMU mode 'npt'"),
    ('[[tree]]\npath = "linux"\n[[tree]]\npath = "linux"\n', "the name 'linux' is used twice"),
    ('[[tree]]\npath = "linux"\n[[series]]\nname = "plain"\npaths = ["linux"]\n', "the name 'plain' is used twice"),
    ('[[tree]]\npath = "linux"\n[[series]]\nname = "a b"\npaths = ["linux"]\n', "name 'a b' must be"),
    ('cache_budget = "lots"\n[[tree]]\npath = "linux"\n', "cache_budget: a cache size is a number"),
])
def test_a_bad_plan_is_one_line_naming_the_table(tmp_path, text, message):
    with pytest.raises(UsageError) as e:
        plan.load(_plan(tmp_path, text))
    assert message in str(e.value) and str(tmp_path / "plan.toml") in str(e.value)


def test_changes_night_to_night():
    before = {"a": "PASS", "b": "FAIL", "c": "PASS", "d": "PASS", "e": "PASS"}
    now = {"a": Observed("FAIL"), "b": Observed("PASS"), "c": Observed("PASS", retried_pass=True),
           "d": Observed("ERROR"), "e": Observed("PASS"), "f": Observed("FAIL")}
    moved = classify(before, "old", now, "new")
    assert moved == {"a": "regression", "b": "fix", "c": "flaky", "d": "error", "e": "same", "f": "new"}
    # the same inputs: a status that changes is flaky, never a regression
    still = classify(before, "same", now, "same")
    assert still["a"] == "flaky" and still["b"] == "flaky" and still["e"] == "same"
    assert set(classify(None, None, now, "x").values()) == {"new", "flaky"}


def test_inputs_are_what_can_change_an_outcome():
    meta = {"source": {"commit": "abc"}, "series": [{"patches": [{"sha256": "1"}]}], "build": {"key": "k"},
            "accelerator": {"name": "tcg"}, "harness_version": "0.1.0"}
    k = inputs_key(meta)
    assert inputs_key(dict(meta, run_dir="elsewhere", started="later")) == k
    assert inputs_key(dict(meta, build={"key": "other"})) != k
    assert inputs_key(dict(meta, source={"commit": "def"})) != k


def test_history_keeps_runs_and_compares_with_the_last_of_the_combination(tmp_path):
    h = History(tmp_path / "history.sqlite")
    meta = {"source": {"tree": "/t", "ref": "next", "commit": "c1", "describe": "v6.13"}, "build": {"key": "k1"},
            "accelerator": {"name": "tcg"}, "status": "pass", "exit_code": 0, "run_dir": "/r/1"}
    tests = [{"path": "kvm.shadow.boot", "status": "PASS", "evidence": {}},
             {"path": "kvm.shadow.dirty_log_perf_test", "status": "PASS", "evidence": {"figures": {"populate": 1.0}}}]
    n1 = h.start_night("n1", tmp_path / "plan.toml", 1.0, tmp_path / "n1")
    assert h.previous("t/plain/default") is None
    h.record_run(n1, "t/plain/default", meta, inputs_key(meta), tests, {})
    h.finish_night(n1, 2.0, 0)
    prev = h.previous("t/plain/default")
    assert prev.statuses == {"kvm.shadow.boot": "PASS", "kvm.shadow.dirty_log_perf_test": "PASS"}
    n2 = h.start_night("n2", tmp_path / "plan.toml", 3.0, tmp_path / "n2")
    failed = [dict(tests[0]), dict(tests[1], status="FAIL", reason="exit 254")]
    meta2 = dict(meta, source=dict(meta["source"], commit="c2"), build={"key": "k2"})
    ch = classify(prev.statuses, prev.inputs, {t["path"]: Observed(t["status"]) for t in failed}, inputs_key(meta2))
    h.record_run(n2, "t/plain/default", meta2, inputs_key(meta2), failed, ch)
    h.close()
    h = History(tmp_path / "history.sqlite")   # reopened: it was on disk
    grid = h.grid(tmp_path / "plan.toml")
    assert [g["night"] for g in grid] == ["n1", "n2"]
    assert grid[1]["tests"]["t/plain/default:kvm.shadow.dirty_log_perf_test"]["change"] == "regression"
    assert h.previous("t/plain/default").statuses["kvm.shadow.dirty_log_perf_test"] == "FAIL"
    # the page: tests by nights, the regression marked, links relative to the page
    html = page.render(tmp_path / "plan.toml", grid, Path("/r"))
    assert html.count('class="cell PASS same"') + html.count('class="cell PASS new"') == 3
    assert 'class="cell FAIL regression" data-change="regression"' in html and "FAIL R</a>" in html
    assert 'href="1/"' in html and "<script" not in html
    assert page.render(tmp_path / "plan.toml", [], Path("/r")).count("<tr") == 1


def test_one_kcidb_submission_per_night_with_the_changes():
    run = {"version": {"major": 4, "minor": 3},
           "checkouts": [{"id": "kvmharness:c1", "origin": "kvmharness"}],
           "builds": [{"id": "kvmharness:b1", "origin": "kvmharness", "checkout_id": "kvmharness:c1"}],
           "tests": [{"id": "kvmharness:t1", "origin": "kvmharness", "build_id": "kvmharness:b1",
                      "path": "kvm.shadow.boot", "status": "PASS"}]}
    other = json.loads(json.dumps(run).replace("c1", "c2").replace("b1", "b2").replace("t1", "t2"))
    merged = merge_kcidb([("t/plain/default", run), ("t/fwp/default", other), ("t/x/default", {})],
                         {"t/fwp/default": {"kvm.shadow.boot": "regression"}})
    V4_3.validate(merged)
    assert len(merged["tests"]) == 2 and len(merged["builds"]) == 2
    assert merged["tests"][1]["misc"]["nightly"] == {"combination": "t/fwp/default", "change": "regression"}
    text = summary("n1", [{"combo": "t/fwp/default", "describe": "v6.13", "status": "fail", "exit_code": 1,
                           "error": None, "changes": {"kvm.shadow.boot": "regression"}, "run_dir": "r"}])
    assert "| t/fwp/default | v6.13 | fail | 1 | 1 | 0 | 0 | r |" in text and "- regression: kvm.shadow.boot" in text
    assert changes.REGRESSION == "regression"
