"""Running external commands: every command line is logged so it can be rerun by hand.

Children run in their own process group, so an interrupted run can stop a
whole `make -j` tree, not just its top process. Stopping is polite first
(SIGTERM: make and gcc then delete the half-written target they were
producing, so the persistent O= build directory stays consistent), then
SIGKILL after a short grace period.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from .errors import Interrupted

log = logging.getLogger("kvm-harness")

# Every child process group still running; the CLI kills what is left on exit.
_live_groups: set[int] = set()
STOP_GRACE_S = 5.0


def live_groups() -> frozenset[int]:
    """The process groups the harness started and has not reaped yet (empty after a clean stop)."""
    return frozenset(_live_groups)


def quote(cmd: Sequence[str | os.PathLike[str]]) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)


def run(cmd: Sequence[str | os.PathLike[str]], *, cwd: Path | None = None,
        env: Mapping[str, str] | None = None, logfile: Path | None = None,
        timeout: float | None = None, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `cmd`, return the completed process (never raises on a non-zero exit).

    With `logfile`, stdout and stderr are appended to it (and the returned
    stdout is the part this command wrote); otherwise both are captured.
    """
    argv = [str(c) for c in cmd]
    where = f" (in {cwd})" if cwd else ""
    log.debug("$ %s%s", quote(argv), where)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(logfile, "a") as lf:
            lf.write(f"$ {quote(argv)}{where}\n")
            lf.flush()
            start = lf.tell()
            proc = _run(argv, cwd, full_env, timeout, input_text, stdout=lf, stderr=subprocess.STDOUT)
        with open(logfile, errors="replace") as lf:
            lf.seek(start)
            out = lf.read()
        return subprocess.CompletedProcess(argv, proc.returncode, out, "")
    return _run(argv, cwd, full_env, timeout, input_text, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _run(argv: list[str], cwd: Path | None, env: dict[str, str], timeout: float | None,
         input_text: str | None, *, stdout: int | IO[str], stderr: int | IO[str]) -> subprocess.CompletedProcess[str]:
    p = subprocess.Popen(argv, cwd=cwd, env=env, text=True, start_new_session=True,
                         stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                         stdout=stdout, stderr=stderr)
    _live_groups.add(p.pid)
    try:
        out, err = p.communicate(input_text, timeout=timeout)
    except BaseException:
        # Timeout or interrupt: stop the whole group (politely, then for good).
        stop_group(p.pid, lambda: p.poll() is not None)
        raise
    finally:
        _live_groups.discard(p.pid)
    return subprocess.CompletedProcess(argv, p.returncode, out or "", err or "")


def register_group(pid: int) -> None:
    _live_groups.add(pid)


def unregister_group(pid: int) -> None:
    _live_groups.discard(pid)


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    """Is a live (not zombie) process of group `pgid` left?

    Zombies do not count: an orphan's is reaped by init when init gets to it.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_group(pgid: int, leader_done: object = None, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the group, wait up to `grace_s` for it to go, then SIGKILL what is left.

    `leader_done` (a callable) reaps the group leader if it is our child, so
    its zombie does not keep the group "alive" until the grace period ends.
    """
    kill_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if callable(leader_done):
            leader_done()
        if not group_alive(pgid):
            return
        time.sleep(0.05)
    kill_group(pgid, signal.SIGKILL)
    if callable(leader_done):
        end = time.monotonic() + 5
        while not leader_done() and time.monotonic() < end:
            time.sleep(0.02)


def kill_all_children() -> None:
    """Kill every process group this process started and did not reap yet (the last resort)."""
    for pgid in list(_live_groups):
        kill_group(pgid)


# The signal the run was interrupted by (set once by the CLI's handler). Code
# that must not die half-way may swallow the Interrupted exception the handler
# raises; the stages call check_interrupted() at their boundaries, so an
# interrupt is never lost.
_interrupted_by: str | None = None


def note_interrupt(signame: str) -> bool:
    """Record an interrupt; True the first time (raise then), False for repeats (cleanup is running)."""
    global _interrupted_by
    if _interrupted_by is not None:
        return False
    _interrupted_by = signame
    return True


def interrupted() -> str | None:
    return _interrupted_by


# How many threads are inside a deferred section (the VM lanes each talk QMP); under a lock,
# since `+= 1` on a global is not atomic across threads.
_defer_depth = 0
_defer_lock = threading.Lock()


def interrupts_deferred() -> bool:
    return _defer_depth > 0


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold an interrupt back during a short critical call (a QMP exchange: its asyncio
    loop must not have an exception thrown into it). The interrupt is only recorded;
    the next check_interrupted() raises it."""
    global _defer_depth
    with _defer_lock:
        _defer_depth += 1
    try:
        yield
    finally:
        with _defer_lock:
            _defer_depth -= 1


def check_interrupted() -> None:
    """Raise Interrupted if a signal came (and was swallowed or held back) since."""
    if _interrupted_by is not None:
        raise Interrupted(f"interrupted by {_interrupted_by}")
