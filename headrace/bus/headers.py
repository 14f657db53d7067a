"""Every header headrace puts on a message, in one place. Adapters carry headers as they
are; these are the runtime's and the migrating bus's."""

# the format of a message's payload: a codec's CONTENT_TYPE (headrace/bus/base.py)
CONTENT_TYPE_HEADER = "content-type"

# a dead-lettered message carries these beside its own: where it came from, and why
DL_TOPIC = "dead-letter-topic"
DL_ID = "dead-letter-id"
DL_GROUP = "dead-letter-group"
DL_REASON = "dead-letter-reason"

# The Redis → Kafka migration (headrace/bus/migrating.py). The runtime stamps PIN on every
# message of a run from the run's pin (chosen when it started, committed with it); the
# migrating bus adds the others as it publishes.
PIN = "hr-pin"  # the bus its run is pinned to: REDIS or KAFKA
VIA = "hr-via"  # the copy consumers act on
COPIES = "hr-copies"  # the buses that got a copy, comma-separated
MID = "hr-mid"  # a content id (topic, key, payload): the same in every copy and re-publish
CID = "hr-cid"  # a copy id: the same in the copies of one publish, new on each publish
TS = "hr-ts"  # publish time, ms since the epoch
REDIS, KAFKA = "redis", "kafka"  # the values of PIN and VIA

# a reply (a job's result) inherits these from the message it answers
INHERITED = (PIN,)
