"""Retry backoff (pure): how long to wait before the next attempt."""

from __future__ import annotations

from headrace.spec.ir import Retry


def backoff_ms(policy: Retry, attempt: int) -> int:
    """Delay before attempt `attempt + 1`, after attempt `attempt` (1-based) failed."""
    if policy.backoff == "constant":
        delay = policy.initial_interval_ms
    elif policy.backoff == "linear":
        delay = policy.initial_interval_ms * attempt
    else:
        delay = policy.initial_interval_ms * 2 ** min(attempt - 1, 40)
    return min(delay, policy.max_interval_ms)


def may_retry(policy: Retry, attempt: int, retryable: bool) -> bool:
    return retryable and attempt < policy.max_attempts
