"""The HTTP admin API (CONTRACT.md "HTTP API") on aiohttp.

`create_app` builds the application over a store; `start_api` binds `config.api.listen`
and returns the running AppRunner (`await runner.cleanup()` stops it and its writer thread;
close the store after that). Reads (get, list, CDRs, trace, the health check) go through
`store.offload.soon`: on LMDB they run in the handler (a read is microseconds and sees the
last commit of any process); on PostgreSQL, where each is a round trip and a slow or
unreachable database would hold it for seconds, on the store's read threads, so the loop
(and SIP with it, in `sipmask serve`) never waits for the database. Writes go through
api/writer.py, off the event loop, because each commit waits for an fsync.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import prometheus_client
from aiohttp import web

from sipmask.api import inputs, render
from sipmask.api.auth import TENANT as TENANT_KIND
from sipmask.api.auth import TokenTable
from sipmask.api.connections import ConnectionCounts, ConnectionLimits, GuardedSite
from sipmask.api.inputs import ApiError
from sipmask.api.openapi import DOCUMENT
from sipmask.api.writer import ACTOR, BindingWriter
from sipmask.cdr import trace
from sipmask.cdr.record import Cdr
from sipmask.config.schema import Config, HostPort, RecordingConfig
from sipmask.errors import RecordNotFound, RefusedError, StoreError
from sipmask.observability.logging import get_logger
from sipmask.store import offload, recordings
from sipmask.store.base import BindingStore
from sipmask.store.recording_file import RecordingUnreadable

T = TypeVar("T")

log = get_logger("sipmask.api")

# Paths anyone may read: liveness for load balancers, Prometheus scrapes, the API's own
# description. None of them carries a number.
PUBLIC_PATHS = frozenset({"/healthz", "/metrics", "/openapi.json"})


class CdrSource(Protocol):
    def __call__(self, tenant: str, since: float | None, limit: int) -> list[dict[str, Any]]:
        ...

    def for_binding(self, binding_id: str, limit: int | None) -> list[Cdr]:
        """A binding's calls, whichever tenant's (trace, operator tokens only)."""
        ...


@dataclass(slots=True)
class ApiState:
    store: BindingStore
    tokens: TokenTable
    writer: BindingWriter
    metrics_text: Callable[[], bytes]
    cdr_source: CdrSource | None
    recording: RecordingConfig


STATE = web.AppKey("sipmask_api", ApiState)
# The tenant the request's token names (set by auth_middleware; aiohttp >= 3.14 keys).
TENANT = web.RequestKey("sipmask_tenant", str)
# The operator an operator token names: on TRACE_PATH, where no tenant is set, and on a
# recording's path when an operator reads it.
OPERATOR = web.RequestKey("sipmask_operator", str)
TRACE_PATH = "/v1/trace"
RECORDINGS_PATH = "/v1/recordings/"
RECORDING_CHUNK = 64 * 1024

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, field: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    """CONTRACT's error body: {"error": {"field": …, "message": …}}."""
    return web.json_response({"error": {"field": field, "message": message}},
                             status=status, headers=headers)


# aiohttp raises these for requests that match no route or method, or whose body is too
# large; the field names what the client got wrong.
_HTTP_FIELDS = {404: "path", 405: "method", 413: "body"}


@web.middleware
async def errors_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.field, exc.message, exc.headers)
    except RefusedError as exc:
        # 422 for rule refusals; ConflictError and PoolExhausted carry 409.
        return error_response(exc.http_status, exc.field, exc.message)
    except RecordNotFound as exc:
        return error_response(404, "id" if exc.what == "binding" else exc.what,
                              f"no such {exc.what}")
    except StoreError as exc:
        log.error("api.store_failed", path=request.path, error=str(exc))
        return error_response(503, "store", "the store is unavailable; try again")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, _HTTP_FIELDS.get(exc.status, "request"),
                              exc.reason.lower(), headers)


@web.middleware
async def auth_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    if request.path not in PUBLIC_PATHS:
        tokens = request.app[STATE].tokens
        authorization = request.headers.get("Authorization")
        if request.path == TRACE_PATH:
            request[OPERATOR] = tokens.operator_for(authorization)
        elif request.path.startswith(RECORDINGS_PATH):
            # Issue 15 §4: a tenant reads its own recordings, an operator any tenant's.
            who = tokens.identify(authorization)
            request[TENANT if who.kind == TENANT_KIND else OPERATOR] = who.name
        else:
            request[TENANT] = tokens.tenant_for(authorization)
    return await handler(request)


def _too_large() -> ApiError:
    return ApiError(413, "body", f"larger than {inputs.MAX_BODY_BYTES} bytes")


async def _body(request: web.Request) -> bytes:
    # Refuse a declared oversize body before reading it; read() enforces the same limit
    # (client_max_size) on chunked bodies.
    if request.content_length is not None and request.content_length > inputs.MAX_BODY_BYTES:
        raise _too_large()
    payload = request.content
    if payload.is_eof():
        # The whole body came with the head (an API body is a few hundred bytes): take it
        # from the buffer instead of read()'s chunk loop. The limit still holds for what
        # a Content-Encoding decompressed to.
        body = payload.read_nowait()
        if len(body) > inputs.MAX_BODY_BYTES:
            raise _too_large()
        return body
    return await request.read()


def _json(body: bytes, status: int = 200, location: str | None = None) -> web.Response:
    headers = {"Content-Type": render.JSON_TYPE}
    if location is not None:
        headers["Location"] = location
    return web.Response(body=body, status=status, headers=headers)


async def _read(state: ApiState, fn: Callable[[], T]) -> T:
    """fn (a store read) off the loop when the store's reads wait on the network
    (offload.soon); an answer already there (LMDB) is taken without a trip round the loop.
    StoreBusy (the read threads' queue is full) is a StoreError: 503."""
    future = offload.soon(state.store, fn)
    if future.done():
        return future.result()
    return await asyncio.wrap_future(future)


# -- bindings -------------------------------------------------------------------------------
async def create_binding(request: web.Request) -> web.Response:
    state = request.app[STATE]
    wanted = inputs.create_request(await _body(request), request[TENANT])
    binding = await state.writer.create(wanted)
    return _json(render.binding_json(binding), 201, f"/v1/bindings/{binding.id}")


async def get_binding(request: web.Request) -> web.Response:
    state = request.app[STATE]
    binding_id = inputs.binding_id(request.match_info["id"])
    tenant = request[TENANT]
    binding = await _read(state, lambda: state.store.get(binding_id, tenant=tenant))
    return _json(render.binding_json(binding))


async def delete_binding(request: web.Request) -> web.Response:
    state = request.app[STATE]
    binding_id = inputs.binding_id(request.match_info["id"])
    tenant = request[TENANT]
    await state.writer.run(lambda: state.store.delete(binding_id, tenant=tenant, actor=ACTOR))
    return web.Response(status=204)


async def patch_binding(request: web.Request) -> web.Response:
    state = request.app[STATE]
    binding_id = inputs.binding_id(request.match_info["id"])
    ttl = inputs.patch_ttl(await _body(request))
    tenant = request[TENANT]
    binding = await state.writer.run(
        lambda: state.store.update_ttl(binding_id, ttl, tenant=tenant, actor=ACTOR))
    return _json(render.binding_json(binding))


async def list_bindings(request: web.Request) -> web.Response:
    state = request.app[STATE]
    query = inputs.list_query(request.query)
    tenant = request[TENANT]
    found = await _read(state, lambda: state.store.list(tenant=tenant, x=query.x,
                                                        limit=query.limit))
    return _json(render.bindings_json(found))


# -- CDRs, health, metrics, description -----------------------------------------------------
async def list_cdrs(request: web.Request) -> web.Response:
    state = request.app[STATE]
    query = inputs.cdr_query(request.query)
    source = state.cdr_source
    if source is None:
        return web.json_response([])
    # Filtered by the token's tenant: real numbers in CDRs are visible only to their tenant.
    tenant = request[TENANT]
    return web.json_response(await _read(state, lambda: source(tenant, query.since,
                                                               query.limit)))


async def trace_x(request: web.Request) -> web.Response:
    """Issue 14 §3: which binding held X at `at`, and its calls, across tenants. Real
    numbers are in the answer (the operator's to see); none is in the log line."""
    state = request.app[STATE]
    query = inputs.trace_query(request.query)
    source = state.cdr_source
    found = await _read(state, lambda: trace.trace(
        state.store, source.for_binding if source is not None else None, query.x, query.at))
    log.info("api.trace", operator=request[OPERATOR], bindings=len(found.bindings),
             cdrs=len(found.cdrs))
    return web.json_response(found.to_json())


async def get_recording(request: web.Request) -> web.StreamResponse:
    """GET /v1/recordings/{cdr_id}: the call's recording as audio/wav, streamed (opened
    from its sealed file off the loop); 404 when there is none for the token's tenant
    (another tenant's call looks the same); 500 `recording` when the store key cannot open
    it. `X-Sipmask-Recording` says how whole the file was (store/recordings.Recording)."""
    state = request.app[STATE]
    tenant = request.get(TENANT)          # None: an operator token, any tenant's
    cdr_id = request.match_info["cdr_id"]
    try:
        found = await asyncio.to_thread(recordings.open_recording, state.recording, cdr_id,
                                        tenant, keys=state.store.keys)
    except RecordingUnreadable as exc:
        log.error("api.recording_unreadable", error=str(exc))
        return error_response(500, "recording", "the recording cannot be opened with "
                              "store.key_file (see the server's log)")
    try:
        log.info("api.recording_read", tenant=found.tenant, name=found.name,
                 operator=request.get(OPERATOR), state=found.state.value)
        response = web.StreamResponse(headers={
            "Content-Type": "audio/wav",
            "Content-Disposition": f'attachment; filename="{found.name}"',
            "X-Sipmask-Recording": found.state.value})
        response.content_length = found.size
        await response.prepare(request)
        while chunk := await asyncio.to_thread(found.stream.read, RECORDING_CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        found.close()


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        await _read(state, state.store.tenants)
    except StoreError:
        return error_response(503, "store", "the store cannot be read")
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics_text()
    return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)


def _default_metrics() -> bytes:
    return prometheus_client.generate_latest(prometheus_client.REGISTRY)


def create_app(config: Config, store: BindingStore, *,
               metrics_text: Callable[[], bytes] | None = None,
               cdr_source: CdrSource | None = None) -> web.Application:
    """The API over `store`, tokens from `config.tenants`. Tests and `sipmask serve` call it."""
    app = web.Application(middlewares=[errors_middleware, auth_middleware],
                          client_max_size=inputs.MAX_BODY_BYTES)
    writer = BindingWriter(store)
    app[STATE] = ApiState(store=store, tokens=TokenTable.from_config(config),
                          writer=writer, metrics_text=metrics_text or _default_metrics,
                          cdr_source=cdr_source, recording=config.recording)
    app.router.add_post("/v1/bindings", create_binding)
    app.router.add_get("/v1/bindings", list_bindings, allow_head=False)
    app.router.add_get("/v1/bindings/{id}", get_binding, allow_head=False)
    app.router.add_delete("/v1/bindings/{id}", delete_binding)
    app.router.add_patch("/v1/bindings/{id}", patch_binding)
    app.router.add_get("/v1/cdrs", list_cdrs, allow_head=False)
    app.router.add_get(TRACE_PATH, trace_x, allow_head=False)
    app.router.add_get(RECORDINGS_PATH + "{cdr_id}", get_recording, allow_head=False)
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/metrics", metrics, allow_head=False)
    app.router.add_get("/openapi.json", openapi, allow_head=False)

    async def stop_writer(_app: web.Application) -> None:
        await writer.close()
    app.on_cleanup.append(stop_writer)
    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False     # a name we do not resolve here: assume it may be public


def warn_if_public(config: Config, listen: HostPort) -> bool:
    """Warn (and say so) when a non-loopback API still accepts the sample config's token."""
    if _is_loopback(listen.host):
        return False
    demo = TokenTable.from_tenants(config.tenants).demo_tokens()
    if demo:
        log.warning("api.public_with_demo_token", listen=str(listen), tenants=demo,
                    hint="set tenants.<name>.token to a secret before exposing the API")
    return bool(demo)


async def start_api(config: Config, store: BindingStore, *,
                    metrics_text: Callable[[], bytes] | None = None,
                    cdr_source: CdrSource | None = None) -> web.AppRunner | None:
    """Serve the API on `config.api.listen`; None when the API is off (listen: null).

    OSError (address in use, no permission) reaches the caller, which names it and exits.
    """
    listen = config.api.listen
    if listen is None:
        return None
    app = create_app(config, store, metrics_text=metrics_text, cdr_source=cdr_source)
    warn_if_public(config, listen)
    api = config.api
    limits = ConnectionLimits(max_connections=api.max_connections,
                              header_timeout_s=float(api.header_timeout_s),
                              keepalive_s=float(api.keepalive_s))
    # The connections' options (limits, no access log) are GuardedSite's: it makes them.
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        await GuardedSite(runner, listen.host, listen.port, limits, backlog=1024).start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("api.listening", listen=[f"{h}:{p}" for h, p, *_ in runner.addresses])
    return runner


def reconfigure_api(runner: web.AppRunner, config: Config) -> None:
    """`sipmask reload`: tenant and operator tokens change at once; a request already
    authorised finishes under the token it came with."""
    runner.app[STATE].tokens = TokenTable.from_config(config)


def connection_counts(runner: web.AppRunner) -> ConnectionCounts:
    """The API's connection figures (open, refused past the cap, head timeouts), for
    metrics: start_api's runner has one GuardedSite."""
    [site] = [s for s in runner.sites if isinstance(s, GuardedSite)]
    return site.counts


@dataclass(frozen=True, slots=True)
class _LogCdrs:
    log: Any

    def __call__(self, tenant: str, since: float | None, limit: int) -> list[dict[str, Any]]:
        return [c.to_json() for c in self.log.list(since=since, tenant=tenant, limit=limit)]

    def for_binding(self, binding_id: str, limit: int | None) -> list[Cdr]:
        found: list[Cdr] = self.log.for_binding(binding_id, limit)
        return found


def cdrs_from_log(cdr_log: Any) -> CdrSource:
    """A CdrSource over cdr/store.CdrLog (anything with `list(since, tenant, limit)` and
    `for_binding(binding_id, limit)`)."""
    return _LogCdrs(cdr_log)
