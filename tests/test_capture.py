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
