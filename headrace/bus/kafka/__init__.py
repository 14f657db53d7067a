"""The Kafka bus (ARCHITECTURE §4, phases 2–3) on confluent-kafka (librdkafka).

Topics: `{prefix}{topic}` (characters Kafka refuses become `-`), created on first use with
`partitions` partitions and `replication` replicas. Every message is keyed by its run id, so
a run's messages keep their order on one partition; its headers travel as Kafka headers.

Publish: one idempotent `Producer` (acks=all) per bus, served by a poll thread; `publish`
returns when the broker acknowledged every message, and raises InfraError when it did not
within `timeout_s`. A producer that hit a fatal error (out of sequence after a broker lost
acknowledged writes) fails what it holds and is replaced.

Consume: one Kafka `Consumer` per group per process, subscribed to every topic the group
was asked for, fetching in its own thread into per-topic buffers (paused past
`max_buffered` records). The consumers a caller names within a group share those buffers.
A delivery's id is `partition-offset`.

Acknowledge: Kafka commits a position per partition, not a message. An ack marks its offset
done, and the partition's position moves to just past the longest run of done offsets; the
fetch thread commits positions that moved. So an out-of-order ack waits for the ones before
it, and a crash redelivers at most what was not yet committed (at-least-once).

Redelivery: within a process, a delivery neither acknowledged nor touched for
`visibility_ms` goes to the next `consume` of its group. Across processes, the group's
rebalance does it: when a member dies (no heartbeat for `session_timeout_ms`) or leaves,
its partitions move with their committed positions, so its unacknowledged records are read
again by the new owner. When this process loses a partition, it commits what is done and
forgets the rest.

Depth is the broker's high watermark minus the group's committed position, summed over the
partitions, for the groups this process knows (docs/kafka.md: tansu's watermarks are wrong
on multi-partition topics fed with batches).
"""

from headrace.bus.kafka.bus import KafkaBus, kafka_name

__all__ = ["KafkaBus", "kafka_name"]
