"""The bus's Redis client against the real server: replies reach their callers, errors and
lost connections surface, and a dropped connection is replaced by the next command."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from headrace.bus.resp import Client, ConnectionLost, ReplyError
from headrace.config import Settings
from headrace.errors import InputError
from headrace.services.adapters import build_bus
from headrace.testing.services import redis_prefix

pytestmark = pytest.mark.integration


@pytest.fixture
def env() -> Iterator[tuple[str, str]]:
    with redis_prefix() as env:
        yield env


@pytest.fixture
async def client(env: tuple[str, str]) -> AsyncIterator[Client]:
    c = Client(env[0], timeout_s=5)
    yield c
    await c.close()


async def test_concurrent_callers_each_get_their_own_reply(client: Client, env: tuple) -> None:
    key = env[1] + "n"
    replies = await asyncio.gather(*(client.execute("ECHO", f"v{i}") for i in range(300)))
    assert replies == [f"v{i}".encode() for i in range(300)]
    assert await client.pipeline([("INCR", key), ("INCR", key), ("GET", key)]) == [1, 2, b"2"]


async def test_an_error_reply_is_raised_alone_and_returned_in_a_pipeline(
    client: Client, env: tuple
) -> None:
    key = env[1] + "s"
    await client.execute("SET", key, "text")
    with pytest.raises(ReplyError, match="WRONGTYPE"):
        await client.execute("XLEN", key)
    ok, error, after = await client.pipeline([("GET", key), ("XLEN", key), ("STRLEN", key)])
    assert (ok, after) == (b"text", 4)
    assert isinstance(error, ReplyError)


async def test_a_killed_connection_is_replaced_by_the_next_command(
    client: Client, env: tuple
) -> None:
    await client.execute("CLIENT", "SETNAME", env[1] + "victim")
    other = Client(env[0])
    try:
        victim = await _id_of(other, env[1] + "victim")
        assert await other.execute("CLIENT", "KILL", "ID", victim) == 1
        await asyncio.sleep(0.05)
        assert await client.execute("PING") == b"PONG"
        assert await client.execute("CLIENT", "ID") != victim
    finally:
        await other.close()


async def _id_of(c: Client, name: str) -> int:
    listing = (await c.execute("CLIENT", "LIST")).decode()
    for line in listing.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("name") == name:
            return int(fields["id"])
    raise AssertionError(f"no client named {name}")


async def test_commands_in_flight_when_the_connection_dies_raise(env: tuple) -> None:
    c = Client(env[0])
    killer = Client(env[0])
    try:
        await c.execute("CLIENT", "SETNAME", env[1] + "dies")
        target = await _id_of(killer, env[1] + "dies")
        # DEBUG SLEEP would stall the shared server; a blocking read on the shared
        # connection is the in-flight command instead (the client never does this itself)
        conn = c._shared
        assert conn is not None
        pending = conn.send([("BLPOP", env[1] + "nothing", 5)])
        await killer.execute("CLIENT", "KILL", "ID", target)
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(pending, 10)
        assert await c.execute("PING") == b"PONG"
    finally:
        await c.close()
        await killer.close()


async def test_a_server_that_never_answers_times_out() -> None:
    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 20)
        await done.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c = Client(f"redis://127.0.0.1:{port}", timeout_s=0.3)
    try:
        with pytest.raises(ConnectionLost, match=r"did not answer within 0\.3 s"):
            await asyncio.wait_for(c.execute("PING"), 10)
    finally:
        await c.close()
        done.set()
        server.close()
        await server.wait_closed()


async def test_no_server_gives_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        c = Client(f"redis://127.0.0.1:{port}")
        with pytest.raises(ConnectionLost, match=f"cannot connect to redis at 127.0.0.1:{port}"):
            await c.execute("PING")


async def test_a_blocking_read_holds_up_no_other_command(client: Client, env: tuple) -> None:
    stream = env[1] + "stream"
    await client.execute("XGROUP", "CREATE", stream, "g", "0", "MKSTREAM")
    read = ("XREADGROUP", "GROUP", "g", "c", "COUNT", 1, "BLOCK", 2_000, "STREAMS", stream, ">")
    blocked = asyncio.create_task(client.blocking(2_000, *read))
    await asyncio.sleep(0.05)
    assert await client.execute("PING") == b"PONG"
    assert not blocked.done()
    await client.execute("XADD", stream, "*", "k", "v")
    [[key, [[_, fields]]]] = await asyncio.wait_for(blocked, 5)
    assert (key, fields) == (stream.encode(), [b"k", b"v"])


async def test_an_interrupted_blocking_read_never_hands_its_reply_to_the_next(
    client: Client, env: tuple
) -> None:
    stream = env[1] + "stream"
    await client.execute("XGROUP", "CREATE", stream, "g", "0", "MKSTREAM")
    read = ("XREAD", "COUNT", 1, "BLOCK", 300, "STREAMS", stream, "$")
    first = asyncio.create_task(client.blocking(300, *read))
    await asyncio.sleep(0.05)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await client.blocking(100, "ECHO", "mine") == b"mine"


async def test_the_database_number_in_the_url_is_used(env: tuple) -> None:
    url = env[0].rsplit("/", 1)[0] + "/5"
    key = env[1] + "db5"
    c = Client(url)
    try:
        await c.execute("SET", key, "here", "EX", 60)
        assert await c.execute("CLIENT", "INFO") is not None
        info = (await c.execute("CLIENT", "INFO")).decode()
        assert " db=5 " in f" {info} "
        await c.execute("DEL", key)
    finally:
        await c.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "redis://u:pw@127.0.0.1:abc/0",
            "the port must be a number from 1 to 65535 in 'redis://127.0.0.1:abc/0'",
        ),
        ("redis://127.0.0.1:99999", "the port must be a number from 1 to 65535"),
        (
            "redis://127.0.0.1:6379/x",
            "the database must be a number (redis://host:port/0), not 'x'",
        ),
    ],
)
def test_a_bad_bus_url_names_the_setting_and_hides_the_password(url: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        build_bus(Settings(bus=url, database_url="sqlite:///unused.db"))
    assert caught.value.path == "HEADRACE_BUS"
    assert message in str(caught.value)
    assert "pw" not in str(caught.value)
