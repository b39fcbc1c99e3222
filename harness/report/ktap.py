"""KTAP v1 output (the kernel selftests' format): ok / not ok, # SKIP with a reason."""

from __future__ import annotations

from ..results import ERROR, FAIL, SKIP, Status, TestResult, counts


def _one_line(s: str) -> str:
    return " ".join(s.split())[:300]


def render(results: list[TestResult], suite: str = "kvm-harness") -> str:
    lines = ["KTAP version 1", f"# suite: {suite}", f"1..{len(results)}"]
    for i, r in enumerate(results, 1):
        for out in r.output.splitlines()[-15:]:
            lines.append(f"# {out}")
        if r.status == SKIP:
            lines.append(f"ok {i} {r.path} # SKIP {_one_line(r.reason)}")
        elif r.status == FAIL:
            if r.reason:
                lines.append(f"# FAIL: {_one_line(r.reason)}")
            lines.append(f"not ok {i} {r.path}")
        elif r.status == ERROR:
            directive = "TIMEOUT" if r.timed_out else "ERROR"
            lines.append(f"not ok {i} {r.path} # {directive} {_one_line(r.reason)}")
        else:
            if r.reason:  # what a PASS rests on (consistency counts), or that it was flaky
                lines.append(f"# {_one_line(r.reason)}")
            lines.append(f"ok {i} {r.path}")
    n = counts(results)
    lines.append(f"# Totals: pass:{n[Status.PASS]} fail:{n[Status.FAIL]} error:{n[Status.ERROR]} "
                 f"skip:{n[Status.SKIP]}")
    return "\n".join(lines) + "\n"
