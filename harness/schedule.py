"""Which VM runs which workload: the run's workloads shared by lanes, each lane one VM at a time;
and the thread-safe containers the lanes share (results, timings, the consistency checks).

Measured on the 2-core TCG machines: a guest running a dirty-log selftest keeps ~1.2 host cores
busy (one vCPU runs the nested guest, the other mostly waits), so a second VM beside it gets the
run's workloads done ~1.5x sooner; a third VM added contention more than throughput (each test
~1.9x slower) and made the TCG-nested flakes more frequent. Hence the default: one lane per host
CPU, at most what memory allows.

A lane keeps its VM while its mode has workloads left, then moves to a mode no lane is on, and
at the end shares the last mode's workloads with the lane running it, so no lane idles. Results are put back in plan
order, whatever order the lanes finish in, so reports do not depend on the scheduling.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

from . import sizes
from .results import ERROR, TestResult

log = logging.getLogger("kvm-harness")

W = TypeVar("W")

# What one TCG VM costs the host besides its RAM (translation cache, QEMU itself): measured RSS of a
# 3G guest after a dirty_log_test was 1.4 GB, so RAM + 1 GiB is a safe bound per VM.
VM_OVERHEAD_BYTES = 1 << 30


def memory_bytes(spec: str) -> int:
    """QEMU's -m syntax as the harness accepts it (3G, 3072M, 3072 = MiB)."""
    return sizes.parse(spec, "--memory wants a size like 3G or 3072M", bare_mib=True)


def mem_available(meminfo: str) -> int | None:
    m = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def auto_lanes(cpus: int, available: int | None, vm_memory: int, work: int) -> tuple[int, str]:
    """How many VMs run at once when not given (--vms auto), and why."""
    n, why = max(1, cpus), f"{cpus} host CPUs"
    if available is not None:
        fit = max(1, available // (vm_memory + VM_OVERHEAD_BYTES))
        if fit < n:
            n, why = fit, f"{available >> 20} MiB available for {vm_memory >> 20} MiB guests"
    if work < n:
        n, why = max(1, work), f"{work} workload(s)"
    return n, why


def lanes_for(requested: int | None, vm_memory: str, work: int) -> tuple[int, str]:
    """(lanes, why): `requested` (--vms) capped at the work, or auto_lanes from this host's CPUs and memory."""
    if requested is not None:  # at least 1: request.validate_options
        return min(requested, max(1, work)), "--vms"
    try:
        with open("/proc/meminfo") as f:
            available = mem_available(f.read())
    except OSError:
        available = None
    return auto_lanes(os.cpu_count() or 1, available, memory_bytes(vm_memory), work)


@dataclass(frozen=True)
class Item(Generic[W]):
    mode: str
    index: int          # place in the mode's plan: results are reported in this order
    workload: W


class WorkQueue(Generic[W]):
    """The workloads not taken yet, in plan order (mode by mode). Thread-safe."""

    def __init__(self, plan: dict[str, list[W]]) -> None:
        self._lock = threading.Lock()
        self._items: list[Item[W]] = [Item(m, i, w) for m, ws in plan.items() for i, w in enumerate(ws)]
        self._lane_mode: dict[int, str] = {}   # the mode each lane last took a workload of

    def take(self, lane: int, mode: str | None) -> Item[W] | None:
        """The next workload for `lane`, whose VM runs `mode` (None: no VM yet); None when all are taken.

        The lane's own mode first (no new boot); else the first mode no other lane is on (each
        mode's first VM boots once); else the next workload of any mode: the lane boots another VM
        of a mode already running and shares its last workloads, so no lane idles at the end."""
        with self._lock:
            pick = next((i for i, it in enumerate(self._items) if it.mode == mode), None)
            if pick is None:
                others = {m for ln, m in self._lane_mode.items() if ln != lane}
                pick = next((i for i, it in enumerate(self._items) if it.mode not in others),
                            0 if self._items else None)
            if pick is None:
                self._lane_mode.pop(lane, None)
                return None
            item = self._items.pop(pick)
            self._lane_mode[lane] = item.mode
            return item

    def drain(self, mode: str) -> list[Item[W]]:
        """Take every remaining workload of `mode` (its VMs cannot boot: they are reported not run)."""
        with self._lock:
            mine = [it for it in self._items if it.mode == mode]
            self._items = [it for it in self._items if it.mode != mode]
            return mine

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class ResultBook:
    """Results as the lanes produce them, read back in a fixed order: per mode, its boot results,
    then each workload's results in plan order. An interrupted run keeps whatever was added."""

    def __init__(self, modes: list[str]) -> None:
        self._lock = threading.Lock()
        self._modes = list(modes)
        self._boot: dict[str, list[TestResult]] = {m: [] for m in modes}
        self._items: dict[str, dict[int, list[TestResult]]] = {m: {} for m in modes}
        self._boots: dict[str, int] = {m: 0 for m in modes}

    def next_boot(self, mode: str) -> int:
        """1 for a mode's first VM, then 2, 3, ...: names its artifacts and any extra boot case."""
        with self._lock:
            self._boots[mode] += 1
            return self._boots[mode]

    def add_boot(self, mode: str, results: list[TestResult]) -> None:
        with self._lock:
            self._boot[mode].extend(results)

    def add(self, mode: str, index: int, results: list[TestResult]) -> None:
        with self._lock:
            self._items[mode].setdefault(index, []).extend(results)

    def ordered(self) -> list[TestResult]:
        with self._lock:
            out: list[TestResult] = []
            for m in self._modes:
                out += self._boot[m]
                for i in sorted(self._items[m]):
                    out += self._items[m][i]
            return out


def covered_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals: wall time during which at least one ran."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


class BackgroundChecks:
    """Consistency verdicts computed in one worker thread while the guests go on with their next workloads.

    A guest keeps about one host core busy (its vCPU running the nested guest); the check of a capture
    (decode, replay: about a second for a shadow-MMU workload) uses what is left. Each verdict
    fills in a result that is already in the run's list, in its place; `finish()` waits for all of them
    and runs before the exit code is decided and before any report is written. An interrupted run does
    not wait for checks that have not started: their results say so (ERROR). Every VM lane submits
    here, so the bookkeeping is under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[tuple[TestResult, Future[TestResult]]] = []

    def submit(self, placeholder: TestResult, check: Callable[[], TestResult]) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvm-harness-check")
            self._pending.append((placeholder, self._pool.submit(check)))

    def wait_for(self, placeholders: list[TestResult]) -> None:
        """Fill in these placeholders now (a retry compares both attempts' verdicts)."""
        with self._lock:
            mine = [(ph, f) for ph, f in self._pending if any(ph is x for x in placeholders)]
            self._pending = [(ph, f) for ph, f in self._pending if not any(ph is x for x in placeholders)]
        self._resolve(mine)

    def finish(self, interrupted: bool = False) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if interrupted:  # every check not started yet is dropped before waiting for the running one
            for _, fut in pending:
                fut.cancel()
        self._resolve(pending)

    @staticmethod
    def _resolve(pending: list[tuple[TestResult, Future[TestResult]]]) -> None:
        for placeholder, fut in pending:
            if fut.cancelled():
                placeholder.reason = "not checked: the run was interrupted first"
                continue
            try:
                done = fut.result()
            except Exception as e:  # a checker bug is the harness's fault: ERROR, with the cause
                log.exception("consistency check of %s crashed", placeholder.path)
                done = TestResult(placeholder.path, ERROR, reason=f"consistency check crashed: "
                                                                  f"{type(e).__name__}: {e}")
            # In place: the ResultBook already holds the placeholder, in its place in the report.
            for f in fields(done):
                setattr(placeholder, f.name, getattr(done, f.name))

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class Timings(dict[str, Any]):
    """metadata.json's `timings`. The VM lanes add to it at once: sums and lists under a lock, and
    each workload's [start, end] kept aside, so the harness's overhead is the wall time during
    which no workload ran (with several VMs, their workloads overlap each other's boots)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.intervals: list[tuple[float, float]] = []

    def add(self, key: str, seconds: float) -> None:
        with self._lock:
            self[key] = round(float(self.get(key, 0.0)) + seconds, 1)

    def append(self, key: str, value: object) -> None:
        with self._lock:
            self.setdefault(key, []).append(value)

    def put(self, key: str, sub: str, value: object) -> None:
        with self._lock:
            self.setdefault(key, {})[sub] = value

    def workload_ran(self, start: float, end: float) -> None:
        with self._lock:
            self.intervals.append((start, end))

    @contextlib.contextmanager
    def measure(self, key: str) -> Iterator[None]:
        """Add the seconds the block took to `key` (a sum over lanes and workloads)."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.add(key, time.monotonic() - t0)

    def close(self, total_s: float) -> None:
        """The run's totals: with several VMs the tests overlap, so their summed time is not wall
        time, and the harness's overhead is the wall time during which no test was running."""
        ran = covered_seconds(self.intervals)
        with self._lock:
            self["total_s"] = round(total_s, 1)
            self["workloads_s"] = round(sum(b - a for a, b in self.intervals), 1)
            self["workloads_wall_s"] = round(ran, 1)
            self["overhead_s"] = round(total_s - ran, 1)
