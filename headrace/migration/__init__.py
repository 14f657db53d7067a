"""The Redis → Kafka migration (ARCHITECTURE §4): the figures every process reports, the
steps and their checks, the monitor that rolls back, and the shadow validator."""
