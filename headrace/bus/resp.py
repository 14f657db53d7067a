"""A lean Redis client for the bus: RESP2 over asyncio protocols, replies parsed by hiredis.

Why not redis-py here: each command through its asyncio client costs ~150 µs of CPU on our
machines against ~40 µs for the round trip itself (its pool, retry, timeout and event
layers), and the bus sends six commands per node; that was half of a Postgres + Redis
node's CPU. Tests and tools still use redis-py.

Commands share one connection (Redis answers in order, so callers in flight pipeline for
free); a blocking read takes a connection of its own, kept for the next one. A connection
that fails, or leaves a command unanswered past `timeout_s`, is dropped with every command
waiting on it (they raise `ConnectionLost`); the next command opens a new one.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

import hiredis

Arg = str | bytes | int | float
Command = Sequence[Arg]


class RedisError(Exception):
    """Any failure of a Redis command."""


class ReplyError(RedisError):
    """The server answered with an error (`NOGROUP ...`, `BUSYGROUP ...`)."""


class ConnectionLost(RedisError):
    """No answer: the connection could not be made, broke, or timed out."""


class _Waiting:
    __slots__ = ("count", "deadline", "future", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int, deadline: float) -> None:
        self.future = future
        self.count = count
        self.deadline = deadline
        self.replies: list[Any] = []


class _Connection(asyncio.Protocol):
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.reader = hiredis.Reader(replyError=ReplyError)
        self.waiting: deque[_Waiting] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's is no subclass)

    def send(self, commands: Sequence[Command], extra_s: float = 0.0) -> asyncio.Future[list[Any]]:
        """Write `commands` at once; the future gets their replies (errors as ReplyError)."""
        if self.closed or self.transport is None:
            raise ConnectionLost("the connection to redis is closed")
        future = asyncio.get_running_loop().create_future()
        deadline = time.monotonic() + self.timeout_s + extra_s
        self.waiting.append(_Waiting(future, len(commands), deadline))
        packed = [hiredis.pack_command(tuple(c)) for c in commands]  # type: ignore[arg-type]
        self.transport.write(b"".join(packed))  # (its stub takes only one-item tuples)
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_at(
                asyncio.get_running_loop().time() + self.timeout_s + extra_s, self._check
            )
        return future

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                head = self.waiting[0]
                head.replies.append(reply)
                if len(head.replies) == head.count:
                    self.waiting.popleft()
                    if not head.future.done():
                        head.future.set_result(head.replies)
        except (hiredis.ProtocolError, IndexError) as e:  # garbage, or a reply nobody asked for
            self.abort(f"redis protocol error: {e!r}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"the connection to redis was lost ({exc or 'closed by the server'})")

    def abort(self, why: str) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._fail(why)

    def _fail(self, why: str) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        while self.waiting:
            future = self.waiting.popleft().future
            if not future.done():
                future.set_exception(ConnectionLost(why))

    def _check(self) -> None:
        """One timer per connection, re-armed for the oldest command: cheaper than a
        timeout around every command."""
        self._watchdog = None
        if not self.waiting or self.closed:
            return
        head = self.waiting[0].deadline
        if time.monotonic() >= head:
            self.abort(f"redis did not answer within {self.timeout_s} s")
            return
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_at(loop.time() + head - time.monotonic(), self._check)


class Client:
    """`redis://[user:password@]host:port/db` or `rediss://...` (TLS)."""

    def __init__(self, url: str, *, timeout_s: float = 10.0, connect_timeout_s: float = 5.0):
        u = urlsplit(url)
        self.host, self.port, self.db = _address(u)
        self.tls = u.scheme == "rediss"
        self.auth = [unquote(x) for x in (u.username, u.password) if x]
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._shared: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._idle: list[_Connection] = []  # for blocking reads
        self._open: set[_Connection] = set()

    async def execute(self, *command: Arg) -> Any:
        """One command's reply; an error reply raises ReplyError."""
        reply = (await self.pipeline([command]))[0]
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """The replies of `commands`, sent in one write; error replies are returned, not
        raised (a MULTI ... EXEC batch is atomic, anything else is not)."""
        if not commands:
            return []
        conn = self._shared
        if conn is None or conn.closed:
            conn = await self._shared_connection()
        return await conn.send(commands)

    async def blocking(self, block_ms: int, *command: Arg) -> Any:
        """A command that may block up to `block_ms` (XREADGROUP BLOCK), on a connection of
        its own so it holds up no other command."""
        conn = await self._idle_connection()
        try:
            reply = (await conn.send([command], extra_s=block_ms / 1000))[0]
        except BaseException:
            conn.abort("a blocking read was interrupted")  # its reply would come later
            raise
        self._idle.append(conn)
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def close(self) -> None:
        for conn in list(self._open):
            if conn.transport is not None:
                conn.transport.close()
            conn.closed = True
        self._open.clear()
        self._idle.clear()
        self._shared = None

    async def _shared_connection(self) -> _Connection:
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.create_task(self._connect())
        conn = await asyncio.shield(self._connecting)
        self._shared = conn
        return conn

    async def _idle_connection(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        return await self._connect()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self.timeout_s),
                    self.host,
                    self.port,
                    ssl=ssl.create_default_context() if self.tls else None,
                )
        except (OSError, TimeoutError) as e:
            raise ConnectionLost(f"cannot connect to redis at {self.host}:{self.port}: {e}") from e
        self._open = {c for c in self._open if not c.closed} | {conn}
        hello: list[Command] = []
        if self.auth:
            hello.append(("AUTH", *self.auth))
        if self.db:
            hello.append(("SELECT", self.db))
        for reply in await conn.send(hello) if hello else []:
            if isinstance(reply, ReplyError):
                conn.abort("handshake refused")
                raise reply
        return conn


def _address(u: SplitResult) -> tuple[str, int, int]:
    """(host, port, database number) of a redis:// URL; ValueError says what is wrong
    (showing the URL without its credentials)."""
    shown = f"{u.scheme}://{u.netloc.rpartition('@')[2]}{u.path}"
    if u.scheme not in ("redis", "rediss"):
        raise ValueError(f"expected redis://host:port/db or rediss://..., not {shown!r}")
    try:
        port = u.port or 6379
    except ValueError:
        raise ValueError(f"the port must be a number from 1 to 65535 in {shown!r}") from None
    db = u.path.strip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"the database must be a number (redis://host:port/0), not {db!r}")
    return u.hostname or "127.0.0.1", port, int(db)
