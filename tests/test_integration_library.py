"""The run as a library (issue 11): build once, then run cells of (mode, workload) several times from
Python, reading typed results and the run directory back, without argv. Real kernel (from the cache
when the boot test ran first), real QEMU, a real guest over SSH."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runs import MAKE_LINE

from harness import pipeline
from harness.lanes import Cell
from harness.request import RunRequest
from harness.results import PASS, Status, TestResult
from harness.series import load_default_list
from harness.workloads import CommandWorkload

pytestmark = pytest.mark.integration


def test_build_once_run_cells_many_times(tmp_path: Path) -> None:
    req = RunRequest(series_dirs=load_default_list(), results_root=tmp_path / "results")
    prepared = pipeline.prepare_build(req, tmp_path)
    assert (tmp_path / "build.log").is_file() and (tmp_path / ".config").is_file()
    assert prepared.key == f"{prepared.build.key}+{prepared.image.key}" and prepared.instrumented

    uname = CommandWorkload("uname", "uname -r", 60)
    first = pipeline.boot_test(req, prepared=prepared, cells=[Cell("tdp_mmu", uname)], label="lib")
    second = pipeline.boot_test(req, prepared=prepared, cells=[Cell("shadow"), Cell("tdp_mmu", uname)], label="lib")

    assert first.run_dir != second.run_dir and first.exit_code == 0 and second.exit_code == 0, (first, second)
    assert [(r.path, r.status) for r in first.results] == [("kvm.tdp_mmu.boot", PASS), ("kvm.tdp_mmu.cmd.uname", PASS)]
    assert [r.path for r in second.results] == ["kvm.shadow.boot", "kvm.tdp_mmu.boot", "kvm.tdp_mmu.cmd.uname"]
    assert all(isinstance(r, TestResult) and isinstance(r.status, Status) for r in second.results)
    release = prepared.build.meta["kernel_release"]
    assert second.results[-1].output.strip() == release
    for out in (first, second):
        meta = json.loads((out.run_dir / "metadata.json").read_text())
        assert meta["status"] == "pass" and meta["timings"]["build_cached"] is True
        assert meta["build"]["key"] == prepared.build.key and meta["timings"]["build_s"] == 0
        assert meta["source"] == prepared.source and meta["kernel_release"] == release
        assert (out.run_dir / "build.log").read_text().startswith("# build cache hit")
        harness_log = (out.run_dir / "harness.log").read_text()
        assert "starting QEMU" in harness_log and not MAKE_LINE.search(harness_log)   # built once, not per run
        assert (out.run_dir / "ktap.txt").read_text().startswith("KTAP version 1")
