"""Webhook delivery: POST each outbox event to `events.webhook.url`, signed, at least once.

Order and blocking (a decision): events go out one at a time, oldest first, and the oldest
one blocks those behind it until the receiver answers it with a 2xx. So a receiver sees a
call's ring before its answer before its hangup, and a receiver that is down costs one
attempt per backoff period, not one per queued event. The price: a receiver that keeps
refusing one event (say a 400 for a body it cannot parse) stalls the queue, so receivers
should answer 2xx to anything they have stored or can never use, and alert on the rest.

Backoff: after the n-th failed attempt of an event its next try is
min(max_backoff, min_backoff * 2**(n-1)), with "equal jitter" (half fixed, half random) so
many sipmask nodes behind one receiver do not retry in step. The attempt count and the next
attempt time are kept in the outbox (wall clock), so a restart does not reset the backoff.

Delivery is at least once: an event leaves the outbox only after a 2xx; a crash or stop
between the receiver's 2xx and our ack (acks of one batch are committed together) sends it
again, with the same id and body.
Receivers deduplicate on `id` (also sent as X-Sipmask-Event-Id).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import random
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from sipmask.clock import Clock, SystemClock
from sipmask.config.schema import WebhookConfig
from sipmask.events.outbox import Event, Outbox
from sipmask.observability import logging as sm_logging

log = sm_logging.get_logger("sipmask.events.webhook")

SIGNATURE_HEADER = "X-Sipmask-Signature"
EVENT_ID_HEADER = "X-Sipmask-Event-Id"
EVENT_TYPE_HEADER = "X-Sipmask-Event-Type"


def sign(body: bytes, secret: str | bytes) -> str:
    """Hex HMAC-SHA256 of the exact body bytes with the shared secret (CONTRACT "Events")."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str | bytes, signature: str) -> bool:
    """For receivers: True when `signature` is this body's. Constant-time comparison."""
    return hmac.compare_digest(sign(body, secret), signature.strip().lower())


@dataclass
class DeliveryStats:
    """For metrics and the shutdown line; counts since this process started."""

    delivered: int = 0          # events acknowledged by a 2xx
    failed_attempts: int = 0    # POSTs that got no 2xx (status, refused, timeout, …)
    last_status: int | None = None   # the receiver's last HTTP status, None if unreachable


class WebhookDelivery:
    """The asyncio task that drains the outbox into the webhook. `start()` inside a running
    loop, `await stop()` on the way out; `notify()` wakes it (the outbox calls it on every
    enqueue). It also looks every `poll_s` for events another process may have written."""

    def __init__(self, outbox: Outbox, url: str, secret: str, *,
                 clock: Clock | None = None, timeout_s: float = 5.0,
                 min_backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 poll_s: float = 5.0, batch: int = 64, rng: random.Random | None = None,
                 session_factory: Callable[[], aiohttp.ClientSession] | None = None) -> None:
        if not 0 < min_backoff_s <= max_backoff_s:
            raise ValueError("backoff needs 0 < min_backoff_s <= max_backoff_s")
        self.outbox = outbox
        self.url = url
        self._secret = secret.encode()
        self.clock: Clock = clock or SystemClock()
        self.timeout_s = timeout_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.poll_s = poll_s
        self.batch = batch
        self._rng = rng or random.Random()
        self._session_factory = session_factory or self._default_session
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.stats = DeliveryStats()
        # Logged instead of the URL, which may carry a token in its path or query.
        self._target = urlsplit(url).netloc
        outbox.on_enqueue(self.notify)

    def _default_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))

    def notify(self) -> None:
        """Something was enqueued: deliver now rather than at the next poll."""
        self._wake.set()

    def backlog(self) -> int:
        return self.outbox.backlog()

    def backoff(self, attempts: int) -> float:
        """Seconds before the next try after `attempts` failures (equal jitter, capped)."""
        base = min(self.max_backoff_s, self.min_backoff_s * 2.0 ** min(attempts - 1, 62))
        return base / 2 + self._rng.uniform(0.0, base / 2)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="webhook-delivery")

    async def stop(self) -> None:
        """Stop at once. An event in flight stays in the outbox and goes again next start."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        session = self._session_factory()
        try:
            while True:
                try:
                    await self._drain(session)
                except Exception:
                    # The store failed under us (disk full, map trouble): keep the task
                    # alive and try again later; nothing was acknowledged.
                    log.exception("events.webhook.loop_failed")
                    await asyncio.sleep(self.min_backoff_s)
        finally:
            await session.close()

    async def _drain(self, session: aiohttp.ClientSession) -> None:
        # Clear before peeking: an enqueue after the peek sets the event again, so the
        # wait below returns at once instead of sleeping on a fresh event.
        self._wake.clear()
        entries = self.outbox.peek(self.batch)
        if not entries:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            return
        # Acks of one batch share one commit: the fsync per event would otherwise cost as
        # much as the POST. A crash before the commit only repeats up to `batch` events,
        # which at-least-once delivery allows (receivers deduplicate on id).
        acked: list[bytes] = []
        try:
            for key, event in entries:
                if not await self._deliver(session, key, event):
                    return
                acked.append(key)
        finally:
            if acked:
                self.outbox.ack_many(acked)

    async def _deliver(self, session: aiohttp.ClientSession, key: bytes, event: Event) -> bool:
        attempts = self.outbox.attempts(key)
        # Capped: a wall clock set back must not park the queue for longer than one backoff.
        delay = min(attempts.next_at - self.clock.wall(), self.max_backoff_s)
        if delay > 0:
            await asyncio.sleep(delay)
        status, problem = await self._post(session, event)
        self.stats.last_status = status
        if problem is None:
            self.stats.delivered += 1
            return True
        wait = self.backoff(attempts.count + 1)
        state = self.outbox.failed(key, self.clock.wall() + wait)
        self.stats.failed_attempts += 1
        log.warning("events.webhook.failed", target=self._target, event_id=event.id,
                    event_type=event.type, problem=problem, attempts=state.count,
                    retry_in_s=round(wait, 3))
        return False

    async def _post(self, session: aiohttp.ClientSession, event: Event
                    ) -> tuple[int | None, str | None]:
        """(status, None) on a 2xx; (status or None, what went wrong) otherwise."""
        body = event.body()
        headers = {"Content-Type": "application/json",
                   SIGNATURE_HEADER: sign(body, self._secret),
                   EVENT_ID_HEADER: event.id, EVENT_TYPE_HEADER: event.type}
        try:
            # No redirects: a 3xx is not an acknowledgement, and following one would send
            # the signed body somewhere the config does not name.
            async with session.post(self.url, data=body, headers=headers,
                                    allow_redirects=False) as response:
                if 200 <= response.status < 300:
                    return response.status, None
                return response.status, f"status {response.status}"
        except TimeoutError:
            return None, f"no answer in {self.timeout_s} s"
        except (aiohttp.ClientError, OSError) as exc:
            return None, type(exc).__name__


def from_config(config: WebhookConfig, outbox: Outbox, *,
                clock: Clock | None = None) -> WebhookDelivery | None:
    """The delivery `events.webhook` asks for, or None when no url is set (events off).
    The loader has already refused a url without a secret."""
    if not config.url or not config.secret:
        return None
    # 0 in the config would mean "no timeout" to aiohttp and "no backoff" here: both would
    # hammer a receiver, so one second is the floor.
    max_backoff = max(config.max_backoff_s, 1)
    return WebhookDelivery(outbox, config.url, config.secret, clock=clock,
                           timeout_s=max(config.timeout_s, 1), min_backoff_s=1.0,
                           max_backoff_s=float(max_backoff))
