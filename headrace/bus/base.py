"""The Bus seam: at-least-once transport of jobs, results and cancels.

The contract every adapter keeps (tests/contract/test_bus_contract.py checks it on each):

- **Groups.** Consumers in the same group share a topic's messages; every group sees every
  message published after it first consumed (so a group per worker turns a topic into a
  broadcast). Whether a new group also sees older messages is the backend's affair: memory
  gives the backlog to the first group only, Redis gives a new group everything it retains.
- **Order.** Within one topic, messages are delivered in publish order (a redelivery comes
  out of order). `consume` drains the topics it is given in that order: earlier first.
- **At-least-once.** A delivered message stays pending until acknowledged; acknowledge only
  after its effect is committed. A message pending longer than the bus's visibility timeout
  is delivered again, to whichever consumer of the group asks next; `touch` restarts that
  clock for a consumer still working on it. So a message can be delivered twice, and its
  consumer must be idempotent; it is never lost while the backend keeps it.
- **Format.** Every message names its payload's format in `CONTENT_TYPE_HEADER` (the
  runtime sets it; adapters carry headers as they are). A message without it is JSON (see
  `content_type`).
- **Poison.** A message its consumer cannot decode, or whose content type it does not know,
  goes to `dead_letter`, which moves it to `DEAD_LETTER_TOPIC` with the reason and
  acknowledges the original, so it blocks nobody.
- **Errors.** Adapters raise `headrace.errors.InfraError` for a backend failure, never their
  driver's exceptions; the next call after the backend returns works again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from headrace.bus.headers import (
    CONTENT_TYPE_HEADER,
    DL_GROUP,
    DL_ID,
    DL_REASON,
    DL_TOPIC,
    INHERITED,
)
from headrace.errors import InfraError
from headrace.events import CONTENT_TYPE, Message

DEAD_LETTER_TOPIC = "dead-letter"


@dataclass(frozen=True)
class Delivery:
    topic: str
    id: str  # the backend's message id, unique within its topic; used to acknowledge
    message: Message
    # published before its consumer's group member was given its partition (Kafka): it
    # waited for a rebalance or the group's first member, so its age says nothing of the bus
    handed_over: bool = field(default=False, kw_only=True)


class Bus(Protocol):
    durable: bool  # whether messages survive a restart of this process

    @property
    def description(self) -> str:
        """What it is and where, for the logs (never a password)."""

    async def publish(self, messages: Sequence[Message]) -> None:
        """Send all messages, in order per topic (one pipelined round trip where possible).
        When it returns, every message is in the backend."""

    async def consume(
        self, topics: Sequence[str], group: str, consumer: str, max_count: int, block_ms: int
    ) -> list[Delivery]:
        """Up to `max_count` messages for `group`: first those whose visibility timeout ran
        out (redeliveries), then new ones, earlier topics drained first. When there is
        none, waits up to `block_ms` for one (0: does not wait; an adapter may return
        empty-handed earlier). The first call of a group on a topic creates the group."""

    async def ack(self, group: str, deliveries: Sequence[Delivery]) -> None:
        """Mark deliveries done for `group`: they are never delivered to it again.
        Acknowledging twice, or a message the group no longer holds, is a no-op."""

    async def publish_and_ack(
        self, messages: Sequence[Message], group: str, deliveries: Sequence[Delivery]
    ) -> None:
        """`publish(messages)` then `ack(group, deliveries)`, in one round trip where the
        backend allows. The acknowledgements never take effect without the messages (a
        job is acknowledged with its result, so a job whose result was not sent is
        redelivered); when it raises, either may have happened, or neither."""

    async def touch(self, group: str, consumer: str, deliveries: Sequence[Delivery]) -> None:
        """Heartbeat for long work: restart the visibility clock of these pending messages,
        now held by `consumer`. Touch only what you still hold: a touch after the timeout
        ran out may race a redelivery (both consumers then work on it: at-least-once)."""

    async def dead_letter(self, group: str, delivery: Delivery, reason: str) -> None:
        """Publish the message to `DEAD_LETTER_TOPIC` (same key and payload, its headers
        plus `DL_TOPIC`, `DL_ID`, `DL_GROUP`, `DL_REASON`) and acknowledge the original
        for `group`, so it is never redelivered."""

    async def depth(self, topic: str) -> int:
        """Messages of `topic` not yet delivered to its slowest group (all of them while
        there is no group). Pending (delivered, unacknowledged) messages are not counted.
        Cheap: meant for a gauge. An adapter that cannot tell exactly gives an upper bound
        and says so."""

    async def close(self) -> None:
        """Release the bus's connections; call it once its consumers stopped, and no other
        method after it. What is pending stays pending in a durable backend (redelivered to
        the next consumer after the visibility timeout); an in-memory bus forgets it all."""


class PartlyPublished(InfraError):
    """A publish that went through on one bus and not on another (the migrating bus): the
    `messages` not published, and the `deliveries` left unacknowledged with them; the rest
    were published and acknowledged. Retry only these."""

    def __init__(
        self, reason: str, messages: Sequence[Message], deliveries: Sequence[Delivery] = ()
    ) -> None:
        super().__init__(reason)
        self.messages = list(messages)
        self.deliveries = list(deliveries)


async def publish_then_ack(
    bus: Bus, messages: Sequence[Message], group: str, deliveries: Sequence[Delivery]
) -> None:
    """`publish_and_ack` for a bus that needs two steps."""
    await bus.publish(messages)
    await bus.ack(group, deliveries)


def dead_letter_message(group: str, delivery: Delivery, reason: str) -> Message:
    """The copy of a poison message that goes to DEAD_LETTER_TOPIC, saying where from and why."""
    m = delivery.message
    headers = {
        **m.headers,
        DL_TOPIC: delivery.topic,
        DL_ID: delivery.id,
        DL_GROUP: group,
        DL_REASON: reason,
    }
    return Message(DEAD_LETTER_TOPIC, m.key, m.payload, headers)


def content_type(message: Message) -> str:
    """The format of a message's payload, as its header names it. A message without the
    header is JSON: a version before the header wrote none, and its messages may still wait
    in an outbox or a stream during a rolling upgrade. Reading them as JSON, which they are,
    is what makes that upgrade safe."""
    return message.headers.get(CONTENT_TYPE_HEADER, CONTENT_TYPE)


def reply_headers(delivery: Delivery) -> dict[str, str]:
    """The headers a reply to `delivery` (a job's result) carries over from it."""
    h = delivery.message.headers
    return {k: h[k] for k in INHERITED if k in h}
