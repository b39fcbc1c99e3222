"""Progress of the kernel build, counted from kbuild's own step lines (a real build.log's)."""

import logging
import time
from pathlib import Path

from harness import progress

REAL = Path(__file__).parent / "data" / "real" / "kbuild-steps.log"  # 40 step lines of a real build.log


def test_steps_are_counted_from_kbuilds_lines(tmp_path):
    assert progress.count_steps(REAL) == 40
    log = tmp_path / "build.log"
    log.write_bytes(b"$ make -C src O=obj bzImage\n" + REAL.read_bytes() + b"Kernel: arch/x86/boot/bzImage is ready\n")
    assert progress.count_steps(log) == 40
    assert progress.count_steps(log, start=len(b"$ make -C src O=obj bzImage\n") + 1) == 39  # from an offset on
    assert progress.count_steps(tmp_path / "missing") == 0


def test_the_status_line_says_done_of_expected():
    assert progress.describe(1234, 2000, 125.0) == "1234 of ~2000 steps (61%), 2m05s"
    assert progress.describe(2500, 2000, 5.0) == "2500 of ~2000 steps (99%), 0m05s"  # never 100% before the end
    assert progress.describe(17, None, 61.0) == "17 steps, 1m01s"


def test_cold_step_counts_are_remembered_per_kernel_and_config(tmp_path):
    assert progress.cold_steps(tmp_path, "6.12.117:trim") is None
    progress.record_cold_steps(tmp_path, "6.12.117:trim", 2900)
    assert progress.cold_steps(tmp_path, "6.12.117:trim") == 2900
    assert progress.cold_steps(tmp_path, "6.1.192:trim") is None


def test_without_a_terminal_a_heartbeat_line_is_logged(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="kvm-harness")
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.05)
    log = tmp_path / "build.log"
    log.write_bytes(b"")
    with progress.watching("kernel build", log, 80, tty=False):
        log.write_bytes(REAL.read_bytes())
        for _ in range(200):  # wait (at most 10 s) for the first heartbeat: not a timing assertion
            if "kernel build: 40 of ~80 steps (50%)" in caplog.text:
                break
            time.sleep(0.05)
    assert "kernel build: 40 of ~80 steps (50%)" in caplog.text
