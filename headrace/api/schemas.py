"""The shapes of the REST API's requests and answers, for validation (requests) and for the
OpenAPI document (answers: `views` builds them as plain dicts; these models describe them,
closed, so a drift between the two fails the schema test)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue
from pydantic.config import JsonDict

from headrace.events import NodeStatus, RunStatus
from headrace.flags import FLAGS
from headrace.migration.steps import CUSTOM, STEPS

CURSOR_PATTERN = r"^[ce][0-9]{1,15}\.[0-9a-f]{32}$"  # store/listing.py: the sort, its key, run id
SIGNAL_NAME = r"^[A-Za-z_][A-Za-z0-9_-]{0,99}$"
WORKFLOW_NAME = r"^[a-z0-9][a-z0-9_.-]{0,99}$"
FLAG_NAMES: JsonDict = {"enum": list[JsonValue](FLAGS)}
STEP_NAMES: JsonDict = {"enum": [s.name for s in STEPS]}
FROM_STEPS: JsonDict = {"enum": [*(s.name for s in STEPS), CUSTOM]}
FROM_DOC = (
    "the step this change leaves (GET /v1/migration's `step`): when the migration is elsewhere "
    "(another operator or the monitor moved it), 409 and nothing changes"
)
FlagValue = bool | int


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests -------------------------------------------------------------------------------


class StartRun(_Closed):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"workflow_tag": "greet", "inputs": {"name": "Ada"}}]},
    )
    workflow_tag: str = Field(
        min_length=1, max_length=200, description="`name@version`, or `name` for the latest"
    )
    inputs: dict[str, Any] = Field(
        default_factory=dict, description="checked against the workflow's input schemas"
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="`key: value` strings to find the run by (`GET /v1/runs?label=key=value`):"
        " at most 32; a key is 1-63 letters, digits, `_`, `.` or `-`; a value at most 256"
        " characters",
    )


class SetFlag(_Closed):
    value: Any = Field(  # checked by the flag's kind, which says what it takes
        description="true/false (or on/off) for a bool flag, 0-100 for KAFKA_TRAFFIC_PERCENT",
        json_schema_extra={"anyOf": [{"type": "boolean"}, {"type": "integer"}, {"type": "string"}]},
    )
    why: str = Field(min_length=1, max_length=500)
    who: str = Field("api", min_length=1, max_length=100)


class MigrationAdvance(_Closed):
    from_: str = Field(alias="from", description=FROM_DOC, json_schema_extra=FROM_STEPS)
    why: str = Field(min_length=1, max_length=500)
    who: str = Field("api", min_length=1, max_length=100)
    force: bool = Field(False, description="advance even though checks fail")


class MigrationRollback(_Closed):
    from_: str = Field(alias="from", description=FROM_DOC, json_schema_extra=FROM_STEPS)
    why: str = Field(min_length=1, max_length=500)
    who: str = Field("api", min_length=1, max_length=100)
    to: str | None = Field(
        None,
        description="the step to go back to (default: one back)",
        json_schema_extra={"anyOf": [STEP_NAMES, {"type": "null"}]},
    )


class SignalBody(_Closed):
    payload: Any = Field(None, description="what the `wait` node outputs")


class WorkflowSpec(_Closed):
    """A workflow (README: the workflow format), as YAML or JSON. The server checks more than
    this shape: references between nodes, expressions, cycles."""

    name: str = Field(pattern=WORKFLOW_NAME)
    version: int = Field(1, ge=1)
    description: Any = None
    inputs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="input name -> JSON Schema"
    )
    defaults: dict[str, Any] = Field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = Field(
        min_length=1, description="node id -> node (task, http, agent, wait; map)"
    )
    outputs: dict[str, Any] = Field(default_factory=dict)


# --- answers --------------------------------------------------------------------------------


class Problem(BaseModel):
    """RFC 9457 problem details: every error the API answers."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(description="about:blank: the status says what kind of problem")
    title: str
    status: int
    detail: str = Field(description="what is wrong, for a person")
    path: str | None = Field(None, description="the field at fault, when there is one")


class Health(_Closed):
    status: Literal["ok"]


class Workflow(_Closed):
    name: str
    version: int
    tag: str = Field(description="name@version")
    ir_hash: str
    created_at: str = Field(json_schema_extra={"format": "date-time"})


class WorkflowDetail(Workflow):
    ir: dict[str, Any] = Field(description="the compiled workflow runs execute")


class WorkflowList(_Closed):
    items: list[Workflow]


class ErrorInfo(_Closed):
    type: str
    message: str
    retryable: bool


class ChildCounts(BaseModel):
    """`total`, then how many children are in each status (statuses with none left out)."""

    model_config = ConfigDict(extra="allow")
    total: int


class Node(_Closed):
    status: NodeStatus
    attempts: int
    output: Any = Field(None, description="absent when the node failed (then `error`)")
    error: ErrorInfo | None = Field(None, description="only when the node failed")
    children: ChildCounts | None = Field(None, description="map nodes only")


class Child(Node):
    node_id: str = Field(description="`map[index]`")
    started_at: str | None = Field(json_schema_extra={"format": "date-time"})
    ended_at: str | None = Field(json_schema_extra={"format": "date-time"})


class NodeAnswer(Node):
    node_id: str


class MapPage(_Closed):
    """A map node and one page of its children; the map's `output` (every child's output
    in order) is left out: page through `items`, or read it whole from the run."""

    node_id: str
    status: NodeStatus
    attempts: int
    error: ErrorInfo | None = None
    children: ChildCounts
    items: list[Child]
    next_offset: int | None = Field(description="the `offset` of the next page; null at the end")


class RunStarted(_Closed):
    run_id: str = Field(json_schema_extra={"format": "uuid"})
    status: RunStatus


class Run(_Closed):
    run_id: str = Field(json_schema_extra={"format": "uuid"})
    status: RunStatus
    outputs: dict[str, Any] | None
    nodes: dict[str, Node]
    error: ErrorInfo | None
    workflow_tag: str
    inputs: dict[str, Any]
    created_at: str = Field(json_schema_extra={"format": "date-time"})
    started_at: str | None = Field(json_schema_extra={"format": "date-time"})
    ended_at: str | None = Field(json_schema_extra={"format": "date-time"})
    cost_cents: int
    labels: dict[str, str]
    pin: Literal["redis", "kafka"] | None = Field(
        description="the bus the run is pinned to (Redis → Kafka migration); null: none"
    )


class RunItem(_Closed):
    run_id: str = Field(json_schema_extra={"format": "uuid"})
    workflow_tag: str
    status: RunStatus
    created_at: str = Field(json_schema_extra={"format": "date-time"})
    ended_at: str | None = Field(json_schema_extra={"format": "date-time"})
    labels: dict[str, str]


class RunPage(_Closed):
    items: list[RunItem]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


class Projector(_Closed):
    process: str
    lag_s: float = Field(description="its last batch's newest event: committed to applied")
    applied: int = Field(description="events it applied since it started")
    reported_at_ms: int
    live: bool = Field(description="reported in the last 3 s")


class ProjectionStatus(_Closed):
    flags: dict[str, bool]
    lag_s: float | None = Field(description="the largest lag of the live projectors")
    limit_s: float = Field(description="reads leave the read models when the lag stays over it")
    projectors: list[Projector]
    runs: dict[str, int] = Field(description="`main`: runs in the main tables; `projected`")
    last_rollback: dict[str, Any] | None


class RunTotals(_Closed):
    total: int
    by_status: dict[RunStatus, int]
    by_workflow: dict[str, dict[RunStatus, int]] = Field(description="by `name@version`")


class LastHour(_Closed):
    ended: int = Field(description="runs that ended in the last hour")
    duration_p50_ms: float | None = Field(description="theirs, created to ended")
    duration_p95_ms: float | None


class Stats(_Closed):
    runs: RunTotals
    nodes_active: int = Field(description="nodes scheduled, running, waiting or retrying")
    last_hour: LastHour


class RunCount(_Closed):
    total: int
    by_status: dict[RunStatus, int] = Field(description="every status, zeros included")


class SignalAccepted(_Closed):
    run_id: str = Field(json_schema_extra={"format": "uuid"})
    signal: str
    accepted: Literal[True]


class Flag(_Closed):
    name: str = Field(json_schema_extra=FLAG_NAMES)
    value: FlagValue
    source: Literal["store", "initial"]
    kind: Literal["bool", "percent"]
    default: FlagValue
    help: str


class FlagChange(_Closed):
    name: str = Field(json_schema_extra=FLAG_NAMES)
    old: FlagValue | None = Field(description="null: not set in the store before")
    new: FlagValue
    who: str
    why: str
    at: str = Field(json_schema_extra={"format": "date-time"})


class FlagSet(Flag):
    change: FlagChange


class FlagList(_Closed):
    items: list[Flag]


class FlagHistory(_Closed):
    items: list[FlagChange]


class Check(_Closed):
    name: str
    value: float | None = Field(description="null: no traffic to judge by")
    limit: str
    ok: bool | None
    trigger: bool = Field(description="a rollback trigger of the monitor")
    detail: str = Field(description="what the value is made of (numerator, denominator, window)")


class Baseline(_Closed):
    p95_ms: float
    samples: int
    at_ms: int = Field(description="when it was taken, ms since the epoch")
    step: str = Field(description="the step it was taken for (at its advance)")


class MigrationStatus(_Closed):
    step: str = Field(description="a step name, or `custom` for flags set by hand")
    what: str
    next: str | None
    flags: dict[str, FlagValue]
    baseline: Baseline | None = Field(description="Redis's p95, taken at each advance")
    window_s: float = Field(description="the checks judge the figures of this many seconds")
    read_grace_s: float = Field(description="a message routed through Kafka counts as unread "
                                "once this old and not acted on")  # fmt: skip
    last_rollback: dict[str, Any] | None = Field(
        description="the monitor's last rollback: from, to, why, fired (the checks), at_ms"
    )
    pins: dict[str, int] = Field(description="runs pinned to each bus")
    checks: list[Check]
    steps: list[str] = Field(json_schema_extra={"items": STEP_NAMES})


class MigrationMoved(_Closed):
    from_: str = Field(alias="from")
    to: str = Field(json_schema_extra=STEP_NAMES)
    failing_checks: list[str] | None = Field(None, description="advance only")
    repinned_runs: int | None = Field(None, description="rollback only")
    republished_jobs: int | None = Field(None, description="rollback only")
    status: MigrationStatus
