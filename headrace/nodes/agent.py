"""`agent` nodes: a command run by an execution environment (only `local` so far).

Contract: stdin is the node's evaluated `with`; stdout is one JSON document (empty = null);
the environment holds only PATH, HOME, LANG, the node's env_vars and HEADRACE_RUN_ID,
HEADRACE_NODE_ID, HEADRACE_ATTEMPT, HEADRACE_IDEMPOTENCY_KEY. An agent reports what it cost
with a line `::headrace cost_cents=N` on stderr.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from headrace.envs import Limits, LocalJob, run_local
from headrace.errors import NodeError
from headrace.events import Job
from headrace.nodes.base import Outcome, check_output
from headrace.spec import resolve_secrets

_PASSED = ("PATH", "HOME", "LANG")
_COST = re.compile(rb"^::headrace cost_cents=(\d+)\s*$", re.MULTILINE)


class AgentExecutor:
    def __init__(self, secrets: Mapping[str, str]) -> None:
        self.secrets = secrets

    async def run(self, job: Job) -> Outcome:
        config = job.config
        env = {k: os.environ[k] for k in _PASSED if k in os.environ}
        try:
            env_vars: dict[str, Any] = resolve_secrets(config.get("env_vars") or {}, self.secrets)
        except KeyError as e:
            raise NodeError(
                f"secret {e.args[0]!r} is not set in this deployment",
                type="missing_secret",
                retryable=False,
            ) from None
        env.update({str(k): _text(v) for k, v in env_vars.items()})
        env.update(
            {
                "HEADRACE_RUN_ID": job.run_id,
                "HEADRACE_NODE_ID": job.node_id,
                "HEADRACE_ATTEMPT": str(job.attempt),
                "HEADRACE_IDEMPOTENCY_KEY": job.idempotency_key,
            }
        )
        local = LocalJob(
            command=[_text(c) for c in config["command"]],
            stdin=msgspec.json.encode(job.args if job.args is not None else {}),
            env=env,
            timeout_s=job.timeout_ms / 1000,
            workdir=config.get("workdir"),
            limits=Limits(config.get("memory_bytes"), config.get("cpu_seconds")),
        )
        result = await run_local(local)
        output = _parse(result.stdout)
        check_output(output, "the agent")
        return Outcome(output, _cost(result.stderr_tail))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


def _parse(stdout: bytes) -> Any:
    if not stdout.strip():
        return None
    try:
        return msgspec.json.decode(stdout)
    except msgspec.DecodeError:
        tail = stdout[-300:].decode(errors="replace")
        raise NodeError(
            f"agent stdout is not one JSON document: ...{tail}", type="bad_output", retryable=False
        ) from None


def _cost(stderr: bytes) -> int:
    return sum(int(m) for m in _COST.findall(stderr))
