"""Benchmarks behind `make bench` (not part of the tests)."""
