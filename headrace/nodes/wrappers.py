"""What every attempt gets whatever its node's kind, as wrappers around its executor: a
timeout with a notice for long jobs (`timed`, applied by the worker) and secrets kept out of
outputs and errors (`scrubbed`, applied by the runtime with what the kind's executor says a
server may echo)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from headrace.errors import NodeError
from headrace.events import Job
from headrace.nodes.base import NodeExecutor, Outcome
from headrace.nodes.http_call import redact
from headrace.spec import secret_names

log = logging.getLogger(__name__)

# the forms of a job's secrets, beyond their values, that its executor's server may echo
SecretForms = Callable[[Job], list[str]]


def internal_error(e: Exception) -> NodeError:
    """An executor's bug as an attempt's error: retried, since it may be passing."""
    return NodeError(f"{type(e).__name__}: {e}", type="internal", retryable=True)


def timed(executor: NodeExecutor, notice_s: float, notice: Callable[[Job], None]) -> NodeExecutor:
    """`executor` within each job's timeout (TimeoutError past it). `notice(job)` once a
    job has run `notice_s` and goes on: a job has one timer until then (most end sooner),
    and its timeout is armed only when the notice is due."""

    async def run(job: Job) -> Outcome:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + job.timeout_ms / 1000
        async with asyncio.timeout(None) as limit:
            due = min(loop.time() + notice_s, deadline)
            timer = loop.call_at(due, _running_long, limit, deadline, job, notice)
            try:
                return await executor(job)
            finally:
                timer.cancel()

    return run


def _running_long(
    limit: asyncio.Timeout, deadline: float, job: Job, notice: Callable[[Job], None]
) -> None:
    limit.reschedule(deadline)  # past already: it times out at once
    if asyncio.get_running_loop().time() < deadline:
        notice(job)


def scrubbed(
    executor: NodeExecutor, secrets: Mapping[str, str], forms: SecretForms | None = None
) -> NodeExecutor:
    """`executor` whose outputs and errors never show the secrets a job uses: their values
    and the other `forms` its kind's executor names (an HTTP node's basic-auth token)."""

    async def run(job: Job) -> Outcome:
        used = [secrets[n] for n in secret_names(job.config) if n in secrets]
        if not used:
            return await executor(job)
        used += forms(job) if forms is not None else []
        try:
            outcome = await executor(job)
        except NodeError as e:
            raise NodeError(redact(e.message, used), type=e.type, retryable=e.retryable) from None
        except TimeoutError:
            raise
        except Exception as e:  # a bug: its message may quote a secret too
            log.exception("executor for %s failed", job.kind)
            error = internal_error(e)
            raise NodeError(redact(error.message, used), type=error.type) from None
        return Outcome(_redact_tree(outcome.output, used), outcome.cost_cents)

    return run


def _redact_tree(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, list):
        return [_redact_tree(v, secrets) for v in value]
    if isinstance(value, dict):
        return {redact(str(k), secrets): _redact_tree(v, secrets) for k, v in value.items()}
    return value
