"""`make steady` (devtools/steady.py) on kept run directories: the table it prints, without a kernel."""

import json
import shutil
from pathlib import Path

import pytest

from devtools import steady

REAL = Path(__file__).parent / "data" / "real" / "livelock"


def _run_dir(tmp: Path, results: list[dict], exit_code: int) -> Path:
    run = tmp / "20261203T104212Z-boot-test-1"
    (run / "counters").mkdir(parents=True)
    (run / "harness-results.json").write_text(json.dumps({"exit_code": exit_code, "results": results}))
    (run / "metadata.json").write_text(json.dumps({"timings": {"total_s": 279.6}}))
    shutil.copy(REAL / "tdp_legacy-fast-pf-no-stop.json", run / "counters" / "kvm.tdp_legacy.x.json")
    return run


def test_a_kept_run_is_read_back_with_its_flaky_and_livelocked_tests(tmp_path, capsys):
    results = [
        {"path": "kvm.tdp_mmu.dirty_log_test.clear-log", "status": "PASS", "reason": "flaky: passed on retry",
         "evidence": {"flaky": True, "first_attempt": {"status": "FAIL", "failure": "livelock",
                                                      "reason": "livelock: 60,000 page faults in 12 s"}}},
        {"path": "kvm.shadow.dirty_log_test.dirty-log", "status": "PASS", "evidence": {}},
        {"path": "kvm.tdp_mmu.dirty_log_perf_test.consistency", "status": "SKIP", "evidence": {}},
    ]
    run = _run_dir(tmp_path, results, 0)
    assert steady.main(["--report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "  1    0   279.6    2    0     0    1     1" in out
    assert "flaky    kvm.tdp_mmu.dirty_log_test.clear-log: first attempt FAIL (livelock: 60,000" in out
    assert "livelock kvm.tdp_mmu.dirty_log_test.clear-log (first attempt, retried in a fresh VM)" in out
    # the real livelock's counters: 11.3 s without progress, the longest stretch of this run
    assert "longest stretch without progress: 11.3 s, 373,804 page faults, 374,372 exits (kvm.tdp_legacy.x)" in out
    assert "steady: 1 of 1 runs exit 0" in out


def test_a_run_that_failed_or_left_no_results_fails_the_report(tmp_path, capsys):
    run = _run_dir(tmp_path, [{"path": "kvm.shadow.x", "status": "FAIL", "reason": "exit 254"}], 1)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert steady.main(["--report", str(run), str(empty)]) == 1
    out = capsys.readouterr().out
    assert "FAIL     kvm.shadow.x: exit 254" in out and "no harness-results.json" in out
    assert "steady: 0 of 2 runs exit 0" in out


def test_results_for_the_boot_tests_is_steadys_own_option(capsys):
    # passed through after --, the runs would go there while the table reads steady's --results/latest
    with pytest.raises(SystemExit) as e:
        steady.main(["--runs", "1", "--", "--results", "/tmp/elsewhere"])
    assert e.value.code == 2 and "--results belongs to steady itself" in capsys.readouterr().err
