"""Helpers for tests and benchmarks: task functions and in-process servers."""
