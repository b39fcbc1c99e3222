"""`kvm-harness check RUN_DIR` (harness/check.py): a run's kept capture judged again, without a kernel or a VM.
The capture is a real one (tests/data/real/shadow-enable-test: shadow paging, dirty_log_enable_test, the
guest's trace.dat and three dumps), laid out as a run keeps it."""

import json
import re
import shutil
from pathlib import Path

from harness import check
from harness.checks.files import trace_dat_lines
from harness.cli import main
from harness.results import PASS, TestResult

REAL = Path(__file__).parent / "data" / "real" / "shadow-enable-test"
TEST = "kvm.shadow.dirty_log_enable_test"


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    cap = run / "capture" / TEST
    (cap / "snapshots").mkdir(parents=True)
    for i, d in enumerate(sorted(REAL.glob("pw_sptes.*.txt.gz")), 1):
        shutil.copy(d, cap / "snapshots" / f"{i:06d}-87-4.txt.gz")
    shutil.copy(REAL / "trace.dat", cap / "trace.dat")
    shutil.copy(REAL / "ring-stats.txt", cap / "ring-stats.txt")
    results = [TestResult(TEST, PASS, 7.7), TestResult(f"{TEST}.consistency", PASS, reason="as the run said")]
    (run / "harness-results.json").write_text(json.dumps({"status": "pass", "exit_code": 0, "error": None,
                                                          "results": [r.to_dict() for r in results]}))
    (run / "metadata.json").write_text(json.dumps({"run_id": "r", "exit_code": 0}))
    return run


def test_a_kept_run_is_judged_again_as_it_was(tmp_path, capsys):
    run = _run(tmp_path)
    assert main(["check", str(run)]) == 0
    assert "0 of 1 consistency cases changed; PASS (exit 0)" in capsys.readouterr().out
    doc = json.loads((run / "harness-results.json").read_text())
    case = {r["path"]: r for r in doc["results"]}[f"{TEST}.consistency"]
    assert case["status"] == "PASS" and case["reason"].startswith("no inconsistency; examined 3 dumps")
    assert case["evidence"]["counts"]["wp_loads"] == 76
    assert (run / "ktap.txt").is_file() and (run / "junit.xml").is_file() and (run / "results.json").is_file()
    assert "rechecked" in json.loads((run / "metadata.json").read_text())


def test_a_capture_missing_one_event_turns_the_case_to_fail(tmp_path, capsys):
    # one spte change dropped from the trace and the later seqs renumbered: what a hook the kernel forgot
    # looks like (a gap in seq would be lost events, an ERROR)
    run = _run(tmp_path)
    cap = run / "capture" / TEST
    with trace_dat_lines(cap / "trace.dat") as f:
        lines = list(f)
    drop = next(i for i, line in enumerate(lines) if "kvm_mmu_pw_spte:" in line and " level=1 " in line)
    gone = int(re.search(r"seq=(0x[0-9a-f]+)", lines[drop]).group(1), 16)

    def renumber(line: str) -> str:
        m = re.search(r"seq=(0x[0-9a-f]+)", line)
        return line if m is None or int(m.group(1), 16) < gone else line.replace(
            m.group(0), f"seq={int(m.group(1), 16) - 1:#x}")
    del lines[drop]
    (cap / "trace.dat").write_text("".join(renumber(line) for line in lines))
    (cap / "ring-stats.txt").unlink()   # its entries counted the dropped event
    assert main(["check", str(run)]) == 1
    out = capsys.readouterr().out
    assert f" PASS -> FAIL  {TEST}.consistency: " in out and "1 of 1 consistency cases changed; FAIL (exit 1)" in out
    assert re.search(r"^not ok \d+ kvm.shadow.dirty_log_enable_test.consistency", (run / "ktap.txt").read_text(),
                     re.M)


def test_what_is_not_a_run_directory_is_a_usage_error(tmp_path):
    assert main(["check", str(tmp_path)]) == 2
    assert list(tmp_path.iterdir()) == []
    assert {"dirty_log_perf_test", "dirty_log_enable_test"} == check.POPULATED
