"""The HTTP admin API over real loopback HTTP, on a real LMDB store (CONTRACT "HTTP API").

One server for the module runs in a thread with its own event loop; tests speak plain HTTP
to it with http.client, and look at the same LMDB environment directly where the API's
effect must be checked (audit actor, tenant of a record).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import json
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipmask.api import start_api
from sipmask.api.app import STATE, connection_counts, warn_if_public
from sipmask.api.connections import ConnectionCounts
from sipmask.api.openapi import DOCUMENT
from sipmask.cdr.record import Cdr
from sipmask.cdr.store import CdrLog
from sipmask.config.schema import (
    ApiConfig,
    Config,
    HostPort,
    OperatorConfig,
    StoreConfig,
    TenantConfig,
)
from sipmask.store.lmdb import LmdbStore, open_store
from sipmask.store.pg_schema import SCHEMA
from tests.support.api import (
    EPHEMERAL,
    TOKENS,
    ApiThread,
    Reply,
    call,
    create,
    make_config,
    running_api,
)
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.postgres import pg_dsn, pg_key, pg_server
from tests.support.serve import ServeProcess

__all__ = ["pg_dsn", "pg_key", "pg_server"]   # fixtures

A, B, C = "13800000001", "13900000002", "13700000003"
OTHER_X = "700200000000001"                  # in the "other" tenant's pool


def assert_error(reply: Reply, status: int, field_name: str) -> str:
    """CONTRACT's error shape, exactly: {"error": {"field": …, "message": …}}."""
    assert reply.status == status, (reply.status, reply.raw)
    assert isinstance(reply.body, dict) and set(reply.body) == {"error"}, reply.raw
    assert set(reply.body["error"]) == {"field", "message"}, reply.raw
    assert reply.body["error"]["field"] == field_name, reply.body
    message = reply.body["error"]["message"]
    assert isinstance(message, str) and message
    return message


# -- the binding lifecycle ------------------------------------------------------------------
def test_create_get_list_patch_delete(api: ApiThread) -> None:
    reply = call(api, "POST", "/v1/bindings", {"mode": "axb", "a": "+86 138-0000-0001",
                                                "b": B, "ttl": 600})
    assert reply.status == 201, reply.raw
    made = reply.body
    assert made["mode"] == "axb" and made["tenant"] == "demo"
    assert (made["a"], made["b"]) == (A, B)               # normalised from +86 and dashes
    assert made["x"].startswith("7001000000")             # allocated from demo's pool
    assert made["expires_at_unix"] - made["created_at_unix"] == 600
    assert reply.headers["Location"] == f"/v1/bindings/{made['id']}"

    got = call(api, "GET", f"/v1/bindings/{made['id']}")
    assert got.status == 200 and got.body == made

    listed = call(api, "GET", f"/v1/bindings?x={made['x']}")
    assert listed.status == 200 and made["id"] in [b["id"] for b in listed.body]
    everything = call(api, "GET", "/v1/bindings?limit=1000")
    assert made["id"] in [b["id"] for b in everything.body]

    patched = call(api, "PATCH", f"/v1/bindings/{made['id']}", {"ttl": 0})
    assert patched.status == 200 and patched.body["expires_at"] is None
    patched = call(api, "PATCH", f"/v1/bindings/{made['id']}", {"ttl": 30})
    assert 25 <= patched.body["expires_at_unix"] - time.time() <= 31

    gone = call(api, "DELETE", f"/v1/bindings/{made['id']}")
    assert gone.status == 204 and gone.raw == b""
    assert_error(call(api, "GET", f"/v1/bindings/{made['id']}"), 404, "id")
    assert_error(call(api, "DELETE", f"/v1/bindings/{made['id']}"), 404, "id")


def test_writes_are_audited_as_api(api: ApiThread) -> None:
    made = create(api, {"mode": "axn", "a": C})
    entries = [e for e in api.store.audit(tenant="demo", limit=1000) if e.subject == made["id"]]
    assert [(e.action, e.actor) for e in entries] == [("create", "api")]


def test_bindings_written_outside_the_api_are_served_at_once(api: ApiThread) -> None:
    # The CLI opens the same LMDB environment; the API's next read sees its commit.
    made = api.store.create(mode="axb", tenant="demo", a="13600000006", b=B, actor="cli")
    got = call(api, "GET", f"/v1/bindings/{made.id}")
    assert got.status == 200 and got.body["x"] == made.x


# -- rule refusals: 422 / 409, the field named ----------------------------------------------
def test_rule_refusals_name_the_field(api: ApiThread) -> None:
    message = assert_error(call(api, "POST", "/v1/bindings",
                                {"mode": "axb", "a": "12345", "b": B}), 422, "a")
    assert "12345" not in message
    assert_error(call(api, "POST", "/v1/bindings",
                      {"mode": "axb", "a": A, "b": B, "x": OTHER_X}), 422, "x")
    assert_error(call(api, "POST", "/v1/bindings",
                      {"mode": "axb", "a": A, "b": A}), 422, "b")
    assert_error(call(api, "POST", "/v1/bindings",
                      {"mode": "axz", "a": A, "b": B}), 422, "mode")
    assert_error(call(api, "POST", "/v1/bindings",
                      {"mode": "axb", "a": A, "b": B, "ttl": -1}), 422, "ttl")


def test_conflict_on_the_same_x_is_409(api: ApiThread) -> None:
    made = create(api, {"mode": "axb", "a": "13500000005", "b": B})
    again = call(api, "POST", "/v1/bindings",
                 {"mode": "axb", "a": "13500000005", "b": B, "x": made["x"]})
    assert again.status == 409 and again.body["error"]["field"] in ("a", "b", "x")


def test_exhausted_pool_is_409_on_x(api: ApiThread) -> None:
    create(api, {"mode": "axn", "a": A}, token=TOKENS["tiny"])
    assert_error(call(api, "POST", "/v1/bindings", {"mode": "axn", "a": C},
                      token=TOKENS["tiny"]), 409, "x")


# -- shape errors: 400 naming the field -----------------------------------------------------
@pytest.mark.parametrize(("body", "field_name"), [
    ({"mode": "axb", "a": 13800000001, "b": B}, "a"),
    ({"mode": "axb", "a": A, "b": ["x"]}, "b"),
    ({"mode": "axb", "a": A, "b": B, "ttl": "7200"}, "ttl"),
    ({"mode": "axb", "a": A, "b": B, "ttl": True}, "ttl"),
    ({"mode": "axb", "a": A, "b": B, "ttl": 1.5}, "ttl"),
    ({"mode": "axb", "a": A, "b": B, "colour": "red"}, "colour"),
    ({"a": A, "b": B}, "mode"),
    ({"mode": "axb", "b": B}, "a"),
])
def test_malformed_create_is_400(api: ApiThread, body: dict[str, Any], field_name: str) -> None:
    assert_error(call(api, "POST", "/v1/bindings", body), 400, field_name)


@pytest.mark.parametrize("raw", [b"", b"{", b"[1, 2]", b'"axb"', b"\xff\xfe{}", b"[" * 60000])
def test_unparseable_bodies_are_400_on_body(api: ApiThread, raw: bytes) -> None:
    assert_error(call(api, "POST", "/v1/bindings", raw=raw), 400, "body")


def test_malformed_patch_and_queries_are_400(api: ApiThread) -> None:
    made = create(api, {"mode": "axb", "a": "13300000003", "b": B})
    path = f"/v1/bindings/{made['id']}"
    assert_error(call(api, "PATCH", path, {}), 400, "ttl")
    assert_error(call(api, "PATCH", path, {"ttl": "60"}), 400, "ttl")
    assert_error(call(api, "PATCH", path, {"ttl": 60, "a": A}), 400, "a")
    assert_error(call(api, "PATCH", path, {"ttl": 10 ** 12}), 422, "ttl")
    assert_error(call(api, "GET", "/v1/bindings?limit=0"), 422, "limit")     # out of range
    assert_error(call(api, "GET", "/v1/bindings?limit=ten"), 400, "limit")
    assert_error(call(api, "GET", "/v1/bindings?tenant=other"), 400, "tenant")
    assert_error(call(api, "GET", "/v1/bindings?x=12"), 422, "x")
    assert_error(call(api, "GET", "/v1/cdrs?since=yesterday"), 400, "since")


@pytest.mark.parametrize(("body", "field_name"), [
    ({"mode": "axn", "a": C, "max_duration_s": 10 ** 400}, "max_duration_s"),
    ({"mode": "axn", "a": C, "max_concurrent": 10 ** 30}, "max_concurrent"),
    ({"mode": "axn", "a": C, "ttl": 10 ** 400}, "ttl"),
])
def test_numbers_out_of_range_are_422(api: ApiThread, body: dict[str, Any],
                                      field_name: str) -> None:
    """10**400 as max_duration_s was stored (201), then overflowed the call path."""
    message = assert_error(call(api, "POST", "/v1/bindings", body), 422, field_name)
    assert "0000000000" not in message


@pytest.mark.parametrize(("query", "field_name"), [
    ("/v1/bindings?limit=1001", "limit"),
    ("/v1/bindings?limit=" + "9" * 5000, "limit"),
    ("/v1/cdrs?limit=" + "9" * 5000, "limit"),
    ("/v1/cdrs?limit=10001", "limit"),
    ("/v1/cdrs?since=1e300", "since"),
    ("/v1/cdrs?since=-1e300", "since"),
    ("/v1/cdrs?since=" + "9" * 5000, "since"),
])
def test_query_numbers_out_of_range_are_422(api: ApiThread, query: str,
                                            field_name: str) -> None:
    assert_error(call(api, "GET", query), 422, field_name)


def test_method_path_and_size_errors_keep_the_shape(api: ApiThread) -> None:
    reply = call(api, "PUT", "/v1/bindings/abc", {"ttl": 1})
    assert_error(reply, 405, "method")
    assert "PATCH" in reply.headers["Allow"]
    assert_error(call(api, "GET", "/v1/nothing"), 404, "path")
    assert_error(call(api, "GET", "/v1/bindings/" + "z" * 600), 404, "id")
    big = json.dumps({"mode": "axb", "a": A, "b": B, "pad": "x" * 70000}).encode()
    assert_error(call(api, "POST", "/v1/bindings", raw=big), 413, "body")


def test_oversize_chunked_body_is_413(api: ApiThread) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        chunks = iter([b"{" + b" " * 40000, b" " * 40000 + b"}"])
        conn.request("POST", "/v1/bindings", body=chunks, encode_chunked=True,
                      headers={"Authorization": f"Bearer {TOKENS['demo']}",
                               "Transfer-Encoding": "chunked"})
        resp = conn.getresponse()
        assert resp.status == 413
        assert json.loads(resp.read())["error"]["field"] == "body"
    finally:
        conn.close()


def test_a_body_sent_after_its_head_is_read_whole(api: ApiThread) -> None:
    # The body usually comes in the head's packet and is taken from the buffer; here it
    # comes later, in two pieces, and the handler must wait for all of it.
    body = json.dumps({"mode": "axb", "a": "13811110000", "b": B}).encode()
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(f"POST /v1/bindings HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {TOKENS['demo']}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode())
        time.sleep(0.05)
        sock.sendall(body[:10])
        time.sleep(0.05)
        sock.sendall(body[10:])
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 201 "), answer
    made = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert made["a"] == "13811110000"


def test_a_compressed_body_that_inflates_past_the_limit_is_413(api: ApiThread) -> None:
    # Sent with its head in one write, so the handler takes it from the buffer; the limit
    # holds for what the body inflates to, as read() holds it for a body still coming.
    packed = gzip.compress(json.dumps({"mode": "axb", "a": A, "pad": " " * 100000}).encode())
    assert len(packed) < 64 * 1024
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(f"POST /v1/bindings HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
                     f"Authorization: Bearer {TOKENS['demo']}\r\n"
                     f"Content-Length: {len(packed)}\r\n\r\n".encode() + packed)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["field"] == "body"
    assert call(api, "POST", "/v1/bindings", raw=packed,
                headers={"Content-Encoding": "gzip"}).status == 413


# -- authentication and tenant isolation ----------------------------------------------------
@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Bearer wrong",
                                    f"Basic {TOKENS['demo']}", f"Bearer {TOKENS['demo']}x",
                                    "Bearer tök-demo"])
def test_missing_or_wrong_token_is_401(api: ApiThread, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    for method, path in (("GET", "/v1/bindings"), ("POST", "/v1/bindings"),
                         ("GET", "/v1/cdrs"), ("DELETE", "/v1/bindings/abc")):
        reply = call(api, method, path, {"mode": "axn", "a": A}, token=None, headers=headers)
        assert_error(reply, 401, "authorization")
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")


def test_public_endpoints_need_no_token(api: ApiThread) -> None:
    health = call(api, "GET", "/healthz", token=None)
    assert health.status == 200 and health.body == {"status": "ok"}
    metrics = call(api, "GET", "/metrics", token=None)
    assert metrics.status == 200 and metrics.headers.get_content_type() == "text/plain"
    assert b"# TYPE" in metrics.raw
    assert call(api, "GET", "/openapi.json", token=None).status == 200


def test_another_tenants_binding_is_404_and_untouched(api: ApiThread) -> None:
    made = create(api, {"mode": "axb", "a": "13400000004", "b": B})
    path = f"/v1/bindings/{made['id']}"
    other = TOKENS["other"]
    assert_error(call(api, "GET", path, token=other), 404, "id")
    assert_error(call(api, "DELETE", path, token=other), 404, "id")
    assert_error(call(api, "PATCH", path, {"ttl": 1}, token=other), 404, "id")
    assert made["id"] not in [b["id"] for b in call(api, "GET", "/v1/bindings",
                                                     token=other).body]
    assert call(api, "GET", f"/v1/bindings?x={made['x']}", token=other).body == []
    assert call(api, "GET", path).body == made                 # still there, unchanged


def test_a_body_cannot_pick_another_tenant(api: ApiThread) -> None:
    assert_error(call(api, "POST", "/v1/bindings",
                      {"mode": "axb", "a": A, "b": B, "tenant": "other"}), 403, "tenant")
    own = create(api, {"mode": "axb", "a": "13200000002", "b": B, "tenant": "demo"})
    assert own["tenant"] == "demo"
    # Another tenant's X in the body is outside this tenant's pool: refused, not bound.
    assert_error(call(api, "POST", "/v1/bindings", {"mode": "axn", "a": A, "x": OTHER_X}),
                 422, "x")


def test_cdrs_are_the_tokens_tenants_only(api: ApiThread) -> None:
    now = time.time()
    log = CdrLog(api.store)
    for tenant, call_id in (("demo", "c-demo"), ("other", "c-other")):
        log.write(Cdr(call_id=call_id, tenant=tenant, binding_id=None, x="700100000000005",
                      caller=A, callee=B, direction="a_to_b", invite_at=now, ring_at=None,
                      answer_at=None, end_at=now + 1, duration_s=0.0, release_side="caller",
                      sip_status=487, unconnected_cause="none"))
    mine = call(api, "GET", f"/v1/cdrs?since={now - 1}")
    assert mine.status == 200 and [c["call_id"] for c in mine.body] == ["c-demo"]
    assert mine.body[0]["caller"] == A                          # the tenant's own numbers
    assert call(api, "GET", f"/v1/cdrs?since={now + 10}").body == []


# -- never a 500 on bad input ---------------------------------------------------------------
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8)
_bodies = st.dictionaries(
    st.sampled_from(["mode", "a", "b", "x", "ttl", "tenant", "other"]),
    st.sampled_from(["axb", "axn", A, B, "+8613800000001", "700100000000009", "7001", 0, 60,
                     -5, "", "\ud800", "\x00"]) | _json_values, max_size=6)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_bodies, raw=st.binary(max_size=64))
def test_random_input_never_500(api: ApiThread, body: dict[str, Any], raw: bytes) -> None:
    for reply in (call(api, "POST", "/v1/bindings", body),
                  call(api, "POST", "/v1/bindings", raw=raw),
                  call(api, "PATCH", "/v1/bindings/abc", body)):
        assert reply.status in (201, 400, 403, 404, 409, 413, 422), (reply.status, reply.raw)
        if reply.status >= 400:
            assert set(reply.body["error"]) == {"field", "message"}


# -- concurrency: creates that arrive together share a commit -------------------------------
def test_concurrent_creates_share_commits(api: ApiThread) -> None:
    writer = api.app[STATE].writer
    commits_before, n = writer.commits, 64

    async def burst() -> list[int]:
        headers = {"Authorization": f"Bearer {TOKENS['demo']}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            async def one(i: int) -> int:
                body = {"mode": "axb", "a": f"1510000{i:04d}", "b": B}
                async with session.post(f"http://127.0.0.1:{api.port}/v1/bindings",
                                        json=body) as resp:
                    await resp.read()
                    return resp.status
            return await asyncio.gather(*(one(i) for i in range(n)))

    statuses = asyncio.run(burst())
    assert statuses == [201] * n
    assert writer.commits - commits_before < n          # grouped, not one fsync each
    ids = {b.id for b in api.store.list(tenant="demo", limit=1000) if b.a.startswith("1510000")}
    assert len(ids) == n


# -- the OpenAPI document -------------------------------------------------------------------
def test_openapi_describes_every_route(api: ApiThread) -> None:
    reply = call(api, "GET", "/openapi.json", token=None)
    doc = json.loads(reply.raw)
    assert doc == DOCUMENT and doc["openapi"].startswith("3.1.")
    served = {(r.resource.canonical, r.method.lower()) for r in api.app.router.routes()
              if r.resource is not None}
    described = {(path, method) for path, item in doc["paths"].items()
                 for method in item if method != "parameters"}
    assert served == described

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)
    for ref in refs(doc):
        section, name = ref.removeprefix("#/components/").split("/")
        assert name in doc["components"][section], ref


# -- start-up -------------------------------------------------------------------------------
def test_no_listen_means_no_api(tmp_path: Path) -> None:
    config = make_config(tmp_path / "s.lmdb", listen=None)
    store = open_store(config)
    try:
        assert asyncio.run(start_api(config, store)) is None
    finally:
        store.close()


def test_public_listen_with_demo_token_warns(tmp_path: Path) -> None:
    # Judged from the config alone: tests never bind a non-loopback address.
    demo = Config(tenants={"demo": TenantConfig("demo-token")})
    assert warn_if_public(demo, HostPort("192.0.2.10", 8080))
    assert not warn_if_public(demo, HostPort("127.0.0.1", 8080))
    assert not warn_if_public(demo, HostPort("::1", 8080))
    assert not warn_if_public(make_config(tmp_path), HostPort("192.0.2.10", 8080))


# -- inside `sipmask serve` -----------------------------------------------------------------
def test_serve_exposes_the_api(serve: Callable[..., ServeProcess]) -> None:
    """The default config's demo tenant through a real `sipmask serve`: a bind over HTTP is
    routed by SIP's own store and shows in the server's metrics."""
    port = free_port()
    server = serve("--set", f"api.listen=127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"

    async def scenario() -> tuple[int, dict[str, Any], int, str]:
        headers = {"Authorization": "Bearer demo-token"}
        async with aiohttp.ClientSession(headers=headers) as session:
            for _ in range(100):               # the API starts just after SIP answers
                try:
                    async with session.get(f"{base}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            async with session.post(f"{base}/v1/bindings",
                                    json={"mode": "axb", "a": A, "b": B}) as resp:
                status, made = resp.status, await resp.json()
            async with session.get(f"{base}/v1/bindings/{made['id']}") as resp:
                got = resp.status
            async with session.get(f"{base}/metrics") as resp:
                text = await resp.text()
        return status, made, got, text

    status, made, got, metrics_text = asyncio.run(scenario())
    assert status == 201 and made["tenant"] == "demo" and got == 200
    assert "sipmask_" in metrics_text
    assert server.stop() == 0
    # serve ran in the repository with the default store.key_file, var/sipmask.key.
    store = LmdbStore(server.workdir / "store.lmdb", key_file=REPO / "var" / "sipmask.key")
    try:
        assert store.route(made["x"], A, time.time()) is not None
        assert store.get(made["id"]).b == B
    finally:
        store.close()


def _wait_for_api(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_serve_never_logs_a_token_or_number_from_a_bad_request(
        serve: Callable[..., ServeProcess]) -> None:
    """aiohttp logs a request it cannot parse ("Error handling request") with the parser's
    exception, which quotes the raw line; through the stdlib logger that bypassed the
    masking processor and printed the token and the number."""
    port = free_port()
    server = serve("--set", f"api.listen=127.0.0.1:{port}", "--set", "log.format=json")
    _wait_for_api(port)
    for raw in (b"GET /v1/bindings?a=13812345678 HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer demo-token\x01\r\n\r\n",
                b"GET /v1/bindings?a=13812345678 HTTP/1.1 junk\r\n"
                b"Authorization: Bearer demo-token\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(raw)
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0], answer
    assert server.stop() == 0
    logged = server.stdout() + server.stderr()
    assert logged.count("Error handling request") == 2, logged     # the lines were written
    assert "demo-token" not in logged and "13812345678" not in logged, logged


# -- connection hardening: a cap, a head deadline, short keep-alive, no Server banner --------
LIMITS = ApiConfig(listen=EPHEMERAL, max_connections=4, header_timeout_s=1, keepalive_s=2)


def _guarded(tmp_path: Path, limits: ApiConfig) -> Iterator[ApiThread]:
    with running_api(replace(make_config(tmp_path / "store.lmdb"), api=limits)) as server:
        yield server


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[ApiThread]:
    yield from _guarded(tmp_path, LIMITS)


@pytest.fixture
def long_keepalive(tmp_path: Path) -> Iterator[ApiThread]:
    """Keep-alive far past the head deadline, so a cut can only be the deadline's."""
    yield from _guarded(tmp_path, replace(LIMITS, keepalive_s=10))


def _connect(api: ApiThread) -> socket.socket:
    return socket.create_connection(("127.0.0.1", api.port), timeout=5)


def _closed_after(sock: socket.socket) -> float:
    """Seconds until the server closes `sock` (reading and dropping what it sends)."""
    started = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def _counts(api: ApiThread) -> ConnectionCounts:
    assert api.runner is not None
    return connection_counts(api.runner)


HEALTH = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def test_a_head_sent_slowly_is_cut_at_the_deadline(long_keepalive: ApiThread) -> None:
    with _connect(long_keepalive) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")   # never finished
        waited = _closed_after(sock)
    assert 0.8 <= waited <= 2.5, waited                          # header_timeout_s = 1
    with _connect(long_keepalive) as sock:                      # a byte at a time, too
        started = time.monotonic()
        with contextlib.suppress(OSError):
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaa":
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
        waited = time.monotonic() - started + _closed_after(sock)
    assert waited <= 2.5, waited
    assert _counts(long_keepalive).head_timeouts == 2


def test_a_connection_that_sends_nothing_is_cut_at_the_deadline(
        long_keepalive: ApiThread) -> None:
    with _connect(long_keepalive) as sock:
        assert 0.8 <= _closed_after(sock) <= 2.5


def test_a_later_head_has_its_own_deadline(long_keepalive: ApiThread) -> None:
    """Keep-alive requests each within the deadline are served however long the connection
    lives; a later head that stalls is cut one deadline after its first byte (keep-alive
    would wait 10 s)."""
    with _connect(long_keepalive) as sock:
        for _ in range(4):                      # 4 x 0.4 s: past one deadline in all
            sock.sendall(HEALTH)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            time.sleep(0.4)
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert 0.8 <= _closed_after(sock) <= 2.5
    assert _counts(long_keepalive).head_timeouts == 1


def test_idle_keep_alive_is_closed(guarded: ApiThread) -> None:
    with _connect(guarded) as sock:
        sock.sendall(HEALTH)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert 1.5 <= _closed_after(sock) <= 4.0, "keepalive_s = 2"
    assert _counts(guarded).head_timeouts == 0      # idle is keep-alive's, not the deadline's


def test_connections_past_the_cap_are_closed_at_once(guarded: ApiThread) -> None:
    held = [_connect(guarded) for _ in range(4)]
    try:
        time.sleep(0.1)                            # all four accepted
        with _connect(guarded) as fifth:
            assert _closed_after(fifth) < 0.5
        assert _counts(guarded).refused == 1
        held[0].sendall(HEALTH)                   # the held ones are served
        assert held[0].recv(65536).startswith(b"HTTP/1.1 200 ")
        held.pop(0).close()
        time.sleep(0.1)
        with _connect(guarded) as again:           # a freed place is taken again
            again.sendall(HEALTH)
            assert again.recv(65536).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in held:
            sock.close()
    assert _counts(guarded).refused == 1


@pytest.mark.parametrize("raw", [HEALTH, b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n",
                                 b"GET /healthz HTTP/1.1 junk\r\n\r\n",
                                 b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n"])
def test_no_server_banner(guarded: ApiThread, raw: bytes) -> None:
    with _connect(guarded) as sock:
        sock.sendall(raw)
        head = sock.recv(65536).partition(b"\r\n\r\n")[0].decode()
    servers = [line for line in head.split("\r\n") if line.lower().startswith("server:")]
    assert servers in ([], ["Server: sipmask"]), head
    assert "aiohttp" not in head and "Python" not in head


# -- trace: operator tokens only (issue 14 §3) ------------------------------------------------
OPS_TOKEN = "tok-ops"


@pytest.fixture(scope="module")
def ops_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiThread]:
    base = make_config(tmp_path_factory.mktemp("ops") / "store.lmdb")
    config = replace(base, operators={"ops": OperatorConfig(OPS_TOKEN),
                                      "nobody": OperatorConfig(None)})
    with running_api(config) as server:
        yield server


def test_an_operator_traces_x_across_tenants_with_numbers_and_calls(ops_api: ApiThread) -> None:
    made = create(ops_api, {"mode": "axb", "a": A, "b": B, "x": OTHER_X},
                  token=TOKENS["other"])
    record = Cdr(call_id="call-1", tenant="other", binding_id=made["id"], x=OTHER_X,
                 caller=A, callee=B, direction="a_to_b", invite_at=made["created_at_unix"] + 1,
                 ring_at=None, answer_at=None, end_at=made["created_at_unix"] + 2,
                 duration_s=0.0, release_side="callee", sip_status=486,
                 unconnected_cause="callee_failed")
    CdrLog(ops_api.store).write(record)
    deleted = call(ops_api, "DELETE", f"/v1/bindings/{made['id']}", token=TOKENS["other"])
    assert deleted.status == 204
    at = made["created_at_unix"]
    reply = call(ops_api, "GET", f"/v1/trace?x={OTHER_X}&at={at}", token=OPS_TOKEN)
    assert reply.status == 200, reply.raw
    assert set(reply.body) == {"bindings", "cdrs"}
    [held] = reply.body["bindings"]
    assert (held["id"], held["tenant"], held["a"], held["b"]) == (made["id"], "other", A, B)
    assert (held["created_by"], held["ended_by"], held["end_reason"]) == ("api", "api",
                                                                         "unbind")
    assert held["ended_at"] is not None
    [cdr] = reply.body["cdrs"]
    assert (cdr["call_id"], cdr["caller"], cdr["callee"]) == ("call-1", A, B)  # not masked
    iso = call(ops_api, "GET", f"/v1/trace?x=%2B86{OTHER_X}&at={made['created_at']}",
               token=OPS_TOKEN)
    assert iso.status == 200
    before = call(ops_api, "GET", f"/v1/trace?x={OTHER_X}&at={at - 3600}", token=OPS_TOKEN)
    assert before.status == 200 and before.body == {"bindings": [], "cdrs": []}


def test_trace_is_for_operator_tokens_only(ops_api: ApiThread) -> None:
    path = f"/v1/trace?x={OTHER_X}&at=1800000000"
    assert_error(call(ops_api, "GET", path, token=TOKENS["demo"]), 403, "authorization")
    assert_error(call(ops_api, "GET", path, token=None), 401, "authorization")
    assert_error(call(ops_api, "GET", path, token="not-a-token"), 401, "authorization")
    # An operator token does nothing but trace.
    assert_error(call(ops_api, "GET", "/v1/bindings", token=OPS_TOKEN), 403, "authorization")
    assert_error(call(ops_api, "POST", "/v1/bindings", {"mode": "axn", "a": A},
                      token=OPS_TOKEN), 403, "authorization")
    assert_error(call(ops_api, "GET", "/v1/cdrs", token=OPS_TOKEN), 403, "authorization")
    assert call(ops_api, "GET", path, token=OPS_TOKEN).status == 200


def test_the_module_api_without_operators_traces_for_nobody(api: ApiThread) -> None:
    path = f"/v1/trace?x={OTHER_X}&at=1800000000"
    assert_error(call(api, "GET", path, token=TOKENS["demo"]), 403, "authorization")
    assert_error(call(api, "GET", path, token=OPS_TOKEN), 401, "authorization")


@pytest.mark.parametrize(("query", "field_name"), [
    ("at=1800000000", "x"), ("x=&at=1800000000", "x"), (f"x={A}&at=1800000000", "x"),
    ("x=7001&at=1800000000", "x"), (f"x={OTHER_X}", "at"), (f"x={OTHER_X}&at=", "at"),
    (f"x={OTHER_X}&at=soon", "at"), (f"x={OTHER_X}&at=nan", "at"),
    (f"x={OTHER_X}&at=-5", "at"), (f"x={OTHER_X}&at=1e300", "at"),
    (f"x={OTHER_X}&at=1&tenant=demo", "tenant")])
def test_trace_names_a_bad_query_field(ops_api: ApiThread, query: str,
                                       field_name: str) -> None:
    message = assert_error(call(ops_api, "GET", f"/v1/trace?{query}", token=OPS_TOKEN), 400,
                           field_name)
    assert A not in message


# -- AXE, AXYB and recordings (issue 15) ------------------------------------------------------
def test_create_axe_and_axyb(api: ApiThread) -> None:
    axe = create(api, {"mode": "axe", "a": "13100000001", "b": B, "ext": "0042",
                       "record": True})
    assert (axe["mode"], axe["ext"], axe["b"], axe["record"]) == ("axe", "0042", B, True)
    assert call(api, "GET", f"/v1/bindings/{axe['id']}").body == axe
    other = create(api, {"mode": "axe", "a": "13100000002", "x": axe["x"]})
    assert other["ext"] != "0042" and len(other["ext"]) == 4 and "record" not in other
    axyb = create(api, {"mode": "axyb", "a": "13100000003", "b": "13100000004"})
    assert axyb["y"] not in (None, axyb["x"]) and axyb["y"].startswith("7001000000")
    listed = call(api, "GET", f"/v1/bindings?x={axyb['y']}")
    assert [b["id"] for b in listed.body] == [axyb["id"]]
    taken = call(api, "POST", "/v1/bindings", {"mode": "axe", "a": "13100000005",
                                               "x": axe["x"], "ext": "0042"})
    assert_error(taken, 409, "ext")
    again_on_y = call(api, "POST", "/v1/bindings", {"mode": "axyb", "a": "13100000006",
                                                    "b": "13100000004", "y": axyb["y"]})
    assert_error(again_on_y, 409, "b")


@pytest.mark.parametrize(("body", "status", "field_name"), [
    ({"mode": "axe", "a": A, "ext": 42}, 400, "ext"),
    ({"mode": "axyb", "a": A, "b": B, "y": 700100000000009}, 400, "y"),
    ({"mode": "axn", "a": A, "record": "yes"}, 400, "record"),
    ({"mode": "axe", "a": A, "ext": "42"}, 422, "ext"),
    ({"mode": "axb", "a": A, "b": B, "ext": "0042"}, 422, "ext"),
    ({"mode": "axn", "a": A, "y": "700100000000009"}, 422, "y"),
    ({"mode": "axyb", "a": A, "b": B, "x": "700100000000009", "y": "700100000000009"}, 422,
     "y"),
    ({"mode": "axyb", "a": A}, 422, "b"),
    ({"mode": "axyb", "a": A, "b": B, "y": OTHER_X}, 422, "y"),
])
def test_new_mode_refusals_name_the_field(api: ApiThread, body: dict[str, Any], status: int,
                                          field_name: str) -> None:
    assert_error(call(api, "POST", "/v1/bindings", body), status, field_name)


@pytest.fixture(scope="module")
def rec_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiThread]:
    from sipmask.config.schema import RecordingConfig
    folder = tmp_path_factory.mktemp("rec")
    base = make_config(folder / "store.lmdb")
    config = replace(base, operators={"ops": OperatorConfig(OPS_TOKEN)},
                     recording=RecordingConfig(dir=folder / "recordings"))
    with running_api(config) as server:
        yield server


def test_axyb_in_a_one_number_pool_is_409_on_y(rec_api: ApiThread) -> None:
    # The tiny tenant's one number is free (this module's server): X takes it, Y has none.
    assert_error(call(rec_api, "POST", "/v1/bindings", {"mode": "axyb", "a": A, "b": C},
                      token=TOKENS["tiny"]), 409, "y")


def test_a_tenant_reads_its_own_recording_and_no_other(rec_api: ApiThread) -> None:
    from sipmask.media.wav import wav_header
    from sipmask.store import recordings
    call_id = "5f0c2a9e41d7b3c8a6e1f0d2b4c6a8e0@127.0.0.1"
    # Sealed with the store's key, as sipmask serve writes it; served as the WAV.
    sink = recordings.open_sink(rec_api.config.recording, "demo", call_id,
                                rec_api.store.keys)
    sink.write(bytes(range(256)) * 1000)
    sink.close()
    audio = wav_header(2, 256 * 1000) + bytes(range(256)) * 1000
    path = f"/v1/recordings/{call_id}"
    got = call(rec_api, "GET", path)
    assert got.status == 200, got.raw
    assert got.headers["Content-Type"] == "audio/wav" and got.raw == audio
    assert got.headers["Content-Length"] == str(len(audio))
    assert got.headers["X-Sipmask-Recording"] == "complete"
    local = call_id.partition("@")[0]
    assert call(rec_api, "GET", f"/v1/recordings/{local}").raw == audio
    # Another tenant's token: 404, as for a call that has no recording.
    message = assert_error(call(rec_api, "GET", path, token=TOKENS["other"]), 404,
                           "recording")
    assert assert_error(call(rec_api, "GET", "/v1/recordings/00ff"), 404,
                        "recording") == message
    assert_error(call(rec_api, "GET", "/v1/recordings/..%2Fdemo%2Fx"), 404, "recording")
    assert_error(call(rec_api, "GET", path, token=None), 401, "authorization")
    # The operator reads any tenant's.
    ops = call(rec_api, "GET", path, token=OPS_TOKEN)
    assert ops.status == 200 and ops.raw == audio
    # A file another key sealed (a rekey that did not reach it): 500, no audio, no key.
    from sipmask.store.crypto import Keyring
    other = recordings.open_sink(rec_api.config.recording, "demo", "0ddba11@127.0.0.1",
                                 Keyring.generate())
    other.close()
    assert_error(call(rec_api, "GET", "/v1/recordings/0ddba11"), 500, "recording")


# -- PostgreSQL: reads off the event loop (issue 14) ------------------------------------------
def _wait_for_a_lock_waiter(dsn: str) -> None:
    """Until a session of the database waits for a lock (its own connection: within one
    transaction pg_stat_activity answers from one snapshot)."""
    deadline = time.monotonic() + 10
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                               "current_database() AND wait_event_type = 'Lock'"
                               ).fetchone()[0]:   # type: ignore[index]
            assert time.monotonic() < deadline, "no read ever waited for the lock"
            time.sleep(0.01)


@pytest.mark.parametrize(("path", "table", "token"), [
    ("/v1/bindings/{id}", "bindings", TOKENS["demo"]),
    ("/v1/bindings", "bindings", TOKENS["demo"]),
    ("/v1/cdrs", "cdrs", TOKENS["demo"]),
    (f"/v1/trace?x={OTHER_X}&at=1800000000", "route", OPS_TOKEN),
    ("/healthz", "tenants", None),
])
def test_a_read_waiting_on_postgres_leaves_the_loop_free(
        pg_dsn: str, pg_key: Path, tmp_path: Path, path: str, table: str,
        token: str | None) -> None:
    # On PostgreSQL a read is a round trip, and a slow or locked database would hold it:
    # run on the event loop, it stalled every other request (and, in `sipmask serve`, SIP
    # too: one loop). Here a read waits on a lock another session holds, and the loop
    # answers another request meanwhile; the read completes once the lock goes.
    config = replace(make_config(tmp_path / "unused"),
                     store=StoreConfig(backend="postgres", dsn=pg_dsn, key_file=pg_key),
                     operators={"ops": OperatorConfig(OPS_TOKEN)})
    with running_api(config) as api:
        made = create(api, {"mode": "axb", "a": A, "b": B})
        with psycopg.connect(pg_dsn) as locker, ThreadPoolExecutor(1) as pool:
            locker.execute(f"LOCK TABLE {SCHEMA}.{table} IN ACCESS EXCLUSIVE MODE")
            waiting = pool.submit(call, api, "GET", path.format(id=made["id"]), token=token)
            _wait_for_a_lock_waiter(pg_dsn)
            assert call(api, "GET", "/openapi.json").status == 200
            assert not waiting.done()
            locker.rollback()
            assert waiting.result().status == 200
