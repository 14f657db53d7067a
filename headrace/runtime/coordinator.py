"""The coordinator: applies workers' results and due timers to runs, in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec

from headrace.bus import Bus, Delivery
from headrace.bus.base import content_type
from headrace.bus.topics import COORDINATORS, RESULTS, WORKERS
from headrace.engine import Command, Complete, Fail, Fire, MarkStarted
from headrace.errors import InfraError
from headrace.events import Finished, Result, Started, decode_result, unreadable
from headrace.runtime.driver import Driver
from headrace.runtime.local import LocalResults
from headrace.store import TimerBook

log = logging.getLogger(__name__)
GROUP = COORDINATORS


def command_from_delivery(delivery: Delivery) -> tuple[str, Command] | str:
    """Decode a result message from the bus: (run id, the engine command it asks for), or
    why it cannot be decoded (its format is unknown here, or its payload does not decode)."""
    refused = unreadable(content_type(delivery.message))
    if refused is not None:
        return refused
    try:
        return command_from_result(decode_result(delivery.message.payload))
    except msgspec.DecodeError as e:
        return f"undecodable result: {e}"


def command_from_result(r: Result) -> tuple[str, Command]:
    """(run id, the engine command) of a decoded result: from the bus or this process's
    worker."""
    if isinstance(r, Started):
        return r.run_id, MarkStarted(r.node_id, r.attempt, r.at_ms)
    assert isinstance(r, Finished)
    if r.error is not None:
        return r.run_id, Fail(r.node_id, r.attempt, r.started_at_ms, r.at_ms, r.error)
    return r.run_id, Complete(
        r.node_id, r.attempt, r.started_at_ms, r.at_ms, r.output, r.cost_cents
    )


Item = tuple[tuple[str, Command], Delivery | None]  # a command, and what to acknowledge with it


class Coordinator:
    def __init__(
        self,
        driver: Driver,
        bus: Bus,
        store: TimerBook,
        *,
        name: str = "coordinator-1",
        batch_size: int = 1000,
        local: LocalResults | None = None,
    ) -> None:
        self.driver = driver
        self.bus = bus
        self.store = store
        self.name = name
        self.batch_size = batch_size
        self.local = local

    async def run_results(self) -> None:
        """Consume results forever: one decide/commit/publish per batch, the batch's
        acknowledgement sent with the publish (redelivered results are applied once)."""
        while True:
            await self._apply_next()

    async def run_local_results(self) -> None:
        """Apply the results this process's worker hands over (see runtime/local.py); their
        jobs are acknowledged with the publish that follows the commit."""
        assert self.local is not None
        while True:
            taken = await self.local.take()
            self.driver.crash.reached("after_handoff")  # results taken, not yet committed
            try:
                await self.apply([(command_from_result(r), job) for r, job in taken], WORKERS)
            finally:
                self.local.settle(len(taken))

    async def _apply_next(self) -> None:
        """Read a batch of results and apply it."""
        deliveries = await self.bus.consume([RESULTS], GROUP, self.name, self.batch_size, 200)
        if 1 < len(deliveries) < self.batch_size:
            await asyncio.sleep(0)  # under load, linger a loop turn: more results join
            more = self.batch_size - len(deliveries)
            deliveries += await self.bus.consume([RESULTS], GROUP, self.name, more, 0)
        items: list[Item] = []
        for delivery in deliveries:
            command = command_from_delivery(delivery)
            if isinstance(command, str):  # poison: set aside, never blocks the others
                log.error("result %s goes to the dead-letter topic: %s", delivery.id, command)
                await self.bus.dead_letter(GROUP, delivery, command)
            else:
                items.append((command, delivery))
        if items:
            await self.apply(items, GROUP)

    async def apply(self, items: list[Item], group: str) -> None:
        """Apply a batch and acknowledge its deliveries for `group`; while the store is
        down, retry it. A command that fails on its own for any other reason is logged and
        dropped, so it cannot block the others."""
        commands = [command for command, _ in items]
        acks = [d for _, d in items if d is not None]
        pause = 0.05
        while True:
            try:
                await self.driver.apply(commands, acks=(group, acks))
                return
            except InfraError:
                log.warning("store or bus unavailable; retrying a batch of %d", len(commands))
                await asyncio.sleep(pause)
                pause = min(2.0, pause * 2)
            except Exception:
                if len(items) == 1:
                    log.exception("dropping a result that cannot be applied: %s", commands[0])
                    await self.driver.acknowledge(group, acks)
                    return
                for item in items:
                    await self.apply([item], group)
                return

    async def run_timers(self) -> None:
        """Fire due timers; sleep until the next one (or until new timers are committed)."""
        while True:
            now = self.driver.clock.now_ms()
            due = await self.store.due_timers(now, self.batch_size)
            if due:
                await self.driver.apply([(t.run_id, Fire(t, now)) for t in due], fired=due)
                continue
            nxt = await self.store.next_timer_at()
            sleep_s = 1.0 if nxt is None else min(1.0, max(0.0, (nxt - now) / 1000))
            self.driver.timers_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.driver.timers_changed.wait(), sleep_s)
