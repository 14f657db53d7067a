"""The Bus seam: at-least-once transport of jobs, results and cancels.

Consumers in the same group share a topic's messages; every group sees every message (so a
group per worker turns a topic into a broadcast). A delivered message stays pending until
acknowledged; acknowledge only after its effect is committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from headrace.events import Message


@dataclass(frozen=True)
class Delivery:
    topic: str
    id: str  # the backend's message id, used to acknowledge
    message: Message


class Bus(Protocol):
    durable: bool  # whether messages survive a restart of this process

    async def publish(self, messages: Sequence[Message]) -> None:
        """Send all messages, in order per topic (one pipelined round trip where possible)."""

    async def consume(
        self, topics: Sequence[str], group: str, consumer: str, max_count: int, block_ms: int
    ) -> list[Delivery]:
        """Up to `max_count` messages, earlier topics drained first; waits up to `block_ms`
        when none is there."""

    async def ack(self, group: str, deliveries: Sequence[Delivery]) -> None: ...

    async def close(self) -> None: ...
