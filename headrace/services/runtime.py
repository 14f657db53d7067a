"""A headrace process: adapters built from settings, the loops of its roles, and the
operations the API needs. `Embedded` runs every role in one process (`headrace run`,
`headrace dev`); `headrace serve ROLE` runs some of them (the cluster).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import os
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import httpx
import msgspec

from headrace.bus import Bus, MemoryBus
from headrace.bus.topics import JOB_LANES
from headrace.clock import SYSTEM, Clock
from headrace.config import Settings
from headrace.errors import InfraError, InputError
from headrace.events import RUN_TERMINAL
from headrace.flags import FlagWatcher
from headrace.flags import initial as initial_flags
from headrace.flags.definitions import FlagValues
from headrace.migration.figures import FigureReporter, gone_writers
from headrace.migration.monitor import Monitor
from headrace.migration.shadow import Shadow
from headrace.migration.steps import Migration, Thresholds
from headrace.nodes import AgentExecutor, HttpExecutor, NodeExecutor, TaskRegistry
from headrace.nodes.wrappers import scrubbed
from headrace.projections.monitor import ProjectionMonitor
from headrace.runtime.coordinator import Coordinator
from headrace.runtime.crash import CrashPoints
from headrace.runtime.driver import Driver
from headrace.runtime.hub import Hub
from headrace.runtime.local import LocalDispatch
from headrace.runtime.metrics import Metrics
from headrace.runtime.pins import RunPins
from headrace.runtime.projector import Projector
from headrace.runtime.relay import Liveness, Relay, this_process
from headrace.runtime.supervise import Supervised, cancel_all
from headrace.runtime.worker import Worker
from headrace.services.adapters import build_bus, build_store, migration_buses
from headrace.services.offload import Offload
from headrace.spec import Plan, WorkflowIR, plan_of, with_defaults
from headrace.spec.labels import check_labels
from headrace.store import RunRecord, Store, WorkflowRecord

log = logging.getLogger(__name__)


def tune_gc() -> None:
    """Collect garbage less often: a busy runtime allocates many short-lived objects, and
    the default threshold (700) spent a third of the W2-large bench in the collector. And
    hand the GIL back to the event loop sooner: while a worker thread checks a large input
    or parses a large workflow, every callback of the loop waits for the GIL up to the
    switch interval (5 ms by default), and a request takes hundreds of them."""
    gc.freeze()  # what startup imported is never garbage
    gc.set_threshold(50_000, 20, 100)
    sys.setswitchinterval(SWITCH_INTERVAL_S)


SWITCH_INTERVAL_S = 0.0005
ROLES = ("api", "coordinator", "worker", "relay", "projector")
MIGRATION_ROLES = ("monitor", "shadow")  # with the migrating bus only; not in `serve all`


def _differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The keys whose values differ as JSON (so 1, 1.0 and true are three values)."""

    def canonical(value: Any) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    return sorted(
        k
        for k in a.keys() | b.keys()
        if k not in a or k not in b or canonical(a[k]) != canonical(b[k])
    )


def _merged(reads: list[Callable[[], dict[str, Any]] | None]) -> Callable[[], dict[str, Any]]:
    return lambda: {k: v for read in reads if read is not None for k, v in read().items()}


class Runtime:
    """The loops of `roles` in this process. Use as `async with Runtime(settings, roles):`."""

    def __init__(
        self,
        settings: Settings,
        roles: tuple[str, ...] = ROLES,
        *,
        store: Store | None = None,
        bus: Bus | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.roles = roles
        self.settings = settings
        self.clock = clock  # the one clock of this process's loops and its store
        self.store = store or build_store(settings, clock)
        self.hub = Hub()
        self.metrics = Metrics()
        self.flags = FlagWatcher(
            self.store, initial_flags(os.environ), on_change=self.metrics.flag_changed
        )
        # the Redis → Kafka migration's buses by name, for the migrating bus and the shadow
        self.parts = migration_buses(settings) if bus is None else {}
        self.bus = bus or build_bus(settings, self.flags.values, self.parts)
        crash = CrashPoints(settings.crash_at)
        local = self._local_dispatch()
        self.holder = this_process(settings.process_name)
        self.liveness = Liveness(
            self.store, self.holder, lease_s=settings.lease_s, every_s=settings.heartbeat_s,
            clock=clock,
        )  # fmt: skip
        self.driver = self._driver(crash, local)
        self.offload = Offload()
        self.secrets = settings.all_secrets()
        self.tasks = TaskRegistry(settings.task_modules if "worker" in roles else [])
        self.http = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        self.executors = self._executors()
        self.coordinator = Coordinator(
            self.driver,
            self.bus,
            self.store,
            name=f"coordinator-{settings.process_name}",
            local=local.results,
        )
        self.worker = self._worker(crash, local)
        local.connect(self.worker, self.driver.mark_sent)
        self.relay = Relay(
            self.store, self.bus, self.driver.republish_in_flight, self.holder,
            redispatch_s=settings.redispatch_s, clock=clock,
        )  # fmt: skip
        self.projector = Projector(
            self.store, self.bus, self.flags.values, self.metrics,
            name=f"projector-{settings.process_name}", crash=crash, clock=clock,
        )  # fmt: skip
        self.migration = self._migration()
        self._watch_depth()
        self._tasks: list[asyncio.Task[None]] = []

    def _driver(self, crash: CrashPoints, local: LocalDispatch) -> Driver:
        return Driver(
            self.store,
            self.bus,
            self.hub,
            self.metrics,
            crash=crash,
            local_jobs=local.jobs,
            holder=self.holder.id,
            pins=RunPins(self.store, self.flags.values) if self.settings.kafka_url else None,
            clock=self.clock,
            publish_events=self._projections_on,
        )

    def _projections_on(self) -> bool:
        return FlagValues(self.flags.values).on("ENABLE_PROJECTIONS")

    def _local_dispatch(self) -> LocalDispatch:
        """Jobs and results that skip the bus, in a process both coordinator and worker."""
        both = {"coordinator", "worker"} <= set(self.roles)
        s = self.settings
        return LocalDispatch(
            self.store, results=both and s.local_results, jobs=both and s.local_jobs
        )

    def _executors(self) -> dict[str, NodeExecutor]:
        """Each kind's executor, its outputs and errors scrubbed of the secrets it used."""
        http = HttpExecutor(self.http, self.secrets)
        return {
            "task": scrubbed(self.tasks.run, self.secrets),
            "http": scrubbed(http.run, self.secrets, http.secret_forms),
            "agent": scrubbed(AgentExecutor(self.secrets).run, self.secrets),
        }

    def _migration(self) -> Migration:
        enabled = self.settings.kafka_url is not None
        if {"monitor", "shadow"} & set(self.roles) and not enabled:
            raise InputError("HEADRACE_KAFKA_URL", "monitor and shadow need the migrating bus")
        republish = self.driver.republish_in_flight
        return Migration(
            self.store, self.flags, republish, enabled=enabled, thresholds=thresholds(self.settings)
        )

    def _worker(self, crash: CrashPoints, local: LocalDispatch) -> Worker:
        settings = self.settings
        return Worker(
            self.bus,
            self.executors,
            name=f"worker-{settings.process_name}",
            heartbeat_s=settings.heartbeat_s,
            concurrency=settings.worker_concurrency,
            crash=crash,
            local=local.results,
            local_jobs=local.jobs,
            fence=self.store.open_attempts,
            clock=self.clock,
        )

    def _watch_depth(self) -> None:
        if isinstance(self.bus, MemoryBus):
            bus = self.bus
            for lane in JOB_LANES:
                self.metrics.watch_depth(lane, functools.partial(bus.depth_now, lane))

    async def __aenter__(self) -> Self:
        tune_gc()
        await self.store.open()
        await self.liveness.beat()
        await self.recover()
        self.loops = [
            Supervised("flags", self.flags.run),
            Supervised("liveness", self.liveness.run),
        ]
        reads = [getattr(self.bus, "figures", None)]  # the migrating bus reports figures
        if "shadow" in self.roles:
            shadow = Shadow(
                self.parts,
                name=f"shadow-{self.settings.process_name}",
                grace_s=self.settings.shadow_grace_s,
                gone=functools.partial(gone_writers, self.store),
            )
            self.loops.append(Supervised("shadow", shadow.run))
            reads.append(shadow.figures)
        if "monitor" in self.roles:
            monitor = Monitor(self.migration, window_s=self.settings.monitor_window_s)
            self.loops.append(Supervised("monitor", monitor.run))
        if "projector" in self.roles:
            reads.append(self.projector.figures)
        if "api" in self.roles:  # reads are served here: their source is guarded here
            guard = ProjectionMonitor(
                self.store, self.flags, limit_s=self.settings.projection_lag_limit_s,
                window_s=self.settings.monitor_window_s, clock=self.clock,
            )  # fmt: skip
            self.loops.append(Supervised("projection-monitor", guard.run))
        if any(reads):
            reporter = FigureReporter(self.store, _merged(reads), self.settings.process_name)
            self.loops.append(Supervised("figures", reporter.run))
        if "coordinator" in self.roles:
            self.loops += [
                Supervised("coordinator.results", self.coordinator.run_results),
                Supervised("coordinator.timers", self.coordinator.run_timers),
            ]
            if self.coordinator.local is not None:
                self.loops.append(
                    Supervised("coordinator.local", self.coordinator.run_local_results)
                )
        if "worker" in self.roles:
            self.loops.append(Supervised("worker", self.worker.run))
        if "relay" in self.roles:
            self.loops.append(Supervised("relay", self.relay.run))
        if "projector" in self.roles:
            self.loops.append(Supervised("projector", self.projector.run))
        for loop in self.loops:
            self._tasks.append(asyncio.create_task(loop.run(), name=loop.name))
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await cancel_all(self._tasks)
        try:
            await self.driver.drain()
            await self.store.leave(self.holder.id)
        except InfraError as e:  # its rows go to a relay once its lease lapses
            log.warning("the outbox was not handed back before the stop: %s", e)
        self.offload.close()
        await self.http.aclose()
        await self.bus.close()
        await self.store.close()

    async def recover(self) -> None:
        """Publish what a process that died left in the outbox (see runtime/relay.py)."""
        if "relay" in self.roles:
            swept = await self.relay.sweep()
            if swept:
                log.info("recovered %d outbox messages", swept)

    def check_failed(self) -> None:
        """Raise the error of a loop that died (a bug), rather than hang."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"{task.get_name()} stopped") from task.exception()

    async def register(self, ir: WorkflowIR, source: str) -> tuple[WorkflowRecord, bool]:
        return await self.store.put_workflow(ir, source, self.clock.now_ms())

    async def start_run(
        self,
        plan: Plan,
        inputs: dict[str, Any],
        idempotency_key: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> str:
        """Validate inputs and labels and start a run; its id. InputError names the bad one."""
        return (await self.start_or_reuse(plan, inputs, idempotency_key, labels))[0]

    async def start_or_reuse(
        self,
        plan: Plan,
        inputs: dict[str, Any],
        idempotency_key: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> tuple[str, bool]:
        """`start_run`, or reuse the run `idempotency_key` started before: (run id, whether
        this call created it). A key used before with another workflow, other inputs or
        other labels is refused (InputError), also when the two requests race."""
        labels = check_labels(labels or {})
        await self.validate_inputs(plan, inputs)
        inputs = with_defaults(plan, inputs)
        request = (plan, inputs, labels, idempotency_key)
        if idempotency_key is not None:
            existing = await self.store.run_for_key(idempotency_key)
            if existing is not None:
                await self._same_request(existing, *request)
                return existing, False
        state, created = await self.driver.start_run(
            plan, inputs, self.settings.vars, idempotency_key, labels
        )
        if not created and idempotency_key is not None:  # a concurrent request won
            await self._same_request(state.run_id, *request)
        return state.run_id, created

    async def _same_request(
        self,
        run_id: str,
        plan: Plan,
        inputs: dict[str, Any],
        labels: dict[str, str],
        idempotency_key: str | None,
    ) -> None:
        """Raise InputError unless run `run_id` (the key's) has this workflow, these inputs
        and these labels."""
        record = await self.store.get_run_record(run_id)
        used = f"was used for run {run_id}"
        if record.workflow_tag != plan.tag:
            raise InputError("Idempotency-Key", f"{used} of {record.workflow_tag}, not {plan.tag}")
        differ = [f"inputs.{k}" for k in _differing(record.inputs, inputs)]
        differ += [f"labels.{k}" for k in _differing(record.labels, labels)]
        if differ:
            parts = dict.fromkeys(d.partition(".")[0] for d in differ)
            what, names = " and ".join(parts), ", ".join(differ)
            raise InputError("Idempotency-Key", f"{used} with other {what} (differing: {names})")

    async def validate_inputs(self, plan: Plan, inputs: Any) -> None:
        """`plan.validate_inputs`; large inputs are checked in the offload process."""
        if _small(inputs):
            plan.validate_inputs(inputs)
            return
        problem = await self.offload.input_problem(plan, inputs)
        if problem is not None:
            raise InputError(*problem)

    async def plan(self, tag: str) -> Plan:
        return plan_of((await self.store.get_workflow(tag)).ir)

    async def wait(self, run_id: str, timeout_s: float | None = None) -> RunRecord:
        """Wait until the run ends; returns its record."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            record = await self.store.get_run_record(run_id)
            if record.status in RUN_TERMINAL:
                return record
            if deadline is not None and loop.time() > deadline:
                raise TimeoutError(f"run {run_id} still {record.status}")
            self.check_failed()
            await self.hub.wait_end(run_id, 1.0)


# Inputs up to this size (as JSON) are checked on the loop: a few milliseconds at most. A
# megabyte takes jsonschema about a second, which would stall every run of the process.
INLINE_INPUTS_BYTES = 16_384


def _small(inputs: Any) -> bool:
    try:
        return len(msgspec.json.encode(inputs)) <= INLINE_INPUTS_BYTES
    except Exception:  # not JSON, or nested past recursion: the check names it at once
        return True


class Embedded(Runtime):
    """Every role in one process: `async with Embedded(settings) as rt:`."""


def thresholds(settings: Settings) -> Thresholds:
    """The checklist's and the monitor's thresholds, from the HEADRACE_MONITOR_* settings."""
    return Thresholds(
        error_rate=settings.monitor_error_rate,
        latency_factor=settings.monitor_latency_factor,
        latency_floor_ms=settings.monitor_latency_floor_ms,
        latency_samples=settings.monitor_latency_samples,
        kafka_lag_s=settings.monitor_kafka_lag_s,
        window_s=settings.migration_window_s,
        read_grace_s=settings.migration_read_grace_s,
    )
