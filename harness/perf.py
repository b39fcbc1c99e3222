"""dirty_log_perf_test's output: the phases it times, in seconds.

The lines come from tools/testing/selftests/kvm/dirty_log_perf_test.c (the same in 6.1 and 6.12):
"Populate memory time: %ld.%.9lds", "Enabling dirty logging time: ...", then per iteration i
"Iteration i dirty memory time: ...", "Iteration i get dirty log time: ..." and, with manual protect
(without -g), "Iteration i clear dirty log time: ...", and "Disabling dirty logging time: ...".
Iteration 1 is the first after dirty logging was enabled: with write-protect-all it pays the
protection that the enable no longer does, so it is a phase of its own.
"""

from __future__ import annotations

import re
from statistics import fmean

# In the order the test runs them.
PHASES = ("populate", "enable_dirty_logging", "dirty_memory_first", "dirty_memory_later",
          "get_dirty_log", "clear_dirty_log", "disable_dirty_logging")

PHASE_TITLES = {
    "populate": "populate memory",
    "enable_dirty_logging": "enabling dirty logging",
    "dirty_memory_first": "dirty memory, first iteration",
    "dirty_memory_later": "dirty memory, later iterations (mean)",
    "get_dirty_log": "get dirty log (mean per iteration)",
    "clear_dirty_log": "clear dirty log (mean per iteration)",
    "disable_dirty_logging": "disabling dirty logging",
}

_TIME = r"(\d+\.\d+)s"
_ONCE = {
    "populate": re.compile(rf"^Populate memory time: {_TIME}", re.M),
    "enable_dirty_logging": re.compile(rf"^Enabling dirty logging time: {_TIME}", re.M),
    "disable_dirty_logging": re.compile(rf"^Disabling dirty logging time: {_TIME}", re.M),
}
_PER_ITERATION = re.compile(rf"^Iteration (\d+) (dirty memory|get dirty log|clear dirty log) time: {_TIME}", re.M)


def phases(output: str) -> dict[str, float]:
    """The phases of one dirty_log_perf_test run that its output shows: {phase: seconds}, keys of PHASES.

    dirty_memory_later is the mean of iterations 2..N (absent with -i 1); get_dirty_log and
    clear_dirty_log are means per iteration. A phase the output does not show is absent."""
    out = {name: float(m.group(1)) for name, pat in _ONCE.items() if (m := pat.search(output))}
    per: dict[str, dict[int, float]] = {}
    for m in _PER_ITERATION.finditer(output):
        per.setdefault(m.group(2), {})[int(m.group(1))] = float(m.group(3))
    dirty = per.get("dirty memory", {})
    if 1 in dirty:
        out["dirty_memory_first"] = dirty[1]
    if later := [t for i, t in dirty.items() if i > 1]:
        out["dirty_memory_later"] = fmean(later)
    for name, key in (("get_dirty_log", "get dirty log"), ("clear_dirty_log", "clear dirty log")):
        if per.get(key):
            out[name] = fmean(per[key].values())
    return {p: out[p] for p in PHASES if p in out}
