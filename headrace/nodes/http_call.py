"""One HTTP call of an ``http`` node: the request built from its declaration, sent on httpx
within a time bound, and the response read and parsed (the executor is `nodes/http.py`).

`call_http` performs a single attempt; retries, backoff and secret scrubbing of outputs are
the worker's job. Errors surface as `NodeError` with a `type` the retry policy can act on:
``timeout``, ``connection``, ``http_status``, ``bad_response``, ``response_too_large`` and
``bad_request``. Error messages never carry request header or auth values.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
from collections.abc import Iterable
from typing import Any

import httpx
import msgspec

from headrace.errors import NodeError

__all__ = ["HttpRequest", "call_http", "redact"]

_EXCERPT_CHARS = 500
# Enough bytes for 500 characters of UTF-8; error bodies are only read this far.
_EXCERPT_BYTES = 4 * _EXCERPT_CHARS
_RETRYABLE_4XX = frozenset({408, 425, 429})
_TEXTUAL_APPLICATION = frozenset(
    {
        "application/xml",
        "application/javascript",
        "application/ecmascript",
        "application/x-www-form-urlencoded",
        "application/yaml",
        "application/x-yaml",
        "application/csv",
        "application/graphql",
    }
)


class HttpRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    """One HTTP call as declared by an ``http`` node (after input templating).

    `json` and `body` are exclusive; `auth` is ``{"bearer": token}`` or
    ``{"username": u, "password": p}``; `expect_status` of None accepts any 2xx.
    """

    method: str
    url: str
    headers: dict[str, str] = {}
    query: dict[str, str | int | float | bool] = {}
    json: Any = msgspec.UNSET
    body: str | None = None
    auth: dict[str, str] | None = None
    expect_status: list[int] | None = None
    max_response_bytes: int = 10_485_760


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every non-empty secret value occurring in `text` with ``***``."""
    # Longest first, so a secret containing a shorter one is scrubbed whole.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


async def call_http(
    client: httpx.AsyncClient, req: HttpRequest, *, idempotency_key: str, timeout_s: float
) -> dict[str, Any]:
    """Perform one attempt of `req`, bounded as a whole by `timeout_s` seconds.

    Returns ``{"status": int, "headers": {lower-case name: value}, "body": parsed}`` where the
    body is parsed JSON, a string, or None when empty. Raises `NodeError` on failure.
    """
    secrets = _secrets_of(req)
    where = f"{req.method.upper()} {_safe_url(req.url)}"
    request = _build_request(client, req, idempotency_key, timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            return await _send(client, request, req, where, secrets)
    except (TimeoutError, httpx.TimeoutException):
        msg = f"{where} timed out after {timeout_s}s"
        raise NodeError(msg, type="timeout", retryable=True) from None
    except httpx.UnsupportedProtocol as exc:
        raise _error("bad_request", where, exc, secrets, retryable=False) from None
    except httpx.LocalProtocolError:
        # Its text quotes the offending header value in escaped form, which redact() misses.
        msg = f"{where}: request rejected locally (illegal method, header name or value)"
        raise NodeError(msg, type="bad_request", retryable=False) from None
    except httpx.DecodingError as exc:
        raise _error("bad_response", where, exc, secrets, retryable=False) from None
    except httpx.RequestError as exc:
        raise _error("connection", where, exc, secrets, retryable=True) from None


def _build_request(
    client: httpx.AsyncClient, req: HttpRequest, idempotency_key: str, timeout_s: float
) -> httpx.Request:
    """Turn `req` into an httpx request; invalid declarations raise ``bad_request``."""
    headers = dict(req.headers)
    if not any(name.lower() == "idempotency-key" for name in headers):
        headers["Idempotency-Key"] = idempotency_key
    content = _encode_body(req, headers)
    if req.auth is not None:
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        headers["Authorization"] = _authorization(req.auth)
    try:
        url = httpx.URL(req.url)
        # httpx's params= replaces the URL's own query string; merging keeps it.
        url = url.copy_merge_params(req.query) if req.query else url
        return client.build_request(
            req.method.upper(), url, headers=headers, content=content, timeout=timeout_s
        )
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise NodeError(f"invalid url: {exc}", type="bad_request", retryable=False) from None
    except UnicodeEncodeError:
        msg = "header names and values must be ASCII"
        raise NodeError(msg, type="bad_request", retryable=False) from None


def _encode_body(req: HttpRequest, headers: dict[str, str]) -> bytes | None:
    """Encode the JSON or raw body, defaulting Content-Type for JSON."""
    has_json = req.json is not msgspec.UNSET
    if has_json and req.body is not None:
        raise NodeError("json and body are exclusive", type="bad_request", retryable=False)
    if req.body is not None:
        return req.body.encode("utf-8")
    if not has_json:
        return None
    try:
        content = msgspec.json.encode(req.json)
    except (TypeError, msgspec.EncodeError) as exc:
        msg = f"json body is not encodable: {exc}"
        raise NodeError(msg, type="bad_request", retryable=False) from None
    if not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = "application/json"
    return content


def _authorization(auth: dict[str, str]) -> str:
    """The Authorization header value for a bearer or basic `auth` declaration."""
    if set(auth) == {"bearer"}:
        return f"Bearer {auth['bearer']}"
    if set(auth) == {"username", "password"}:
        return f"Basic {_basic_token(auth['username'], auth['password'])}"
    # Only key names here: the values are secrets.
    keys = sorted(auth)
    raise NodeError(
        f"auth must be {{bearer}} or {{username, password}}, got keys {keys}",
        type="bad_request",
        retryable=False,
    )


def _basic_token(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _secrets_of(req: HttpRequest) -> list[str]:
    """Values to scrub from error text: every header value and every auth value."""
    secrets = list(req.headers.values())
    if req.auth:
        secrets.extend(req.auth.values())
        if "username" in req.auth and "password" in req.auth:
            # A server echoing the Authorization header would leak the encoded form.
            secrets.append(_basic_token(req.auth["username"], req.auth["password"]))
    return secrets


async def _send(
    client: httpx.AsyncClient,
    request: httpx.Request,
    req: HttpRequest,
    where: str,
    secrets: list[str],
) -> dict[str, Any]:
    """Send `request`, read the body within limits and check the status."""
    response = await client.send(request, stream=True)
    try:
        status = response.status_code
        if not _accepted(status, req.expect_status):
            data, _ = await _read_capped(response, _EXCERPT_BYTES)
            raise _status_error(status, data, where, secrets)
        limit = req.max_response_bytes
        if _declared_length(response) > limit:
            raise _too_large(where, limit)
        data, overflowed = await _read_capped(response, limit)
        if overflowed:
            raise _too_large(where, limit)
        headers = {name.lower(): value for name, value in response.headers.items()}
        body = _parse_body(data, response.headers.get("content-type", ""), where)
        return {"status": status, "headers": headers, "body": body}
    finally:
        await response.aclose()


def _accepted(status: int, expect: list[int] | None) -> bool:
    return 200 <= status < 300 if expect is None else status in expect


def _declared_length(response: httpx.Response) -> int:
    """Content-Length when it bounds the decoded body (no content-encoding), else -1."""
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        return -1
    try:
        return int(response.headers.get("content-length", "-1"))
    except ValueError:
        return -1


async def _read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """Read at most `limit` decoded bytes; the flag says whether more were on the way."""
    buf = bytearray()
    async for chunk in response.aiter_bytes():
        buf += chunk
        if len(buf) > limit:
            # Stop reading: closing the response drops the connection.
            return bytes(buf[:limit]), True
    return bytes(buf), False


def _parse_body(data: bytes, content_type: str, where: str) -> Any:
    """Parse by media type: JSON for ``*/json`` and ``+json``, a string otherwise."""
    if not data:
        return None
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media == "application/json" or media.endswith("+json"):
        try:
            return msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            msg = f"{where} returned invalid JSON: {exc}"
            raise NodeError(msg, type="bad_response", retryable=False) from None
    if media.startswith("text/") or media in _TEXTUAL_APPLICATION or media.endswith("+xml"):
        return data.decode(_charset(params), errors="replace")
    return data.decode("utf-8", errors="replace")


def _charset(params: str) -> str:
    """The declared charset if Python knows it, else utf-8."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"')
            try:
                return codecs.lookup(charset).name
            except LookupError:
                break
    return "utf-8"


def _status_error(status: int, data: bytes, where: str, secrets: list[str]) -> NodeError:
    excerpt = redact(data.decode("utf-8", errors="replace")[:_EXCERPT_CHARS], secrets)
    retryable = status >= 500 or status in _RETRYABLE_4XX
    return NodeError(
        f"{where} returned {status}: {excerpt}", type="http_status", retryable=retryable
    )


def _too_large(where: str, limit: int) -> NodeError:
    msg = f"{where} response exceeds max_response_bytes ({limit})"
    return NodeError(msg, type="response_too_large", retryable=False)


def _error(
    kind: str, where: str, exc: Exception, secrets: list[str], *, retryable: bool
) -> NodeError:
    # httpx texts can quote header values (e.g. an illegal header value), hence redact.
    detail = redact(f"{exc.__class__.__name__}: {exc}", secrets)
    return NodeError(f"{where}: {detail}", type=kind, retryable=retryable)


def _safe_url(url: str) -> str:
    """`url` without userinfo, query or fragment, which may carry credentials."""
    try:
        return str(httpx.URL(url).copy_with(query=None, fragment=None, userinfo=b""))
    except (httpx.InvalidURL, TypeError, ValueError):
        return "<invalid url>"
