"""The wrappers every attempt runs in, whatever its kind: `timed` (the job's timeout, and a
Started notice once it runs long) and `scrubbed` (no secret it used in its output or error,
nor the forms its kind's executor names)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import pytest

from headrace.errors import NodeError
from headrace.events import Job
from headrace.nodes import HttpExecutor, Outcome
from headrace.nodes.wrappers import scrubbed, timed

SECRETS = {"TOKEN": "s3cr3t-token", "PASSWORD": "hunter2-pass"}


def job(config: dict[str, Any] | None = None, timeout_ms: int = 5_000) -> Job:
    return Job(
        run_id="run-1",
        node_id="a",
        attempt=1,
        kind="http",
        priority="normal",
        timeout_ms=timeout_ms,
        scheduled_at_ms=0,
        idempotency_key="run-1/a",
        config=config or {},
    )


def uses_token() -> dict[str, Any]:
    return {"headers": {"authorization": {"$secret": "TOKEN"}}}


async def test_an_output_never_shows_a_secret_the_job_used() -> None:
    async def echo(j: Job) -> Outcome:
        return Outcome({"said": f"token={SECRETS['TOKEN']}", SECRETS["TOKEN"]: [1]}, 3)

    out = await scrubbed(echo, SECRETS)(job(uses_token()))
    assert out == Outcome({"said": "token=***", "***": [1]}, 3)
    # a job that uses no secret is left as it is (and costs no scan)
    assert (await scrubbed(echo, SECRETS)(job())).output["said"] == "token=s3cr3t-token"


async def test_an_error_never_shows_one_either_nor_a_bug_s_message() -> None:
    async def fails(j: Job) -> Outcome:
        raise NodeError(f"401 for {SECRETS['TOKEN']}", type="http_status", retryable=False)

    async def bug(j: Job) -> Outcome:
        raise ValueError(f"bad header {SECRETS['TOKEN']}")

    with pytest.raises(NodeError) as caught:
        await scrubbed(fails, SECRETS)(job(uses_token()))
    e = caught.value
    assert (e.message, e.type, e.retryable) == ("401 for ***", "http_status", False)
    with pytest.raises(NodeError) as caught:
        await scrubbed(bug, SECRETS)(job(uses_token()))
    e = caught.value
    assert (e.message, e.type, e.retryable) == ("ValueError: bad header ***", "internal", True)


async def test_the_http_executor_names_the_basic_auth_token_a_server_may_echo() -> None:
    pair = base64.b64encode(b"ann:hunter2-pass").decode()
    auth = {"auth": {"basic": {"username": "ann", "password": {"$secret": "PASSWORD"}}}}
    async with httpx.AsyncClient() as client:
        http = HttpExecutor(client, SECRETS)

        async def echo(j: Job) -> Outcome:
            return Outcome({"headers": {"authorization": f"Basic {pair}"}})

        out = await scrubbed(echo, SECRETS, http.secret_forms)(job(auth))
    assert out.output == {"headers": {"authorization": "Basic ***"}}
    assert http.secret_forms(job(uses_token())) == []  # no basic auth: nothing more


async def test_a_long_job_sends_one_notice_and_a_quick_one_none() -> None:
    noticed: list[str] = []

    async def sleeps(j: Job) -> Outcome:
        await asyncio.sleep(j.config["s"])
        return Outcome(j.config["s"])

    run = timed(sleeps, 0.05, lambda j: noticed.append(j.node_id))
    assert (await run(job({"s": 0.0}))).output == 0.0
    assert noticed == []
    assert (await run(job({"s": 0.3}))).output == 0.3
    assert noticed == ["a"]


async def test_a_job_past_its_timeout_is_cancelled_without_a_notice_due_after_it() -> None:
    noticed: list[str] = []
    cancelled = asyncio.Event()

    async def hangs(j: Job) -> Outcome:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Outcome(None)

    with pytest.raises(TimeoutError):
        await timed(hangs, 10.0, lambda j: noticed.append(j.node_id))(job(timeout_ms=100))
    assert cancelled.is_set() and noticed == []  # the timeout came before the notice was due
    with pytest.raises(TimeoutError):  # a notice due first: sent, then the timeout holds
        await timed(hangs, 0.05, lambda j: noticed.append(j.node_id))(job(timeout_ms=200))
    assert noticed == ["a"]
