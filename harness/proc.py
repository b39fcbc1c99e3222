"""Running external commands: every command line is logged so it can be rerun by hand.

Children run in their own process group, so an interrupted run can kill a
whole `make -j` tree, not just its top process.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

log = logging.getLogger("kvm-harness")

# Every child process group still running; the CLI's signal handler kills them.
_live_groups: set[int] = set()


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
         input_text: str | None, **streams: object) -> subprocess.CompletedProcess[str]:
    p = subprocess.Popen(argv, cwd=cwd, env=env, text=True, start_new_session=True,
                         stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                         **streams)  # type: ignore[call-overload]
    _live_groups.add(p.pid)
    try:
        out, err = p.communicate(input_text, timeout=timeout)
    except BaseException:
        kill_group(p.pid)
        p.wait()
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


def kill_all_children() -> None:
    """Kill every process group this process started and did not reap yet."""
    for pgid in list(_live_groups):
        kill_group(pgid)
