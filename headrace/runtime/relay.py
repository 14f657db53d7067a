"""The relay: publishes outbox rows that a dead process left, and sends again the jobs a bus
lost.

Not on the hot path: the process that commits publishes right away. Every outbox row belongs
to the process that wrote it (its *holder*), which says it is alive in the store each
heartbeat (`Liveness`). The relay takes only rows whose holder stopped saying so (it died),
or released them (a graceful stop, a publish that failed): so it never races a live
committer, however long its commit or its publish takes, nor a job a live process runs
itself. A process on this host whose pid is gone is dead at once, without waiting out its
lease. Of a job row, the relay sends only a job whose attempt is still open (the store
deletes the others in the same query): a job whose attempt ended is never sent again.

A bus can lose a message it acknowledged (a Redis failover, a Kafka broker whose storage
came back behind what it acknowledged). A lost job leaves its attempt scheduled and never
started, so every `redispatch_s` the relay publishes again the jobs of attempts scheduled
more than `redispatch_s` ago and still not started. A job that was only waiting in a long
queue is then sent twice and may run twice (at-least-once, as after any redelivery); the
engine applies one result per attempt.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

from headrace.bus import Bus
from headrace.clock import SYSTEM, Clock
from headrace.store import Holder, Leases, Outbox

log = logging.getLogger(__name__)

Redispatch = Callable[[list[str], int], Awaitable[int]]  # (run ids, unstarted before ms)


# When this process began (as near as its imports): a holder of this pid that started
# before is a predecessor that had the same pid (a restarted container's pid 1). Process
# identity is the machine's affair: the system clock, whatever clock the runtime is given.
_PROCESS_BEGAN_MS = SYSTEM.now_ms()


def this_process(name: str) -> Holder:
    """A holder for this process: a new id at every start."""
    return Holder(uuid.uuid4().hex, name, socket.gethostname(), os.getpid(), SYSTEM.now_ms())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def seems_alive(h: Holder, me: Holder) -> bool:
    """Whether a holder whose lease has not lapsed may still be running: not if it was on
    this host and its pid is gone, or is this process's and it began before this process."""
    if h.id == me.id or h.host != me.host:
        return True
    if h.pid == me.pid:
        return h.started_at_ms >= _PROCESS_BEGAN_MS
    return _pid_alive(h.pid)


class Liveness:
    """This process's heartbeat in the store: while it beats, its outbox rows are its own."""

    def __init__(
        self,
        store: Leases,
        holder: Holder,
        *,
        lease_s: float,
        every_s: float,
        clock: Clock = SYSTEM,
    ) -> None:
        self.store = store
        self.holder = holder
        self.lease_s = lease_s
        self.every_s = every_s
        self.clock = clock

    async def beat(self) -> None:
        await self.store.beat(self.holder, self.clock.now_ms() + int(self.lease_s * 1000))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.beat()


class RelayStore(Outbox, Leases, Protocol):
    """What the relay reads and writes: the outbox, and who is alive to own its rows."""


class Relay:
    def __init__(
        self,
        store: RelayStore,
        bus: Bus,
        redispatch: Redispatch,
        me: Holder,
        *,
        every_s: float = 1.0,
        redispatch_s: float = 300.0,
        batch_size: int = 1000,
        clock: Clock = SYSTEM,
    ) -> None:
        self.clock = clock
        self.store = store
        self.bus = bus
        self.redispatch = redispatch
        self.me = me
        self.every_s = every_s
        self.redispatch_s = redispatch_s
        self.batch_size = batch_size

    async def dead(self) -> list[str]:
        """Ids of the holders that are gone: their lease lapsed, or they seem dead."""
        now = self.clock.now_ms()
        return [
            h.id
            for h, alive_until in await self.store.holders()
            if alive_until < now or not seems_alive(h, self.me)
        ]

    async def sweep(self) -> int:
        """Publish the rows of dead holders (and released ones) whose message is still due,
        then forget those holders; return how many."""
        dead = await self.dead()
        count = 0
        while rows := await self.store.pending_outbox(dead, self.batch_size):
            await self.bus.publish([r.message for r in rows])
            await self.store.outbox_sent([r.id for r in rows])
            count += len(rows)
        for holder in dead:
            await self.store.forget(holder)
        return count

    async def resend_unstarted(self) -> int:
        """Publish again the jobs of attempts scheduled more than `redispatch_s` ago and not
        started; return how many."""
        before = self.clock.now_ms() - int(self.redispatch_s * 1000)
        run_ids = await self.store.unstarted_runs(before, self.batch_size)
        return await self.redispatch(run_ids, before) if run_ids else 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_redispatch = loop.time() + self.redispatch_s
        while True:
            swept = await self.sweep()
            if swept:
                log.warning("relay republished %d outbox messages of stopped processes", swept)
            if loop.time() >= next_redispatch:
                next_redispatch = loop.time() + self.redispatch_s
                sent = await self.resend_unstarted()
                if sent:
                    log.warning("relay sent again %d jobs not started in time", sent)
            await asyncio.sleep(min(self.every_s, self.redispatch_s))
