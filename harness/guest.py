"""SSH to the guest with paramiko: wait for ready, run with timeouts, fetch files.

One persistent transport per boot (a new connection costs ~0.2 s under TCG).
The guest's host key is pinned from the image's known_hosts: an unknown key
is refused, never auto-accepted.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path

import paramiko

from . import proc
from .errors import BootError, GuestError
from .guestcheck.health import PANIC_RE, last_line, panic_excerpt
from .results import RunResult
from .vm import VM

log = logging.getLogger("kvm-harness")
HOST_ALIAS = "kvm-harness-guest"
SSHD_MARKER = "kvm-harness: sshd started"
PANIC_EVENT_WAIT_S = 5.0   # the console's panic line to pvpanic's QMP event: bounded (vm.wait_panicked)




# What the guest may send: a command's output is kept up to MAX_OUTPUT_BYTES a stream (its head and its
# tail, the middle dropped and said so); a file it streams (a capture's tarball) up to MAX_STREAM_BYTES.
MAX_OUTPUT_BYTES = 16 << 20
MAX_STREAM_BYTES = 1 << 30


class Bounded:
    """A command's output as it arrives, kept to its first and last `limit // 2` bytes."""

    def __init__(self, limit: int = MAX_OUTPUT_BYTES) -> None:
        self.half = limit // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        self.tail += data
        over = len(self.tail) - self.half
        if over > 0:
            del self.tail[:over]
            self.dropped += over

    def text(self) -> str:
        mark = (f"\n[kvm-harness: {self.dropped} bytes of this output dropped here: it passed"
                f" {2 * self.half >> 20} MiB]\n".encode() if self.dropped else b"")
        return (bytes(self.head) + mark + bytes(self.tail)).decode(errors="replace")


def _connect(port: int, pkey: paramiko.PKey, known_hosts: Path, step: float) -> paramiko.SSHClient:
    """One SSH connection to the guest's forwarded `port`, its host key pinned; paramiko's errors raised."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        # known_hosts names the guest by alias; map the forwarded port to it.
        sock = socket.create_connection(("127.0.0.1", port), timeout=step)
        client.connect(HOST_ALIAS, port=22, username="root", pkey=pkey, sock=sock,
                       timeout=step, banner_timeout=step, auth_timeout=max(step, 5.0),
                       allow_agent=False, look_for_keys=False)
        transport = client.get_transport()
        if transport is None:  # connect() returned, so paramiko has one; say so if not
            raise paramiko.SSHException("no transport after connect")
        transport.set_keepalive(5)
    except BaseException:
        client.close()
        raise
    return client


class Guest:
    def __init__(self, client: paramiko.SSHClient, port: int, pkey: paramiko.PKey | None = None,
                 known_hosts: Path | None = None) -> None:
        self.client = client
        self.port = port
        self._pkey, self._known_hosts = pkey, known_hosts   # to connect again (reconnect)
        self.reconnects: list[str] = []   # why each dropped connection was replaced
        self.held: list[paramiko.Channel] = []   # commands left running for their forensics (run(hold=True))

    @classmethod
    def wait_ready(cls, vm: VM, port: int, key_file: Path, known_hosts: Path, deadline_s: float) -> Guest:
        """Connect as soon as sshd answers; fail fast on panic or QEMU exit, with the console's tail."""
        pkey = paramiko.ECDSAKey.from_private_key_file(str(key_file))
        t0 = time.monotonic()
        deadline = t0 + deadline_s
        last_err = "none yet (no attempt before the init's sshd line)"
        while True:
            proc.check_interrupted()
            console = vm.console()
            if vm.panicked() or PANIC_RE.search(console):
                vm.wait_panicked(PANIC_EVENT_WAIT_S)
                console = vm.console()
                m = PANIC_RE.search(console)
                raise BootError(f"guest kernel panicked during boot: {m.group(0).strip() if m else 'GUEST_PANICKED'}",
                                detail=panic_excerpt(console) or vm.console_tail())
            if not vm.alive():
                raise BootError(f"QEMU exited during boot ({vm.exit_description()}); "
                                f"qemu: {vm.qemu_tail() or 'no output'}; console: {last_line(console)}",
                                detail=vm.console_tail())
            left = deadline - time.monotonic()
            if left <= 0:
                init = "init started sshd" if SSHD_MARKER in console else \
                    f"the init never printed {SSHD_MARKER!r}"
                raise BootError(f"guest sshd did not answer within {deadline_s:g} s (--boot-deadline): {init}; "
                                f"last SSH error: {last_err}; console ends: {last_line(console)}",
                                detail=vm.console_tail())
            # Connecting before the guest's network is up costs a whole banner
            # timeout (slirp accepts, then waits on the guest), so wait for the
            # init's console line; without it (another image) try after 15 s.
            if SSHD_MARKER not in console and time.monotonic() - t0 < 15:
                time.sleep(0.05)
                continue
            step = max(0.5, min(left, 3.0))   # no attempt outlives the deadline by much
            try:
                return cls(_connect(port, pkey, known_hosts, step), port, pkey, known_hosts)
            except paramiko.BadHostKeyException as e:
                raise BootError(f"guest host key does not match the image's pinned key: {e}") from e
            except (OSError, paramiko.SSHException, EOFError) as e:
                last_err = f"{type(e).__name__}: {e}"
                time.sleep(0.15)

    def run(self, cmd: str, timeout: float, watch: Callable[[], str] | None = None,
            watch_every_s: float = 2.0, hold: bool = False) -> RunResult:
        """Run `cmd` in the guest; rc None when it ran past `timeout` (the channel is then closed).

        `watch`, when given, is called every `watch_every_s` seconds while `cmd` runs; a non-empty answer
        stops the wait as the timeout does, and the result's `stopped` keeps it. With `hold`, a command
        that did not end is left running (its channel open) until `release()`: forensics taken meanwhile
        see its threads where they hang or spin, not a process already gone. GuestError when the
        connection is gone."""
        t0 = time.monotonic()
        next_watch = t0 + watch_every_s
        stopped = ""
        chan = self._open(cmd)
        transport = chan.get_transport()
        out, err = Bounded(), Bounded()
        deadline = t0 + timeout
        rc: int | None = None
        while True:
            proc.check_interrupted()
            left = deadline - time.monotonic()
            if left <= 0:
                self._end(chan, hold)
                break
            r, _, _ = select.select([chan], [], [], min(left, 1.0))
            while chan.recv_ready():
                out.add(chan.recv(65536))
            while chan.recv_stderr_ready():
                err.add(chan.recv_stderr(65536))
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                rc = chan.recv_exit_status()
                if rc == -1 and _transport_died(transport):
                    # paramiko closes the channels of a dead connection with status -1:
                    # the guest (or QEMU) went away, the command did not exit.
                    raise GuestError(f"SSH connection lost while running {cmd!r}")
                break
            if not transport.is_active():
                raise GuestError(f"SSH connection lost while running {cmd!r}")
            if watch is not None and time.monotonic() >= next_watch:
                stopped = watch()
                if stopped:
                    self._end(chan, hold)
                    break
                next_watch = time.monotonic() + watch_every_s
        if rc is not None:
            chan.close()
        return RunResult(cmd, rc, out.text(), err.text(), time.monotonic() - t0, stopped)

    def _end(self, chan: paramiko.Channel, hold: bool) -> None:
        if hold:
            self.held.append(chan)
        else:
            chan.close()

    def held_ended(self) -> str:
        """How the commands `run(hold=True)` left running ended since, if they did: "exit N: <their last
        line of output>" for each ("" while they run): a stopped test may still end by itself before its
        forensics are taken."""
        out = []
        for chan in self.held:
            try:
                if not chan.exit_status_ready():
                    continue
                text = b""
                while chan.recv_ready():
                    text += chan.recv(65536)
                while chan.recv_stderr_ready():
                    text += chan.recv_stderr(65536)
                last = next((ln.strip() for ln in reversed(text.decode(errors="replace").splitlines()) if ln.strip()),
                            "")
                out.append(f"exit {chan.recv_exit_status()}" + (f": {last[:300]}" if last else ""))
            except Exception:
                continue
        return "; ".join(out)

    def release(self) -> None:
        """Close the channels of the commands `run(hold=True)` left running (dropbear then ends them)."""
        held, self.held = self.held, []
        for chan in held:
            try:
                chan.close()
            except Exception:
                pass

    def _open(self, cmd: str) -> paramiko.Channel:
        """A channel running `cmd`. A connection found dead between commands is replaced once (the guest
        is asked again, its host key pinned as before) and the reason kept in `reconnects`: a guest that is
        gone does not answer, and that is the GuestError of the caller."""
        for again in (False, True):
            transport = self.client.get_transport()
            try:
                if transport is None or not transport.is_active():
                    raise EOFError("the connection is closed")
                chan = transport.open_session(timeout=10)
                chan.exec_command(cmd)
                return chan
            except (paramiko.SSHException, OSError, EOFError) as e:
                why = f"{type(e).__name__}: {e}".rstrip(": ")
                if again or self._pkey is None or self._known_hosts is None or (transport and transport.is_active()):
                    raise GuestError(f"cannot run {cmd!r} in the guest: {why}") from e
            try:
                self.client.close()
                self.client = _connect(self.port, self._pkey, self._known_hosts, 5.0)
            except (OSError, paramiko.SSHException, EOFError) as e2:
                raise GuestError(f"SSH connection to the guest is gone ({why}) and a new one failed "
                                 f"({type(e2).__name__}: {e2}), running {cmd!r}") from e2
            self.reconnects.append(why)
            log.warning("the SSH connection to the guest dropped between commands (%s); connected again", why)
        raise AssertionError("unreachable")

    def check(self, cmd: str, timeout: float = 30) -> str:
        r = self.run(cmd, timeout)
        if r.rc != 0:
            raise GuestError(f"guest command failed ({'timeout' if r.timed_out else f'exit {r.rc}'}): "
                             f"{cmd}: {r.stderr.strip()[-300:]}")
        return r.stdout

    def stream_to(self, cmd: str, local: Path, timeout: float = 60, max_bytes: int = MAX_STREAM_BYTES) -> bool:
        """Run `cmd` in the guest and write its stdout, as bytes, to `local`; False when it fails, runs past
        `timeout` or sends more than `max_bytes` (the guest is untrusted: it never fills the host's disk)."""
        try:
            chan = self._open(cmd)
        except GuestError:
            return False
        deadline = time.monotonic() + timeout
        try:
            chan.settimeout(min(timeout, 10.0))
            with open(local, "wb") as f:
                while time.monotonic() < deadline:
                    try:
                        data = chan.recv(1 << 20)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    if f.tell() + len(data) > max_bytes:
                        log.warning("%s: the guest sent more than %d MiB; stopped", cmd, max_bytes >> 20)
                        chan.close()
                        return False
                    f.write(data)
                else:
                    chan.close()
                    return False
            return chan.recv_exit_status() == 0
        except (paramiko.SSHException, OSError, EOFError):
            return False

    def alive(self) -> bool:
        transport = self.client.get_transport()
        return transport is not None and transport.is_active()

    def close(self) -> None:
        self.release()
        try:
            self.client.close()
        except Exception:
            pass


def _transport_died(transport: paramiko.Transport, grace_s: float = 2.0) -> bool:
    """Did the connection die? (paramiko unlinks the channels before it marks itself inactive.)"""
    end = time.monotonic() + grace_s
    while True:
        if not transport.is_active() or getattr(transport, "saved_exception", None) is not None:
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
