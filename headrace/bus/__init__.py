"""The Bus seam and its adapters: memory (in-process) and Redis Streams; Kafka fits the same
Protocol. `RedisBus` is imported on first use, so the embedded mode never loads a Redis client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headrace.bus import topics
from headrace.bus.base import DEAD_LETTER_TOPIC, Bus, Delivery
from headrace.bus.memory import MemoryBus

if TYPE_CHECKING:
    from headrace.bus.redis import RedisBus

__all__ = ["DEAD_LETTER_TOPIC", "Bus", "Delivery", "MemoryBus", "RedisBus", "topics"]


def __getattr__(name: str) -> Any:
    if name == "RedisBus":
        from headrace.bus.redis import RedisBus

        return RedisBus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
