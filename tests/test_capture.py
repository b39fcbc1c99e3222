from harness import capture


def test_ring_entries_sums_what_each_cpu_held():
    stats = ("cpu0 entries: 263000 overrun: 0 commit overrun: 0 dropped events: 0 \n"
             "cpu1 entries: 263382 overrun: 0 commit overrun: 0 dropped events: 0 \n")
    assert capture.ring_entries(stats) == 526382
    assert capture.ring_entries("cpu0 overrun: 0 commit overrun: 0 dropped events: 0 \n") is None


def test_ring_losses_sums_overrun_and_drops_over_cpus():
    stats = ("cpu0 overrun: 0 commit overrun: 0 dropped events: 0 \n"
             "cpu1 overrun: 246193 commit overrun: 0 dropped events: 7 \n")
    assert capture.ring_losses(stats) == 246193 + 7
    assert capture.ring_losses("cpu0 overrun: 0 commit overrun: 0 dropped events: 0 \n") == 0


def test_start_script_never_overwrites_and_checks_instrumentation():
    s = capture.start_script(capture.CaptureSettings(buffer_kb_per_cpu=1234, snapshot_interval_s=0.25))
    assert "echo 0 > $T/options/overwrite" in s
    assert "echo 1234 > $T/buffer_size_kb" in s
    assert "kvm_mmu_pw_spte" in s and "kvm_mmu_pw_page" in s
    assert "instrumentation missing" in s and "exit 3" in s
    assert "sleep 0.2;" in s and "[ $i -lt 1 ]" in s  # 0.25 s: one 0.2 s step, stop checked after each
    # a dump without its end line (VM gone mid-read) is counted, not kept
    assert "grep -q '^end '" in s and "vanished" in s


def test_stop_script_reads_losses_and_packs_the_trace():
    s = capture.stop_script()
    assert "echo 0 > $T/tracing_on" in s and "ring-stats.txt" in s
    # the binary ring buffer, read after the loss counters (extract consumes it); a failed extract stops the capture
    assert s.index("ring-stats.txt") < s.index("trace-cmd extract -o /tmp/kvm-harness-capture/trace.dat")
    assert "trace-cmd extract failed" in s and "exit 5" in s


def test_the_snapshot_loop_dumps_a_new_vm_at_once_and_stops_on_request(tmp_path):
    """Run the guest's loop for real (POSIX sh) over a fake debugfs: a VM that appears mid-interval is dumped
    within a 0.2 s step, not at the next interval (a selftest that fails in a second still leaves a dump,
    whose masks the trace replay needs); a dump without its end line is counted, not kept."""
    import subprocess
    import time

    debugfs, cap = tmp_path / "kvm", tmp_path / "cap"
    (cap / "snapshots").mkdir(parents=True)
    debugfs.mkdir()
    loop = capture.snapshot_loop(capture.CaptureSettings(snapshot_interval_s=30), str(debugfs), str(cap))
    subprocess.run(["sh", "-c", loop], check=True, timeout=10)
    time.sleep(0.5)  # the first interval's pass found no VM; the next one is 30 s away
    (debugfs / "123-4").mkdir()
    (debugfs / "123-4" / "pw_sptes").write_text("kvm-pw-sptes v2\nend pages=0 sptes=0 truncated=0\n")
    (debugfs / "123-5").mkdir()
    (debugfs / "123-5" / "pw_sptes").write_text("kvm-pw-sptes v2\npage spt=0x1")  # cut: the VM went away
    deadline = time.monotonic() + 5
    while len(list((cap / "snapshots").glob("*-123-4.txt.gz"))) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    # dumped long before the next interval (30 s): the 5 s wait above is a timeout, not a measure
    assert [p.name for p in (cap / "snapshots").iterdir()] == ["000001-123-4.txt.gz"]
    (cap / "stop").touch()
    deadline = time.monotonic() + 5
    while not (cap / "stopped").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (cap / "stopped").exists()
    assert len(list((cap / "snapshots").glob("*-123-4.txt.gz"))) == 1  # once: the next interval never came
    assert (cap / "vanished").read_text() == "x\n"
