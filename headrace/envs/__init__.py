"""Execution environments: where and how an agent job runs."""

from headrace.envs.local import Limits, LocalJob, LocalResult, run_local

__all__ = ["Limits", "LocalJob", "LocalResult", "run_local"]
