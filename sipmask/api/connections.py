"""The API's connections: what aiohttp (3.14) leaves open, closed here.

aiohttp has no cap on open connections and no deadline for a request's head, and keeps an
idle connection for 3,630 s: a client that opens connections and sends nothing, or its head a
byte at a time (slowloris), holds a socket and a handler task each for an hour. So:

- `api.max_connections`: a connection past the cap is closed as soon as it is accepted
  (counted in `ConnectionCounts.refused`).
- `api.header_timeout_s`: a request's head (request line and header fields, RFC 9112 §2.1)
  must be complete this long after the connection opened, or after the first byte of a later
  head on a kept-alive connection; else the connection is closed (`head_timeouts`). No 408:
  a client this slow is not waiting for one (RFC 9110 §15.5.9 lets a server just close).
- `api.keepalive_s`: an idle kept-alive connection is closed after this (aiohttp's own
  keep-alive timer, given our figure instead of its default).
- Every response says `Server: sipmask`, not aiohttp's `Python/3.x aiohttp/3.x` (a version
  banner only helps whoever looks for a known hole), the parser's own 400s included.

`GuardedSite` serves the runner's application as TCPSite does, with `GuardedHandler`
(aiohttp's RequestHandler with these limits) as the protocol of every connection.
0 turns a limit off.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import hdrs, web
from aiohttp.web_request import BaseRequest

from sipmask.observability.logging import get_logger

log = get_logger("sipmask.api")

SERVER = "sipmask"
LOG_EVERY_S = 60.0     # refusals and head timeouts are counted always, logged this often


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int       # 0: no cap
    header_timeout_s: float    # 0: no deadline
    keepalive_s: float         # 0: a connection closes after its response


@dataclass(slots=True)
class ConnectionCounts:
    open: int = 0
    refused: int = 0           # closed at once: past max_connections
    head_timeouts: int = 0     # closed: no whole head within header_timeout_s
    _logged_at: dict[str, float] = field(default_factory=dict, repr=False)

    def report(self, loop: asyncio.AbstractEventLoop, what: str) -> None:
        """One line per kind (`what`) per LOG_EVERY_S at most, with the totals: a flood of
        refusals must not become a flood of log lines."""
        now = loop.time()
        if now - self._logged_at.get(what, float("-inf")) >= LOG_EVERY_S:
            self._logged_at[what] = now
            log.warning(what, open=self.open, refused=self.refused,
                        head_timeouts=self.head_timeouts)


class GuardedHandler(web.RequestHandler):
    """aiohttp's per-connection protocol with the cap and the head deadline.

    Whether a head is complete is aiohttp's parser's call, read from the handler's own
    state: `_request_count` grows when a head has been parsed (a request, or a 400 for a bad
    one), and `_waiter` is set while the connection waits for its next request."""

    __slots__ = ("_admitted", "_deadline", "counts", "limits")

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop,
                 limits: ConnectionLimits, counts: ConnectionCounts, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, keepalive_timeout=limits.keepalive_s, **kwargs)
        self.limits = limits
        self.counts = counts
        self._admitted = False
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cap = self.limits.max_connections
        if cap and self.counts.open >= cap:
            self.counts.refused += 1
            transport.close()      # never handed to aiohttp: no task, no keep-alive timer
            self.counts.report(self._loop, "api.connections_refused")
            return
        self._admitted = True
        self.counts.open += 1
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self.counts.open -= 1
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        idle = self._waiter is not None        # waiting for a request: these bytes start one
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._disarm()                     # a whole head is in
        elif idle and data and self._deadline is None:
            self._arm()                        # a later head has begun

    def _arm(self) -> None:
        if self.limits.header_timeout_s > 0:
            self._deadline = self._loop.call_later(self.limits.header_timeout_s,
                                                   self._head_too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_too_slow(self) -> None:
        self._deadline = None
        self.counts.head_timeouts += 1
        self.counts.report(self._loop, "api.head_timeouts")
        self.force_close()

    async def finish_response(self, request: BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        # Every response passes here before its head is written, the protocol's own error
        # responses too (application hooks never see those); aiohttp only fills in its
        # banner where no Server header is set.
        if not resp.prepared:
            resp.headers[hdrs.SERVER] = SERVER
        return await super().finish_response(request, resp, start_time)


class GuardedSite(web.BaseSite):
    """TCPSite's work (listen on host:port for the runner's application) with every
    connection's protocol a GuardedHandler."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int,
                 limits: ConnectionLimits, *, backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self.host, self.port = host, port
        self.limits = limits
        self.counts = ConnectionCounts()
        self.runner = runner

    @property
    def name(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self.runner.server
        assert server is not None, "runner.setup() first"

        def protocol() -> GuardedHandler:
            # No access log: query strings may carry numbers (the audit log has the writes).
            return GuardedHandler(server, loop=loop, limits=self.limits, counts=self.counts,
                                  access_log=None)
        self._server = await loop.create_server(protocol, self.host, self.port,
                                                backlog=self._backlog)
