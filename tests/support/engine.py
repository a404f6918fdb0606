"""Shared helpers for the engine tests: the engine over the real transaction layer, peers
are bytes in, bytes out; no sockets.

Leg A's peer (the trunk) is 192.0.2.10:5060, leg B's (trunk.outbound) 127.0.0.1:5090.
The store is the in-memory one and media a small rewriting backend (both stand-ins that the
design injects for unit tests; the SIPp tests run the real ones).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from sipmask.b2bua.engine import Engine
from sipmask.cdr.store import MemoryCdrLog
from sipmask.clock import FakeClock
from sipmask.config import loader
from sipmask.sip.message import Request, Response
from sipmask.sip.parser import parse_message
from sipmask.sip.transaction import TransactionLayer
from sipmask.store.memory import MemoryStore

A_ADDR = ("192.0.2.10", 5060)
B_ADDR = ("127.0.0.1", 5090)
X = "700100000000001"
A_NUM, B_NUM, STRANGER = "13800000001", "13900000002", "13700000003"

A_SDP = (b"v=0\r\no=alice 1 1 IN IP4 192.0.2.10\r\ns=Zhang\r\nc=IN IP4 192.0.2.10\r\n"
         b"t=0 0\r\nm=audio 16000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
         b"a=rtpmap:101 telephone-event/8000\r\n")
B_SDP = (b"v=0\r\no=bob 2 2 IN IP4 198.51.100.7\r\ns=Li\r\nc=IN IP4 198.51.100.7\r\n"
         b"t=0 0\r\nm=audio 18000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


class RelaySdp:
    """Media stand-in: answers every offer/answer with sipmask's own address and a port per
    leg, and records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.deleted: list[str] = []
        # (offer/answer, leg, the SDP it was given, the leg's SIP source it was told)
        self.seen: list[tuple[str, str, bytes, str | None]] = []

    def _sdp(self, port: int) -> bytes:
        return (f"v=0\r\no=- 7 7 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n").encode()

    async def offer(self, call_id: str, leg: str, sdp: bytes, *,
                    sip_source: str | None = None) -> bytes:
        self.calls.append(("offer", call_id, leg))
        self.seen.append(("offer", leg, sdp, sip_source))
        return self._sdp(self._facing_other(leg))

    async def answer(self, call_id: str, leg: str, sdp: bytes, *,
                     sip_source: str | None = None) -> bytes:
        self.calls.append(("answer", call_id, leg))
        self.seen.append(("answer", leg, sdp, sip_source))
        return self._sdp(self._facing_other(leg))

    @staticmethod
    def _facing_other(leg: str) -> int:
        # SDP from leg A goes to B with the B-facing relay port, and the other way round.
        return 30002 if leg == "a" else 30000

    async def delete(self, call_id: str) -> None:
        self.deleted.append(call_id)


class Harness:
    """SipPort for the engine, backed by a real TransactionLayer; peers talk in bytes."""

    def __init__(self, ring_timeout_s: int = 60) -> None:
        self.config = loader.loads(loader.default_text(), [f"sip.ring_timeout_s={ring_timeout_s}",
                                        "trunks.carrier.inbound_allow=['192.0.2.0/24', "
                                        "'127.0.0.0/8']"])
        self.layer = TransactionLayer(local_via_host="127.0.0.1", local_port=5060)
        self.store = MemoryStore(tenants=self.config.tenants)
        self.cdrs = MemoryCdrLog()
        self.media = RelaySdp()
        # The engine's clock: call timers fire when a test moves it (advance), at once.
        self.clock = FakeClock()
        self.engine = Engine(self, config=self.config, store=self.store, media=self.media,
                             cdrs=self.cdrs, clock=self.clock)
        self.wire: list[tuple[Request | Response, tuple[str, int]]] = []
        # Every message sent, with its transport (take() does not consume this one).
        self.sent: list[tuple[Request | Response, tuple[str, int], str]] = []
        # (peer, transport) of the TCP/TLS connections the fake server says are open.
        self.open: set[tuple[tuple[str, int], str]] = set()

    # SipPort --------------------------------------------------------------------------------
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def respond(self, txn_id: str, response: Response) -> None:
        self.layer.send_response(txn_id, response, self.now())
        self._collect()

    def send_request(self, request: Request, dest: tuple[str, int], transport: Any) -> str:
        txn = self.layer.send_request(request, dest, transport, self.now())
        self._collect()
        return txn

    def cancel(self, invite_txn_id: str) -> str | None:
        txn = self.layer.cancel(invite_txn_id, self.now())
        self._collect()
        return txn

    def send_ack(self, invite_txn_id: str | None, ack: Request, dest: tuple[str, int],
                 transport: Any) -> None:
        self.layer.send_ack(invite_txn_id, ack, dest, transport)
        self._collect()

    def local_port(self, transport: Any) -> int:
        return 5061 if transport == "tls" else 5060

    def connected(self, dest: tuple[str, int], transport: Any) -> bool:
        return (dest, transport) in self.open

    # the peers ------------------------------------------------------------------------------
    def _collect(self) -> None:
        for out in self.layer.outgoing():
            message = parse_message(out.data)
            self.wire.append((message, out.dest))
            self.sent.append((message, out.dest, out.transport))

    async def deliver(self, data: bytes | str, source: tuple[str, int],
                      transport: Any = "udp") -> None:
        # Text made with surrogateescape carries binary bodies (ISUP) through unchanged.
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        self.layer.receive(parse_message(raw), source, transport, self.now())
        self._collect()
        for event in self.layer.events():
            self.engine.handle_event(event)
        await self.settle()

    async def settle(self) -> None:
        for _ in range(10):
            await asyncio.sleep(0)
        self._collect()
        for event in self.layer.events():
            self.engine.handle_event(event)
        for _ in range(10):
            await asyncio.sleep(0)
        self._collect()

    async def idle(self, timeout_s: float = 10.0) -> None:
        """Wait for every task the engine started (a media round trip, a CDR commit on the
        group commit's writer thread) by awaiting the tasks themselves, not by polling;
        then feed the engine what they sent. `timeout_s` only keeps a broken test from
        hanging the suite."""
        while self.engine._tasks:
            _done, pending = await asyncio.wait(set(self.engine._tasks), timeout=timeout_s)
            if pending:
                raise AssertionError(f"{len(pending)} engine tasks still waiting")
            await self.settle()

    async def advance(self, seconds: float) -> None:
        """Move the engine's clock and fire the call timers now due (no real waiting)."""
        self.clock.advance(seconds)
        self.engine.handle_timer(self.clock.monotonic())
        await self.settle()

    def take(self, dest: tuple[str, int] | None = None) -> list[Request | Response]:
        """Messages sent (to `dest`) since the last take."""
        picked = [m for m, d in self.wire if dest is None or d == dest]
        self.wire = [(m, d) for m, d in self.wire if not (dest is None or d == dest)]
        return picked


def a_invite(caller: str = A_NUM, x: str = X, branch: str = "z9hG4bKa1",
             extra: str = "") -> str:
    body = A_SDP.decode()
    return (f"INVITE sip:{x}@127.0.0.1;user=phone SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f'From: "Zhang San" <sip:{caller}@192.0.2.10>;tag=fromzq1\r\n'
            f"To: <sip:{x}@127.0.0.1>\r\n"
            f"Call-ID: acall-{branch}@192.0.2.10\r\n"
            f"CSeq: 10 INVITE\r\n"
            f"Contact: <sip:{caller}@192.0.2.10:5060>\r\n"
            f"User-Agent: leaky/1.0\r\n{extra}"
            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}")


def b_response(invite: Request, status: int, *, tag: str = "tb1", sdp: bytes = b"",
               extra: str = "", content_type: str | None = "application/sdp") -> str:
    """B's answer to `invite`; `sdp` is the body, labelled `content_type` (None: unlabelled)."""
    vias = "".join(f"Via: {v}\r\n" for v in invite.headers.get_fields("via"))
    ctype = f"Content-Type: {content_type}\r\n" if sdp and content_type else ""
    return (f"SIP/2.0 {status} Whatever {B_NUM}\r\n{vias}"
            f"From: {invite.headers.get('from')}\r\nTo: {invite.headers.get('to')};tag={tag}\r\n"
            f"Call-ID: {invite.call_id}\r\nCSeq: {invite.headers.get('cseq')}\r\n"
            f"Contact: <sip:{B_NUM}@127.0.0.1:5090>\r\nServer: callee-pbx\r\n{extra}"
            f"{ctype}Content-Length: {len(sdp)}\r\n\r\n") + sdp.decode("utf-8", "surrogateescape")


def a_cancel(a_inv: Request) -> str:
    """The caller's CANCEL of `a_inv` (§9.1: its Via, From, To, Call-ID and CSeq number)."""
    return (f"CANCEL {a_inv.uri} SIP/2.0\r\nVia: {a_inv.headers.get('via')}\r\n"
            f"Max-Forwards: 70\r\nFrom: {a_inv.headers.get('from')}\r\n"
            f"To: {a_inv.headers.get('to')}\r\nCall-ID: {a_inv.call_id}\r\n"
            f"CSeq: {a_inv.cseq.number} CANCEL\r\nContent-Length: 0\r\n\r\n")


def in_dialog(method: str, *, ruri: str, from_: str, to: str, call_id: str, cseq: int,
              via: str) -> str:
    return (f"{method} {ruri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from_}\r\n"
            f"To: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
            f"Content-Length: 0\r\n\r\n")


def run(test: Callable[[Harness], Coroutine[Any, Any, None]], **kw: Any) -> Harness:
    harness = Harness(**kw)

    async def main() -> None:
        await test(harness)
    asyncio.run(main())
    return harness


def bind_axb(h: Harness) -> None:
    h.store.create(mode="axb", tenant="demo", a=A_NUM, b=B_NUM, x=X, ttl=0)


def no_identity(message: Request | Response, *secrets: str) -> None:
    text = message.to_bytes().decode()
    for secret in secrets:
        assert secret not in text, f"{secret} leaked in {text}"


async def answered_call(h: Harness) -> tuple[Request, Request]:
    """Drive A → sipmask → B to a confirmed call; returns (leg A INVITE, leg B INVITE)."""
    bind_axb(h)
    await h.deliver(a_invite(), A_ADDR)
    [trying] = h.take(A_ADDR)
    assert isinstance(trying, Response) and trying.status == 100
    [b_inv] = h.take(B_ADDR)
    assert isinstance(b_inv, Request) and b_inv.method == "INVITE"
    await h.deliver(b_response(b_inv, 180), B_ADDR)
    [ringing] = h.take(A_ADDR)
    assert isinstance(ringing, Response) and ringing.status == 180
    await h.deliver(b_response(b_inv, 200, sdp=B_SDP), B_ADDR)
    sent_b = h.take(B_ADDR)
    assert [m.method for m in sent_b if isinstance(m, Request)] == ["ACK"]
    [ok] = h.take(A_ADDR)
    assert isinstance(ok, Response) and ok.status == 200
    a_inv = parse_message(a_invite().encode())
    assert isinstance(a_inv, Request)
    ack = in_dialog("ACK", ruri=f"sip:{X}@127.0.0.1:5060", from_=a_inv.headers.get("from") or "",
                    to=ok.headers.get("to") or "", call_id=a_inv.call_id, cseq=10,
                    via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKack1")
    await h.deliver(ack, A_ADDR)
    return a_inv, b_inv
