"""Limits on what a request may carry, and the work it may make the event loop do.

A body over the limit gets 413 after the server has drained it, so the client reads the
answer instead of a reset connection. A value the store could not hold and give back (see
`headrace.spec.values`) is refused with 422 naming where it is. Parsing and planning a
workflow runs on a worker thread: a 1 MB spec costs seconds of CPU, and the loop serves the
API, the coordinator and the worker of the process meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from headrace.api.problems import PROBLEM
from headrace.config import over_body_limit
from headrace.errors import InputError, NotFound
from headrace.spec import MAX_VERSION, Plan, WorkflowIR, parse_workflow, plan_of
from headrace.spec.values import join_path, json_problem
from headrace.store import Catalogue

_SIGNAL = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,99}")  # fullmatch: `$` passes a final newline
_VERSION = re.compile(r"[0-9]{1,10}")


async def parse_off_loop(source: str) -> WorkflowIR:
    """Parse and check a workflow, and compile its plan, on a worker thread."""
    return await asyncio.to_thread(_parse_and_plan, source)


def _parse_and_plan(source: str) -> WorkflowIR:
    ir = parse_workflow(source)
    plan_of(ir)  # cached: the first run of it does not compile it on the loop
    return ir


async def plan_off_loop(store: Catalogue, tag: str) -> Plan:
    """The plan of the workflow `tag`, compiled (if this process has not yet) on a thread."""
    check_tag(tag)
    record = await store.get_workflow(tag)
    return await asyncio.to_thread(plan_of, record.ir)


def check_tag(tag: str) -> None:
    """NotFound for a `name@version` whose version no workflow can have (the store's column
    holds versions up to MAX_VERSION)."""
    _, at, version = tag.partition("@")
    if at and not (_VERSION.fullmatch(version) and 1 <= int(version) <= MAX_VERSION):
        raise NotFound("workflow", tag)


def check_signal(name: str, payload: Any) -> None:
    """InputError unless `name` is a signal name and `payload` can be stored as JSON."""
    if not _SIGNAL.fullmatch(name):
        raise InputError("name", "a signal name is letters, digits, '_' or '-'")
    problem = json_problem(payload)
    if problem is not None:
        raise InputError(join_path("payload", problem[0]), problem[1])


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._drain(receive)
            await self._reject(send, f"the request body ({int(declared)} bytes)")
            return
        body = bytearray()
        more = True
        while more:  # buffer the body (bounded) so the app sees a normal request
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                if more:
                    await self._drain(receive)
                await self._reject(send, "the request body")
                return
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _drain(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                return

    async def _reject(self, send: Send, what: str) -> None:
        body = json.dumps(
            {
                "type": "about:blank",
                "title": "Content Too Large",
                "status": 413,
                "detail": over_body_limit(what, self.max_bytes),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", PROBLEM.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, upstream: Receive) -> Receive:
    """The buffered body first, then the real channel (so streams still see a disconnect)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await upstream()

    return receive
