"""The Redis Streams bus (ARCHITECTURE §4, phase 1): one stream per topic, consumer groups.

Keys and fields, all of them:

    {prefix}{topic}        a stream per topic; entry fields `k` (key), `p` (payload bytes),
                           `h` (headers as a JSON object; absent when there are none)
    {prefix}dead-letter    dead letters: `k`, `p`, `h` as above (`h` holds the DL_* headers)
                           plus `topic`, `id`, `group`, `reason` for a reader with redis-cli

Delivery: one XREADGROUP over all the topics (blocking only when the call has nothing yet);
it returns up to the count from each stream, handed out in the order of the topics given,
and what is beyond the count is kept for this consumer's next calls, which hand it out
before anything read later (so low-priority jobs are never starved by high ones).

Redelivery: the next consume of a group claims messages pending longer than `visibility_ms`
with XAUTOCLAIM; that scan runs at most every visibility/4 per topic and group. `touch` is
XCLAIM (min-idle 0, JUSTID) by the holder, which resets the idle time. A group is created at
id 0 on first use, so a new group reads everything the stream retains; a group that vanished
(a Redis restarted without persistence) is recreated on the NOGROUP error.

Trimming never uses XADD MAXLEN, which drops messages nobody has acknowledged. Instead
`publish` checks a stream's length (an XLEN in the same pipeline) at most every
`trim_every_s` per stream, and when it exceeds `max_len`, `trim` cuts it (XTRIM MINID) to the
oldest entry some group still needs: the minimum over groups of its oldest pending id and
its last-delivered id. So `max_len` bounds the history of delivered, acknowledged messages a
stream keeps; a stream whose consumers lag grows past it rather than lose work, and a group
that stops reading holds trimming back until it is deleted (XGROUP DESTROY). `observers`
are groups that only watch (the shadow validator): they never hold trimming back nor count
in `depth`, so a watcher that stops cannot make Redis grow.

`capped` topics are the exception: XADD MAXLEN keeps their last `max_len` entries whether
read or not. For cancels (a group per worker) that is right: a worker that is gone leaves
its group behind, which would otherwise hold trimming back for ever, and a cancel missed
after `max_len` newer ones only lets a job finish (its result is then ignored).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import msgspec

from headrace.bus.base import (
    DEAD_LETTER_TOPIC,
    Delivery,
    dead_letter_message,
)
from headrace.bus.resp import Arg, Client, Command, RedisError, ReplyError
from headrace.errors import InfraError
from headrace.events import Message

log = logging.getLogger(__name__)

_SOCKET_TIMEOUT_S = 10.0
_MAX_BLOCK_MS = 8_000  # a blocking read must answer within the socket timeout
_CONNECT_TIMEOUT_S = 5.0
_START = "0-0"  # XAUTOCLAIM's first cursor, and the id a new group starts after

Queue = tuple[str, str]  # (topic, group)


class RedisBus:
    durable = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "headrace:",
        visibility_ms: int = 30_000,
        max_len: int = 1_000_000,
        trim_every_s: float = 5.0,
        capped: Collection[str] = (),
        observers: Collection[str] = (),
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.visibility_ms = visibility_ms
        self.max_len = max_len
        self.trim_every_s = trim_every_s
        self.capped = frozenset(capped)
        self.observers = frozenset(observers)
        # an outage surfaces as InfraError, which the runtime loops retry with their backoff
        self._client = Client(
            url, timeout_s=_SOCKET_TIMEOUT_S, connect_timeout_s=_CONNECT_TIMEOUT_S
        )
        self._groups: set[Queue] = set()  # groups known to exist
        self._next_claim_s: dict[Queue, float] = {}
        self._claim_cursor: dict[Queue, bytes] = {}  # an XAUTOCLAIM scan cut short
        self._next_trim_s: dict[str, float] = {}
        # messages a blocking read returned beyond `max_count`, for the next consume of
        # the same (group, consumer); with the monotonic time they were read
        self._spill: dict[tuple[str, str], list[tuple[float, Delivery]]] = {}

    @property
    def description(self) -> str:
        u = urlsplit(self.url)  # without the credentials
        port = f":{u.port}" if u.port else ""
        return f"redis {u.scheme}://{u.hostname or ''}{port}{u.path} prefix {self.prefix}"

    def _key(self, topic: str) -> str:
        return self.prefix + topic

    async def publish(self, messages: Sequence[Message]) -> None:
        if messages:
            await self._send(messages, [])

    async def publish_and_ack(
        self, messages: Sequence[Message], group: str, deliveries: Sequence[Delivery]
    ) -> None:
        """One MULTI ... EXEC: the XACKs run only with the XADDs (a command Redis refuses,
        such as a write over `maxmemory`, aborts them all), in the same round trip."""
        if not deliveries:
            await self.publish(messages)
        elif not messages:
            await self.ack(group, deliveries)
        else:
            await self._send(messages, self._acks(group, deliveries))

    async def _send(self, messages: Sequence[Message], acks: list[Command]) -> None:
        """XADD `messages` (in a MULTI with `acks` when there are any), and XLEN the streams
        due for a length check; trims those grown past `max_len`."""
        now = time.monotonic()
        topics = dict.fromkeys(m.topic for m in messages)
        due = [t for t in topics if t not in self.capped and self._trim_due(t, now)]
        with _edge("publish"):
            commands = [self._xadd(m) for m in messages]
            if acks:
                commands = [("MULTI",), *commands, *acks, ("EXEC",)]
            commands += [("XLEN", self._key(topic)) for topic in due]
            replies = _raised(await self._client.pipeline(commands))
            if acks:
                _raised(replies[-len(due) - 1])  # a command inside the transaction failed
            lengths = replies[len(replies) - len(due) :]
        for topic, length in zip(due, lengths, strict=True):
            if length > self.max_len:
                try:  # the messages are published: a failed trim waits for the next check
                    await self._trim(topic)
                except RedisError as e:
                    log.warning("could not trim %s: %s", self._key(topic), e)

    def _xadd(self, m: Message) -> Command:
        cap: tuple[Arg, ...] = ("MAXLEN", "~", self.max_len) if m.topic in self.capped else ()
        return ("XADD", self._key(m.topic), *cap, "*", *_fields(m))

    def _trim_due(self, topic: str, now: float) -> bool:
        if now < self._next_trim_s.get(topic, 0.0):
            return False
        self._next_trim_s[topic] = now + self.trim_every_s
        return True

    async def consume(
        self, topics: Sequence[str], group: str, consumer: str, max_count: int, block_ms: int
    ) -> list[Delivery]:
        if max_count <= 0:
            return []
        with _edge("consume"):
            try:
                return await self._consume(topics, group, consumer, max_count, block_ms)
            except ReplyError as e:
                if not _is_nogroup(e):
                    raise
                log.warning("consumer group %s vanished from Redis; recreating it", group)
                self._groups.difference_update((t, group) for t in topics)
                return await self._consume(topics, group, consumer, max_count, block_ms)

    async def _consume(
        self, topics: Sequence[str], group: str, consumer: str, max_count: int, block_ms: int
    ) -> list[Delivery]:
        now = time.monotonic()
        out = self._unspill(topics, group, consumer, max_count, now)
        await self._ensure_groups(topics, group)
        for topic in topics:
            if len(out) < max_count:
                out += await self._claim(topic, group, consumer, max_count - len(out), now)
        if len(out) >= max_count:
            return out
        # One read over every stream: it answers at once when any has messages (up to the
        # count from each, earlier topics first, the rest kept for the next call), and
        # blocks only when this call has nothing yet.
        block = min(block_ms, _MAX_BLOCK_MS)
        wait = block if block > 0 and not out else None
        return out + await self._read(topics, group, consumer, max_count - len(out), wait)

    async def _ensure_groups(self, topics: Sequence[str], group: str) -> None:
        missing = [t for t in topics if (t, group) not in self._groups]
        if not missing:
            return
        creates = [("XGROUP", "CREATE", self._key(t), group, _START, "MKSTREAM") for t in missing]
        for topic, reply in zip(missing, await self._client.pipeline(creates), strict=True):
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise reply
            self._groups.add((topic, group))

    async def _claim(
        self, topic: str, group: str, consumer: str, room: int, now: float
    ) -> list[Delivery]:
        """Messages of `topic` pending in `group` longer than the visibility timeout, now
        held by `consumer`. Scans at most every visibility/4, unless a scan was cut short."""
        queue = (topic, group)
        if now < self._next_claim_s.get(queue, 0.0):
            return []
        start = self._claim_cursor.pop(queue, _START.encode())
        claim = ("XAUTOCLAIM", self._key(topic), group, consumer, self.visibility_ms, start)
        cursor, entries, *_ = await self._client.execute(*claim, "COUNT", room)
        if cursor == _START.encode():
            self._next_claim_s[queue] = now + self.visibility_ms / 4000
        else:
            self._claim_cursor[queue] = cursor
        return [_delivery(topic, id, fields) for id, fields in entries if fields]

    async def _read(
        self, topics: Sequence[str], group: str, consumer: str, count: int, block: int | None
    ) -> list[Delivery]:
        """New messages (XREADGROUP >), earlier topics first; at most `count` returned, the
        rest (a blocking read over several streams returns up to `count` from each) kept
        for this consumer's next call."""
        by_key = {self._key(t).encode(): t for t in topics}
        wait: tuple[Arg, ...] = () if block is None else ("BLOCK", block)
        read = ("XREADGROUP", "GROUP", group, consumer, "COUNT", count, *wait, "STREAMS")
        read += (*by_key, *(">" for _ in by_key))
        if block is None:
            streams = await self._client.execute(*read)
        else:
            streams = await self._client.blocking(block, *read)
        got = [
            _delivery(by_key[key], id, fields)
            for key, entries in streams or ()
            for id, fields in entries
            if fields
        ]
        if len(got) > count:
            order = {t: i for i, t in enumerate(topics)}
            got.sort(key=lambda d: order[d.topic])
            now = time.monotonic()
            self._spill.setdefault((group, consumer), []).extend((now, d) for d in got[count:])
            del got[count:]
        return got

    def _unspill(
        self, topics: Sequence[str], group: str, consumer: str, max_count: int, now: float
    ) -> list[Delivery]:
        spilled = self._spill.pop((group, consumer), None)
        if not spilled:
            return []
        out: list[Delivery] = []
        keep: list[tuple[float, Delivery]] = []
        stale_before = now - self.visibility_ms / 2000
        for at, d in spilled:
            if at < stale_before:
                continue  # soon claimable by anyone: XAUTOCLAIM redelivers it
            if d.topic in topics and len(out) < max_count:
                out.append(d)
            else:
                keep.append((at, d))
        if keep:
            self._spill[(group, consumer)] = keep
        return out

    async def ack(self, group: str, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        with _edge("ack"):
            _raised(await self._client.pipeline(self._acks(group, deliveries)))

    def _acks(self, group: str, deliveries: Sequence[Delivery]) -> list[Command]:
        by_topic = _by_topic(deliveries).items()
        return [("XACK", self._key(t), group, *ids) for t, ids in by_topic]

    async def touch(self, group: str, consumer: str, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        with _edge("touch"):
            claims: list[Command] = [
                ("XCLAIM", self._key(topic), group, consumer, 0, *ids, "JUSTID")
                for topic, ids in _by_topic(deliveries).items()
            ]
            for reply in await self._client.pipeline(claims):
                # a vanished group holds nothing: there is nothing to keep alive
                if isinstance(reply, Exception) and not _is_nogroup(reply):
                    raise reply

    async def dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:
        fields = _fields(dead_letter_message(group, delivery, reason))
        fields += ("topic", delivery.topic, "id", delivery.id, "group", group, "reason", reason)
        with _edge("dead_letter"):
            replies = await self._client.pipeline(  # both or neither
                [
                    ("MULTI",),
                    ("XADD", self._key(DEAD_LETTER_TOPIC), "*", *fields),
                    ("XACK", self._key(delivery.topic), group, delivery.id),
                    ("EXEC",),
                ]
            )
            _raised(replies)  # the transaction refused
            _raised(replies[-1])  # a command inside it failed

    async def depth(self, topic: str) -> int:
        """Entries not yet delivered to the slowest group: the largest XINFO GROUPS `lag`.
        Where Redis cannot tell a group's lag (it says null, or is older than 7.0), the
        stream's length: an upper bound."""
        with _edge("depth"):
            groups, length = await self._client.pipeline(
                [("XINFO", "GROUPS", self._key(topic)), ("XLEN", self._key(topic))]
            )
            if isinstance(length, Exception):
                raise length
            if isinstance(groups, Exception):
                if "no such key" in str(groups).lower():
                    return 0
                raise groups
        lags: list[Any] = [g.get("lag") for g in self._working(_groups(groups))]
        if not lags or any(lag is None for lag in lags):
            return int(length)
        return max(int(lag) for lag in lags)

    def _working(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """XINFO GROUPS without the observers."""
        return [g for g in groups if _text(g["name"]) not in self.observers]

    async def trim(self, topic: str) -> int:
        """Cut `topic`'s stream to the oldest entry some group still needs, now; returns how
        many entries went. `publish` calls it when a stream grows past `max_len`."""
        with _edge("trim"):
            return await self._trim(topic)

    async def _trim(self, topic: str) -> int:
        key = self._key(topic)
        try:
            groups = self._working(_groups(await self._client.execute("XINFO", "GROUPS", key)))
        except ReplyError as e:
            if "no such key" in str(e).lower():
                return 0
            raise
        if not groups:
            return 0  # nobody has read anything yet: every entry is still needed
        # Read in this order, the bound is safe against concurrent consumers: whatever is
        # delivered after XINFO lies past its last-delivered id, and whatever is pending at
        # XPENDING time is at or past its minimum.
        needed = [_id(g["last-delivered-id"]) for g in groups]
        pending = [g["name"] for g in groups if g["pending"]]
        if pending:
            asks = [("XPENDING", key, name) for name in pending]
            summaries = _raised(await self._client.pipeline(asks))
            needed += [_id(s[1]) for s in summaries if s[0]]
        oldest = min(needed)
        if oldest == (0, 0):
            return 0
        removed: int = await self._client.execute("XTRIM", key, "MINID", f"{oldest[0]}-{oldest[1]}")
        return removed

    async def close(self) -> None:
        with _edge("close"):
            await self._client.close()


@contextlib.contextmanager
def _edge(operation: str) -> Iterator[None]:
    """Translate the driver's exceptions into InfraError at the adapter's edge."""
    try:
        yield
    except RedisError as e:
        raise InfraError(f"redis bus {operation}: {type(e).__name__}: {e}") from e


def _is_nogroup(e: Exception) -> bool:
    return isinstance(e, ReplyError) and str(e).startswith("NOGROUP")


def _raised(replies: list[Any]) -> list[Any]:
    """`replies`, unless one is an error reply: then it is raised."""
    for reply in replies:
        if isinstance(reply, ReplyError):
            raise reply
    return replies


def _fields(m: Message) -> tuple[Arg, ...]:
    if m.headers:
        return ("k", m.key, "p", m.payload, "h", msgspec.json.encode(m.headers))
    return ("k", m.key, "p", m.payload)


def _groups(reply: list[list[Any]]) -> list[dict[str, Any]]:
    """XINFO GROUPS (flat name/value lists) as dicts."""
    return [{_text(k): v for k, v in zip(g[::2], g[1::2], strict=True)} for g in reply]


_HEADERS = msgspec.json.Decoder(dict[str, str])


def _delivery(topic: str, id: bytes, flat: list[bytes]) -> Delivery:
    """An entry as a Delivery. A malformed entry still arrives (with what could be read),
    so its consumer sees an undecodable payload and dead-letters it."""
    fields = dict(zip(flat[::2], flat[1::2], strict=False))
    try:
        headers = _HEADERS.decode(fields[b"h"]) if b"h" in fields else {}
    except msgspec.DecodeError:
        headers = {}
    key = fields.get(b"k", b"").decode(errors="replace")
    return Delivery(topic, _text(id), Message(topic, key, fields.get(b"p", b""), headers))


def _by_topic(deliveries: Sequence[Delivery]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for d in deliveries:
        out.setdefault(d.topic, []).append(d.id)
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id(value: bytes | str) -> tuple[int, int]:
    ms, _, seq = _text(value).partition("-")
    return int(ms), int(seq or 0)
