"""`http` nodes on the worker: resolve secrets, make one call (`http_call.py`), check the
output."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import httpx
import msgspec

from headrace.errors import NodeError
from headrace.events import Job
from headrace.nodes.base import Outcome, check_output
from headrace.nodes.http_call import HttpRequest, call_http
from headrace.spec import resolve_secrets


class HttpExecutor:
    def __init__(self, client: httpx.AsyncClient, secrets: Mapping[str, str]) -> None:
        self.client = client
        self.secrets = secrets

    async def run(self, job: Job) -> Outcome:
        request = self.request(job.config)
        output = await call_http(
            self.client,
            request,
            idempotency_key=job.idempotency_key,
            timeout_s=job.timeout_ms / 1000,
        )
        check_output(output, "the HTTP call")
        return Outcome(output)

    def secret_forms(self, job: Job) -> list[str]:
        """What a server may echo of this job's secrets beyond their values: the base64 of
        the basic-auth pair (an echoed Authorization header)."""
        auth = job.config.get("auth")
        if not isinstance(auth, dict):
            return []
        try:
            plain = resolve_secrets(auth.get("basic", auth), self.secrets)
        except KeyError:
            return []
        if not isinstance(plain, dict) or "username" not in plain or "password" not in plain:
            return []
        pair = f"{plain['username']}:{plain['password']}".encode()
        return [base64.b64encode(pair).decode()]

    def request(self, config: Mapping[str, Any]) -> HttpRequest:
        try:
            fields = resolve_secrets(dict(config), self.secrets)
        except KeyError as e:
            raise NodeError(
                f"secret {e.args[0]!r} is not set in this deployment",
                type="missing_secret",
                retryable=False,
            ) from None
        if fields.get("json") is None:
            fields.pop("json", None)
        if fields.get("auth") is not None:
            fields["auth"] = _auth(fields["auth"])
        fields = {k: v for k, v in fields.items() if v is not None}
        fields["headers"] = {str(k): _text(v) for k, v in fields.get("headers", {}).items()}
        try:
            return msgspec.convert(fields, HttpRequest)
        except msgspec.ValidationError as e:
            raise NodeError(f"http request: {e}", type="bad_request", retryable=False) from None


def _auth(auth: Mapping[str, Any]) -> dict[str, str]:
    if "bearer" in auth:
        return {"bearer": _text(auth["bearer"])}
    if "basic" in auth and isinstance(auth["basic"], Mapping):
        auth = auth["basic"]
    return {str(k): _text(v) for k, v in auth.items()}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()
