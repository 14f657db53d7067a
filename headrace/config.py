"""Settings: one typed object, read once from HEADRACE_* variables, failing fast by name."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from headrace.errors import InputError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HEADRACE_", extra="ignore")

    database_url: str = Field(
        "sqlite:///.headrace/headrace.db",
        description="sqlite:///relative.db, sqlite:////absolute.db or postgresql://user@host/db",
    )
    read_database_url: str | None = Field(
        None,
        description="postgresql://...: another database for the read models (default: the "
        "main one's)",
    )
    bus: str = Field(
        "memory://", description="memory://, redis://host:port/db or kafka://host:port[,host:port]"
    )
    kafka_url: str | None = Field(
        None,
        description="kafka://host:port beside a redis:// bus: the migrating bus (Redis → Kafka)",
    )
    kafka_partitions: int = Field(64, ge=1, description="partitions of each topic it creates")
    kafka_replication: int = Field(1, ge=1, description="replicas of each topic it creates")
    monitor_error_rate: float = Field(
        0.05, gt=0, le=1, description="monitor: roll back when Kafka's error rate exceeds it"
    )
    monitor_latency_factor: float = Field(
        2.0, gt=1, description="monitor: roll back when Kafka's p95 exceeds the baseline × it"
    )
    monitor_latency_floor_ms: float = Field(
        200.0, ge=0, description="monitor: a p95 below this is never too slow (a loaded host)"
    )
    monitor_latency_samples: int = Field(
        200, ge=1, description="monitor: fewer messages in a window and no p95 is judged"
    )
    monitor_kafka_lag_s: float = Field(
        10.0, gt=0, description="monitor: roll back when Kafka's consumer lag exceeds it"
    )
    projection_lag_limit_s: float = Field(
        5.0, gt=0, description="reads leave the read models when their lag stays over it"
    )
    monitor_window_s: float = Field(10.0, gt=0, description="monitor: figures judged over it")
    migration_window_s: float = Field(
        120.0, gt=0, le=540, description="migrate status: the checklist's figures are over it"
    )
    migration_read_grace_s: float = Field(
        15.0, gt=0, le=60, description="a message routed through Kafka is unread once this old"
    )
    shadow_grace_s: float = Field(
        10.0, gt=0, description="shadow: how long a copy may wait for its twin"
    )
    kafka_session_timeout_ms: int = Field(
        6_000, ge=1_000, description="a group member silent this long is presumed dead"
    )
    kafka_fetch_wait_ms: int = Field(
        10,
        ge=1,
        description="how long a Kafka fetch waits for records; the test broker answers only "
        "when it ends, and with S3 storage needs ~100 to read in time",
    )
    bus_prefix: str = Field("headrace:", description="prefix of every stream key on the bus")
    lease_s: float = Field(
        10.0,
        gt=0,
        description="a job held this long without a heartbeat "
        "is redelivered (its worker is presumed dead)",
    )
    heartbeat_s: float = Field(2.0, gt=0, description="how often workers renew their leases")
    tasks: str = Field("", description="comma-separated modules whose functions tasks may name")
    vars: dict[str, Any] = Field(default_factory=dict, description="JSON object: `vars.*`")
    secrets: dict[str, str] = Field(default_factory=dict, description="JSON object: `secrets.*`")
    secrets_file: Path | None = Field(None, description="a JSON file of secrets (merged)")
    worker_concurrency: int = Field(256, ge=1)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL"] = "NORMAL"
    process_name: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="names this process's consumers on the bus; keep it stable per slot",
    )
    redispatch_s: float = Field(
        300.0,
        gt=0,
        description="the relay sends a job again when its attempt was scheduled this long "
        "ago and has not started (the bus may have lost it)",
    )
    local_results: bool = Field(
        True,
        description="a process that is both worker and coordinator applies its own "
        "workers' results directly, not through the bus",
    )
    local_jobs: bool = Field(
        True,
        description="a process that is both worker and coordinator runs the jobs it "
        "schedules on its own worker while that has free slots, not through the bus (their "
        "outbox rows are held by heartbeats; the relay sends them on if the process dies)",
    )
    shutdown_grace_s: float = Field(
        10.0,
        ge=0,
        description="on SIGTERM, how long running "
        "jobs may take to finish before they are handed back",
    )
    crash_at: str | None = Field(
        None,
        description="tests only: NAME[:N] makes this process SIGKILL itself the Nth "
        "time it reaches crash point NAME (after_commit, after_execute, after_handoff)",
    )

    @field_validator("tasks")
    @classmethod
    def _strip(cls, value: str) -> str:
        return ",".join(m.strip() for m in value.split(",") if m.strip())

    @property
    def task_modules(self) -> list[str]:
        return [m for m in self.tasks.split(",") if m]

    def all_secrets(self) -> dict[str, str]:
        merged = dict(self.secrets)
        if self.secrets_file is not None:
            try:
                data = json.loads(self.secrets_file.read_text())
            except (OSError, ValueError) as e:
                raise InputError(
                    "HEADRACE_SECRETS_FILE", f"cannot read {self.secrets_file}: {e}"
                ) from None
            if not isinstance(data, dict):
                raise InputError("HEADRACE_SECRETS_FILE", "must hold a JSON object")
            merged.update({str(k): str(v) for k, v in data.items()})
        return merged


def load_settings(**overrides: Any) -> Settings:
    """Read the environment once; InputError names the variable that is wrong."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        name = "HEADRACE_" + str(err["loc"][0]).upper() if err["loc"] else "HEADRACE_*"
        raise InputError(name, f"{err['msg']} (got {err.get('input')!r})") from None


def over_body_limit(what: str, max_bytes: int) -> str:
    """The one message for a request body (the API's 413) or run inputs (`headrace run`)
    over HEADRACE_MAX_BODY_BYTES."""
    return f"{what} is over the limit of {max_bytes} bytes (HEADRACE_MAX_BODY_BYTES)"
