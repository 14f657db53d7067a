"""The Bus seam, its adapters (memory now; Redis Streams and Kafka fit the same Protocol)."""

from headrace.bus import topics
from headrace.bus.base import Bus, Delivery
from headrace.bus.memory import MemoryBus

__all__ = ["Bus", "Delivery", "MemoryBus", "topics"]
