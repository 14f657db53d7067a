"""Finding runs: the filters of `GET /v1/runs` and `/v1/runs/count`, and their SQL for either
source — the main tables (`runs`) or the read model (`runs_read`). Both tables name the
columns these queries read alike, so one builder serves the two stores and the two sources:
the answers are the same, only the cost differs."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from headrace.errors import InputError
from headrace.events import RunStatus

Source = Literal["primary", "projection"]  # the main tables, or the read models
Sort = Literal["created", "ended"]  # newest first; or most recently ended first (ended only)
Dialect = Literal["sqlite", "postgres"]

_CURSOR = re.compile(r"([ce])([0-9]{1,15})\.([0-9a-f]{32})")  # the API documents this shape
ITEM_COLUMNS = "run_id, workflow_name, workflow_version, status, created_at, ended_at, labels"
STATUSES: tuple[RunStatus, ...] = ("pending", "running", "completed", "failed", "cancelled")


@dataclass(frozen=True)
class RunFilter:
    """Runs having all of these (an empty one: every run)."""

    statuses: tuple[str, ...] = ()  # any of them
    workflow: str | None = None  # `name` or `name@version`
    labels: tuple[tuple[str, str], ...] = ()  # every (key, value)
    created_after: int | None = None  # ms, inclusive
    created_before: int | None = None  # ms, exclusive
    q: str | None = None  # a run id's start, or any label's whole value


@dataclass(frozen=True)
class RunItem:
    """A run as a list shows it."""

    run_id: str
    workflow_tag: str
    status: RunStatus
    created_at_ms: int
    ended_at_ms: int | None
    labels: dict[str, str] = field(default_factory=dict)


def item(row: Any) -> RunItem:
    labels = row[6]
    if isinstance(labels, str):
        labels = json.loads(labels)
    labels = dict(sorted(labels.items()))  # jsonb keeps its own order: the same from either
    return RunItem(row[0], f"{row[1]}@{row[2]}", row[3], row[4], row[5], labels)


def encode_cursor(r: RunItem, sort: Sort) -> str:
    """The place after `r` in a list sorted by `sort`, as `{c|e}ms.run-id-hex` (the sort's
    initial: a cursor is of one sort): so any text of that shape is a place in the list."""
    at = r.ended_at_ms if sort == "ended" else r.created_at_ms
    return f"{sort[0]}{at}.{uuid.UUID(r.run_id).hex}"


def decode_cursor(cursor: str, sort: Sort) -> tuple[int, str]:
    found = _CURSOR.fullmatch(cursor)
    if found is None:
        raise InputError("cursor", "is not a next_cursor this API returned")
    if found[1] != sort[0]:
        made = "ended" if found[1] == "e" else "created"
        raise InputError("cursor", f"is a next_cursor of sort={made}, not of sort={sort}")
    return int(found[2]), str(uuid.UUID(found[3]))


class _Where:
    """The WHERE clause of a filter and its arguments, in a dialect's placeholders."""

    def __init__(self, dialect: Dialect, source: Source) -> None:
        self.dialect, self.source = dialect, source
        self.parts: list[str] = []
        self.args: list[Any] = []

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}" if self.dialect == "postgres" else "?"

    def add(self, f: RunFilter) -> bool:
        """Add the filter's conditions; False when nothing can match."""
        if f.statuses:
            self.parts.append(f"status IN ({', '.join(self.arg(s) for s in f.statuses)})")
        if f.workflow:
            name, _, version = f.workflow.partition("@")
            self.parts.append(f"workflow_name = {self.arg(name)}")
            if version:
                if not version.isdigit():
                    return False
                self.parts.append(f"workflow_version = {self.arg(int(version))}")
        for key, value in f.labels:
            self.parts.append(self._label(key, value))
        if f.created_after is not None:
            self.parts.append(f"created_at >= {self.arg(f.created_after)}")
        if f.created_before is not None:
            self.parts.append(f"created_at < {self.arg(f.created_before)}")
        if f.q:
            self.parts.append(f"({self._prefix(f.q)} OR {self._any_label(f.q)})")
        return True

    def _label(self, key: str, value: str) -> str:
        if self.dialect == "sqlite":
            return f"json_extract(labels, {self.arg('$.' + json.dumps(key))}) = {self.arg(value)}"
        if self.source == "projection":  # jsonb, GIN-indexed
            return f"labels @> {self.arg(json.dumps({key: value}))}::jsonb"
        return f"(labels::jsonb ->> {self.arg(key)}) = {self.arg(value)}"

    def _prefix(self, q: str) -> str:
        if self.dialect == "sqlite":
            return f"substr(run_id, 1, {len(q)}) = {self.arg(q.lower())}"
        if self.source == "projection":  # a pattern index: LIKE with its wildcards escaped
            pattern = re.sub(r"([\\%_])", r"\\\1", q.lower()) + "%"
            return f"run_id LIKE {self.arg(pattern)}"
        return f"starts_with(run_id, {self.arg(q.lower())})"

    def _any_label(self, q: str) -> str:
        if self.dialect == "sqlite":
            return f"EXISTS (SELECT 1 FROM json_each(labels) WHERE value = {self.arg(q)})"
        if self.source == "projection":  # GIN-indexed, kept by the projector
            return f"label_values @> ARRAY[{self.arg(q)}::text]"
        value = self.arg(q)
        return f"EXISTS (SELECT 1 FROM jsonb_each_text(labels::jsonb) l WHERE l.value = {value})"

    def sql(self) -> str:
        return " WHERE " + " AND ".join(self.parts) if self.parts else ""


def _table(source: Source) -> str:
    return "runs_read" if source == "projection" else "runs"


def list_query(
    f: RunFilter,
    sort: Sort,
    cursor: str | None,
    limit: int,
    dialect: Dialect,
    source: Source,
) -> tuple[str, list[Any]] | None:
    """The SELECT of a page of runs (`limit` + 1 rows: one more says there is a next page);
    None when nothing can match."""
    w = _Where(dialect, source)
    if not w.add(f):
        return None
    key = "ended_at" if sort == "ended" else "created_at"
    if sort == "ended":
        w.parts.append("ended_at IS NOT NULL")
    if cursor:
        at, run_id = decode_cursor(cursor, sort)
        w.parts.append(
            f"({key} < {w.arg(at)} OR ({key} = {w.arg(at)} AND run_id < {w.arg(run_id)}))"
        )
    # `q` on Postgres's read models is found by two indexes (an id's start, a label's value),
    # which a plan walking the newest first never uses: for a `q` the planner deems common
    # (an array's containment is estimated at 0.5 %) it walked a million runs to find none:
    # seconds, against 0.1 ms. `+ 0` hides the sort's index: the matches are found, then sorted.
    walk = " + 0" if f.q is not None and dialect == "postgres" and source == "projection" else ""
    order = f" ORDER BY {key}{walk} DESC, run_id DESC LIMIT {w.arg(limit + 1)}"
    return f"SELECT {ITEM_COLUMNS} FROM {_table(source)}{w.sql()}{order}", w.args


def count_query(f: RunFilter, dialect: Dialect, source: Source) -> tuple[str, list[Any]] | None:
    """SELECT status, count: the runs matching `f`, by status. On the read models, a filter
    of statuses and a workflow alone is read from the counters (`run_counts`): no scan."""
    w = _Where(dialect, source)
    if not w.add(f):
        return None
    if source == "projection" and f == RunFilter(f.statuses, f.workflow):
        return f"SELECT status, {_SUM} FROM run_counts{w.sql()} GROUP BY status", w.args
    return f"SELECT status, COUNT(*) FROM {_table(source)}{w.sql()} GROUP BY status", w.args


_SUM = "CAST(SUM(runs) AS BIGINT)"


def page(found: list[RunItem], limit: int, sort: Sort) -> tuple[list[RunItem], str | None]:
    """The first `limit` items and the cursor to the next page, if there is one."""
    more = len(found) > limit
    found = found[:limit]
    return found, encode_cursor(found[-1], sort) if more and found else None


def by_status(rows: list[Any]) -> dict[str, int]:
    """Every status's count (zero for those absent)."""
    counts: dict[str, int] = {s: 0 for s in STATUSES}
    counts.update({r[0]: r[1] for r in rows})
    return counts


@dataclass(frozen=True)
class RunStats:
    """What a dashboard's front page shows."""

    by_workflow: dict[str, dict[str, int]]  # workflow tag -> status -> runs
    nodes_active: int  # nodes with an attempt scheduled, running, waiting or retrying
    ended_since: int  # runs ended since the time asked
    duration_p50_ms: float | None  # of those runs, created to ended
    duration_p95_ms: float | None


_OPEN_NODE = "('scheduled', 'running', 'waiting', 'retrying')"


def stats_queries(dialect: Dialect, source: Source) -> dict[str, str]:
    """The statements of `RunStats` (one argument: `since`, ms, for the durations)."""
    table = _table(source)
    mark = "$1" if dialect == "postgres" else "?"
    nodes = f"SELECT COUNT(*) FROM node_states WHERE status IN {_OPEN_NODE}"
    ended = f"FROM {table} WHERE ended_at >= {mark}"
    if dialect == "postgres":
        durations = (
            "SELECT COUNT(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY ended_at - created_at),"
            f" percentile_cont(0.95) WITHIN GROUP (ORDER BY ended_at - created_at) {ended}"
        )
    else:  # no percentile_cont: the durations, ordered (stats_of interpolates as it does)
        durations = f"SELECT ended_at - created_at {ended} ORDER BY 1"
    by_workflow = (
        f"SELECT workflow_name, workflow_version, status, COUNT(*) FROM {table} "
        "GROUP BY workflow_name, workflow_version, status"
    )
    if source == "projection":  # the counters: no scan
        by_workflow = "SELECT workflow_name, workflow_version, status, runs FROM run_counts "
        by_workflow += "WHERE runs > 0"
        nodes = "SELECT CAST(COALESCE(SUM(active_nodes), 0) AS BIGINT) FROM run_counts"
    return {"by_workflow": by_workflow, "nodes": nodes, "durations": durations}


def by_workflow(rows: list[Any]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for name, version, status, n in rows:
        out.setdefault(f"{name}@{version}", {s: 0 for s in STATUSES})[status] = n
    return dict(sorted(out.items()))


def percentile(ordered: list[int], share: float) -> float | None:
    """Postgres's percentile_cont: linear interpolation between the closest ranks."""
    if not ordered:
        return None
    at = share * (len(ordered) - 1)
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)
