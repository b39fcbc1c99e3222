import hashlib
import json

import kcidb_io
from junitparser import JUnitXml

from harness.errors import exit_code_for
from harness.report import junit, kcidb, ktap, run_dir
from harness.results import ERROR, FAIL, PASS, SKIP, TestResult, overall

RESULTS = [
    TestResult("kvm.shadow.boot", PASS, 4.2),
    TestResult("kvm.shadow.dirty_log_test.dirty-log", FAIL, 11.0, reason="exit 1: ASSERT failed"),
    TestResult("kvm.shadow.dirty_log_test.dirty-ring", ERROR, 240.0, reason="timeout after 240 s", failure="timeout"),
    TestResult("kvm.tdp_mmu.consistency", SKIP, reason="only TDP MMU pages (out of scope)"),
]


def test_ktap_lines():
    text = ktap.render(RESULTS)
    lines = text.splitlines()
    assert lines[0] == "KTAP version 1" and "1..4" in lines
    assert "ok 1 kvm.shadow.boot" in lines
    assert "not ok 2 kvm.shadow.dirty_log_test.dirty-log" in lines
    assert "not ok 3 kvm.shadow.dirty_log_test.dirty-ring # TIMEOUT timeout after 240 s" in lines
    assert "ok 4 kvm.tdp_mmu.consistency # SKIP only TDP MMU pages (out of scope)" in lines


def test_junit_distinguishes_failure_error_skip(tmp_path):
    junit.write(RESULTS, tmp_path / "junit.xml")
    xml = JUnitXml.fromfile(str(tmp_path / "junit.xml"))
    kinds = {}
    for suite in xml:
        for case in suite:
            kinds[case.name] = [type(r).__name__ for r in case.result]
    assert kinds == {"boot": [], "dirty-log": ["Failure"], "dirty-ring": ["Error"], "consistency": ["Skipped"]}


def test_results_json_is_valid_kcidb():
    build = {"key": "abc", "config_base": "trim", "kernel_release": "6.12.117",
             "applied": [{"series": "s", "patch": "p.patch", "sha256": "f" * 64}]}
    doc = kcidb.render("run1", RESULTS, {"kind": "tarball", "sha256": "a" * 64}, build, {"summary": "tcg"}, "fail")
    kcidb_io.schema.V4_3.validate(json.loads(json.dumps(doc)))
    assert [t["status"] for t in doc["tests"]] == ["PASS", "FAIL", "ERROR", "SKIP"]
    # what a tree could not check is in the submission itself (6.1 has no KVM_PROVE_MMU)
    missing = ["CONFIG_KVM_PROVE_MMU: requested y, got not set (from checks.config); no such symbol in this tree's Kconfig"]
    doc = kcidb.render("run1", RESULTS, {"kind": "tree", "commit": "e" * 40}, dict(build, unavailable_checks=missing),
                       {}, "error")
    kcidb_io.schema.V4_3.validate(json.loads(json.dumps(doc)))
    assert doc["builds"][0]["misc"]["unavailable_checks"] == missing


def test_kcidb_checkout_fields_are_what_the_schema_means():
    """Issue 13 item 7: patchset_hash is one sha256 over the newline-terminated patch hashes; a URL is a
    valid URI for any path (spaces, non-ASCII) or left out; a tarball has no git commit of its own."""
    hashes = ["a" * 64, "b" * 64]
    build = {"key": "k", "applied": [
        {"series": "my series", "patch": "0001-x.patch", "path": "/home/r/my series/0001-x.patch", "sha256": hashes[0]},
        {"series": "ünï", "patch": "0002-y.patch", "path": "/home/r/ünï/0002-y.patch", "sha256": hashes[1]},
        {"series": "old", "patch": "0003-z.patch", "sha256": "c" * 64}]}  # a build.json of before: no path
    tarball = {"kind": "tarball", "sha256": "d" * 64, "base_commit": "e" * 40}
    doc = kcidb.render("run1", RESULTS, tarball, build, {"summary": "tcg"}, "fail")
    kcidb_io.schema.V4_3.validate(json.loads(json.dumps(doc)))
    co = doc["checkouts"][0]
    assert co["patchset_hash"] == hashlib.sha256(f"{hashes[0]}\n{hashes[1]}\n{'c' * 64}\n".encode()).hexdigest()
    assert co["patchset_files"] == [
        {"name": "0001-x.patch", "url": "file:///home/r/my%20series/0001-x.patch"},
        {"name": "0002-y.patch", "url": "file:///home/r/%C3%BCn%C3%AF/0002-y.patch"}]  # 0003: no path, no entry
    assert "git_commit_hash" not in co and co["misc"]["source"]["base_commit"] == "e" * 40
    tree = kcidb.render("run1", RESULTS, {"kind": "tree", "commit": "f" * 40}, None, {}, "error")
    assert tree["checkouts"][0]["git_commit_hash"] == "f" * 40 and "patchset_hash" not in tree["checkouts"][0]


def test_overall_and_exit_codes():
    assert overall(RESULTS) == FAIL
    assert exit_code_for(RESULTS) == 1
    assert exit_code_for([RESULTS[0], RESULTS[2]]) == 8
    assert exit_code_for([RESULTS[0]]) == 0
    assert exit_code_for([RESULTS[3]]) == 4
    assert exit_code_for([]) == 8
    assert overall([]) == ERROR


def test_run_dirs_never_collide_and_latest_moves(tmp_path):
    a = run_dir.create(tmp_path, "x")
    b = run_dir.create(tmp_path, "x")
    assert a != b
    run_dir.point_latest(tmp_path, a)
    run_dir.point_latest(tmp_path, b)
    assert (tmp_path / "latest").resolve() == b.resolve()
    meta = run_dir.start_metadata(a, ["boot-test", "--modes", "shadow"], "boot-test")
    on_disk = json.loads((a / "metadata.json").read_text())
    assert on_disk["status"] == "running" and on_disk["reproducer"] == "kvm-harness boot-test --modes shadow"
    assert meta["run_id"] == a.name


def test_junit_survives_console_control_characters(tmp_path):
    r = [TestResult("kvm.shadow.boot", FAIL, reason="panic \x1b[0m\x07", output="\x1b[?25l console \x00 text")]
    junit.write(r, tmp_path / "j.xml")
    xml = JUnitXml.fromfile(str(tmp_path / "j.xml"))
    case = next(iter(next(iter(xml))))
    assert "console" in case.system_out


def test_a_pass_on_retry_is_flaky_in_ktap_junit_and_kcidb(tmp_path):
    flaky = TestResult("kvm.tdp_mmu.dirty_log_test.clear-log", PASS, 30.0,
                       reason="flaky: passed on retry; first attempt: exit 254: ... exit_reason=SHUTDOWN",
                       evidence={"flaky": True, "first_attempt": {"status": "FAIL"}})
    assert "# flaky: passed on retry; first attempt: exit 254" in ktap.render([flaky])
    junit.write([flaky, RESULTS[0]], tmp_path / "junit.xml")
    xml = (tmp_path / "junit.xml").read_text()
    assert xml.count("<flakyFailure") == 1 and 'message="flaky: passed on retry' in xml
    cases = [c for s in JUnitXml.fromfile(str(tmp_path / "junit.xml")) for c in s]
    assert all(c.is_passed for c in cases)   # still a pass for every JUnit reader
    doc = kcidb.render("run1", [flaky, RESULTS[0]], {"kind": "tarball", "sha256": "a" * 64},
                       {"key": "abc", "config_base": "trim", "applied": []}, {"summary": "tcg"}, "pass")
    kcidb_io.schema.V4_3.validate(json.loads(json.dumps(doc)))
    assert [t["misc"]["flaky"] for t in doc["tests"]] == [True, False]
