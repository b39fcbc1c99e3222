"""Reviewer spot checks: boot the same kernel and image, then a shell or one command.

With --keep the VM stays up after the harness exits, reachable only from
this host's loopback; the exact ssh command and how to stop it are printed.
"""

from __future__ import annotations

import os
import select
import shlex
import sys
import termios
import tty
from pathlib import Path

from . import options, proc
from .guest import HOST_ALIAS, Guest
from .inputs import validate
from .modes import MODES
from .prepare import prepare
from .report import run_dir
from .request import RunRequest
from .session import Session


def _interactive(guest: Guest) -> int:
    chan = guest.client.invoke_shell(term=os.environ.get("TERM", "vt100"))
    if not sys.stdin.isatty():
        chan.sendall(sys.stdin.read().encode() + b"\nexit\n")
    old = termios.tcgetattr(sys.stdin) if sys.stdin.isatty() else None
    try:
        if old is not None:
            tty.setraw(sys.stdin.fileno())
        while True:
            r, _, _ = select.select([chan, sys.stdin] if old is not None else [chan], [], [])
            if chan in r:
                data = chan.recv(4096)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if sys.stdin in r:
                data = os.read(sys.stdin.fileno(), 1024)
                if not data:
                    break
                chan.sendall(data)
    finally:
        if old is not None:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, old)
    return chan.recv_exit_status() if chan.exit_status_ready() else 0


def own_exit_code(guest_rc: int | None, timed_out: str) -> int:
    """The harness's exit code for the guest command's status: 0 for 0, else 1 with the status said on stderr.
    The guest's own status is never passed on: 2-8 and 130 are the harness's (errors.py)."""
    if guest_rc == 0:
        return 0
    said = timed_out if guest_rc is None else f"exited {guest_rc}"
    print(f"kvm-harness: the guest command {said}; kvm-harness exits 1", file=sys.stderr)
    return 1


def run(req: RunRequest, mode_name: str, keep: bool, cmd: list[str]) -> int:
    """Boot `mode_name` with the kernel and image boot-test would use; run `cmd` (or a shell) over SSH.
    Returns own_exit_code of the command's (or the shell's) status."""
    out = run_dir.create(req.results_root, "shell")
    run_dir.point_latest(req.results_root, out)
    again = ["shell", *options.run_argv(req), "--mode", mode_name, *(["--keep"] if keep else []),
             *(["--", *cmd] if cmd else [])]
    meta = run_dir.start_metadata(out, again, "shell")
    series = validate(req)
    described = [s.describe() for s in series]
    p = prepare(req, series, out,
                on_source=lambda ident: run_dir.update_metadata(out, meta, source=ident, series=described))
    s = Session.boot(p, req, MODES[mode_name], out, mode_name)
    print(f"kvm-harness: guest ({mode_name}) ready over SSH in {s.ready_s:.1f}s; artifacts in {out}", file=sys.stderr)
    try:
        if cmd:
            r = s.run(" ".join(shlex.quote(c) for c in cmd) if len(cmd) > 1 else cmd[0], req.plan.timeout_s)
            sys.stdout.write(r.stdout)
            sys.stderr.write(r.stderr)
            rc = own_exit_code(r.rc, f"timed out after {req.plan.timeout_s:g} s (--timeout)")
        else:
            rc = own_exit_code(_interactive(s.guest), "")
        if keep:
            vm = s.vm
            print("VM kept running (loopback only). Reach it with:\n"
                  f"  ssh -i {Path(p.image.client_key)} -o UserKnownHostsFile={p.image.known_hosts} "
                  f"-o HostKeyAlias={HOST_ALIAS} -p {vm.spec.ssh_port} root@127.0.0.1\n"
                  f"Stop it with:\n  kill {vm.proc.pid if vm.proc else '?'}\n"
                  f"Console: {vm.console_log}\n"
                  # The private 0700 directory stays while the VM runs: its QMP socket is in it.
                  f"QMP (root only): {vm.qmp_sock}", file=sys.stderr)
            if vm.proc is not None:
                proc.unregister_group(vm.proc.pid)  # not ours to kill any more
            s.guest.close()
            return rc
    except BaseException:
        s.stop()
        raise
    s.stop()
    return rc
