"""JUnit XML via junitparser: FAIL -> <failure>, ERROR -> <error>, SKIP -> <skipped>; a pass on retry
also carries <flakyFailure> (Surefire's rerun schema)."""

from __future__ import annotations

import re
from pathlib import Path

from junitparser import Error, Failure, JUnitXml, Skipped, TestCase, TestSuite
from junitparser.junitparser import Result

from ..results import ERROR, FAIL, SKIP, TestResult

# XML 1.0 forbids most control characters; console text (escape codes) has them.
_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml(text: str) -> str:
    return _INVALID.sub("\ufffd", text)


class FlakyFailure(Result):
    """Maven Surefire's rerun element (Jenkins' JUnit plugin reads it): the test passed on a retry;
    the message is the first attempt's failure. The case itself stays a pass."""

    _tag = "flakyFailure"  # type: ignore[assignment]  # junitparser types Element._tag as None


def write(results: list[TestResult], path: Path, suite_name: str = "kvm-harness") -> None:
    suite = TestSuite(suite_name)
    for r in results:
        classname, _, name = r.path.rpartition(".")
        case = TestCase(name or r.path, classname or suite_name, r.duration_s)
        if r.status == FAIL:
            case.result = [Failure(_xml(r.reason or "failed"))]
        elif r.status == ERROR:
            case.result = [Error(_xml(r.reason or "error"), "timeout" if r.timed_out else "error")]
        elif r.status == SKIP:
            case.result = [Skipped(_xml(r.reason or "skipped"))]
        if r.evidence.get("flaky"):
            case.append(FlakyFailure(_xml(r.reason), "flaky"))  # type: ignore[no-untyped-call]  # junitparser
        case.system_out = _xml(r.output[-20000:])
        suite.add_testcase(case)
    xml = JUnitXml()
    xml.add_testsuite(suite)
    xml.write(str(path), pretty=True)
