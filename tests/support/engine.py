"""Shared drivers for the call engine tests; peers are bytes in, bytes out, no sockets.

`Harness` drives the sans-IO call core (b2bua/core.py) with no event loop: the real
transaction layer and the core share one fake clock, and the harness plays the shell, as
b2bua/engine.py does: after each batch it performs the core's actions with the in-memory
parts the design injects for unit tests (MemoryStore, MemoryCdrLog, a media stand-in) and
feeds their results back as events. A test can hold results of some kinds back (a slow
store, a slow media backend) and release them later. Timers fire when a test moves the
clock, at once.

`ShellHarness` runs the asyncio shell itself (b2bua/engine.Engine) over the same layer,
for what only the shell does: tasks, the CDR group commit's writer thread, metrics.

Leg A's peer (the trunk) is 192.0.2.10:5060, leg B's (trunk.outbound) 127.0.0.1:5090. The
SIPp tests run the real store, media and server.

Announcements are off in `harness_config` (the default config plays `unbound`, `ext_prompt`
and `recording_notice`): a test of another rule sees the bare refusals and answers it
expects; tests/unit/b2bua/test_announcing.py turns them on. The media stand-in's prompts
play until the test ends them (`Harness.prompt_ends`), or until StopPrompt or MediaDelete
ends them as the real backends do.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Sequence
from typing import Any

from sipmask.b2bua.actions import (
    CallFinished,
    Cancel,
    CdrCommitted,
    CollectDigits,
    CommitCdr,
    CoreAction,
    CoreEvent,
    DigitHeard,
    EarlyOpened,
    Emit,
    JournalDone,
    JournalUp,
    Lookup,
    LookupDone,
    MediaAnswer,
    MediaDelete,
    MediaDone,
    MediaOffer,
    OpenEarly,
    PlayPrompt,
    PromptEnded,
    RecordingStopped,
    Refused,
    Respond,
    SendAck,
    SendFailed,
    SendRequest,
    StartRecording,
    StopDigits,
    StopPrompt,
    StopRecording,
)
from sipmask.b2bua.call import Leg
from sipmask.b2bua.core import CallCore, Policy
from sipmask.b2bua.engine import Engine
from sipmask.cdr.store import MemoryCdrLog
from sipmask.clock import FakeClock
from sipmask.config import loader
from sipmask.config.schema import Config
from sipmask.errors import MediaError, TransactionError
from sipmask.media.backend import PlayEnd
from sipmask.sip.message import Request, Response
from sipmask.sip.parser import parse_message
from sipmask.sip.transaction import TransactionLayer
from sipmask.store import offload
from sipmask.store.memory import MemoryStore

A_ADDR = ("192.0.2.10", 5060)
B_ADDR = ("127.0.0.1", 5090)
X = "700100000000001"
A_NUM, B_NUM, STRANGER = "13800000001", "13900000002", "13700000003"
TRUNK_ALLOW = "trunks.carrier.inbound_allow=['192.0.2.0/24', '127.0.0.0/8']"
LISTEN_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}

A_SDP = (b"v=0\r\no=alice 1 1 IN IP4 192.0.2.10\r\ns=Zhang\r\nc=IN IP4 192.0.2.10\r\n"
         b"t=0 0\r\nm=audio 16000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
         b"a=rtpmap:101 telephone-event/8000\r\n")
B_SDP = (b"v=0\r\no=bob 2 2 IN IP4 198.51.100.7\r\ns=Li\r\nc=IN IP4 198.51.100.7\r\n"
         b"t=0 0\r\nm=audio 18000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


class RelaySdp:
    """Media stand-in: answers every offer/answer with sipmask's own address and a port per
    leg, and records what it was asked. Synchronous: the core's harness performs it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.deleted: list[str] = []
        # ("start", call id, tenant) / ("stop", call id, ""), in order
        self.recordings: list[tuple[str, str, str]] = []
        self.recording_fails = False     # stop_recording's outcome: failed (ENOSPC)
        # (offer/answer, leg, the SDP it was given, the leg's SIP source it was told)
        self.seen: list[tuple[str, str, bytes, str | None]] = []
        # Media services: what open_early answers ("sdp", "none": no stream can carry a
        # prompt, "error": the backend refuses), the prompts asked for, in order, as
        # (call id, leg, key), those still playing ((call id, leg) -> PlayPrompt id), the
        # legs whose keys are collected, and how a prompt ends at once (None: it plays on).
        self.early = "sdp"
        self.prompts: list[tuple[str, str, str]] = []
        self.playing: dict[tuple[str, str], int] = {}
        self.collecting: set[tuple[str, str]] = set()
        self.prompt_outcome: PlayEnd | None = None

    def _sdp(self, port: int) -> bytes:
        return (f"v=0\r\no=- 7 7 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n").encode()

    def offer(self, call_id: str, leg: str, sdp: bytes, *,
              sip_source: str | None = None) -> bytes:
        self.calls.append(("offer", call_id, leg))
        self.seen.append(("offer", leg, sdp, sip_source))
        return self._sdp(self._facing_other(leg))

    def answer(self, call_id: str, leg: str, sdp: bytes, *,
               sip_source: str | None = None) -> bytes:
        self.calls.append(("answer", call_id, leg))
        self.seen.append(("answer", leg, sdp, sip_source))
        return self._sdp(self._facing_other(leg))

    @staticmethod
    def _facing_other(leg: str) -> int:
        # SDP from leg A goes to B with the B-facing relay port, and the other way round.
        return 30002 if leg == "a" else 30000

    def delete(self, call_id: str) -> list[PromptEnded]:
        """The call's media is gone: its prompts end CLOSED, its keys are no longer heard."""
        self.deleted.append(call_id)
        self.collecting = {k for k in self.collecting if k[0] != call_id}
        ended = [k for k in self.playing if k[0] == call_id]
        return [PromptEnded(self.playing.pop(k), PlayEnd.CLOSED) for k in ended]

    def open_early(self, call_id: str, leg: str, sdp: bytes, *,
                   sip_source: str | None = None) -> bytes | None:
        self.calls.append(("early", call_id, leg))
        self.seen.append(("early", leg, sdp, sip_source))
        if self.early == "error":
            raise MediaError("no ports left")
        if self.early == "none":
            return None
        return (b"v=0\r\no=- 9 9 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                b"m=audio 30000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
                b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n")

    def play(self, op: int, call_id: str, leg: str, key: str) -> PromptEnded | None:
        assert call_id not in self.deleted, "a prompt on a call whose media is gone"
        self.prompts.append((call_id, leg, key))
        if self.prompt_outcome is not None:
            return PromptEnded(op, self.prompt_outcome)
        replaced = self.playing.get((call_id, leg))
        self.playing[(call_id, leg)] = op
        return None if replaced is None else PromptEnded(replaced, PlayEnd.REPLACED)

    def stop_play(self, call_id: str, leg: str) -> PromptEnded | None:
        op = self.playing.pop((call_id, leg), None)
        return None if op is None else PromptEnded(op, PlayEnd.STOPPED)

    def start_recording(self, call_id: str, tenant: str) -> None:
        assert call_id not in self.deleted, "recording a call whose media is gone"
        self.recordings.append(("start", call_id, tenant))

    def stop_recording(self, call_id: str) -> str | None:
        """The file name the backend's outcome gives, None when it failed."""
        assert call_id not in self.deleted, "the recording outlived the call's media"
        self.recordings.append(("stop", call_id, ""))
        return None if self.recording_fails else call_id.partition("@")[0] + ".wav"


class AsyncRelaySdp:
    """RelaySdp behind the asyncio MediaPort the shell awaits."""

    def __init__(self, sync: RelaySdp | None = None) -> None:
        self.sync = sync if sync is not None else RelaySdp()

    async def offer(self, call_id: str, leg: str, sdp: bytes, *,
                    sip_source: str | None = None) -> bytes:
        return self.sync.offer(call_id, leg, sdp, sip_source=sip_source)

    async def answer(self, call_id: str, leg: str, sdp: bytes, *,
                     sip_source: str | None = None) -> bytes:
        return self.sync.answer(call_id, leg, sdp, sip_source=sip_source)

    async def delete(self, call_id: str) -> None:
        self.sync.delete(call_id)


# Announcements off unless a test turns them on (module docstring).
NO_ANNOUNCEMENTS = ("announcements.unbound=null", "announcements.ext_prompt=null",
                    "announcements.recording_notice=null")


def harness_config(ring_timeout_s: int = 60, overrides: Sequence[str] = ()) -> Config:
    return loader.loads(loader.default_text(), [f"sip.ring_timeout_s={ring_timeout_s}",
                                                TRUNK_ALLOW, *NO_ANNOUNCEMENTS, *overrides])


class Peers:
    """The wire both harnesses share: what sipmask sent, parsed, by destination."""

    def __init__(self, layer: TransactionLayer) -> None:
        self.layer = layer
        self.wire: list[tuple[Request | Response, tuple[str, int]]] = []
        # Every message sent, with its transport (take() does not consume this one).
        self.sent: list[tuple[Request | Response, tuple[str, int], str]] = []
        # (peer, transport) of the TCP/TLS connections the fake server says are open.
        self.open: set[tuple[tuple[str, int], str]] = set()

    def _collect(self) -> None:
        for out in self.layer.outgoing():
            message = parse_message(out.data)
            self.wire.append((message, out.dest))
            self.sent.append((message, out.dest, out.transport))

    def take(self, dest: tuple[str, int] | None = None) -> list[Request | Response]:
        """Messages sent (to `dest`) since the last take."""
        self._collect()
        picked = [m for m, d in self.wire if dest is None or d == dest]
        self.wire = [(m, d) for m, d in self.wire if not (dest is None or d == dest)]
        return picked


class Harness(Peers):
    """The call core, driven with no event loop (module docstring)."""

    def __init__(self, ring_timeout_s: int = 60, overrides: Sequence[str] = (), *,
                 policy: Callable[[Config, FakeClock], Policy] | None = None,
                 media: RelaySdp | None = None, cdrs: MemoryCdrLog | None = None) -> None:
        super().__init__(TransactionLayer(local_via_host="127.0.0.1", local_port=5060))
        self.config = harness_config(ring_timeout_s, overrides)
        self.clock = FakeClock()
        self.store = MemoryStore(tenants=self.config.tenants)
        self.cdrs = cdrs if cdrs is not None else MemoryCdrLog()
        self.media = media if media is not None else RelaySdp()
        self.policy = policy(self.config, self.clock) if policy is not None else None
        self.core = CallCore(self.config, listen_ports=LISTEN_PORTS, policy=self.policy)
        # What the shell would hand to webhooks and metrics.
        self.emitted: list[Emit] = []
        self.finished: list[CallFinished] = []
        self.refused: list[str] = []
        # Results of these kinds wait in `held` for release(): a slow store or backend.
        self.hold: set[type] = set()
        self.held: list[CoreEvent] = []
        self.refuse_sends = False           # the transaction layer refuses every request

    # driving the core ---------------------------------------------------------------------
    def feed(self, event: CoreEvent | None) -> None:
        """One batch as the shell runs it: the core takes `event` (None: its due timers),
        its actions are performed, then each result not held goes in the same way."""
        pending: list[CoreEvent | None] = [event]
        while pending:
            next_event = pending.pop(0)
            now, wall = self.clock.monotonic(), self.clock.wall()
            if next_event is None:
                self.core.handle_timer(now, wall)
            else:
                self.core.handle(next_event, now, wall)
            for action in self.core.actions():
                result = self.perform(action)
                for one in result if isinstance(result, list) else [result]:
                    if one is None:
                        continue
                    if type(one) in self.hold:
                        self.held.append(one)
                    else:
                        pending.append(one)
        self._collect()

    def release(self, count: int | None = None) -> None:
        """Feed the held results (the first `count` of them), oldest first."""
        n = len(self.held) if count is None else count
        ready, self.held = self.held[:n], self.held[n:]
        for event in ready:
            self.feed(event)

    def deliver(self, data: bytes | str, source: tuple[str, int],
                transport: Any = "udp") -> None:
        # Text made with surrogateescape carries binary bodies (ISUP) through unchanged.
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        self.layer.receive(parse_message(raw), source, transport, self.clock.monotonic())
        self._to_core()

    def _to_core(self) -> None:
        self._collect()
        for event in self.layer.events():
            self.feed(event)

    def prompt_ends(self, call_id: str, leg: str = "a",
                    reason: PlayEnd = PlayEnd.FINISHED) -> None:
        """The prompt playing to `leg` of `call_id` stops by itself (`reason`)."""
        self.feed(PromptEnded(self.media.playing.pop((call_id, leg)), reason))

    def press(self, keys: str, call_id: str, leg: str = "a") -> None:
        """`leg` keys `keys` in its media (RFC 4733): heard only while collected."""
        for key in keys:
            if (call_id, leg) in self.media.collecting:
                self.feed(DigitHeard(call_id, Leg(leg), key))

    def advance(self, seconds: float) -> None:
        """Move the clock: the transaction layer's timers, then the calls' fire if due."""
        self.clock.advance(seconds)
        self.layer.handle_timer(self.clock.monotonic())
        self._to_core()
        self.feed(None)

    # the shell's part ---------------------------------------------------------------------
    def perform(self, action: CoreAction) -> CoreEvent | list[PromptEnded] | None:
        now = self.clock.monotonic()
        layer = self.layer
        if isinstance(action, Respond):
            with contextlib.suppress(TransactionError):
                layer.send_response(action.txn_id, action.response, now)
        elif isinstance(action, SendRequest):
            dest, transport = action.dest, action.transport
            if action.reuse is not None and action.reuse in self.open:
                dest, transport = action.reuse
            if self.refuse_sends:
                return SendFailed(action.txn_id)
            try:
                layer.send_request(action.request, dest, transport, now, branch=action.branch)
            except TransactionError:
                return SendFailed(action.txn_id)
        elif isinstance(action, Cancel):
            with contextlib.suppress(TransactionError):
                layer.cancel(action.invite_txn_id, now)
        elif isinstance(action, SendAck):
            dest, transport = action.dest, action.transport
            if action.reuse is not None and action.reuse in self.open:
                dest, transport = action.reuse
            layer.send_ack(action.invite_txn_id, action.ack, dest, transport)
        elif isinstance(action, Lookup):
            # As the shell does (offload.lookup: `ext` only when the caller gave one).
            future = offload.lookup(self.store, action.x, action.caller, action.at,
                                    action.ext)
            try:
                return LookupDone(action.id, future.result())
            except Exception as exc:
                return LookupDone(action.id, None, exc)
        elif isinstance(action, MediaOffer | MediaAnswer):
            ask = self.media.offer if isinstance(action, MediaOffer) else self.media.answer
            try:
                return MediaDone(action.id, ask(action.call_id, action.leg, action.sdp,
                                                sip_source=action.sip_source))
            except Exception as exc:
                return MediaDone(action.id, error=exc)
        elif isinstance(action, MediaDelete):
            return self.media.delete(action.call_id)
        elif isinstance(action, OpenEarly):
            try:
                return EarlyOpened(action.id, self.media.open_early(
                    action.call_id, action.leg, action.sdp, sip_source=action.sip_source))
            except MediaError as exc:
                return EarlyOpened(action.id, error=exc)
        elif isinstance(action, PlayPrompt):
            return self.media.play(action.id, action.call_id, action.leg, action.key)
        elif isinstance(action, StopPrompt):
            return self.media.stop_play(action.call_id, action.leg)
        elif isinstance(action, CollectDigits):
            self.media.collecting.add((action.call_id, action.leg))
        elif isinstance(action, StopDigits):
            self.media.collecting.discard((action.call_id, action.leg))
        elif isinstance(action, StartRecording):
            self.media.start_recording(action.call_id, action.tenant)
        elif isinstance(action, StopRecording):
            return RecordingStopped(action.id, self.media.stop_recording(action.call_id))
        elif isinstance(action, CommitCdr):
            self.cdrs.write(action.record)
            return CdrCommitted(action.id)
        elif isinstance(action, JournalUp):
            self.cdrs.call_up(action.record)
            return JournalDone(action.id)
        elif isinstance(action, Emit):
            self.emitted.append(action)
        elif isinstance(action, CallFinished):
            self.finished.append(action)
        elif isinstance(action, Refused):
            self.refused.append(action.reason)
        return None

    def assert_nothing_left(self) -> None:
        """No call, lookup, result wait, call timer or tracked transaction is left."""
        core = self.core
        assert core.calls == {} and core.active_calls == 0
        assert core._waits == {} and core._by_txn == {} and core._by_a == {}
        assert core._by_a_txn == {} and core.setups == {}
        assert core.abandoned == {}         # attempts a failover gave up (b2bua/failover.py)
        assert core.next_timer() is None


class ShellHarness(Peers):
    """SipPort for the asyncio Engine, backed by a real TransactionLayer."""

    def __init__(self, *, config: Config | None = None, media: Any = None, cdrs: Any = None,
                 **engine: Any) -> None:
        super().__init__(TransactionLayer(local_via_host="127.0.0.1", local_port=5060))
        self.config = config if config is not None else harness_config()
        self.clock = FakeClock()
        self.store = MemoryStore(tenants=self.config.tenants)
        self.cdrs = cdrs if cdrs is not None else MemoryCdrLog()
        self.media = media if media is not None else AsyncRelaySdp()
        self.engine = Engine(self, config=self.config, store=self.store, media=self.media,
                             cdrs=self.cdrs, clock=self.clock, **engine)
        self.delivering = False         # SipPort: never inside a server drain here
        self.holding = False
        self.unheld = 0                 # sends asked for outside a held batch
        self.flushes = 0

    # SipPort ------------------------------------------------------------------------------
    def respond(self, txn_id: str, response: Response) -> None:
        self._sending()
        self.layer.send_response(txn_id, response, self.clock.monotonic())

    def send_request(self, request: Request, dest: tuple[str, int], transport: Any, *,
                     branch: str | None = None) -> str:
        self._sending()
        return self.layer.send_request(request, dest, transport, self.clock.monotonic(),
                                       branch=branch)

    def cancel(self, invite_txn_id: str) -> str | None:
        self._sending()
        return self.layer.cancel(invite_txn_id, self.clock.monotonic())

    def send_ack(self, invite_txn_id: str | None, ack: Request, dest: tuple[str, int],
                 transport: Any) -> None:
        self._sending()
        self.layer.send_ack(invite_txn_id, ack, dest, transport)

    def _sending(self) -> None:
        if not self.holding:
            self.unheld += 1

    def hold(self) -> None:
        self.holding = True

    def flush(self) -> None:
        self.holding = False
        self.flushes += 1
        self._collect()

    def local_port(self, transport: Any) -> int:
        return LISTEN_PORTS[transport]

    def connected(self, dest: tuple[str, int], transport: Any) -> bool:
        return (dest, transport) in self.open

    # the peers ------------------------------------------------------------------------------
    def deliver(self, data: bytes | str, source: tuple[str, int],
                transport: Any = "udp") -> None:
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        self.layer.receive(parse_message(raw), source, transport, self.clock.monotonic())
        self._collect()
        for event in self.layer.events():
            self.engine.handle_event(event)

    async def idle(self, timeout_s: float = 10.0) -> None:
        """Wait for every task the engine started (a media round trip, a CDR commit on the
        group commit's writer thread) by awaiting the tasks themselves, not by polling.
        `timeout_s` only keeps a broken test from hanging the suite."""
        await self.idle_except(set(), timeout_s)

    async def idle_except(self, waiting: set[asyncio.Future[Any]],
                          timeout_s: float = 10.0) -> None:
        """As idle, for every task but those in `waiting` (held on purpose by the test)."""
        while others := set(self.engine._tasks) - waiting:
            _done, pending = await asyncio.wait(others, timeout=timeout_s)
            if pending:
                raise AssertionError(f"{len(pending)} engine tasks still waiting")
        self._collect()


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


def answer_byes(h: Harness) -> None:
    """Both parties answer our BYEs 200."""
    for dest in (A_ADDR, B_ADDR):
        for bye in [m for m, d, _t in h.sent if d == dest and isinstance(m, Request)
                    and m.method == "BYE"]:
            h.deliver(b_response(bye, 200).replace("200 Whatever", "200 OK"), dest)


def run(test: Callable[[Harness], None], **kw: Any) -> Harness:
    harness = Harness(**kw)
    test(harness)
    return harness


def bind_axb(h: Harness | ShellHarness) -> None:
    h.store.create(mode="axb", tenant="demo", a=A_NUM, b=B_NUM, x=X, ttl=0)


def no_identity(message: Request | Response, *secrets: str) -> None:
    """No secret appears in the message. A port (up to 5 digits) counts only as a whole run
    of digits: sipmask's random 10-digit o= sess-id may hold "18000" by chance, which is no
    leak. A phone number counts anywhere (a "+86" or "0" prefix must not hide it)."""
    text = message.to_bytes().decode()
    for secret in secrets:
        port = secret.isdigit() and len(secret) <= 5
        pattern = rf"(?<![0-9]){secret}(?![0-9])" if port else re.escape(secret)
        assert re.search(pattern, text) is None, f"{secret} leaked in {text}"


def caller_invite() -> Request:
    """The caller's INVITE as the core saw it (a_invite's defaults), parsed."""
    a_inv = parse_message(a_invite().encode())
    assert isinstance(a_inv, Request)
    return a_inv


def answered_call(h: Harness) -> tuple[Request, Request]:
    """Drive A → sipmask → B to a confirmed call; returns (leg A INVITE, leg B INVITE)."""
    bind_axb(h)
    h.deliver(a_invite(), A_ADDR)
    [trying] = h.take(A_ADDR)
    assert isinstance(trying, Response) and trying.status == 100
    [b_inv] = h.take(B_ADDR)
    assert isinstance(b_inv, Request) and b_inv.method == "INVITE"
    h.deliver(b_response(b_inv, 180), B_ADDR)
    [ringing] = h.take(A_ADDR)
    assert isinstance(ringing, Response) and ringing.status == 180
    h.deliver(b_response(b_inv, 200, sdp=B_SDP), B_ADDR)
    sent_b = h.take(B_ADDR)
    assert [m.method for m in sent_b if isinstance(m, Request)] == ["ACK"]
    [ok] = h.take(A_ADDR)
    assert isinstance(ok, Response) and ok.status == 200
    a_inv = caller_invite()
    ack = in_dialog("ACK", ruri=f"sip:{X}@127.0.0.1:5060", from_=a_inv.headers.get("from") or "",
                    to=ok.headers.get("to") or "", call_id=a_inv.call_id, cseq=10,
                    via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKack1")
    h.deliver(ack, A_ADDR)
    return a_inv, b_inv
