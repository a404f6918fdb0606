"""Issue 12, engine side, in the in-memory harness of test_engine.py (peers are bytes).

What crosses between the legs: bodies only as sipmask's own rewritten SDP or a rebuilt DTMF
body (a multipart's SDP part is rewritten, ISUP and every other part dropped; a body
without Content-Type is refused), sipmask's own Allow, no header value with control
characters. Besides: an out-of-order BYE answered 500 without breaking the call, OPTIONS
checked like INVITE, which refusals leave CDRs (and through the group commit), per-caller
admission before the lookup, the leg's SIP source given to the media backend, TCP/TLS
connection reuse and TLS Contacts.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from sipmask.b2bua.actions import MediaDone
from sipmask.b2bua.engine import Engine
from sipmask.cdr.record import Cdr
from sipmask.cdr.store import MemoryCdrLog
from sipmask.clock import FakeClock
from sipmask.errors import ForbiddenError, SipError
from sipmask.sip.message import Request, Response
from sipmask.sip.methods import ALLOW
from sipmask.sip.parser import parse_message
from sipmask.store.base import Binding
from tests.support.engine import (
    A_ADDR,
    A_NUM,
    A_SDP,
    B_ADDR,
    B_NUM,
    B_SDP,
    STRANGER,
    AsyncRelaySdp,
    Harness,
    RelaySdp,
    ShellHarness,
    X,
    a_cancel,
    a_invite,
    answered_call,
    b_response,
    bind_axb,
    caller_invite,
    harness_config,
    in_dialog,
    run,
)

# An SDP naming an address and an origin user the caller chose (the review's example).
CALLER_SDP = (b"v=0\r\no=alice-13800000001 5 5 IN IP4 127.1.2.3\r\ns=-\r\n"
              b"c=IN IP4 127.1.2.3\r\nt=0 0\r\nm=audio 16400 RTP/AVP 0\r\n"
              b"a=rtpmap:0 PCMU/8000\r\n")
# An ISUP IAM as SIP-I trunks attach it (Q.1912.5): binary, the calling number in BCD, and
# the number in ASCII too so that a byte-level leak of either form is caught.
ISUP = (b"\x01\x00\x60\x01\x0a\x00\x02\x0a\x08\x83\x90\x39\x00\x00\x00\x00\x10"
        b"\x0a\x07\x03\x13\x31\x08\x00\x00\x00\x10\x00" + A_NUM.encode())
BOUNDARY = "sipi-7f3a"
MULTIPART = f"multipart/mixed;boundary={BOUNDARY}"


def sip_i_body(sdp: bytes) -> bytes:
    """SDP + ISUP in one multipart/mixed body (RFC 2046 §5.1.1)."""
    return (f"--{BOUNDARY}\r\nContent-Type: application/sdp\r\n\r\n".encode() + sdp
            + f"\r\n--{BOUNDARY}\r\nContent-Type: application/isup;version=itu-t92+\r\n"
              f"Content-Disposition: signal;handling=optional\r\n\r\n".encode()
            + ISUP + f"\r\n--{BOUNDARY}--\r\n".encode())


def text(body: bytes) -> str:
    return body.decode("utf-8", "surrogateescape")


def with_body(message: str, body: bytes, content_type: str | None) -> str:
    """`message` (ending in Content-Length: 0) with `body`, labelled or not."""
    head = message[:message.index("Content-Length:")]
    ctype = f"Content-Type: {content_type}\r\n" if content_type else ""
    return f"{head}{ctype}Content-Length: {len(body)}\r\n\r\n{text(body)}"


def sip_i_invite(branch: str = "z9hG4bKsipi") -> str:
    invite = a_invite(branch=branch)
    return with_body(invite[:invite.index("Content-Type:")] + "Content-Length: 0\r\n\r\n",
                     sip_i_body(CALLER_SDP), MULTIPART)


def never_on(h: Harness, dest: tuple[str, int], *secrets: bytes) -> None:
    """None of `secrets` in any message sipmask sent to `dest` so far."""
    for message, to, _transport in h.sent:
        if to != dest:
            continue
        data = message.to_bytes()
        for secret in secrets:
            assert secret not in data, f"{secret!r} reached {dest}: {data!r}"


def a_ack(a_inv: Request, ok: Response) -> str:
    """The caller's ACK to the 2xx `ok` sipmask sent it."""
    return in_dialog("ACK", ruri=f"sip:{X}@127.0.0.1:5060", from_=a_inv.headers.get("from")
                     or "", to=ok.headers.get("to") or "", call_id=a_inv.call_id, cseq=10,
                     via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKack1")


def a_request(h: Harness, a_inv: Request, method: str, cseq: int, *,
              branch: str | None = None) -> str:
    [ctx] = h.core.calls.values()
    return in_dialog(method, ruri=f"sip:{X}@127.0.0.1:5060",
                     from_=a_inv.headers.get("from") or "",
                     to=f"<sip:{X}@127.0.0.1>;tag={ctx.a_tag}", call_id=a_inv.call_id,
                     cseq=cseq, via="SIP/2.0/UDP 192.0.2.10:5060;branch="
                                    f"{branch or f'z9hG4bK{method.lower()}{cseq}'}")


def b_request(h: Harness, b_inv: Request, method: str, cseq: int) -> str:
    return in_dialog(method, ruri=f"sip:{X}@127.0.0.1:5060",
                     from_=f"<sip:{B_NUM}@127.0.0.1:5090>;tag=tb1",
                     to=b_inv.headers.get("from") or "", call_id=b_inv.call_id, cseq=cseq,
                     via=f"SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKb{method.lower()}{cseq}")


def requests(messages: Sequence[Request | Response]) -> list[Request]:
    return [m for m in messages if isinstance(m, Request)]


def responses(messages: Sequence[Request | Response]) -> list[Response]:
    return [m for m in messages if isinstance(m, Response)]


# -- 1. bodies -------------------------------------------------------------------------------
def test_reinvite_sdp_without_content_type_is_refused_400_and_never_crosses() -> None:
    """RFC 3261 §20.15: a body needs a Content-Type. The review's re-INVITE reached B
    labelled application/sdp with the caller's c= and o= intact."""
    def flow(h: Harness) -> None:
        a_inv, _b_inv = answered_call(h)
        h.take()
        reinvite = with_body(a_request(h, a_inv, "INVITE", 12), CALLER_SDP, None)
        h.deliver(reinvite, A_ADDR)
        assert h.take(B_ADDR) == []
        [refused] = responses(h.take(A_ADDR))
        assert (refused.status, refused.cseq.number) == (400, 12)
        assert "Content-Type" in refused.reason
        never_on(h, B_ADDR, b"127.1.2.3", b"alice", A_NUM.encode())
        # The call goes on: a proper re-INVITE is relayed.
        h.deliver(with_body(a_request(h, a_inv, "INVITE", 13), CALLER_SDP,
                                  "application/sdp"), A_ADDR)
        [re_b] = requests(h.take(B_ADDR))
        assert re_b.method == "INVITE" and b"m=audio 30002" in re_b.body

    h = run(flow)
    assert h.core.stats["body_untyped"] == 1


def test_sip_i_invite_gets_its_sdp_relayed_and_no_isup_crosses() -> None:
    def flow(h: Harness) -> None:
        bind_axb(h)
        h.deliver(sip_i_invite(), A_ADDR)
        [b_inv] = requests(h.take(B_ADDR))
        assert b_inv.content_type == "application/sdp"
        assert b"m=audio 30002" in b_inv.body and b"c=IN IP4 127.0.0.1" in b_inv.body
        never_on(h, B_ADDR, ISUP[:12], A_NUM.encode(), b"isup", b"127.1.2.3", b"alice",
                 BOUNDARY.encode())
        # The media backend was given the SDP part alone, with leg A's SIP source.
        assert h.media.seen[0] == ("offer", "a", CALLER_SDP, A_ADDR[0])

    h = run(flow)
    assert h.core.stats["body_parts_dropped"] == 1


def test_sip_i_answers_and_reinvites_cross_as_sdp_only() -> None:
    """B's 183, 200 and re-INVITE 200 carry SDP + ISUP; A's re-INVITE does too: each time
    the SDP part is rewritten by the media backend and the rest is dropped."""
    callee_sdp = B_SDP.replace(b"o=bob", b"o=bob-13900000002")

    def flow(h: Harness) -> None:
        bind_axb(h)
        h.deliver(a_invite(), A_ADDR)
        [b_inv] = requests(h.take(B_ADDR))
        for status in (183, 200):
            h.deliver(b_response(b_inv, status, sdp=sip_i_body(callee_sdp),
                                       content_type=MULTIPART), B_ADDR)
        early, ok = responses(h.take(A_ADDR))[-2:]
        for resp in (early, ok):
            assert resp.content_type == "application/sdp"
            assert b"m=audio 30000" in resp.body
        [ctx] = h.core.calls.values()
        a_inv = caller_invite()
        ack = a_ack(a_inv, ok)
        h.deliver(ack, A_ADDR)
        h.take()
        h.deliver(with_body(a_request(h, a_inv, "INVITE", 12), sip_i_body(CALLER_SDP),
                                  MULTIPART), A_ADDR)
        [re_b] = requests(h.take(B_ADDR))
        assert re_b.content_type == "application/sdp" and b"m=audio 30002" in re_b.body
        h.deliver(b_response(re_b, 200, sdp=sip_i_body(callee_sdp),
                                   content_type=MULTIPART), B_ADDR)
        [ok_a] = responses(h.take(A_ADDR))
        assert ok_a.content_type == "application/sdp" and b"m=audio 30000" in ok_a.body
        never_on(h, B_ADDR, ISUP[:12], A_NUM.encode(), b"isup", b"127.1.2.3", b"alice")
        never_on(h, A_ADDR, ISUP[:12], B_NUM.encode(), b"isup", b"198.51.100.7", b"bob")
        assert ctx.call.state.value == "confirmed"
        fed = [(op, leg, sdp) for op, leg, sdp, _ in h.media.seen]
        assert fed == [("offer", "a", A_SDP), ("answer", "b", callee_sdp),
                       ("answer", "b", callee_sdp), ("offer", "a", CALLER_SDP),
                       ("answer", "b", callee_sdp)]

    h = run(flow)
    assert h.core.stats["body_parts_dropped"] == 4


def test_delayed_offer_answer_in_a_multipart_ack_crosses_as_sdp() -> None:
    def flow(h: Harness) -> None:
        bind_axb(h)
        invite = a_invite()
        invite = invite[:invite.index("Content-Type:")] + "Content-Length: 0\r\n\r\n"
        h.deliver(invite, A_ADDR)
        [b_inv] = requests(h.take(B_ADDR))
        h.deliver(b_response(b_inv, 200, sdp=B_SDP), B_ADDR)
        ok = responses(h.take(A_ADDR))[-1]
        a_inv = caller_invite()
        ack = a_ack(a_inv, ok)
        h.deliver(with_body(ack, sip_i_body(CALLER_SDP), MULTIPART), A_ADDR)
        [ack_b] = requests(h.take(B_ADDR))
        assert ack_b.method == "ACK" and ack_b.content_type == "application/sdp"
        assert b"m=audio 30002" in ack_b.body
        never_on(h, B_ADDR, ISUP[:12], A_NUM.encode(), b"127.1.2.3")

    run(flow)


def test_info_bodies_cross_only_as_rebuilt_dtmf() -> None:
    """INFO DTMF (application/dtmf-relay) crosses rebuilt from its Signal and Duration; any
    other body (here text naming the caller) is dropped and counted."""
    def flow(h: Harness) -> None:
        a_inv, _b_inv = answered_call(h)
        h.take()
        dtmf = b"Signal=5\r\nDuration=160\r\nCaller=13800000001\r\n"
        h.deliver(with_body(a_request(h, a_inv, "INFO", 12), dtmf,
                                  "application/dtmf-relay"), A_ADDR)
        [info_b] = requests(h.take(B_ADDR))
        assert info_b.content_type == "application/dtmf-relay"
        assert info_b.body == b"Signal=5\r\nDuration=160\r\n"
        h.deliver(b_response(info_b, 200), B_ADDR)
        h.take()
        note = b"call me back on 13800000001"
        h.deliver(with_body(a_request(h, a_inv, "INFO", 13), note, "text/plain"),
                        A_ADDR)
        [info_b2] = requests(h.take(B_ADDR))
        assert info_b2.body == b"" and info_b2.content_type is None
        never_on(h, B_ADDR, A_NUM.encode())

    h = run(flow)
    assert h.core.stats["body_parts_dropped"] == 1


# -- 2. out-of-order CSeq -------------------------------------------------------------------
def test_bye_with_a_lower_cseq_gets_500_and_the_call_survives() -> None:
    """RFC 3261 §12.2.2: INFO CSeq 20 then BYE CSeq 5 in the same dialog: the BYE is out of
    order (500). A valid BYE afterwards still ends the call and reaches B."""
    def flow(h: Harness) -> None:
        a_inv, _b_inv = answered_call(h)
        h.take()
        h.deliver(a_request(h, a_inv, "INFO", 20), A_ADDR)
        [info_b] = requests(h.take(B_ADDR))
        h.deliver(b_response(info_b, 200), B_ADDR)
        assert [r.status for r in responses(h.take(A_ADDR))] == [200]
        h.deliver(a_request(h, a_inv, "BYE", 5), A_ADDR)
        [refused] = responses(h.take(A_ADDR))
        assert (refused.status, refused.cseq.method) == (500, "BYE")
        assert h.take(B_ADDR) == []
        [ctx] = h.core.calls.values()
        assert ctx.call.state.value == "confirmed"
        h.deliver(a_request(h, a_inv, "BYE", 21), A_ADDR)
        assert [r.status for r in responses(h.take(A_ADDR))] == [200]
        [bye_b] = requests(h.take(B_ADDR))
        assert bye_b.method == "BYE"
        h.deliver(b_response(bye_b, 200), B_ADDR)
        assert h.core.calls == {}

    h = run(flow)
    [cdr] = h.cdrs.records
    assert (cdr.sip_status, cdr.release_side) == (200, "caller")


# -- 4. Allow ----------------------------------------------------------------------------------
def test_allow_on_each_leg_is_sipmasks_own() -> None:
    theirs = "INVITE, ACK, BYE, CANCEL, OPTIONS, REFER, NOTIFY, SUBSCRIBE"

    def flow(h: Harness) -> None:
        bind_axb(h)
        h.deliver(a_invite(extra=f"Allow: {theirs}\r\n"), A_ADDR)
        [b_inv] = requests(h.take(B_ADDR))
        assert b_inv.headers.get_fields("allow") == [ALLOW]
        h.deliver(b_response(b_inv, 180, extra=f"Allow: {theirs}\r\n"), B_ADDR)
        h.deliver(b_response(b_inv, 200, sdp=B_SDP, extra=f"Allow: {theirs}\r\n"),
                        B_ADDR)
        ringing, ok = responses(h.take(A_ADDR))[-2:]
        assert ringing.headers.get_fields("allow") == [ALLOW]
        assert ok.headers.get_fields("allow") == [ALLOW]
        never_on(h, A_ADDR, b"REFER", b"SUBSCRIBE")
        never_on(h, B_ADDR, b"REFER", b"SUBSCRIBE")

    run(flow)


def test_relayed_reinvite_and_its_2xx_carry_sipmasks_allow() -> None:
    def flow(h: Harness) -> None:
        a_inv, _b_inv = answered_call(h)
        h.take()
        reinvite = with_body(a_request(h, a_inv, "INVITE", 12), A_SDP, "application/sdp")
        reinvite = reinvite.replace("Max-Forwards: 70\r\n",
                                    "Max-Forwards: 70\r\nAllow: INVITE, REFER\r\n")
        h.deliver(reinvite, A_ADDR)
        [re_b] = requests(h.take(B_ADDR))
        assert re_b.headers.get_fields("allow") == [ALLOW]
        h.deliver(b_response(re_b, 200, sdp=B_SDP, extra="Allow: INVITE, REFER\r\n"),
                        B_ADDR)
        [ok_a] = responses(h.take(A_ADDR))
        assert ok_a.headers.get_fields("allow") == [ALLOW]

    run(flow)


# -- 5. control characters --------------------------------------------------------------------
def test_header_values_with_control_characters_never_cross() -> None:
    def flow(h: Harness) -> None:
        bind_axb(h)
        extra = ("Session-Expires: 1800\x1b[2J\r\nMin-SE: 90\x00\r\n"
                 "Accept: application/sdp\x7f\r\nSupported: timer\r\n")
        h.deliver(a_invite(extra=extra), A_ADDR)
        [b_inv] = requests(h.take(B_ADDR))
        for name in ("session-expires", "min-se", "accept"):
            assert name not in b_inv.headers
        assert b_inv.headers.get("supported") == "timer, 100rel"
        never_on(h, B_ADDR, b"\x1b", b"\x00", b"\x7f")
        h.deliver(b_response(b_inv, 200, sdp=B_SDP,
                                   extra="Require: timer\x07\r\nExpires: 30\r\n"), B_ADDR)
        ok = responses(h.take(A_ADDR))[-1]
        assert ok.status == 200 and "require" not in ok.headers
        assert ok.headers.get("expires") == "30"

    h = run(flow)
    assert h.core.stats["header_control_chars"] == 4


# -- 6. refusals and CDRs ---------------------------------------------------------------------
def test_acl_refusals_leave_no_cdr_but_are_counted() -> None:
    def flow(h: Harness) -> None:
        bind_axb(h)
        for i in range(50):
            h.deliver(a_invite(branch=f"z9hG4bKacl{i}"), ("203.0.113.9", 5060 + i))
        assert {r.status for r in responses(h.take())} == {403}

    h = run(flow)
    assert h.cdrs.records == []
    assert h.core.stats["refused_not_allowed"] == 50
    assert h.refused == ["acl"] * 50


def test_draining_503_leaves_no_cdr() -> None:
    def flow(h: Harness) -> None:
        bind_axb(h)
        h.core.draining = True
        h.deliver(a_invite(), A_ADDR)
        [busy] = responses(h.take(A_ADDR))
        assert (busy.status, busy.headers.get("retry-after")) == (503, "5")

    h = run(flow)
    assert h.cdrs.records == []
    assert h.core.stats["refused_rate_limited"] == 1


class ThreadedCdrLog(MemoryCdrLog):
    """A sink that blocks (like LMDB's): the shell's group commit writes it on its writer
    thread. Each write notes its thread and what had been sent by then."""

    blocking = True

    def __init__(self, h: ShellHarness) -> None:
        super().__init__()
        self.h = h
        self.lock = threading.Lock()
        self.batches: list[tuple[str, int]] = []     # (thread name, messages sent by then)

    def write(self, cdr: Cdr) -> None:
        raise AssertionError("a refusal's CDR written on the event loop")

    def write_batch(self, ops: Sequence[tuple[bool, Cdr]]) -> None:
        with self.lock:
            self.batches.append((threading.current_thread().name, len(self.h.sent)))
            for _final, cdr in ops:
                self.records.append(cdr)


def threaded_shell(media: Any = None) -> tuple[ShellHarness, ThreadedCdrLog]:
    h = ShellHarness(media=media, cdrs=MemoryCdrLog())
    sink = ThreadedCdrLog(h)
    h.engine = Engine(h, config=h.config, store=h.store, media=h.media, cdrs=sink,
                      clock=h.clock)
    return h, sink


def test_404_cdr_is_group_committed_before_the_404_leaves() -> None:
    async def flow() -> None:
        h, sink = threaded_shell()
        bind_axb(h)
        h.deliver(a_invite(x="700100000000999"), A_ADDR)
        await h.idle()                          # the commit, on the writer thread
        [(thread, sent_before)] = sink.batches
        assert thread != threading.main_thread().name
        statuses = [m.status for m, _d, _t in h.sent if isinstance(m, Response)]
        assert statuses[:sent_before] == [100]          # only 100 Trying before the commit
        assert statuses[sent_before:] == [404]
        [cdr] = sink.records
        assert (cdr.sip_status, cdr.unconnected_cause) == (404, "no_binding")
        h.engine._cdr_group.close()

    asyncio.run(flow())


class RefusingMedia(RelaySdp):
    """The media backend refusing the caller's SDP (m=audio 4000/2: 488)."""

    def offer(self, call_id: str, leg: str, sdp: bytes, *,
              sip_source: str | None = None) -> bytes:
        self.calls.append(("offer", call_id, leg))
        raise SipError("Not Acceptable Here", status=488)


def test_setup_failure_cdr_is_group_committed_before_the_488_leaves() -> None:
    # A flood of refused offers must not be one fsync each on the event loop (issue 12).
    async def flow() -> None:
        h, sink = threaded_shell(AsyncRelaySdp(RefusingMedia()))
        bind_axb(h)
        h.deliver(a_invite(), A_ADDR)
        await h.idle()
        [(thread, sent_before)] = sink.batches
        assert thread != threading.main_thread().name
        statuses = [m.status for m, _d, _t in h.sent if isinstance(m, Response)]
        assert statuses[:sent_before] == [100]
        assert statuses[sent_before:] == [488]
        [cdr] = sink.records
        assert (cdr.sip_status, cdr.unconnected_cause) == (488, "callee_failed")
        assert h.engine.active_calls == 0
        h.engine._cdr_group.close()

    asyncio.run(flow())


def test_a_caller_cancelling_while_its_offer_is_set_up_leaves_no_media_session() -> None:
    # DESIGN rule 13: the session the offer opened is given back on this path too.
    def flow(h: Harness) -> None:
        h.hold.add(MediaDone)                 # the offer waits (a slow rtpengine)
        bind_axb(h)
        h.deliver(a_invite(), A_ADDR)
        h.deliver(a_cancel(caller_invite()), A_ADDR)
        [(op, call_id, _leg)] = h.media.calls
        assert op == "offer" and h.take(B_ADDR) == []
        h.hold.clear()
        h.release()
        statuses = [m.status for m, _d, _t in h.sent if isinstance(m, Response)]
        assert statuses == [100, 200, 487]          # 200 to the CANCEL, 487 to the INVITE
        assert h.media.deleted == [call_id]

    run(flow)


class AttemptPolicy:
    """A Policy that records admission calls; admit_attempt refuses past `limit` attempts."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self.attempts: list[tuple[str, str]] = []
        self.routed: list[str] = []

    def admit(self, request: Request, source: tuple[str, int], trunk: str | None,
              now: float | None = None) -> None:
        pass

    def admit_attempt(self, x: str, caller: str, now: float | None = None) -> None:
        self.attempts.append((x, caller))
        if len(self.attempts) > self.limit:
            raise RateLimited("Forbidden")

    def admit_route(self, binding: Binding, caller: str, direction: str,
                    now: float | None = None) -> None:
        self.routed.append(caller)

    def call_started(self, call: Any) -> None:
        pass

    def call_ended(self, call: Any) -> None:
        pass

    def max_duration(self, binding: Binding) -> float | None:
        return None


class RateLimited(ForbiddenError):
    cause = "rate_limited"


def test_every_attempt_spends_admission_before_the_lookup() -> None:
    """404s and stranger 403s count against the caller's and X's rates: the review sorted
    17 Xs into unbound/AXB/AXN with one caller at 99 probes/s and per_caller at 1/s."""
    policy = AttemptPolicy(limit=3)
    looked_up: list[str] = []

    def flow(h: Harness) -> None:
        h.core.policy = policy
        bind_axb(h)
        route = h.store.route

        def counted_route(x: str, caller: str, now: float) -> Any:
            looked_up.append(x)
            return route(x, caller, now)
        h.store.route = counted_route  # type: ignore[method-assign]
        h.deliver(a_invite(x="700100000000999", branch="z9hG4bKp1"), A_ADDR)   # 404
        h.deliver(a_invite(caller=STRANGER, branch="z9hG4bKp2"), A_ADDR)       # 403
        h.deliver(a_invite(branch="z9hG4bKp3"), A_ADDR)                         # call
        h.deliver(a_invite(x="700100000000998", branch="z9hG4bKp4"), A_ADDR)   # limited
        finals = [r.status for r in responses(h.take(A_ADDR)) if r.status > 100]
        assert finals == [404, 403, 403]

    h = run(flow)
    assert policy.attempts == [("700100000000999", A_NUM), (X, STRANGER), (X, A_NUM),
                               ("700100000000998", A_NUM)]
    assert looked_up == ["700100000000999", X, X]       # the 4th never reached the store
    assert policy.routed == [A_NUM]
    assert [(c.sip_status, c.unconnected_cause) for c in h.cdrs.records] == [
        (404, "no_binding"), (403, "not_allowed"), (403, "rate_limited")]


# -- 7. media latching: the SIP source of each leg --------------------------------------------
def test_media_backend_is_told_each_legs_sip_source() -> None:
    def flow(h: Harness) -> None:
        bind_axb(h)
        h.deliver(a_invite(), A_ADDR)
        [b_inv] = requests(h.take(B_ADDR))
        h.deliver(b_response(b_inv, 200, sdp=B_SDP), ("127.0.0.7", 5090))
        ok = responses(h.take(A_ADDR))[-1]
        a_inv = caller_invite()
        ack = a_ack(a_inv, ok)
        h.deliver(ack, A_ADDR)
        h.take()
        reinvite = with_body(b_request(h, b_inv, "INVITE", 2), B_SDP, "application/sdp")
        h.deliver(reinvite, ("127.0.0.8", 5090))
        [re_a] = requests(h.take(A_ADDR))
        h.deliver(b_response(re_a, 200, sdp=A_SDP).replace(
            "SIP/2.0 200 Whatever", "SIP/2.0 200 OK"), A_ADDR)

    h = run(flow)
    assert [(op, leg, source) for op, leg, _sdp, source in h.media.seen] == [
        ("offer", "a", "192.0.2.10"), ("answer", "b", "127.0.0.7"),
        ("offer", "b", "127.0.0.8"), ("answer", "a", "192.0.2.10")]


# -- 8. TCP connection reuse -------------------------------------------------------------------
NAT_SOURCE = ("192.0.2.10", 40123)      # where A's TCP connection comes from (behind NAT)


def tcp_invite() -> str:
    return a_invite().replace("SIP/2.0/UDP 192.0.2.10:5060", "SIP/2.0/TCP 192.0.2.10:5060")


def tcp_call(h: Harness) -> Request:
    bind_axb(h)
    h.open.add((NAT_SOURCE, "tcp"))
    h.deliver(tcp_invite(), NAT_SOURCE, "tcp")
    [b_inv] = requests(h.take(B_ADDR))
    h.deliver(b_response(b_inv, 200, sdp=B_SDP), B_ADDR)
    return b_inv


@pytest.mark.parametrize(("connected", "dest"), [(True, NAT_SOURCE), (False, A_ADDR)])
def test_bye_to_a_tcp_caller_reuses_its_connection_while_open(
        connected: bool, dest: tuple[str, int]) -> None:
    def flow(h: Harness) -> None:
        b_inv = tcp_call(h)
        if not connected:
            h.open.clear()
        h.take()
        h.deliver(b_request(h, b_inv, "BYE", 5), B_ADDR)
        [bye_a] = [(m, d, t) for m, d, t in h.sent
                   if isinstance(m, Request) and m.method == "BYE"]
        # Open: the connection A's INVITE came on; closed: A's Contact, as before.
        assert bye_a[1:] == (dest, "tcp" if connected else "udp")

    run(flow)


# -- 9. TLS ------------------------------------------------------------------------------------
def test_tls_trunk_gets_its_invite_over_tls_with_a_tls_contact() -> None:
    def flow(h: Harness) -> None:
        bind_axb(h)
        h.deliver(a_invite(), A_ADDR)
        [(b_inv, dest, transport)] = [(m, d, t) for m, d, t in h.sent
                                      if isinstance(m, Request)]
        assert (dest, transport) == (("127.0.0.1", 5091), "tls")
        assert b_inv.headers.get("contact") == f"<sip:{X}@127.0.0.1:5061;transport=tls>"
        assert b_inv.top_via.transport == "TLS"
    run(flow, overrides=["trunks.carrier.outbound=tls://127.0.0.1:5091"])


def test_sips_caller_gets_a_sips_contact_and_its_bye_over_tls() -> None:
    """RFC 3261 §12.1.1: the UAS's Contact is a sips URI when the request's Request-URI was;
    its in-dialog requests go over TLS to the sips target (default port 5061)."""
    def flow(h: Harness) -> None:
        bind_axb(h)
        invite = (a_invite().replace(f"INVITE sip:{X}@", f"INVITE sips:{X}@")
                  .replace("SIP/2.0/UDP 192.0.2.10:5060", "SIP/2.0/TLS 192.0.2.10:5061")
                  .replace(f"Contact: <sip:{A_NUM}@192.0.2.10:5060>",
                           f"Contact: <sips:{A_NUM}@192.0.2.10>"))
        h.deliver(invite, ("192.0.2.10", 40999), "tls")
        [b_inv] = requests(h.take(B_ADDR))
        h.deliver(b_response(b_inv, 200, sdp=B_SDP), B_ADDR)
        ok = responses(h.take())[-1]
        assert ok.headers.get("contact") == f"<sips:{X}@127.0.0.1:5061>"
        h.deliver(b_request(h, b_inv, "BYE", 5), B_ADDR)
        [bye_a] = [(m, d, t) for m, d, t in h.sent
                   if isinstance(m, Request) and m.method == "BYE"]
        assert bye_a[1:] == (("192.0.2.10", 5061), "tls")     # no open connection to reuse

    run(flow)



def test_flood_refusals_are_answered_with_the_real_metrics_and_policy() -> None:
    """The policy's metric names (flood, direction, concurrency) are not all labels the real
    Metrics knows; counting a refusal must never keep its answer from leaving."""
    from sipmask.observability.metrics import Metrics
    from sipmask.policy import CallPolicy

    config = harness_config(overrides=["policy.source_flood={rate: 0.01, burst: 1}"])

    async def flow() -> ShellHarness:
        h = ShellHarness(config=config, policy=CallPolicy(config, FakeClock()),
                         metrics=Metrics())
        bind_axb(h)
        for i in range(3):
            h.deliver(a_invite(branch=f"z9hG4bKfl{i}"), A_ADDR)
        await h.idle()
        finals = [r.status for r in responses(h.take(A_ADDR)) if r.status > 100]
        assert finals == [503, 503]
        return h

    h = asyncio.run(flow())
    assert h.engine.stats["refused_rate_limited"] == 2
    assert h.cdrs.records == []


def test_invite_body_without_content_type_is_400_and_b_is_never_called() -> None:
    def flow(h: Harness) -> None:
        bind_axb(h)
        h.deliver(a_invite().replace("Content-Type: application/sdp\r\n", ""), A_ADDR)
        assert h.take(B_ADDR) == []
        [refused] = [r for r in responses(h.take(A_ADDR)) if r.status > 100]
        assert refused.status == 400 and "Content-Type" in refused.reason

    h = run(flow)
    assert h.core.stats["body_untyped"] == 1


@pytest.mark.parametrize("connected", [True, False])
def test_bye_to_a_tcp_trunk_reuses_sipmasks_connection_while_open(connected: bool) -> None:
    trunk = ("127.0.0.1", 5092)

    def flow(h: Harness) -> None:
        bind_axb(h)
        h.deliver(a_invite(), A_ADDR)
        [b_inv] = requests(h.take(trunk))
        assert b_inv.headers.get("contact") == f"<sip:{X}@127.0.0.1:5060;transport=tcp>"
        h.deliver(b_response(b_inv, 200, sdp=B_SDP), trunk, "tcp")
        if connected:
            h.open.add((trunk, "tcp"))
        a_inv = parse_message(a_invite().encode())
        assert isinstance(a_inv, Request)
        h.take()
        h.deliver(a_request(h, a_inv, "BYE", 11), A_ADDR)
        [bye_b] = [(d, t) for m, d, t in h.sent if isinstance(m, Request) and m.method == "BYE"]
        # Open: the connection B's answers came on; closed: B's Contact (UDP, no transport).
        assert bye_b == ((trunk, "tcp") if connected else (B_ADDR, "udp"))

    run(flow, overrides=["trunks.carrier.inbound_allow=['192.0.2.0/24']",
                         f"trunks.carrier.outbound=tcp://{trunk[0]}:{trunk[1]}"])
