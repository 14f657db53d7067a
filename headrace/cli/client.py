"""`headrace workflows|runs|flags ...`: the REST API from the command line."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from headrace.cli.inputs import parse_inputs
from headrace.cli.output import UNAVAILABLE, detail_of, fail, show
from headrace.errors import InputError
from headrace.spec.labels import parse_label, parse_label_filters

UrlOption = Annotated[
    str, typer.Option("--url", envvar="HEADRACE_URL", help="The API (or HEADRACE_URL).")
]
DEFAULT_URL = "http://127.0.0.1:8080"
LabelOption = Annotated[
    list[str] | None, typer.Option("--label", help="A label as key=value (repeatable).")
]

workflows_app = typer.Typer(help="Register and read workflows.", no_args_is_help=True)
runs_app = typer.Typer(help="Start, read, cancel, signal and watch runs.", no_args_is_help=True)


def _call(method: str, url: str, path: str, **kwargs: Any) -> Any:
    try:
        with httpx.Client(base_url=url, timeout=30, trust_env=False) as client:
            response = client.request(method, path, **kwargs)
    except httpx.HTTPError as e:
        raise fail(f"cannot reach the API at {url}: {e}", UNAVAILABLE) from None
    if response.status_code >= 400:
        raise fail(
            f"{response.status_code}: {detail_of(response)}",
            1 if response.status_code >= 500 else 2,
        )
    try:
        return response.json() if response.content else None
    except ValueError:
        raise fail(f"the API at {url} answered something that is not JSON") from None


@workflows_app.command("register")
def register(file: Path, url: UrlOption = DEFAULT_URL) -> None:
    """Register a workflow file (YAML or JSON)."""
    try:
        content = file.read_bytes()
    except OSError as e:
        raise fail(f"cannot read {file}: {e.strerror}") from None
    show(
        _call(
            "POST",
            url,
            "/v1/workflows",
            content=content,
            headers={"Content-Type": "application/yaml"},
        )
    )


@workflows_app.command("list")
def list_workflows(url: UrlOption = DEFAULT_URL) -> None:
    """List registered workflows."""
    show(_call("GET", url, "/v1/workflows"))


@workflows_app.command("show")
def show_workflow(tag: str, url: UrlOption = DEFAULT_URL) -> None:
    """Show a workflow (`name@version`, or `name` for the newest) with its IR."""
    show(_call("GET", url, f"/v1/workflows/{tag}"))


@runs_app.command("start")
def start(
    tag: str,
    input: Annotated[
        list[str] | None, typer.Option("-i", "--input", help="key=value (JSON)")
    ] = None,
    input_file: Annotated[Path | None, typer.Option("--input-file")] = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
    label: LabelOption = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Start a run of a registered workflow."""
    labels = parse_labels(label or [])
    schemas = (_call("GET", url, f"/v1/workflows/{tag}") or {}).get("ir", {}).get("inputs", {})
    inputs = _inputs(schemas, input or [], input_file)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    body = {"workflow_tag": tag, "inputs": inputs, "labels": labels}
    show(_call("POST", url, "/v1/runs", json=body, headers=headers))


def parse_labels(pairs: list[str]) -> dict[str, str]:
    try:
        labels = [parse_label(pair, "--label") for pair in pairs]
    except InputError as e:
        raise fail(str(e)) from None
    keys = [k for k, _ in labels]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise fail(f"--label: the key {', '.join(map(repr, twice))} is given twice")
    return dict(labels)


def _inputs(schemas: dict[str, Any], pairs: list[str], input_file: Path | None) -> dict[str, Any]:
    try:
        return parse_inputs(schemas, pairs, input_file)
    except InputError as e:
        raise fail(str(e)) from None


@runs_app.command("get")
def get(run_id: str, url: UrlOption = DEFAULT_URL) -> None:
    """Show a run: status, nodes, outputs."""
    show(_call("GET", url, f"/v1/runs/{run_id}"))


StatusOption = Annotated[
    list[str] | None, typer.Option("--status", help="in this status (repeat: any of them)")
]
AfterOption = Annotated[
    str | None, typer.Option("--created-after", help="created at or after (RFC 3339)")
]
BeforeOption = Annotated[
    str | None, typer.Option("--created-before", help="created before (RFC 3339)")
]
QueryOption = Annotated[
    str | None, typer.Option("--query", "-q", help="a run id's start, or a label's value")
]
StrongOption = Annotated[
    bool, typer.Option("--strong", help="read the main tables, not the read models")
]


def _filters(
    status: list[str] | None,
    workflow: str | None,
    label: list[str] | None,
    created_after: str | None,
    created_before: str | None,
    query: str | None,
    strong: bool,
) -> dict[str, Any]:
    """The query parameters of `runs list` and `runs count` (the API checks them)."""
    try:
        parse_label_filters(label or [], "--label")
    except InputError as e:
        raise fail(str(e)) from None
    given = {
        "status": status or None,
        "workflow": workflow,
        "label": label or None,
        "created_after": created_after,
        "created_before": created_before,
        "q": query,
        "consistency": "strong" if strong else None,
    }
    return {k: v for k, v in given.items() if v is not None}


@runs_app.command("list")
def list_runs(
    status: StatusOption = None,
    workflow: Annotated[str | None, typer.Option("--workflow")] = None,
    label: LabelOption = None,
    created_after: AfterOption = None,
    created_before: BeforeOption = None,
    query: QueryOption = None,
    sort: Annotated[
        str, typer.Option("--sort", help="created (newest first) or ended (last ended first)")
    ] = "created",
    limit: Annotated[int, typer.Option("--limit")] = 50,
    cursor: Annotated[str | None, typer.Option("--cursor")] = None,
    strong: StrongOption = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """List runs, newest first, with every filter given (`--label k=v`: that label)."""
    params = _filters(status, workflow, label, created_after, created_before, query, strong)
    params |= {"sort": sort, "limit": limit} | ({"cursor": cursor} if cursor else {})
    show(_call("GET", url, "/v1/runs", params=params))


@runs_app.command("count")
def count_runs(
    status: StatusOption = None,
    workflow: Annotated[str | None, typer.Option("--workflow")] = None,
    label: LabelOption = None,
    created_after: AfterOption = None,
    created_before: BeforeOption = None,
    query: QueryOption = None,
    strong: StrongOption = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """How many runs match the filters (those of `runs list`), by status."""
    params = _filters(status, workflow, label, created_after, created_before, query, strong)
    show(_call("GET", url, "/v1/runs/count", params=params))


@runs_app.command("stats")
def run_stats(strong: StrongOption = False, url: UrlOption = DEFAULT_URL) -> None:
    """Runs by status and workflow, nodes active, the last hour's run durations (p50, p95)."""
    params = {"consistency": "strong"} if strong else {}
    show(_call("GET", url, "/v1/stats", params=params))


@runs_app.command("cancel")
def cancel(run_id: str, url: UrlOption = DEFAULT_URL) -> None:
    """Cancel a run (again is fine)."""
    show(_call("POST", url, f"/v1/runs/{run_id}/cancel"))


@runs_app.command("signal")
def signal(
    run_id: str,
    name: str,
    payload: Annotated[str | None, typer.Option("--payload", help="JSON")] = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Send a signal to a run (e.g. `approval`)."""
    try:
        value = json.loads(payload) if payload is not None else None
    except ValueError as e:
        raise fail(f"--payload: not JSON: {e}") from None
    show(_call("POST", url, f"/v1/runs/{run_id}/signals/{name}", json={"payload": value}))


@runs_app.command("events")
def events(run_id: str, after: int = 0, url: UrlOption = DEFAULT_URL) -> None:
    """Print a run's events so far as JSON lines."""
    _stream(url, run_id, after, follow=False)


@runs_app.command("watch")
def watch(
    run_id: str,
    after: Annotated[int, typer.Option("--after", help="JSON lines after this seq.")] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON lines, even on a terminal.")
    ] = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Follow a run live until it ends: its node table on a terminal, its events as JSON
    lines with --json or when piped; exit 0 if it completed, else 1."""
    from headrace.cli.progress import on_terminal

    if as_json or not on_terminal():
        final = _stream(url, run_id, after, follow=True)
        raise typer.Exit(0 if final == "RunCompleted" else 1)
    from rich.console import Console

    from headrace.cli.watch import watch_table
    from headrace.services import loop

    console = Console()
    view = loop.run(watch_table(url, run_id, console))
    if view.get("error"):
        console.print(f"error: {view['error']['message']}", highlight=False)
    raise typer.Exit(0 if view["status"] == "completed" else 1)


def _stream(url: str, run_id: str, after: int, *, follow: bool) -> str | None:
    last: str | None = None
    try:
        with (
            httpx.Client(base_url=url, timeout=None, trust_env=False) as client,
            client.stream("GET", f"/v1/runs/{run_id}/events", params={"after": after}) as r,
        ):
            if r.status_code >= 400:
                r.read()
                raise fail(f"{r.status_code}: {detail_of(r)}")
            kind = ""
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    print(json.dumps({"type": kind, **json.loads(line[6:])}), flush=True)
                    last = kind
                elif line.startswith(":") and not follow:
                    break
    except httpx.HTTPError as e:
        raise fail(f"cannot reach the API at {url}: {e}", UNAVAILABLE) from None
    return last


flags_app = typer.Typer(
    help="Feature flags of the migration path: read, set (audited), history.",
    no_args_is_help=True,
)


@flags_app.command("get")
def get_flags(
    name: Annotated[str | None, typer.Argument(help="One flag; all when omitted.")] = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Show the flags' values (where each comes from: the store, or its initial value)."""
    show(_call("GET", url, f"/v1/flags/{name}" if name else "/v1/flags"))


@flags_app.command("set")
def set_flag(
    name: str,
    value: Annotated[str, typer.Argument(help="true/false, or 0-100 for KAFKA_TRAFFIC_PERCENT.")],
    why: Annotated[str, typer.Option("--why", help="Why: kept in the audit record.")],
    who: Annotated[str, typer.Option("--who", envvar="USER", help="Who (default: $USER).")] = "cli",
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Set a flag; every process applies it within about a second."""
    body = {"value": value, "why": why, "who": who}
    show(_call("PUT", url, f"/v1/flags/{name}", json=body))


@flags_app.command("history")
def flag_history(
    name: Annotated[str | None, typer.Argument(help="One flag; all when omitted.")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 50,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Changes, newest first: who, when, old, new, why."""
    params: dict[str, Any] = {"limit": limit} | ({"name": name} if name else {})
    show(_call("GET", url, "/v1/flags/history", params=params))


migrate_app = typer.Typer(
    help="The Redis → Kafka migration: where it stands, one step forward, roll back.",
    no_args_is_help=True,
)
WhyOption = Annotated[str, typer.Option("--why", help="Why: kept in the flags' audit.")]
WhoOption = Annotated[str, typer.Option("--who", envvar="USER", help="Who (default: $USER).")]


@migrate_app.command("status")
def migrate_status(
    url: UrlOption = DEFAULT_URL,
    as_json: Annotated[bool, typer.Option("--json", help="The API's answer as JSON.")] = False,
) -> None:
    """The current step, and its checklist from the cluster's live figures (pass/fail)."""
    status = _call("GET", url, "/v1/migration")
    if as_json:
        show(status)
    else:
        print_status(status)


def print_status(status: dict[str, Any]) -> None:
    last = status.get("last_rollback")
    if last:
        when = datetime.fromtimestamp(last["at_ms"] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(f"last monitor rollback: {when} UTC, {last['from']} -> {last['to']}: {last['why']}")
    print(f"step: {status['step']} ({status['what']}); next: {status['next'] or '-'}")
    print("flags: " + ", ".join(f"{k}={v}" for k, v in status["flags"].items()))
    base = status["baseline"]
    taken = "none yet"
    if base:
        when = datetime.fromtimestamp(base["at_ms"] / 1000, UTC).strftime("%H:%M:%S")
        taken = f"{base['p95_ms']:g} ms ({base['samples']} messages, {when} UTC, {base['step']})"
    print(f"pinned runs: {status['pins'] or 'none'}; Redis p95 baseline: {taken}")
    print(f"checks over the last {status['window_s']:g} s:")
    for c in status["checks"]:
        mark = {True: "pass", False: "FAIL", None: "n/a "}[c["ok"]]
        value = "-" if c["value"] is None else f"{c['value']:.4g}"
        print(f"  [{mark}] {c['name']} = {value} (want {c['limit']}): {c['detail']}")


FromOption = Annotated[
    str | None,
    typer.Option(
        "--from",
        help="The step you mean to leave (as `migrate status` showed it): refused if the "
        "migration is elsewhere by then. Default: the step it is at now.",
    ),
]


@migrate_app.command("advance")
def migrate_advance(
    why: WhyOption,
    who: WhoOption = "cli",
    force: Annotated[bool, typer.Option("--force", help="Even though checks fail.")] = False,
    from_: FromOption = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Show the checks, then move one step forward (refused while a check fails, or when
    the migration is no longer at --from)."""
    status = _call("GET", url, "/v1/migration")
    print_status(status)
    body = {"from": from_ or status["step"], "why": why, "who": who, "force": force}
    moved = _call("POST", url, "/v1/migration/advance", json=body)
    print(f"moved {moved['from']} -> {moved['to']}")


@migrate_app.command("rollback")
def migrate_rollback(
    why: WhyOption,
    who: WhoOption = "cli",
    to: Annotated[str | None, typer.Option("--to", help="The step to go back to.")] = None,
    from_: FromOption = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Show the checks, then move one step back (or back --to a step; refused when the
    migration is no longer at --from). Going back to dual-write or phase-1 re-pins the
    unfinished Kafka runs to Redis and republishes their jobs in flight."""
    status = _call("GET", url, "/v1/migration")
    print_status(status)
    body = {"from": from_ or status["step"], "why": why, "who": who, "to": to}
    moved = _call("POST", url, "/v1/migration/rollback", json=body)
    print(
        f"moved {moved['from']} -> {moved['to']}: {moved['repinned_runs']} runs re-pinned, "
        f"{moved['republished_jobs']} jobs republished"
    )
