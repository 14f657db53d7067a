"""Agents die with the process that started them, even when it is SIGKILLed.

`run_local` kills an agent's process group on every way out, but a SIGKILLed worker runs no
code, and the kernel's parent-death signal reaches only the direct child, not the
grandchildren in its group. So each process that starts agents also starts, with its first
agent, one watchdog: this module run as a script, in a session of its own, reading a socket
whose other end only that process holds (close-on-exec, so no agent inherits it).

- Each agent registers its group (``+<pgid>``) itself, between fork and exec, so even a
  worker killed right after the fork leaves nothing unregistered.
- The worker sends ``-<pgid>`` once it has killed the group; the watchdog also forgets every
  second the groups that have no process left (an agent whose exec failed), so it never
  holds a number the kernel may give to someone else.
- When the worker dies the kernel closes its end: the watchdog reads EOF, SIGKILLs every
  group still registered, and exits. SIGINT, SIGTERM and SIGHUP stay blocked in it: its
  life is the worker's.

The watchdog is stdlib-only: it runs as ``python -I -S lifeline.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import select
import signal
import socket
import sys
import time

log = logging.getLogger(__name__)

# Never block (a stopped watchdog must not stall the event loop or an agent's start) and
# never raise SIGPIPE (a dead watchdog must not kill an agent between fork and exec).
_SEND_FLAGS = getattr(socket, "MSG_DONTWAIT", 0) | getattr(socket, "MSG_NOSIGNAL", 0)
_PRUNE_S = 1.0
# The watchdog's life is the worker's, not a terminal's or a stop command's.
_IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Lifeline:
    """This process's end of the watchdog's socket; the watchdog starts with the first agent.

    One per process (`LIFELINE`): the watchdog outlives nothing but the process itself.
    """

    def __init__(self) -> None:
        self._owner = 0  # the pid that started the watchdog (a fork must start its own)
        self._sock: socket.socket | None = None
        self._watchdog = 0
        self._groups: set[int] = set()  # registered and not yet killed

    @property
    def watchdog_pid(self) -> int:
        """The watchdog's pid (0 before the first agent)."""
        return self._watchdog

    def ensure_watchdog(self) -> None:
        """Start the watchdog if it is not running (never started, exited, or forked from)."""
        if self._owner == os.getpid() and self._running():
            return
        ours, theirs = socket.socketpair()
        try:
            self._watchdog = os.posix_spawn(
                sys.executable,
                [sys.executable, "-I", "-S", os.path.abspath(__file__)],
                {},
                file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), 0)],
                setsid=True,
                setsigmask=_IGNORED,  # blocked from its first instruction, never unblocked
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        if self._sock is not None:
            self._sock.close()
        self._sock, self._owner = ours, os.getpid()
        for pgid in self._groups:  # those a previous watchdog held
            self._send(b"+%d\n" % pgid)

    def register_self(self) -> None:
        """In an agent, between fork and exec: register its own group (its pid, after setsid)."""
        self._send(b"+%d\n" % os.getpid())

    def hold(self, pgid: int) -> None:
        """The worker's note of a running group, in case the watchdog must be restarted."""
        self._groups.add(pgid)

    def release(self, pgid: int) -> None:
        """The group `pgid` was killed: the watchdog may forget it."""
        self._groups.discard(pgid)
        self._send(b"-%d\n" % pgid)

    def close(self) -> None:
        """This process is done with agents: the watchdog kills what is left and exits."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _running(self) -> bool:
        try:
            pid, status = os.waitpid(self._watchdog, os.WNOHANG)
        except ChildProcessError:  # someone else reaped it
            pid, status = self._watchdog, 0
        if pid == 0:
            return True
        code = os.waitstatus_to_exitcode(status)
        log.warning("the agents' watchdog %d exited (%d); starting another", pid, code)
        return False

    def _send(self, message: bytes) -> None:
        # A dead watchdog: the worker starts another before its next agent.
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.send(message, _SEND_FLAGS)


LIFELINE = Lifeline()
atexit.register(LIFELINE.close)  # as the exit would, without an unclosed-socket warning


def _watch() -> None:
    """The watchdog: read registrations on fd 0 until EOF, then kill the groups left."""
    groups: set[int] = set()
    partial = b""
    pruned_at = time.monotonic()
    while True:
        ready, _, _ = select.select([0], [], [], _PRUNE_S)
        if ready:
            data = os.read(0, 65_536)
            if not data:
                break
            *lines, partial = (partial + data).split(b"\n")
            for line in lines:
                (groups.add if line[:1] == b"+" else groups.discard)(int(line[1:]))
        if time.monotonic() - pruned_at >= _PRUNE_S:
            groups = {g for g in groups if _signal_group(g, 0)}
            pruned_at = time.monotonic()
    for pgid in groups:
        _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, signum: int) -> bool:
    """Send `signum` to group `pgid` (0: only check); False if the group is gone."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


if __name__ == "__main__":
    _watch()
