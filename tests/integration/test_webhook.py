"""Webhook delivery against a real aiohttp receiver on 127.0.0.1 that goes down, fails,
hangs and comes back; the outbox is a real LMDB store in tmp_path."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from sipmask.config.schema import WebhookConfig
from sipmask.events.outbox import Event, Outbox, new_event
from sipmask.events.webhook import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    WebhookDelivery,
    from_config,
    sign,
    verify,
)
from sipmask.store.lmdb import LmdbStore
from tests.support.net import LOOPBACK, free_port

SECRET = "s3cret"
X = "700100000000001"


def delivery_to(outbox: Outbox, url: str, *, min_backoff_s: float = 0.05,
                max_backoff_s: float = 0.4, timeout_s: float = 1.0,
                poll_s: float = 5.0) -> WebhookDelivery:
    """Short backoffs so the suite stays fast."""
    return WebhookDelivery(outbox, url, SECRET, min_backoff_s=min_backoff_s,
                           max_backoff_s=max_backoff_s, timeout_s=timeout_s, poll_s=poll_s)


@dataclass
class Hit:
    at: float
    event_id: str
    status: int
    body: dict[str, object]


@dataclass
class Receiver:
    """A webhook receiver. `answer(hit_number)` picks the status (or a delay) per request;
    it checks every signature and remembers every request."""

    port: int
    secret: str = SECRET
    answer: Callable[[int], int] = lambda _n: 200
    delay_s: Callable[[int], float] = lambda _n: 0.0
    hits: list[Hit] = field(default_factory=list)
    bad_signatures: int = 0
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        n = len(self.hits)
        if not verify(body, self.secret, request.headers.get(SIGNATURE_HEADER, "")):
            self.bad_signatures += 1
            status = 401
        else:
            status = self.answer(n)
        data = json.loads(body)
        assert request.headers[EVENT_ID_HEADER] == data["id"]
        assert request.content_type == "application/json"
        self.hits.append(Hit(time.monotonic(), data["id"], status, data))
        await asyncio.sleep(self.delay_s(n))
        return web.Response(status=status)

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, LOOPBACK, self.port).start()

    async def down(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/hook"

    def acked(self) -> list[str]:
        return [h.event_id for h in self.hits if 200 <= h.status < 300]


def ring(i: int) -> Event:
    return new_event("ring", call_id=f"c{i}", binding_id="b1", tenant="demo", x=X,
                     at=1800000000.0 + i)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def test_down_then_failing_then_back_delivers_every_event_once_in_order(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        store = LmdbStore(tmp_path / "s")
        outbox = Outbox(store)
        events = [ring(i) for i in range(5)]
        for event in events[:3]:
            outbox.enqueue(event)
        receiver = Receiver(free_port(), answer=lambda n: 500 if n < 4 else 200)
        delivery = delivery_to(outbox, receiver.url)
        delivery.start()
        # Receiver down (connection refused): the events stay, attempts are counted.
        await until(lambda: delivery.stats.failed_attempts >= 2)
        assert outbox.backlog() == 3 and receiver.hits == []
        head_key = outbox.peek()[0][0]
        assert outbox.attempts(head_key).count >= 2
        for event in events[3:]:
            outbox.enqueue(event)
        # Receiver up but answering 500 to its first four requests, then 200.
        await receiver.up()
        await until(lambda: outbox.backlog() == 0)
        await delivery.stop()
        await receiver.down()
        store.close()

        assert receiver.bad_signatures == 0
        assert receiver.acked() == [e.id for e in events]          # once each, in order
        assert [h.status for h in receiver.hits[:4]] == [500] * 4
        assert {h.event_id for h in receiver.hits[:4]} == {events[0].id}   # head blocks
        assert receiver.hits[-1].body == json.loads(events[-1].body())
        assert delivery.stats.delivered == 5
        # Backoff: each retry of the head waits at least half its (doubling) base.
        gaps = [b.at - a.at for a, b in zip(receiver.hits[:4], receiver.hits[1:5],
                                             strict=True)]
        assert all(gap >= 0.02 for gap in gaps), gaps
    asyncio.run(scenario())


def test_a_restart_delivers_what_the_first_process_had_not_and_keeps_its_backoff(
        tmp_path: Path) -> None:
    events = [ring(i) for i in range(6)]

    async def first_run() -> float:
        store = LmdbStore(tmp_path / "s")
        outbox = Outbox(store)
        outbox.enqueue_many(events)
        receiver = Receiver(free_port(), answer=lambda n: 200 if n < 2 else 503)
        await receiver.up()
        delivery = delivery_to(outbox, receiver.url, min_backoff_s=0.6,
                               max_backoff_s=0.6)
        delivery.start()
        await until(lambda: delivery.stats.failed_attempts == 1)
        await delivery.stop()
        await receiver.down()
        assert receiver.acked() == [e.id for e in events[:2]]
        key = outbox.peek()[0][0]
        next_at = outbox.attempts(key).next_at
        store.close()
        return next_at

    async def second_run(next_at: float) -> Receiver:
        store = LmdbStore(tmp_path / "s")
        outbox = Outbox(store)
        assert outbox.backlog() == 4
        receiver = Receiver(free_port())
        await receiver.up()
        # max_backoff_s caps how long a stored next_at may park the queue: keep it above
        # the first run's backoff so the stored one is what counts.
        delivery = delivery_to(outbox, receiver.url, max_backoff_s=1.0)
        delivery.start()
        await until(lambda: outbox.backlog() == 0)
        await delivery.stop()
        await receiver.down()
        store.close()
        # The stored backoff held across the restart: no try before next_at.
        assert receiver.hits[0].at - time.monotonic() + time.time() >= next_at - 0.02
        return receiver

    next_at = asyncio.run(first_run())
    receiver = asyncio.run(second_run(next_at))
    assert receiver.acked() == [e.id for e in events[2:]]
    assert collections.Counter(receiver.acked()).most_common(1)[0][1] == 1


def test_a_receiver_that_rejects_the_signature_gets_the_event_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = LmdbStore(tmp_path / "s")
        outbox = Outbox(store)
        outbox.enqueue(ring(0))
        receiver = Receiver(free_port(), secret="another secret")
        await receiver.up()
        delivery = delivery_to(outbox, receiver.url)
        delivery.start()
        await until(lambda: receiver.bad_signatures >= 2)
        assert outbox.backlog() == 1 and delivery.stats.last_status == 401
        receiver.secret = SECRET                     # the receiver is fixed
        await until(lambda: outbox.backlog() == 0)
        await delivery.stop()
        await receiver.down()
        store.close()
        assert len(set(h.event_id for h in receiver.hits)) == 1
    asyncio.run(scenario())


def test_a_receiver_that_hangs_times_out_and_is_retried(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = LmdbStore(tmp_path / "s")
        outbox = Outbox(store)
        outbox.enqueue(ring(0))
        receiver = Receiver(free_port(), delay_s=lambda n: 0.6 if n == 0 else 0.0)
        await receiver.up()
        delivery = delivery_to(outbox, receiver.url, max_backoff_s=0.1, timeout_s=0.2)
        delivery.start()
        await until(lambda: outbox.backlog() == 0)
        await delivery.stop()
        await receiver.down()
        store.close()
        assert delivery.stats.failed_attempts == 1 and delivery.stats.delivered == 1
        assert len(receiver.hits) == 2          # the hung one (its 200 came too late) + retry
    asyncio.run(scenario())


def test_an_enqueue_wakes_an_idle_delivery_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = LmdbStore(tmp_path / "s")
        outbox = Outbox(store)
        receiver = Receiver(free_port())
        await receiver.up()
        delivery = delivery_to(outbox, receiver.url, poll_s=30.0)
        delivery.start()
        await asyncio.sleep(0.1)                 # idle, waiting on its wake-up
        started = time.monotonic()
        outbox.enqueue(ring(0))
        await until(lambda: outbox.backlog() == 0, timeout=1.0)
        elapsed = time.monotonic() - started
        await delivery.stop()
        await receiver.down()
        store.close()
        assert elapsed < 0.5
    asyncio.run(scenario())


def test_sign_is_hex_hmac_sha256_of_the_body() -> None:
    # RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
    assert sign(b"what do ya want for nothing?", "Jefe") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    assert verify(b"{}", SECRET, sign(b"{}", SECRET))
    assert not verify(b"{} ", SECRET, sign(b"{}", SECRET))


def test_from_config_is_off_without_a_url_and_takes_the_configured_limits(
        tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s")
    outbox = Outbox(store)
    assert from_config(WebhookConfig(), outbox) is None
    delivery = from_config(WebhookConfig(url="http://127.0.0.1:9/hook", secret=SECRET,
                                         timeout_s=0, max_backoff_s=30), outbox)
    assert delivery is not None
    assert (delivery.timeout_s, delivery.min_backoff_s, delivery.max_backoff_s) == (1, 1.0, 30.0)
    store.close()
