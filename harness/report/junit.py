"""JUnit XML via junitparser: FAIL -> <failure>, ERROR -> <error>, SKIP -> <skipped>."""

from __future__ import annotations

from pathlib import Path

from junitparser import Error, Failure, JUnitXml, Skipped, TestCase, TestSuite

from ..results import ERROR, FAIL, SKIP, TestResult


def write(results: list[TestResult], path: Path, suite_name: str = "kvm-harness") -> None:
    suite = TestSuite(suite_name)
    for r in results:
        classname, _, name = r.path.rpartition(".")
        case = TestCase(name or r.path, classname or suite_name, r.duration_s)
        if r.status == FAIL:
            case.result = [Failure(r.reason or "failed")]
        elif r.status == ERROR:
            case.result = [Error(r.reason or "error", "timeout" if r.timed_out else "error")]
        elif r.status == SKIP:
            case.result = [Skipped(r.reason or "skipped")]
        case.system_out = r.output[-20000:]
        suite.add_testcase(case)
    xml = JUnitXml()
    xml.add_testsuite(suite)
    xml.write(str(path), pretty=True)
