"""`headrace cluster up`: a local cluster for a newcomer — api, coordinators, workers and a
relay as separate `headrace serve` processes (plus the monitor and the shadow validator with
the migrating bus), their output prefixed with their names, supervised:

- a process that dies is named in the log with its exit code or signal, and restarted after
  a pause that doubles with each quick death (before it was up, or within `QUICK_S` of
  being up: counted from its announcement, so a slow start on a busy machine is not a
  death); `MAX_QUICK_DEATHS` in a row and it is given up on: the cluster stops, exit 1;
- SIGHUP restarts the processes one at a time (a rolling restart), each once the one before
  is ready (`/readyz`), with the environment read again (`--env-file`): how every process
  gets HEADRACE_KAFKA_URL without stopping the cluster;
- SIGINT or SIGTERM stops them all gracefully (SIGTERM each).
"""

from __future__ import annotations

import asyncio
import io
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from headrace.errors import InputError

QUICK_S = 10.0  # a process that dies sooner after it was up (or before) died quickly
MAX_QUICK_DEATHS = 5  # in a row: it is given up on, and the cluster stops
FIRST_PAUSE_S = 0.5  # before a restart; doubled for each quick death in a row
READY_S = 60.0  # a rolling restart waits this long for a restarted process to be ready
NAME_WIDTH = 14

_HEALTH = re.compile(r"headrace serve [^:]*: health on (http://\S+?)(,|\s|$)")

Check = Callable[[dict[str, str]], bool]  # the environment -> whether it is migrating


def plan(coordinators: int, workers: int, migrating: bool = False) -> list[tuple[str, list[str]]]:
    """(name, serve arguments) of every process."""
    procs = [("api", ["api"])]
    procs += [(f"coordinator-{i}", ["coordinator"]) for i in range(1, coordinators + 1)]
    procs += [(f"worker-{i}", ["worker"]) for i in range(1, workers + 1)]
    procs.append(("relay", ["relay"]))
    procs.append(("projector", ["projector"]))
    if migrating:
        procs += [("monitor", ["monitor"]), ("shadow", ["shadow"])]
    return procs


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (dotenv syntax: comments, quotes, `export`); InputError says why not."""
    from dotenv import dotenv_values

    try:
        text = path.read_text()
    except OSError as e:
        raise InputError("--env-file", f"cannot read {path}: {e.strerror}") from None
    values = dotenv_values(stream=io.StringIO(text))
    for key, value in values.items():
        if value is None:
            raise InputError("--env-file", f"{path}: {key!r} has no value (KEY=VALUE)")
    return {k: v for k, v in values.items() if v is not None}


def describe(code: int) -> str:
    """An exit status as words: `exited with code 2`, `was killed by SIGKILL`."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


@dataclass(eq=False)
class Child:
    name: str
    args: list[str]
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    up_at: float | None = None  # when the current process announced itself
    quick_deaths: int = 0  # in a row
    restarts: int = 0
    health_url: str | None = None  # of the current process, once it announced itself
    replace: bool = False  # stopped by a rolling restart: start it again at once
    retired: bool = False  # no longer in the plan: do not start it again
    last_code: int | None = None
    keeper: asyncio.Task[None] | None = field(default=None, repr=False)


class Cluster:
    """The processes of `plan`, kept running until SIGINT/SIGTERM: `loop.run(c.run())`.
    Building it reads `env_file` and checks the environment (InputError)."""

    def __init__(
        self,
        *,
        port: int,
        coordinators: int,
        workers: int,
        extra: list[str],
        environ: Mapping[str, str],
        env_file: Path | None,
        check: Check,
    ) -> None:
        self.exe = str(Path(sys.executable).parent / "headrace")
        self.port = port
        self.sizes = (coordinators, workers)
        self.extra = extra
        self.base_env = dict(environ)
        self.env_file = env_file
        self.check = check  # raises InputError for an environment the cluster cannot run on
        self.env = self.read_env()
        self.migrating = check(self.env)
        self.children: list[Child] = []
        self.stopping = asyncio.Event()
        self.hup = asyncio.Event()
        self.gave_up: str | None = None

    def read_env(self) -> dict[str, str]:
        file_env = read_env_file(self.env_file) if self.env_file else {}
        return {**self.base_env, **file_env}

    def say(self, text: str) -> None:
        sys.stdout.write(f"{'cluster':<{NAME_WIDTH}}| {text}\n")
        sys.stdout.flush()

    async def run(self) -> int:
        """Until SIGINT/SIGTERM, or a process given up on; the exit code of `cluster up`."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.hup.set)
        for name, args in plan(*self.sizes, self.migrating):
            self.adopt(Child(name, args))
        roller: asyncio.Task[None] | None = None
        while not self.stopping.is_set():
            await _first(self.stopping.wait(), self.hup.wait())
            if self.hup.is_set() and not self.stopping.is_set():
                self.hup.clear()
                if roller is not None and not roller.done():
                    self.say("SIGHUP: a rolling restart is under way; this one is ignored")
                else:
                    roller = asyncio.create_task(self.roll())
        if roller is not None:
            roller.cancel()
            await asyncio.gather(roller, return_exceptions=True)
        return await self.stop_all()

    def adopt(self, child: Child) -> None:
        self.children.append(child)
        child.keeper = asyncio.create_task(self.keep(child))

    async def keep(self, child: Child) -> None:
        """Run `child` until the cluster stops: restart it when it dies, give up on it (and
        stop the cluster) after MAX_QUICK_DEATHS quick deaths in a row."""
        while not self.stopping.is_set():
            proc, pipe = await self.spawn(child)
            code = await proc.wait()
            await pipe  # its last words come before the line about its death
            child.last_code = code
            if self.stopping.is_set() or child.retired:
                return
            if child.replace:
                child.replace, child.quick_deaths = False, 0
                continue
            now = time.monotonic()
            quick = child.up_at is None or now - child.up_at < QUICK_S
            child.quick_deaths = child.quick_deaths + 1 if quick else 0
            what = (
                f"{child.name} (pid {proc.pid}) {describe(code)} "
                f"{now - child.started_at:.1f} s after its start"
                + (" (before it was up)" if child.up_at is None else "")
            )
            if child.quick_deaths >= MAX_QUICK_DEATHS:
                self.gave_up = (
                    f"{child.name} died {child.quick_deaths} times in a row, each before it had "
                    f"been up {QUICK_S:.0f} s (last: {describe(code)}); giving up on it: "
                    "stopping the cluster (exit 1)"
                )
                self.say(f"{what}. {self.gave_up}")
                self.stopping.set()
                return
            pause_s = FIRST_PAUSE_S * 2**child.quick_deaths
            child.restarts += 1
            count = f", quick death {child.quick_deaths} of {MAX_QUICK_DEATHS}"
            self.say(
                f"{what}{count if child.quick_deaths else ''}; restarting it in {pause_s:g} s "
                f"(restart {child.restarts})"
            )
            await _first(asyncio.sleep(pause_s), self.stopping.wait())

    async def spawn(self, child: Child) -> tuple[asyncio.subprocess.Process, asyncio.Task[None]]:
        argv = [self.exe, "serve", *child.args, *self.extra]
        if child.args == ["api"]:
            argv += ["--port", str(self.port)]
        env = {**self.env, "HEADRACE_PROCESS_NAME": child.name}
        child.health_url, child.up_at = None, None
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        child.proc, child.started_at = proc, time.monotonic()
        self.say(f"started {child.name} (pid {proc.pid})")
        return proc, asyncio.create_task(self.pipe(child, proc))

    async def pipe(self, child: Child, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace")
            if child.health_url is None and (found := _HEALTH.search(line)):
                child.health_url, child.up_at = found.group(1), time.monotonic()
            sys.stdout.write(f"{child.name:<{NAME_WIDTH}}| {line}")
            sys.stdout.flush()

    async def roll(self) -> None:
        """Read the environment again and restart every process in turn, each once the one
        before is ready; then start or stop the migration's processes as it asks."""
        try:
            env = self.read_env()
            migrating = self.check(env)
        except InputError as e:
            self.say(f"SIGHUP: {e}; nothing restarted")
            return
        changed = sorted(k for k in {*env, *self.env} if env.get(k) != self.env.get(k))
        self.env = env
        live = [c for c in self.children if not c.retired]
        self.say(
            f"SIGHUP: environment read again ({', '.join(changed) or 'no change'}); "
            f"restarting {len(live)} processes one at a time"
        )
        for child in live:
            if child.name in ("monitor", "shadow") and not migrating:
                continue  # stopped below
            why = await self.replace(child)
            if why is not None:
                self.say(f"rolling restart halted: {child.name} {why}")
                return
        for child in self.resize(migrating):
            why = await self.replace(child, restart=False)
            if why is not None:
                self.say(f"{child.name} {why}")
        self.say("rolling restart done")

    async def replace(self, child: Child, *, restart: bool = True) -> str | None:
        """Restart `child` (or, not `restart`, await its first start) and wait until its
        new process is ready; None, or why not."""
        old = child.proc if restart else None
        if old is not None and old.returncode is None:
            self.say(f"restarting {child.name} (pid {old.pid})")
            child.replace = True
            old.send_signal(signal.SIGTERM)
        while child.proc is old or child.proc is None:
            if self.stopping.is_set() or child.keeper is None or child.keeper.done():
                return "was not restarted (the cluster is stopping)"
            await asyncio.sleep(0.05)
        return await self.until_ready(child, child.proc)

    async def until_ready(self, child: Child, proc: asyncio.subprocess.Process) -> str | None:
        deadline = time.monotonic() + READY_S
        async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
            while time.monotonic() < deadline:
                if proc.returncode is not None:
                    return describe(proc.returncode)
                if child.proc is proc and child.health_url is not None:
                    try:
                        ready = await client.get(f"{child.health_url}/readyz")
                        if ready.status_code == 200:
                            self.say(f"{child.name} is ready (pid {proc.pid})")
                            return None
                    except httpx.HTTPError:
                        pass
                await asyncio.sleep(0.1)
        return f"was not ready {READY_S:.0f} s after its start"

    def resize(self, migrating: bool) -> list[Child]:
        """Start the monitor and shadow when the environment turned migrating (returned),
        stop them when it no longer is."""
        if migrating == self.migrating:
            return []
        self.migrating = migrating
        names = {c.name for c in self.children if not c.retired}
        wanted = {name: args for name, args in plan(*self.sizes, migrating)}
        added = [Child(name, args) for name, args in wanted.items() if name not in names]
        for child in added:
            self.adopt(child)
        for child in self.children:
            if child.name not in wanted and not child.retired:
                child.retired = True
                if child.proc is not None and child.proc.returncode is None:
                    self.say(f"stopping {child.name} (pid {child.proc.pid}): not migrating")
                    child.proc.send_signal(signal.SIGTERM)
        return added

    async def stop_all(self) -> int:
        """SIGTERM every process and wait for them all; 0 when each stopped cleanly."""
        for child in self.children:
            if child.proc is not None and child.proc.returncode is None:
                child.proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*(c.keeper for c in self.children if c.keeper is not None))
        if self.gave_up is not None:
            return 1
        # a process still starting has no handler yet: the SIGTERM sent it is a clean stop
        clean = (0, -signal.SIGTERM)
        return 0 if all(c.last_code in clean for c in self.children if not c.retired) else 1


async def _first(*aws: Awaitable[Any]) -> None:
    """Wait until the first of these ends; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
