"""headrace: a durable workflow orchestrator."""

__version__ = "0.1.0"
