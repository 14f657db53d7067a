"""The worker: runs jobs with bounded concurrency and sends their results back in batches.

High-priority jobs are taken before normal before low. A job's delivery is acknowledged only
after its result is on the bus (or, handed to the coordinator of the same process, committed),
so a worker that dies mid-job leaves the job to be redelivered. A job that runs longer than
`started_notice_s` sends a `Started` notice, so a quick job costs one result message, not two.
In a process that is also coordinator, jobs it schedules may come from it directly
(runtime/local.py): they take the same slots.

A bus may deliver a job late: redelivered after its attempt ended elsewhere, or sent again by
a relay. Before running what it read from the bus, the worker asks the store (`fence`, one
query per read) which of those attempts are still open, and drops the others unrun.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import msgspec

from headrace.bus import Bus, Delivery
from headrace.bus.base import PartlyPublished, content_type, dead_letter_message, reply_headers
from headrace.bus.headers import CONTENT_TYPE_HEADER
from headrace.bus.topics import CANCELS, JOB_LANES, RESULTS, WORKERS
from headrace.clock import SYSTEM, Clock
from headrace.errors import InfraError, NodeError
from headrace.events import (
    CONTENT_TYPE,
    ErrorInfo,
    Finished,
    Job,
    Message,
    Started,
    decode_cancel,
    decode_job,
    encode,
    unreadable,
)
from headrace.nodes import NodeExecutor, Outcome
from headrace.nodes.wrappers import internal_error, timed
from headrace.runtime.crash import NO_CRASH, CrashPoints
from headrace.runtime.local import LocalJob, LocalJobs, LocalResults, split
from headrace.runtime.supervise import cancel_all, run_all
from headrace.store import AttemptKey

log = logging.getLogger(__name__)
GROUP = WORKERS
PARK_S = 1.0  # results a failed bus did not take wait this long before they are sent again
# which of these attempts are still open (Store.open_attempts)
Fence = Callable[[Sequence[AttemptKey]], Awaitable[set[AttemptKey]]]


class Worker:
    def __init__(
        self,
        bus: Bus,
        executors: Mapping[str, NodeExecutor],
        *,
        name: str = "worker-1",
        concurrency: int = 256,
        started_notice_s: float = 0.5,
        heartbeat_s: float = 2.0,
        crash: CrashPoints = NO_CRASH,
        local: LocalResults | None = None,
        local_jobs: LocalJobs | None = None,
        fence: Fence | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.clock = clock
        self.fence = fence
        self.local = local  # the coordinator of this process, when it has one
        self.local_jobs = local_jobs
        self.heartbeat_s = heartbeat_s
        self.crash = crash
        self.bus = bus
        # each within its job's timeout, with a Started notice once it runs long
        self.executors = {
            kind: timed(executor, started_notice_s, self._running_long)
            for kind, executor in executors.items()
        }
        self.name = name
        self.concurrency = concurrency
        self.running: dict[AttemptKey, asyncio.Task[None]] = {}
        self.held: dict[AttemptKey, Delivery] = {}  # their deliveries, for heartbeats
        self.began: dict[AttemptKey, int] = {}  # when each started, ms
        self._poison: list[tuple[Delivery, str]] = []
        self.results: list[Message] = []
        self.acks: list[Delivery] = []  # sent with the results queued with them
        self.flush_needed = asyncio.Event()
        # results (and their deliveries) whose bus failed while another took the rest
        self.parked_results: list[Message] = []
        self.parked_acks: list[Delivery] = []
        self.parked_until = 0.0
        self.free = concurrency  # slots not running a job
        self.asking = 0  # slots the read from the bus in progress may fill
        self.slot_freed = asyncio.Event()
        self.accepting = True
        self.handing_back = False  # jobs cancelled now go back to the bus, unacknowledged

    async def run(self) -> None:
        await run_all(
            self._take_jobs(), self._flush_results(), self._take_cancels(), self._heartbeat()
        )

    async def _take_jobs(self) -> None:
        """Take as many jobs as there are free slots, high lane first. Beside local jobs,
        a read asks for half the free slots (at least one): they may fill the others while
        it waits, and the slots a read may fill are never handed to them."""
        while self.accepting:
            while self.free <= 0:
                self.slot_freed.clear()
                await self.slot_freed.wait()
            self.asking = self.free if self.local_jobs is None else max(1, self.free // 2)
            try:
                deliveries = await self.bus.consume(JOB_LANES, GROUP, self.name, self.asking, 200)
            finally:
                self.asking = 0
            self.free -= len(deliveries)
            for delivery, job in await self._fenced(deliveries):
                self._start(delivery, job)

    async def _fenced(self, deliveries: list[Delivery]) -> list[tuple[Delivery, Job]]:
        """The jobs of `deliveries` whose attempt is still open; the others are dropped
        (acknowledged, never run). If the store cannot tell, all run (at-least-once)."""
        jobs = [(d, job) for d in deliveries if (job := self._decode(d)) is not None]
        if self.fence is None or not jobs:
            return jobs
        try:
            open_ = await self.fence([_key(job) for _, job in jobs])
        except InfraError as e:
            log.warning("the store cannot tell which jobs are stale, running all: %s", e)
            return jobs
        stale = [d for d, job in jobs if _key(job) not in open_]
        if stale:
            log.info("dropped %d jobs whose attempt has ended", len(stale))
            for d in stale:
                self._release()
                self._send(None, d)
        return [(d, job) for d, job in jobs if _key(job) in open_]

    def reserve(self, wanted: int) -> int:
        granted = max(0, min(wanted, self.free - self.asking)) if self.accepting else 0
        self.free -= granted
        return granted

    def unreserve(self, count: int) -> None:
        self.free += count
        self.slot_freed.set()

    def start_local(self, job: LocalJob) -> None:
        decoded = self._decode(job)
        if decoded is not None:
            self._start(job, decoded)

    def _decode(self, delivery: Delivery) -> Job | None:
        """The job; None for a poison message (sent to the dead-letter topic): one in a
        format this worker does not know, or that does not decode."""
        reason = unreadable(content_type(delivery.message))
        if reason is None:
            try:
                return decode_job(delivery.message.payload)
            except msgspec.DecodeError as e:
                log.error("undecodable job %s goes to the dead-letter topic: %s", delivery.id, e)
                reason = f"undecodable job: {e}"
        else:
            log.error("job %s goes to the dead-letter topic: %s", delivery.id, reason)
        self._release()
        self._poison.append((delivery, reason))
        self.flush_needed.set()
        return None

    def _start(self, delivery: Delivery, job: Job) -> None:
        key = _key(job)
        running = self.held.get(key)
        if running is not None:  # a second copy of an attempt this worker runs
            self._release()
            if running.id != delivery.id:  # another message: the running one will report
                self._send(None, delivery)
            return
        task = asyncio.create_task(self._execute(job, delivery))
        self.running[key] = task
        self.held[key] = delivery
        task.add_done_callback(lambda _: self._done(key))

    def _done(self, key: AttemptKey) -> None:
        self.running.pop(key, None)
        self.held.pop(key, None)
        self.began.pop(key, None)
        self._release()

    def _release(self) -> None:
        self.free += 1
        self.slot_freed.set()

    async def _execute(self, job: Job, delivery: Delivery) -> None:
        started = self.began[_key(job)] = self.clock.now_ms()
        try:
            result = await self._attempt(job, started)
        except asyncio.CancelledError:
            if not self.handing_back:
                self._send(None, delivery)  # the run ended: nothing to report
            raise
        self.crash.reached("after_execute")
        if self.local is not None:
            self.local.put(result, delivery)
        else:
            self._send(reply(delivery, encode(result)), delivery)

    def _send(self, result: Message | None, delivery: Delivery | None) -> None:
        if result is not None:
            self.results.append(result)
        if delivery is not None:
            self.acks.append(delivery)
        self.flush_needed.set()

    def _running_long(self, job: Job) -> None:
        """Tell the coordinator a job still runs (a quick job sends no such notice)."""
        key = _key(job)
        delivery, at_ms = self.held.get(key), self.began.get(key)
        if delivery is None or at_ms is None:
            return
        started = Started(run_id=job.run_id, node_id=job.node_id, attempt=job.attempt, at_ms=at_ms)
        if self.local is not None:
            self.local.put(started, None)
        else:
            self._send(reply(delivery, encode(started)), None)

    async def _attempt(self, job: Job, started: int) -> Finished:
        executor = self.executors.get(job.kind)
        error: ErrorInfo | None = None
        outcome = Outcome(None)
        try:
            if executor is None:
                raise NodeError(
                    f"this worker cannot run {job.kind!r} nodes",
                    type="unknown_kind",
                    retryable=False,
                )
            outcome = await executor(job)
        except TimeoutError:
            error = ErrorInfo("timeout", f"attempt timed out after {job.timeout_ms} ms", True)
        except NodeError as e:
            error = ErrorInfo(e.type, e.message, e.retryable)
        except Exception as e:  # a bug in an executor must not kill the worker
            log.exception("executor for %s failed", job.kind)
            bug = internal_error(e)
            error = ErrorInfo(bug.type, bug.message, bug.retryable)
        return Finished(
            run_id=job.run_id,
            node_id=job.node_id,
            attempt=job.attempt,
            started_at_ms=started,
            at_ms=self.clock.now_ms(),
            output=outcome.output,
            error=error,
            cost_cents=outcome.cost_cents,
        )

    async def _flush_results(self) -> None:
        """Publish finished results in batches, with the acknowledgements of their jobs."""
        while True:
            await self.flush_needed.wait()
            self.flush_needed.clear()
            if len(self.results) > 1:  # under load, linger a loop turn: more results join
                await asyncio.sleep(0)
            await self._flush()

    async def _flush(self) -> None:
        poison, self._poison = self._poison, []
        for delivery, reason in poison:
            if isinstance(delivery, LocalJob):
                await self.bus.publish([dead_letter_message(GROUP, delivery, reason)])
                self._local_jobs.done([delivery])
            else:
                await self.bus.dead_letter(GROUP, delivery, reason)
        results, self.results = self.results, []
        acks, self.acks = self.acks, []
        parked = self.parked_results or self.parked_acks
        if parked and time.monotonic() >= self.parked_until:
            results[:0], acks[:0] = self.parked_results, self.parked_acks
            self.parked_results, self.parked_acks = [], []
        from_bus, local = split(acks)
        try:
            if results or from_bus:
                await self.bus.publish_and_ack(results, GROUP, from_bus)
        except PartlyPublished as e:  # one bus of several failed: retry its part later,
            self.parked_results += e.messages  # the others' go on now
            self.parked_acks += [*e.deliveries, *local]
            self.parked_until = time.monotonic() + PARK_S
            asyncio.get_running_loop().call_later(PARK_S, self.flush_needed.set)
            log.warning("%d results wait %.1f s for their bus: %s", len(e.messages), PARK_S, e)
            return
        except InfraError:  # the bus is down: keep them for the next flush, not lose them
            self.results[:0] = results
            self.acks[:0] = acks
            self.flush_needed.set()
            raise
        if local:  # after their results (if any) are on the bus
            self._local_jobs.done(local)

    @property
    def _local_jobs(self) -> LocalJobs:
        assert self.local_jobs is not None  # a LocalJob comes only from it
        return self.local_jobs

    async def drain(self, grace_s: float) -> None:
        """Stop taking jobs; let running ones finish for `grace_s`, then hand the rest back
        (cancelled without acknowledgement: the bus redelivers them to another worker)."""
        self.accepting = False
        running = list(self.running.values())
        if running:
            await asyncio.wait(running, timeout=grace_s)
        self.handing_back = True
        handed_back = [d for d in self.held.values() if isinstance(d, LocalJob)]
        await cancel_all(list(self.running.values()))
        await self._flush()
        if handed_back:  # the relay of any process sends them to the bus
            await self._local_jobs.release(handed_back)
        if self.local is not None and not await self.local.settled(grace_s):
            log.warning("results not applied before the stop; their jobs run again elsewhere")

    async def _heartbeat(self) -> None:
        """Renew the lease of every job from the bus still running, so the bus does not hand
        it to another worker; a worker that dies stops renewing and its jobs are redelivered.
        (Local jobs are this process's while it beats, see runtime/relay.py.)"""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            from_bus, _ = split(list(self.held.values()))
            if from_bus:
                await self.bus.touch(GROUP, self.name, from_bus)

    async def _take_cancels(self) -> None:
        group = f"cancels-{self.name}"  # a group per worker: every worker sees every cancel
        while True:
            deliveries = await self.bus.consume([CANCELS], group, self.name, 100, 1000)
            read: list[Delivery] = []
            for d in deliveries:
                reason = unreadable(content_type(d.message))
                if reason is None:
                    try:
                        c = decode_cancel(d.message.payload)
                    except msgspec.DecodeError as e:
                        reason = f"undecodable cancel: {e}"
                if reason is not None:  # each worker's group refuses its own copy
                    log.error("cancel %s goes to the dead-letter topic: %s", d.id, reason)
                    await self.bus.dead_letter(group, d, reason)
                    continue
                read.append(d)
                task = self.running.get((c.run_id, c.node_id, c.attempt))
                if task is not None:
                    task.cancel()
            if read:
                await self.bus.ack(group, read)


def _key(job: Job) -> AttemptKey:
    return (job.run_id, job.node_id, job.attempt)


def reply(job: Delivery, payload: bytes) -> Message:
    """A result of the job `job` delivered, `payload` in JSON: to its run, with the headers
    replies inherit."""
    headers = reply_headers(job)
    headers[CONTENT_TYPE_HEADER] = CONTENT_TYPE
    return Message(RESULTS, job.message.key, payload, headers)
