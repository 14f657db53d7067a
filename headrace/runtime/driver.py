"""The driver: feeds commands to the pure engine, commits the outcome, then publishes it.

Shared by the API (start, signal, cancel) and the coordinator (results, timers). One driver
per process keeps a cache of run states; a lock makes each batch's decide+commit atomic in
this process, and the store's version check makes it exactly-once across processes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from headrace.bus import Bus, Delivery
from headrace.bus.headers import CONTENT_TYPE_HEADER, PIN
from headrace.bus.topics import CANCELS, EVENTS, JOB_LANES, jobs_topic
from headrace.clock import SYSTEM, Clock
from headrace.engine import (
    Command,
    Decision,
    RunState,
    Start,
    child_id,
    child_of,
    decide,
    decided_alone,
    jobs_in_flight,
    maps_to_load,
    new_run,
)
from headrace.errors import Conflict, InfraError
from headrace.events import CONTENT_TYPE, RUN_TERMINAL, Message, Timer, encode
from headrace.runtime.crash import NO_CRASH, CrashPoints
from headrace.runtime.hub import Hub
from headrace.runtime.local import LocalJobs, split
from headrace.runtime.metrics import Metrics
from headrace.runtime.pins import RunPins
from headrace.runtime.supervise import cancel_all
from headrace.spec import Plan
from headrace.store import Committed, RunLog, Transition

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 5
SENT_FLUSH_S = 0.5
SENT_BATCH = 256

Acks = tuple[str, Sequence[Delivery]] | None  # (group, deliveries) to acknowledge


@dataclass
class Applied:
    """A command's effect on its run, as the caller sees it."""

    state: RunState
    decision: Decision


@dataclass
class _Decisions:
    """What one pass of the engine over a batch of commands decided: each run's transition
    to commit, and each command's effect for the caller."""

    transitions: dict[str, Transition] = field(default_factory=dict)
    applied: list[tuple[str, Applied]] = field(default_factory=list)


def json_message(topic: str, run_id: str, value: Any, pin: str | None = None) -> Message:
    """`value` for `topic` as JSON, with the header that says so (every message names its
    format: a consumer refuses one it cannot read), and its run's bus pin, if any."""
    headers = {CONTENT_TYPE_HEADER: CONTENT_TYPE}
    if pin is not None:
        headers[PIN] = pin
    return Message(topic, run_id, encode(value), headers)


def messages_of(run_id: str, decision: Decision, pin: str | None = None) -> list[Message]:
    out = [json_message(jobs_topic(j.priority), run_id, j, pin) for j in decision.jobs]
    out += [json_message(CANCELS, run_id, c, pin) for c in decision.cancels]
    return out


def _never() -> bool:
    return False


class Driver:
    def __init__(
        self,
        store: RunLog,
        bus: Bus,
        hub: Hub,
        metrics: Metrics,
        *,
        cache_size: int = 10_000,
        crash: CrashPoints = NO_CRASH,
        local_jobs: LocalJobs | None = None,
        holder: str | None = None,
        pins: RunPins | None = None,
        clock: Clock = SYSTEM,
        publish_events: Callable[[], bool] = _never,
    ) -> None:
        self.clock = clock
        # whether each transition's events go to EVENTS too (read live: ENABLE_PROJECTIONS)
        self.publish_events = publish_events
        self.crash = crash
        self.pins = pins  # with the migrating bus: each run's bus, stamped on its messages
        self.holder = holder  # the outbox rows this driver writes are this process's
        self.local_jobs = local_jobs
        self.store = store
        self.bus = bus
        self.hub = hub
        self.metrics = metrics
        self.cache: OrderedDict[str, RunState] = OrderedDict()
        self.cache_size = cache_size
        self.lock = asyncio.Lock()
        self.timers_changed = asyncio.Event()
        self._starting: list[tuple[Transition, asyncio.Future[bool]]] = []
        self._sent: list[int] = []
        self._unsent: list[int] = []  # rows a failed publish leaves to the relay
        self._sent_flush: asyncio.Task[None] | None = None
        self._start_flusher: asyncio.Task[None] | None = None
        self._publishing: set[asyncio.Task[None]] = set()

    async def _commit(self, transitions: list[Transition]) -> Committed:
        sent: list[int] = []
        if len(self._sent) >= SENT_BATCH:
            sent, self._sent = self._sent, []
        local = self._keep_local(transitions)
        started = time.perf_counter()
        try:
            committed = await self.store.commit(transitions, sent, self.holder)
        except BaseException:
            self._sent = sent + self._sent
            if self.local_jobs:
                self.local_jobs.unreserve(local)
            raise
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        if self.local_jobs:  # the jobs of refused transitions were not written
            self.local_jobs.unreserve(local - len(committed.local_ids))
        return committed

    def _keep_local(self, transitions: list[Transition]) -> int:
        """Move the jobs this process's worker has free slots for from each transition's
        messages to its `local` jobs; how many."""
        if self.local_jobs is None:
            return 0
        jobs = sum(m.topic in JOB_LANES for t in transitions for m in t.messages)
        left = granted = self.local_jobs.reserve(jobs)
        for t in transitions:
            if not left:
                break
            published = []
            for m in t.messages:
                if left and m.topic in JOB_LANES:
                    t.local.append(m)
                    left -= 1
                else:
                    published.append(m)
            t.messages = published
        return granted

    def _start_local(self, transitions: list[Transition], committed: Committed) -> None:
        if committed.local_ids:
            assert self.local_jobs is not None
            jobs = [m for t in transitions for m in t.local]
            self.local_jobs.start(jobs, committed.local_ids)
            self.metrics.jobs_dispatched.inc("local", by=len(jobs))

    def mark_sent(self, ids: list[int]) -> None:
        """Published outbox rows (and those of local jobs done) are deleted in batches: by a
        commit once SENT_BATCH are waiting, else SENT_FLUSH_S after the first (a delete in
        every commit was a tenth of a one-transition commit's server time). The rows are
        this process's, which no relay sends while it lives, so they are never sent twice."""
        if ids:
            self._sent += ids
            self._flush_soon()

    def _leave_to_relay(self, ids: list[int]) -> None:
        """Rows this process could not publish (the bus is down): released to any relay."""
        if ids:
            self._unsent += ids
            self._flush_soon()

    def _flush_soon(self) -> None:
        if self._sent_flush is None or self._sent_flush.done():
            self._sent_flush = asyncio.create_task(self._flush_sent())

    async def _flush_sent(self) -> None:
        await asyncio.sleep(SENT_FLUSH_S)
        async with self.lock:
            await self._flush_outbox()

    async def _flush_outbox(self) -> None:
        sent, self._sent = self._sent, []
        unsent, self._unsent = self._unsent, []
        try:
            await self.store.outbox_sent(sent)
            await self.store.release_outbox(unsent)
        except BaseException:  # the next commit or flush tries again
            self._sent = sent + self._sent
            self._unsent = unsent + self._unsent
            raise

    async def start_run(
        self,
        plan: Plan,
        inputs: dict[str, Any],
        vars: dict[str, Any],
        idempotency_key: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> tuple[RunState, bool]:
        """Create a run and schedule its first nodes; the same key gives the same run. The
        run, and whether this call created it."""
        if idempotency_key is not None:
            existing = await self.store.run_for_key(idempotency_key)
            if existing is not None:
                return await self.store.load_run(existing, children="open"), False
        now = self.clock.now_ms()
        state = new_run(str(uuid.uuid4()), plan, created_at_ms=now)
        decision = decide(state, Start(at_ms=now, inputs=inputs, vars=vars, labels=labels or {}))
        pin = self.pins.choose(state.run_id) if self.pins else None
        t = Transition(
            state,
            decision.events,
            messages_of(state.run_id, decision, pin),
            decision.timers,
            new=True,
            idempotency_key=idempotency_key,
            pin=pin,
        )
        self._with_events([t], {state.run_id: pin} if pin else {})
        created: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._starting.append((t, created))
        if self._start_flusher is None or self._start_flusher.done():
            self._start_flusher = asyncio.create_task(self._flush_starts())
        if not await created:  # a concurrent request with the same key won
            assert idempotency_key is not None
            existing = await self.store.run_for_key(idempotency_key)
            if existing is None:
                raise Conflict("the run could not be created; try again")
            return await self.store.load_run(existing, children="open"), False
        return state, True

    async def _flush_starts(self) -> None:
        """Group commit: the runs requested while the previous commit ran go in one."""
        while self._starting:
            await asyncio.sleep(0)  # let requests arriving in this loop turn join the batch
            batch, self._starting = self._starting, []
            try:
                async with self.lock:
                    committed = await self._commit([t for t, _ in batch])
            except BaseException as e:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                if not isinstance(e, Exception):
                    raise
                continue
            done = [t for t, _ in batch if t.state.run_id not in committed.conflicts]
            for t in done:
                self._remember(t.state)
            for t, fut in batch:
                fut.set_result(t.state.run_id not in committed.conflicts)
            # Committed, so accepted: the caller has its answer now, not when a bus that is
            # down gives up on the publish (the relay sends what it could not).
            self._publish_later(done, committed)

    def _publish_later(self, transitions: list[Transition], committed: Committed) -> None:
        task = asyncio.create_task(self._publish(transitions, committed))
        self._publishing.add(task)
        task.add_done_callback(self._published)

    def _published(self, task: asyncio.Task[None]) -> None:
        self._publishing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("publishing new runs failed; the relay sends them: %r", task.exception())

    async def acknowledge(self, group: str, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge deliveries without a commit (a result that cannot be applied)."""
        from_bus, local = split(deliveries)
        self.mark_sent([d.outbox_id for d in local])
        await self.bus.ack(group, from_bus)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Before a stop: let the publishes of new runs end (what is left after `timeout_s`
        is cancelled), then delete the rows published and release the rest, so nothing this
        process published is sent again once it is gone."""
        if self._publishing:
            await asyncio.wait(self._publishing, timeout=timeout_s)
        await cancel_all(list(self._publishing))
        if self._sent_flush is not None:
            await cancel_all([self._sent_flush])
        async with self.lock:
            await self._flush_outbox()

    async def apply(
        self,
        commands: Sequence[tuple[str, Command]],
        fired: Sequence[Timer] = (),
        acks: Acks = None,
    ) -> list[tuple[str, Applied]]:
        """Decide and commit `commands` (run id, command) as one batch; retried on conflict.
        `acks` are acknowledged in the publish that follows the commit of the last of them."""
        pending = list(commands)
        fired_by_run: dict[str, list[Timer]] = {}
        for timer in fired:
            fired_by_run.setdefault(timer.run_id, []).append(timer)
        results: list[tuple[str, Applied]] = []
        for _ in range(MAX_CONFLICT_RETRIES):
            decisions, conflicts = await self._try(pending, fired_by_run, acks)
            results += [(rid, a) for rid, a in decisions.applied if rid not in conflicts]
            pending = [(rid, c) for rid, c in pending if rid in conflicts]
            if not pending:
                return results
        raise InfraError(f"runs kept changing under this writer: {sorted(conflicts)}")

    async def _try(
        self, commands: Sequence[tuple[str, Command]], fired: dict[str, list[Timer]], acks: Acks
    ) -> tuple[_Decisions, set[str]]:
        decisions = _Decisions()
        stale: set[str] = set()
        async with self.lock:
            try:
                pins = await self._prefetch(commands)
                for run_id, command in commands:
                    if run_id in stale:
                        continue
                    state = await self._state(run_id)
                    await self._load_needed(state, command)
                    decision = decide(state, command)
                    if not decision.events and await self._is_stale(state):
                        stale.add(run_id)  # another process moved the run: retry it fresh
                        continue
                    t = self._collect(decisions, state, fired)
                    t.events += decision.events
                    t.messages += messages_of(run_id, decision, pins.get(run_id))
                    t.timers += decision.timers
                    decisions.applied.append((run_id, Applied(state, decision)))
                todo = [
                    t
                    for t in decisions.transitions.values()
                    if (t.events or t.fired) and t.state.run_id not in stale
                ]
                self._with_events(todo, pins)
                committed = await self._commit(todo)
            except BaseException:
                for run_id in decisions.transitions:  # their cached states hold uncommitted events
                    self.cache.pop(run_id, None)
                raise
            conflicts = committed.conflicts | stale
            for run_id in conflicts:
                self.cache.pop(run_id, None)
        done = [t for t in todo if t.state.run_id not in conflicts]
        await self._publish(done, committed, None if conflicts else acks)
        return decisions, conflicts

    def _with_events(self, transitions: list[Transition], pins: dict[str, str]) -> None:
        """While projections are on, each transition's events go out with it, as one
        message keyed by run, through the outbox like its jobs (read models: projections/)."""
        if not self.publish_events():
            return
        for t in transitions:
            if t.events:
                run_id = t.state.run_id
                t.messages.append(json_message(EVENTS, run_id, t.events, pins.get(run_id)))

    async def _is_stale(self, state: RunState) -> bool:
        """Whether the store holds a newer version of a run than this cached state. A command
        that changes nothing may be a duplicate, or news this cache has not seen yet: only a
        fresh read tells, and dropping news would lose it."""
        if state.seq == 0 and state.status == "pending":
            return False
        return await self.store.run_version(state.run_id) != state.version

    def _collect(
        self, decisions: _Decisions, state: RunState, fired: dict[str, list[Timer]]
    ) -> Transition:
        """The batch's transition of `state`'s run, which each command's decision extends."""
        t = decisions.transitions.get(state.run_id)
        if t is None:
            t = decisions.transitions[state.run_id] = Transition(state, [])
            t.fired = list(fired.get(state.run_id, ()))
        return t

    async def _prefetch(self, commands: Sequence[tuple[str, Command]]) -> dict[str, str]:
        """Load the batch's runs this cache lacks (runs started by another process, or
        evicted) in one read: their top-level nodes, then, in a second, the map children the
        commands are about, not every open child of a wide map (`_load_needed`). Their pins,
        with the migrating bus."""
        run_ids = [run_id for run_id, _ in commands]
        missing = [r for r in dict.fromkeys(run_ids) if r not in self.cache]
        if missing:
            for state in await self.store.load_runs(missing, children="none"):
                self._remember(state)
        wanted: dict[str, set[str]] = {}
        for run_id, command in commands:
            cached, child = self.cache.get(run_id), child_of(command)
            if cached is not None and cached.partial and child and child not in cached.nodes:
                wanted.setdefault(run_id, set()).add(child)
        if wanted:
            for run_id, nodes in (await self.store.load_nodes(wanted)).items():
                for nid, node in nodes.items():
                    self.cache[run_id].nodes.setdefault(nid, node)  # the batch's: not evicted
        return await self.pins.of(run_ids) if self.pins else {}

    async def _state(self, run_id: str) -> RunState:
        state = self.cache.get(run_id)
        if state is None:
            state = await self.store.load_run(run_id, children="open")
            self._remember(state)
        else:
            self.cache.move_to_end(run_id)
        return state

    async def _load_needed(self, state: RunState, command: Command) -> None:
        """What the decision on `command` reads that a reloaded state lacks. A reload holds
        the run's top-level nodes and the children its commands are about (not a
        100,000-wide map's every row): a command that may end the run needs every open
        child, once; the result that may complete a map needs all of its children, once."""
        if state.partial and not decided_alone(state, command):
            loaded = await self.store.load_run(state.run_id, children="open")
            for nid, node in loaded.nodes.items():
                state.nodes.setdefault(nid, node)
            state.partial = False
        for pid in maps_to_load(state, command):
            width = state.nodes[pid].width or 0
            if any(child_id(pid, i) not in state.nodes for i in range(width)):
                for nid, node in (await self.store.load_children(state.run_id, pid)).items():
                    state.nodes.setdefault(nid, node)

    def _remember(self, state: RunState) -> None:
        if state.status in RUN_TERMINAL:
            self.cache.pop(state.run_id, None)
            return
        self.cache[state.run_id] = state
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)

    async def _publish(
        self, transitions: list[Transition], committed: Committed, acks: Acks = None
    ) -> None:
        """Start the local jobs just committed, publish the rest (with `acks`, in the same
        round trip), then mark it sent. A crash in between leaves the rows for the relay:
        republished, never lost (consumers deduplicate); so does a publish that fails (the
        bus is down), and the deliveries not acknowledged then come again."""
        self.crash.reached("after_commit")
        self._start_local(transitions, committed)
        if acks:  # local jobs are acknowledged by deleting their rows, with the published
            from_bus, local = split(acks[1])
            self.mark_sent([d.outbox_id for d in local])
            acks = (acks[0], from_bus) if from_bus else None
        for t in transitions:  # first: readers (stream, `wait`) read the store, not the bus
            if t.events:
                self.hub.notify(t.state.run_id, t.state.seq)
            if t.state.status in RUN_TERMINAL:
                self.cache.pop(t.state.run_id, None)
                self.hub.ended(t.state.run_id)
        messages = [m for t in transitions for m in t.messages]
        if messages or acks:
            try:
                if acks:
                    await self.bus.publish_and_ack(messages, *acks)
                else:
                    await self.bus.publish(messages)
            except InfraError as e:  # committed, so accepted: the relay sends them later
                log.warning("publish failed, %d messages left to the relay: %s", len(messages), e)
                self._leave_to_relay(committed.outbox_ids)
            else:
                if messages:
                    self.mark_sent(self._done_with(messages, committed.outbox_ids))
                    jobs = sum(m.topic in JOB_LANES for m in messages)
                    if jobs:
                        self.metrics.jobs_dispatched.inc("bus", by=jobs)
        if any(t.timers for t in transitions):
            self.timers_changed.set()
        self.metrics.observe(transitions)

    def _done_with(self, messages: list[Message], ids: list[int]) -> list[int]:
        """The rows of published messages that may go. A bus that forgets on restart keeps
        no job: its row stays until the commit that ends the job's attempt, and if this
        process dies first, the relay of any other sends it again."""
        if self.bus.durable:
            return ids
        return [i for m, i in zip(messages, ids, strict=True) if m.topic not in JOB_LANES]

    async def republish_in_flight(
        self, run_ids: list[str] | None = None, unstarted_before_ms: int | None = None
    ) -> int:
        """Publish again the jobs in flight of `run_ids` (default: every running run), after
        a non-durable bus lost them or a rollback re-pinned the runs; with
        `unstarted_before_ms`, only the jobs of attempts scheduled before then and not
        started. The number of jobs published."""
        count = 0
        ids = await self.store.active_runs() if run_ids is None else run_ids
        pins = await self.pins.of(ids, fresh=True) if self.pins else {}
        for run_id in ids:
            state = await self.store.load_run(run_id, children="open")  # jobs: open nodes
            jobs = jobs_in_flight(state, unstarted_before_ms)
            if jobs:
                pin = pins.get(run_id)
                await self.bus.publish(
                    [json_message(jobs_topic(j.priority), run_id, j, pin) for j in jobs]
                )
                count += len(jobs)
        return count
