"""The livelock watchdog on a real livelock (issue 25): the fast-pf-no-stop mutant (kernel-patches/mutants) makes
the legacy TDP MMU's fast page fault call a write fault spurious forever, so both vCPUs of
dirty_log_enable_test spin in the fault path. The watchdog must stop it, name it, keep its evidence, and,
in tdp_legacy (a mode the series reaches), call it a FAIL the first time: no retry. The slow-but-progressing
side (a selftest asked for a million iterations is left to its timeout) is in test_integration_faults.py."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from runs import kvm_harness, load_run

from harness.series import load_default_list

pytestmark = pytest.mark.integration
PATCHES = Path(__file__).resolve().parent.parent / "kernel-patches"


def test_a_vcpu_spinning_in_the_fault_path_is_stopped_named_and_failed_not_retried(tmp_path):
    series = [a for d in load_default_list() for a in ("--series", str(d))]
    r = kvm_harness("boot-test", *series, "--series", str(PATCHES / "mutants" / "fast-pf-no-stop"),
                    "--modes", "tdp_legacy", "--only", "dirty_log_enable_test", "--results", str(tmp_path / "r"),
                    cwd=tmp_path)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    _, doc, run = load_run(tmp_path / "r")
    res = {x["path"]: x for x in doc["results"]}["kvm.tdp_legacy.dirty_log_enable_test"]
    assert res["status"] == "FAIL" and res["failure"] == "livelock" and not res["timed_out"], res
    # Under TCG the selftest's L2 is sometimes shut down (a known emulator flake, verdicts.INFRA_SIGNATURES,
    # retried once): the livelock is then the second attempt's. A livelock itself is never retried here.
    # Or the emulator's own loop (L2's rip in L1's text, verdicts.emulator_signature) came first: retried
    # in a fresh VM, like the shutdown.
    first = res["evidence"].get("first_attempt")
    attempt = ""
    if first is not None:
        emulator = first["failure"] == "livelock" and first["livelock"]["repeats"][0]["l1_text"]
        assert emulator or (first["failure"] != "livelock" and "(SHUTDOWN)" in first["reason"]), first
        assert res["reason"].startswith("failed twice; ")
        attempt = ".attempt2"
    why = res["reason"].removeprefix("failed twice; ")
    assert why.startswith("livelock (fault loop): ") and "stopped by the watchdog" in why, res["reason"]
    ll = res["evidence"]["livelock"]
    assert ll["kind"] == "fault loop" and ll["seconds"] >= 10 and ll["delta"]["pf_taken"] >= 1000
    assert ll["delta"]["pf_fixed"] == 0
    assert ll["delta"]["io_exits"] == 0 and ll["repeats"], ll
    # the fault named is a write (bit 1 of the NPF error code) that the repeats trace shows again and again
    top = ll["repeats"][0]
    assert int(top["error_code"], 16) & 2 and top["count"] > 1 and top["address"] in res["reason"]

    f = run / "forensics" / f"kvm.tdp_legacy.dirty_log_enable_test{attempt}"
    counters = json.loads((f / "kvm-counters.json").read_text())
    assert counters["livelock"] == {k: ll[k] for k in ("start_t", "seconds", "delta", "kind")}
    faults = gzip.decompress((f / "kvm-faults.txt.gz").read_bytes()).decode(errors="replace")
    assert "kvm_page_fault:" in faults and "fast_page_fault:" in faults and "reason npf" in faults
    # the selftest's own code faults, delivering nothing; its rip is no L1 kernel text (kvm-faults-rip.txt)
    assert top["event"] == "" and top["l1_text"] == "" and int(top["rip"], 16) < 1 << 32, top
    assert (f / "kvm-faults-rip.txt").read_text().split()[0] == f"{int(top['rip'], 16):016x}"
    # the spinning vCPUs are named in the reason; then the test is killed and its capture judged to its end.
    # Under TCG the L2 may also be shut down while the vCPUs spin (the emulator's flake above): the test then
    # ends by itself between the stop and the forensics, and the reason says that instead.
    ended = res["evidence"].get("ended_meanwhile", "")
    vcpu_places = ("(the MMU's fault path)", "(the vCPU run loop)", "(the guest)")
    assert ("its threads then: pid " in res["reason"] and any(p in res["reason"] for p in vcpu_places)) or (
        "(SHUTDOWN)" in ended and "it ended by itself before its forensics" in res["reason"]), res["reason"]
    case = {x["path"]: x for x in doc["results"]}["kvm.tdp_legacy.dirty_log_enable_test.consistency"]
    assert case["status"] == "ERROR" and case["reason"].startswith(
        "workload stopped by the livelock watchdog; the capture up to then judged PASS: "), case["reason"]
    assert "its VMs torn down" in case["reason"] and case["evidence"]["counts"]["pages_left"] == 0
    sysrq = (f / "sysrq-tw.txt").read_text()
    assert "dirty_log_enabl" in sysrq or ended, "the vCPU threads as the kernel saw them while they spun"
    assert str(f.relative_to(run)) in res["artifacts"]
    ktap = (run / "ktap.txt").read_text()
    assert re.search(r"^# FAIL: livelock \(fault loop\): .*\nnot ok \d+ kvm.tdp_legacy.dirty_log_enable_test$", ktap, re.M), ktap
