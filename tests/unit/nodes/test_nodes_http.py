"""Tests for one call of an ``http`` node (`nodes/http_call.py`) against a real HTTP server on
127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from headrace.errors import NodeError
from headrace.nodes.http_call import HttpRequest, call_http, redact

TOKEN = "s3cret-bearer-token"
USER, PASSWORD = "alice", "pa55-w0rd"


async def echo(request: Request) -> Response:
    return JSONResponse(
        {
            "method": request.method,
            "query": dict(request.query_params),
            "headers": dict(request.headers),
            "body": (await request.body()).decode(),
        }
    )


async def status(request: Request) -> Response:
    # Echoes the Authorization header, as careless servers do, to check the excerpt is scrubbed.
    auth = request.headers.get("authorization", "")
    text = f"failure; auth was {auth}; " + "x" * 2000
    return PlainTextResponse(text, status_code=int(request.path_params["code"]))


async def big_stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(1000):
            yield b"y" * 1024

    return StreamingResponse(chunks(), media_type="text/plain")


async def drip(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"."
            await asyncio.sleep(0.1)

    return StreamingResponse(chunks(), media_type="text/plain")


def fixed(content: bytes, media_type: str) -> Route:
    async def handler(request: Request) -> Response:
        return Response(content, media_type=media_type)

    return Route(f"/{media_type.replace('/', '_')}", handler)


APP = Starlette(
    routes=[
        Route("/echo", echo, methods=["GET", "POST", "PUT", "DELETE"]),
        Route("/status/{code:int}", status, methods=["GET", "POST"]),
        Route("/big-stream", big_stream),
        Route("/drip", drip),
        Route("/big", lambda request: Response(b"x" * 100_000, media_type="text/plain")),
        Route("/text", lambda request: PlainTextResponse("héllo")),
        Route(
            "/latin1",
            lambda request: Response(
                "café".encode("latin-1"), media_type="text/plain; charset=iso-8859-1"
            ),
        ),
        Route("/empty", lambda request: Response(b"", media_type="application/json")),
        Route("/bad-json", lambda request: Response(b"{nope", media_type="application/json")),
        fixed(b'{"a": [1, 2]}', "application/vnd.api+json"),
        fixed(b"<a>1</a>", "application/xml"),
        fixed(b"\xffab", "application/octet-stream"),
    ]
)


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    sock = _bound_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(APP, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=5)
    sock.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # trust_env=False: a proxy from the environment must not intercept 127.0.0.1.
    async with httpx.AsyncClient(trust_env=False) as c:
        yield c


async def call(
    client: httpx.AsyncClient, req: HttpRequest, timeout_s: float = 5.0, key: str = "key-1"
) -> dict[str, object]:
    return await call_http(client, req, idempotency_key=key, timeout_s=timeout_s)


async def fail(client: httpx.AsyncClient, req: HttpRequest, timeout_s: float = 5.0) -> NodeError:
    with pytest.raises(NodeError) as info:
        await call(client, req, timeout_s)
    return info.value


async def test_json_post_round_trip(client: httpx.AsyncClient, base_url: str) -> None:
    req = HttpRequest("post", f"{base_url}/echo", json={"n": 1, "tags": ["a", "b"], "x": None})
    out = await call(client, req)
    assert out["status"] == 200
    body = out["body"]
    assert isinstance(body, dict)
    assert body["method"] == "POST"
    assert body["headers"]["content-type"] == "application/json"
    assert httpx.Response(200, content=body["body"]).json() == {
        "n": 1,
        "tags": ["a", "b"],
        "x": None,
    }
    headers = out["headers"]
    assert isinstance(headers, dict)
    assert headers["content-type"] == "application/json"
    assert all(name == name.lower() for name in headers)


async def test_json_null_is_a_body(client: httpx.AsyncClient, base_url: str) -> None:
    out = await call(client, HttpRequest("PUT", f"{base_url}/echo", json=None))
    assert out["body"]["body"] == "null"  # type: ignore[index]


async def test_raw_body_and_query(client: httpx.AsyncClient, base_url: str) -> None:
    req = HttpRequest(
        "POST",
        f"{base_url}/echo?keep=1",
        query={"s": "a b", "i": 3, "f": 1.5, "b": True},
        body="plain text",
    )
    body = (await call(client, req))["body"]
    assert isinstance(body, dict)
    assert body["query"] == {"keep": "1", "s": "a b", "i": "3", "f": "1.5", "b": "true"}
    assert body["body"] == "plain text"
    only_url = (await call(client, HttpRequest("GET", f"{base_url}/echo?keep=1")))["body"]
    assert only_url["query"] == {"keep": "1"}  # type: ignore[index]


async def test_headers_and_idempotency_key(client: httpx.AsyncClient, base_url: str) -> None:
    req = HttpRequest("GET", f"{base_url}/echo", headers={"X-Trace": "t-42"})
    body = (await call(client, req, key="run-1:node-a:1"))["body"]
    assert isinstance(body, dict)
    assert body["headers"]["x-trace"] == "t-42"
    assert body["headers"]["idempotency-key"] == "run-1:node-a:1"


async def test_explicit_idempotency_key_wins(client: httpx.AsyncClient, base_url: str) -> None:
    req = HttpRequest("GET", f"{base_url}/echo", headers={"idempotency-KEY": "mine"})
    body = (await call(client, req, key="generated"))["body"]
    assert isinstance(body, dict)
    assert body["headers"]["idempotency-key"] == "mine"


async def test_bearer_auth(client: httpx.AsyncClient, base_url: str) -> None:
    req = HttpRequest("GET", f"{base_url}/echo", auth={"bearer": TOKEN})
    body = (await call(client, req))["body"]
    assert body["headers"]["authorization"] == f"Bearer {TOKEN}"  # type: ignore[index]


async def test_basic_auth(client: httpx.AsyncClient, base_url: str) -> None:
    req = HttpRequest("GET", f"{base_url}/echo", auth={"username": USER, "password": PASSWORD})
    body = (await call(client, req))["body"]
    encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert body["headers"]["authorization"] == f"Basic {encoded}"  # type: ignore[index]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/text", "héllo"),
        ("/latin1", "café"),
        ("/application_vnd.api+json", {"a": [1, 2]}),
        ("/application_xml", "<a>1</a>"),
        ("/application_octet-stream", "\ufffdab"),
        ("/empty", None),
    ],
)
async def test_body_parsed_by_content_type(
    client: httpx.AsyncClient, base_url: str, path: str, expected: object
) -> None:
    out = await call(client, HttpRequest("GET", base_url + path))
    assert out["body"] == expected


async def test_invalid_json_is_bad_response(client: httpx.AsyncClient, base_url: str) -> None:
    err = await fail(client, HttpRequest("GET", f"{base_url}/bad-json"))
    assert (err.type, err.retryable) == ("bad_response", False)


async def test_5xx_is_retryable(client: httpx.AsyncClient, base_url: str) -> None:
    err = await fail(client, HttpRequest("POST", f"{base_url}/status/500?api_key=q"))
    assert (err.type, err.retryable) == ("http_status", True)
    assert err.message.startswith(f"POST {base_url}/status/500 returned 500: failure")
    assert "api_key" not in err.message
    assert len(err.message) < 600


@pytest.mark.parametrize(("code", "retryable"), [(404, False), (400, False), (429, True)])
async def test_4xx_retryable_only_when_transient(
    client: httpx.AsyncClient, base_url: str, code: int, retryable: bool
) -> None:
    err = await fail(client, HttpRequest("GET", f"{base_url}/status/{code}"))
    assert (err.type, err.retryable) == ("http_status", retryable)


async def test_expect_status_accepts_404(client: httpx.AsyncClient, base_url: str) -> None:
    req = HttpRequest("GET", f"{base_url}/status/404", expect_status=[404])
    out = await call(client, req)
    assert out["status"] == 404
    assert str(out["body"]).startswith("failure")
    ok = HttpRequest("GET", f"{base_url}/echo", expect_status=[404])
    assert (await fail(client, ok)).type == "http_status"


async def test_server_never_answers_times_out(client: httpx.AsyncClient) -> None:
    # A listening socket that never accepts: the TCP handshake completes, no reply ever comes.
    with _bound_socket() as sock:
        sock.listen(8)
        port = sock.getsockname()[1]
        started = time.monotonic()
        err = await fail(client, HttpRequest("GET", f"http://127.0.0.1:{port}/"), 0.5)
        elapsed = time.monotonic() - started
    assert (err.type, err.retryable) == ("timeout", True)
    assert 0.4 < elapsed < 1.5


async def test_overall_timeout_bounds_a_slow_drip(client: httpx.AsyncClient, base_url: str) -> None:
    # Each byte arrives well within the read timeout; only the overall bound stops this.
    started = time.monotonic()
    err = await fail(client, HttpRequest("GET", f"{base_url}/drip"), 0.5)
    assert (err.type, err.retryable) == ("timeout", True)
    assert time.monotonic() - started < 1.5


async def test_connection_refused(client: httpx.AsyncClient) -> None:
    with _bound_socket() as sock:
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        err = await fail(client, HttpRequest("GET", f"http://127.0.0.1:{port}/"))
    assert (err.type, err.retryable) == ("connection", True)


@pytest.mark.parametrize("path", ["/big", "/big-stream"])
async def test_response_too_large(client: httpx.AsyncClient, base_url: str, path: str) -> None:
    req = HttpRequest("GET", base_url + path, max_response_bytes=50_000)
    err = await fail(client, req)
    assert (err.type, err.retryable) == ("response_too_large", False)


async def test_response_at_limit_is_accepted(client: httpx.AsyncClient, base_url: str) -> None:
    req = HttpRequest("GET", f"{base_url}/big", max_response_bytes=100_000)
    assert len(str((await call(client, req))["body"])) == 100_000


@pytest.mark.parametrize(
    ("auth", "secret"),
    [
        ({"bearer": TOKEN}, TOKEN),
        ({"username": USER, "password": PASSWORD}, PASSWORD),
        (
            {"username": USER, "password": PASSWORD},
            base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
        ),
    ],
)
async def test_errors_never_carry_auth(
    client: httpx.AsyncClient, base_url: str, auth: dict[str, str], secret: str
) -> None:
    req = HttpRequest("GET", f"{base_url}/status/401", auth=auth, headers={"X-Api-Key": "k-987"})
    err = await fail(client, req)
    assert err.type == "http_status"
    assert "failure; auth was" in err.message
    assert secret not in err.message
    assert "k-987" not in err.message and "k-987" not in str(err)


async def test_illegal_header_value_is_not_quoted(client: httpx.AsyncClient, base_url: str) -> None:
    req = HttpRequest("GET", f"{base_url}/echo", headers={"X-Token": "tok\nen-secret"})
    err = await fail(client, req)
    assert (err.type, err.retryable) == ("bad_request", False)
    assert "en-secret" not in err.message


async def test_invalid_declarations(client: httpx.AsyncClient, base_url: str) -> None:
    both = HttpRequest("POST", f"{base_url}/echo", json={}, body="x")
    assert (await fail(client, both)).type == "bad_request"
    bad_auth = HttpRequest("GET", f"{base_url}/echo", auth={"token": "hush-hush"})
    err = await fail(client, bad_auth)
    assert err.type == "bad_request" and "hush-hush" not in err.message
    assert (await fail(client, HttpRequest("GET", "ftp://example.invalid/x"))).type == "bad_request"
    non_ascii = HttpRequest("GET", f"{base_url}/echo", headers={"X-Name": "café"})
    assert (await fail(client, non_ascii)).type == "bad_request"


def test_redact() -> None:
    text = "token=abc123, again abc123; long=abc123def"
    assert redact(text, ["abc123", "abc123def", ""]) == "token=***, again ***; long=***"
    assert redact("nothing here", []) == "nothing here"
    assert redact("", ["x"]) == ""
