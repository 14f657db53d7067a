"""The "local" execution environment: run an agent job as a child process.

The child gets its own session (so its own process group); every way out of
`run_local` — success, failure, timeout, cancellation — SIGKILLs that group, so no
grandchild outlives the node. If this process dies first (even by SIGKILL), its watchdog
kills the group (`lifeline`). Failures are reported as `NodeError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from headrace.envs.lifeline import LIFELINE
from headrace.errors import NodeError

_CHUNK = 65_536
# How long to wait for the pipes to drain after the group was killed; only a process
# that left the group (setsid) can hold them open longer.
_REAP_GRACE_S = 5.0
# Process.wait() also waits for the pipes to close, so the child's exit is polled.
_POLL_MAX_S = 0.05


@dataclass(frozen=True)
class Limits:
    """Kernel resource limits applied to the child (and inherited by its children)."""

    memory_bytes: int | None = None
    cpu_seconds: int | None = None

    def __post_init__(self) -> None:
        if self.memory_bytes is not None and self.memory_bytes <= 0:
            raise ValueError(f"memory_bytes must be positive, got {self.memory_bytes}")
        if self.cpu_seconds is not None and self.cpu_seconds <= 0:
            raise ValueError(f"cpu_seconds must be positive, got {self.cpu_seconds}")


@dataclass(frozen=True)
class LocalJob:
    """One agent invocation: argv, its stdin, its complete environment and its bounds.

    If ``command[0] == "python"`` it is replaced by the running interpreter. `env` is
    the child's whole environment; nothing is inherited from ``os.environ``.
    """

    command: list[str]
    stdin: bytes
    env: dict[str, str]
    timeout_s: float
    workdir: str | None = None
    limits: Limits = Limits()
    max_output_bytes: int = 1_048_576
    stderr_tail_bytes: int = 4096


@dataclass
class _Output:
    """What the pumps collected; mutable so it survives a timeout."""

    stdout: bytearray = field(default_factory=bytearray)
    stderr_tail: bytearray = field(default_factory=bytearray)
    too_large: bool = False

    def tail_text(self) -> str:
        return self.stderr_tail.decode("utf-8", errors="replace").strip()


@dataclass(frozen=True)
class LocalResult:
    stdout: bytes
    stderr_tail: bytes


async def run_local(job: LocalJob) -> LocalResult:
    """Run `job` as a child process and return its stdout and the tail of its stderr.

    Raises `NodeError` with type ``exec_error`` (cannot start; not retryable),
    ``timeout``, ``output_too_large``, ``limit_exceeded`` or ``exit_code``. On
    cancellation the process group is killed and `CancelledError` propagates.
    """
    proc = await _spawn(job)
    LIFELINE.hold(proc.pid)
    try:
        return await _supervise(job, proc)
    finally:
        LIFELINE.release(proc.pid)  # every way out of _supervise killed the group


async def _supervise(job: LocalJob, proc: asyncio.subprocess.Process) -> LocalResult:
    """Feed the child, collect its output, and kill its group whatever happens."""
    out = _Output()
    pumps = [
        asyncio.create_task(_feed(proc.stdin, job.stdin)),
        asyncio.create_task(_pump_stdout(proc.stdout, job.max_output_bytes, out, proc.pid)),
        asyncio.create_task(_pump_stderr(proc.stderr, job.stderr_tail_bytes, out)),
    ]
    try:
        async with asyncio.timeout(job.timeout_s):
            code = await _child_exit(proc)
            _kill_group(proc.pid)  # grandchildren die with the child
            await asyncio.wait(pumps)
            await proc.wait()
    except TimeoutError:
        await _reap(proc, pumps)
        raise NodeError(
            f"agent timed out after {job.timeout_s:g}s; stderr: {out.tail_text()}",
            type="timeout",
            retryable=True,
        ) from None
    except BaseException:
        await _reap(proc, pumps)
        raise
    for pump in pumps:
        pump.result()  # surface a bug in a pump rather than lose it
    _raise_on_failure(job, code, out)
    return LocalResult(bytes(out.stdout), bytes(out.stderr_tail))


async def _spawn(job: LocalJob) -> asyncio.subprocess.Process:
    """Start the child in its own session, registered and limited before exec."""
    if not job.command:
        raise NodeError("agent command is empty", type="exec_error", retryable=False)
    argv = [sys.executable if job.command[0] == "python" else job.command[0], *job.command[1:]]
    try:
        LIFELINE.ensure_watchdog()
    except OSError as exc:  # e.g. out of pids: transient
        msg = f"cannot start the agents' watchdog: {exc}"
        raise NodeError(msg, type="exec_error", retryable=True) from exc
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=job.env,
            cwd=job.workdir,
            start_new_session=True,
            preexec_fn=_setup(job.limits),
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError, ValueError) as exc:
        # A missing program or workdir, or a bad argv/env, stays so on the next attempt.
        raise NodeError(
            f"cannot start {argv[0]!r}: {exc}", type="exec_error", retryable=False
        ) from exc
    except (OSError, subprocess.SubprocessError) as exc:
        # E.g. out of pids or file descriptors: transient.
        raise NodeError(
            f"cannot start {argv[0]!r}: {exc}", type="exec_error", retryable=True
        ) from exc


def _setup(limits: Limits) -> Callable[[], None]:
    """The child's preexec_fn: register its group with the watchdog, then apply `limits`."""
    memory, cpu = limits.memory_bytes, limits.cpu_seconds

    def apply() -> None:
        LIFELINE.register_self()
        if cpu is not None:
            # The soft limit sends SIGXCPU; the hard limit one second later SIGKILLs.
            _set_limit(resource.RLIMIT_CPU, cpu, cpu + 1)
        if memory is not None:
            _set_limit(resource.RLIMIT_AS, memory, memory)

    return apply


def _set_limit(which: int, soft: int, hard: int) -> None:
    """Lower a resource limit, never above the hard limit we already have."""
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
    resource.setrlimit(which, (min(soft, hard), hard))


async def _feed(stdin: asyncio.StreamWriter | None, data: bytes) -> None:
    """Write `data` to the child's stdin, then close it.

    The child may exit or close its stdin without reading it all: that is normal, and its
    exit status says how it went. uvloop closes the pipe as soon as its reader is gone, and
    a write to a closed uvloop transport raises RuntimeError, hence the check.
    """
    assert stdin is not None
    try:
        if data and not stdin.is_closing():
            stdin.write(data)
            await stdin.drain()
    except ConnectionError:
        pass  # the reader went away while the data was being written
    finally:
        stdin.close()


async def _pump_stdout(
    stream: asyncio.StreamReader | None, cap: int, out: _Output, pgid: int
) -> None:
    """Collect stdout up to `cap` bytes; past it, kill the group and drain to EOF."""
    assert stream is not None
    while chunk := await stream.read(_CHUNK):
        if out.too_large:
            continue  # keep reading so the pipe reaches EOF and the transport closes
        out.stdout += chunk
        if len(out.stdout) > cap:
            out.too_large = True
            out.stdout.clear()
            _kill_group(pgid)


async def _pump_stderr(stream: asyncio.StreamReader | None, keep: int, out: _Output) -> None:
    """Collect stderr, keeping only its last `keep` bytes."""
    assert stream is not None
    tail = out.stderr_tail
    while chunk := await stream.read(_CHUNK):
        tail += chunk
        if len(tail) > keep:
            del tail[: len(tail) - keep]


async def _child_exit(proc: asyncio.subprocess.Process) -> int:
    """Return the child's exit code as soon as it exits.

    `Process.wait()` would also wait for the pipes to close, which a grandchild
    holding them can delay until the timeout.
    """
    delay = 0.001
    while (code := proc.returncode) is None:
        await asyncio.sleep(delay)
        delay = min(delay * 2, _POLL_MAX_S)
    return code


def _kill_group(pgid: int) -> None:
    """SIGKILL the process group `pgid` if anything is left in it."""
    # PermissionError: macOS refuses to signal a group of zombies.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _reap(proc: asyncio.subprocess.Process, pumps: list[asyncio.Task[None]]) -> None:
    """Kill the group, then let the pumps drain and the child be reaped (bounded)."""
    _kill_group(proc.pid)
    waiter = asyncio.create_task(proc.wait())
    tasks: list[asyncio.Task[Any]] = [*pumps, waiter]
    _, pending = await asyncio.wait(tasks, timeout=_REAP_GRACE_S)
    for task in pending:
        task.cancel()
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # mark retrieved; the caller is already raising


def _raise_on_failure(job: LocalJob, code: int, out: _Output) -> None:
    """Translate how the child ended into a NodeError; return if it succeeded."""
    tail = out.tail_text()
    if out.too_large:
        raise NodeError(
            f"agent wrote more than {job.max_output_bytes} bytes to stdout; stderr: {tail}",
            type="output_too_large",
            retryable=True,
        )
    if code == 0:
        return
    cpu, memory = job.limits.cpu_seconds, job.limits.memory_bytes
    if code == -signal.SIGXCPU or (code == -signal.SIGKILL and cpu is not None):
        raise NodeError(
            f"agent exceeded its cpu limit of {cpu}s; stderr: {tail}",
            type="limit_exceeded",
            retryable=True,
        )
    if memory is not None and "MemoryError" in tail:
        raise NodeError(
            f"agent exceeded its memory limit of {memory} bytes; stderr: {tail}",
            type="limit_exceeded",
            retryable=True,
        )
    raise NodeError(
        f"agent exited with code {_describe(code)}; stderr: {tail}",
        type="exit_code",
        retryable=True,
    )


def _describe(code: int) -> str:
    """``1`` or ``-9 (SIGKILL)``."""
    if code >= 0:
        return str(code)
    try:
        return f"{code} ({signal.Signals(-code).name})"
    except ValueError:
        return str(code)
