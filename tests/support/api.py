"""The HTTP admin API in a thread of the test process: three tenants' config, the server on
its own event loop, and plain http.client calls to it (CONTRACT "HTTP API"). Tests take a
module-wide server from the `api` fixture (tests/conftest.py) or start one with
`running_api`."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from sipmask.api import cdrs_from_log, start_api
from sipmask.cdr.store import CdrLog
from sipmask.config.schema import (
    ApiConfig,
    Config,
    HostPort,
    NumberRange,
    StoreConfig,
    TenantConfig,
)
from sipmask.store.lmdb import LmdbStore, open_store

DEMO_POOL = "700100000000000-700100000000999"
OTHER_POOL = "700200000000000-700200000000099"
TINY_X = "700300000000000"                   # the "tiny" tenant's pool: one number
TOKENS = {"demo": "tok-demo", "other": "tok-other", "tiny": "tok-tiny"}

EPHEMERAL = HostPort("127.0.0.1", 0)


def make_config(store_path: Path, listen: HostPort | None = EPHEMERAL) -> Config:
    return Config(
        api=ApiConfig(listen=listen),
        store=StoreConfig(path=store_path),
        tenants={
            "demo": TenantConfig(TOKENS["demo"], (NumberRange.parse(DEMO_POOL),)),
            "other": TenantConfig(TOKENS["other"], (NumberRange.parse(OTHER_POOL),)),
            "tiny": TenantConfig(TOKENS["tiny"], (NumberRange.parse(TINY_X),)),
        },
    )


class ApiThread:
    """`start_api` on its own event loop in a thread, stopped with the same cleanup
    `sipmask serve` uses."""

    def __init__(self, config: Config, store: LmdbStore) -> None:
        self.config, self.store = config, store
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.runner: web.AppRunner | None = None
        self.thread = threading.Thread(target=self._run, name="api-test", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.runner = self.loop.run_until_complete(
                start_api(self.config, self.store, cdr_source=cdrs_from_log(CdrLog(self.store))))
        except BaseException as exc:
            self.error = exc
            self.ready.set()
            self.loop.close()
            return
        self.ready.set()
        self.loop.run_forever()
        assert self.runner is not None
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    def start(self) -> ApiThread:
        self.thread.start()
        assert self.ready.wait(10), "API did not start"
        if self.error is not None:
            raise self.error
        return self

    @property
    def port(self) -> int:
        assert self.runner is not None
        return int(self.runner.addresses[0][1])

    @property
    def app(self) -> web.Application:
        assert self.runner is not None
        return self.runner.app

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        assert not self.thread.is_alive()

@contextmanager
def running_api(config: Config) -> Iterator[ApiThread]:
    """The API on `config`'s store, started; stopped and the store closed on every path."""
    store = open_store(config)
    try:
        server = ApiThread(config, store).start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        store.close()


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    raw: bytes
    body: Any = field(default=None)


def call(api: ApiThread, method: str, path: str, body: Any = None, *,
         token: str | None = TOKENS["demo"], raw: bytes | None = None,
         headers: dict[str, str] | None = None) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=sent)
        resp = conn.getresponse()
        payload = resp.read()
        reply = Reply(resp.status, resp.headers, payload)
        if resp.headers.get_content_type() == "application/json" and payload:
            reply.body = json.loads(payload)
        return reply
    finally:
        conn.close()


def create(api: ApiThread, body: dict[str, Any], token: str = TOKENS["demo"]) -> dict[str, Any]:
    reply = call(api, "POST", "/v1/bindings", body, token=token)
    assert reply.status == 201, (reply.status, reply.raw)
    out: dict[str, Any] = reply.body
    return out

