"""The B2BUA engine: wires transactions, dialogs, the store, routing, masking, media and CDRs.

The server hands every TU event of the transaction layer to `Engine.handle_event`. The call
logic itself is the table in b2bua/call.py; this module turns its actions into SIP messages
and media operations. Media operations may wait (rtpengine answers over UDP), so each call
runs its work through a small per-call queue (`_CallContext.submit`): one call's events are
handled strictly in order, different calls run concurrently.

Leg A is the trunk that sent the INVITE for X (sipmask is the UAS there), leg B the new call
to the real party (sipmask is the UAC). Nothing crosses between the legs but what
masking.py lets through and the SDP the media backend rewrote.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from sipmask import numbers
from sipmask.b2bua import masking, routing
from sipmask.b2bua.call import Action, Call, CallEvent, CallState, Leg
from sipmask.b2bua.timers import CallTimer, CallTimers
from sipmask.cdr.group import CdrGroupCommit
from sipmask.cdr.record import Cdr
from sipmask.cdr.store import CdrSink
from sipmask.clock import Clock
from sipmask.config.schema import Config, TrunkConfig
from sipmask.errors import CallStateError, MediaError, ParseError, SipError, TransactionError
from sipmask.observability import logging as sm_logging
from sipmask.sip.dialog import Dialog, DialogState, new_call_id, new_tag
from sipmask.sip.message import Request, Response, build_response
from sipmask.sip.methods import ALLOW, KNOWN_METHODS, RELAYED_IN_DIALOG, no_dialog_status
from sipmask.sip.transaction import (
    AckReceived,
    AckTimeout,
    CancelReceived,
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TransactionTerminated,
    TransactionTimeout,
    TransportFailed,
)
from sipmask.sip.transports import Address, Transport, is_reliable
from sipmask.store.base import Binding, BindingStore

log = sm_logging.get_logger("sipmask.b2bua")


SDP = masking.SDP
TRUNK_CACHE_MAX = 4096        # sources whose trunk (or none) _trunk_for remembers


class SipPort(Protocol):
    """What the engine needs of the SIP server around it (SipServer implements it)."""

    def respond(self, txn_id: str, response: Response) -> None: ...
    def send_request(self, request: Request, dest: Address, transport: Transport) -> str: ...
    def cancel(self, invite_txn_id: str) -> str | None: ...
    def send_ack(self, invite_txn_id: str | None, ack: Request, dest: Address,
                 transport: Transport) -> None: ...
    def local_port(self, transport: Transport) -> int: ...
    def connected(self, dest: Address, transport: Transport) -> bool: ...


class MediaPort(Protocol):
    """The media backend, rtpengine-shaped (media/backend.py's MediaBackend fits)."""

    async def offer(self, call_id: str, leg: str, sdp: bytes, *,
                    sip_source: str | None = None) -> bytes: ...
    async def answer(self, call_id: str, leg: str, sdp: bytes, *,
                     sip_source: str | None = None) -> bytes: ...
    async def delete(self, call_id: str) -> Any: ...


class EventSink(Protocol):
    """Call events for webhooks (events/outbox.py); optional."""

    def call_event(self, kind: str, call: Call, at: float, cdr: Cdr | None = None) -> None: ...


class Policy(Protocol):
    """Who may call (the hardening issue's ACLs, rate limits, blacklists): raises a SipError
    (403/486/503, with its CDR cause) to refuse, returns to admit. policy.CallPolicy fits."""

    def admit(self, request: Request, source: Address, trunk: str | None) -> None: ...
    def admit_attempt(self, x: str, caller: str) -> None:
        """Every attempt, before the lookup (so 404s and strangers' 403s count too): spends
        the per-caller and per-X rates; raises SipError(403, cause rate_limited) when over."""
    def admit_route(self, binding: Binding, caller: str, direction: str) -> None: ...
    def call_started(self, call: Call) -> None: ...
    def call_ended(self, call: Call) -> None: ...
    def max_duration(self, binding: Binding) -> float | None: ...


class CallMetrics(Protocol):
    """observability/metrics.Metrics fits."""

    def call_finished(self, call: Call) -> None: ...
    def refused(self, reason: str) -> None: ...


def _opens_offer(request: Request) -> bool:
    """An in-dialog request that starts an offer/answer exchange: a re-INVITE (an empty one
    asks for an offer in the 2xx) or an UPDATE with a body (RFC 3311 §5.2)."""
    return request.method == "INVITE" or (request.method == "UPDATE" and bool(request.body))


class Role(Enum):
    """What a transaction the engine sent is to its call (Engine._by_txn): its responses and
    its timeout mean different events."""

    __hash__ = object.__hash__     # identity, in C (as call.py's enums)

    B_INVITE = "b_invite"          # leg B's INVITE: 1xx/2xx/failure drive the call
    PRACK = "prack"                # our PRACK of B's reliable provisional (RFC 3262 §4)
    BYE_A = "bye_a"                # our BYE on leg A
    BYE_B = "bye_b"                # our BYE on leg B


_BYE_ROLE = {Leg.A: Role.BYE_A, Leg.B: Role.BYE_B}
_BYE_ROLES = frozenset(_BYE_ROLE.values())


@dataclass
class _Relay:
    """An in-dialog request relayed from one leg to the other: answer `origin` on `from_leg`
    with what the other leg answers."""

    ctx: _CallContext
    from_leg: Leg                 # the leg the request came from
    origin_txn: str
    request: Request
    sent_txn: str | None = None   # our transaction on the other leg (its 2xx get our ACK)
    offered: bool = False         # the request carried an SDP offer (crossing_body)


@dataclass
class _CallContext:
    call: Call
    a_invite: Request
    a_txn: str
    a_source: Address
    a_transport: Transport
    a_tag: str
    trunk: TrunkConfig
    b_tag: str
    b_dest: Address
    b_transport: Transport
    a_body: masking.Body = masking.NO_BODY              # what of A's INVITE body crosses
    b_source: Address | None = None                     # where leg B's signalling came from
    a_dialog: Dialog | None = None
    b_dialog: Dialog | None = None
    b_invite: Request | None = None
    b_txn: str | None = None
    b_acked: set[str] = field(default_factory=set)     # To tags we sent an ACK for
    pending_byes: set[str] = field(default_factory=set)
    relays: set[str] = field(default_factory=set)       # txn ids of relayed requests
    txns: set[str] = field(default_factory=set)         # every txn id this call put in _by_txn
    b_rseq: dict[str, int] = field(default_factory=dict)  # last in-order RSeq per To tag
    # (leg, CSeq) of an INVITE whose 2xx carried the offer -> (other leg, its CSeq, our
    # INVITE transaction there): the other leg's ACK waits for this leg's, which carries
    # the answer (RFC 3264 §4).
    late_acks: dict[tuple[Leg, int], tuple[Leg, int, str | None]] = field(
        default_factory=dict)
    max_duration_s: float | None = None                 # the binding's call length limit
    media_open: bool = False
    ring_sent: bool = False                             # the webhook's ring event went out
    queue: collections.deque[Callable[[], Awaitable[None]]] = field(
        default_factory=collections.deque)
    running: bool = False
    contacts: dict[Leg, str] = field(default_factory=dict)  # leg -> our Contact there
    a_key: tuple[str, str] = ("", "")                   # its key in Engine._by_a
    # leg -> (the dialog's next hop, where and how requests to it go): _next_hop's cache
    hops: dict[Leg, tuple[str, tuple[Address, Transport] | None]] = field(
        default_factory=dict)


class Engine:
    def __init__(self, sip: SipPort, *, config: Config, store: BindingStore, media: MediaPort,
                 cdrs: CdrSink, clock: Clock, events: EventSink | None = None,
                 policy: Policy | None = None, metrics: CallMetrics | None = None) -> None:
        self.sip = sip
        self.config = config
        self.store = store
        self.media = media
        self.cdrs = cdrs
        self._cdr_group = CdrGroupCommit(cdrs)
        self.clock = clock
        self.events = events
        self.policy = policy
        self.metrics = metrics
        self.calls: dict[str, _CallContext] = {}
        self._by_a: dict[tuple[str, str], _CallContext] = {}      # (Call-ID, From tag)
        self._by_a_txn: dict[str, _CallContext] = {}
        self._by_txn: dict[str, tuple[Role, _CallContext] | _Relay] = {}
        self._trunks_seen: dict[str, tuple[str | None, TrunkConfig | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self.draining = False
        self.stats = collections.Counter[str]()
        # The calls' timers on the injected clock; one loop timer is armed for the earliest
        # (_arm_timer), as SipServer does for the transaction layer's.
        self.timers = CallTimers()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    # -- entry point (server.RequestHandler) -------------------------------------------------
    def handle_request(self, event: RequestReceived) -> None:
        self._on_request(event)

    def handle_response(self, event: ResponseReceived | StrayResponse) -> None:
        self.handle_event(event)

    def handle_event(self, event: object) -> None:
        # One dict lookup on the event's type; a subclass is handled as its nearest base.
        for cls in type(event).__mro__:
            handler = _EVENT_HANDLERS.get(cls)
            if handler is not None:
                handler(self, event)
                return

    def _on_response_event(self, event: ResponseReceived) -> None:
        self._on_response(event.response, event.txn_id, event.source)

    def _on_txn_failed(self, event: TransactionTimeout | TransportFailed) -> None:
        self._on_timeout(event.txn_id, unreachable=isinstance(event, TransportFailed))

    def _on_ack_timeout(self, event: AckTimeout) -> None:
        ctx = self._by_a_txn.get(event.txn_id)
        if ctx is not None:
            self._fire(ctx, CallEvent.A_ACK_TIMEOUT)

    def _on_stray_event(self, event: StrayResponse) -> None:
        self._on_stray(event.response, event.source)

    @property
    def active_calls(self) -> int:
        return len(self.calls)

    # -- call timers (DESIGN rule 2) ---------------------------------------------------------
    def next_timer(self) -> float | None:
        """The earliest call timer deadline, on the clock's monotonic seconds."""
        return self.timers.next_timer()

    def handle_timer(self, now: float) -> None:
        """Fire every call timer due at `now` (monotonic seconds)."""
        for call_id, timer in self.timers.due(now):
            ctx = self.calls.get(call_id)
            if ctx is not None:
                self._fire(ctx, _TIMER_EVENTS[timer])

    def _start_timer(self, call_id: str, timer: CallTimer, after: float) -> None:
        self.timers.start(call_id, timer, self.clock.monotonic() + after)
        self._arm_timer()

    def _arm_timer(self) -> None:
        """Keep one loop timer armed no later than the earliest deadline; lazily, as
        SipServer._arm_timer: a deadline that moved later wakes it once for nothing."""
        when = self.timers.next_timer()
        armed = self._timer_at
        if when is None or (armed is not None and armed <= when):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return      # no loop (a test driving handle_timer itself)
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_later(max(0.0, when - self.clock.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.handle_timer(self.clock.monotonic())
        self._arm_timer()

    # -- requests ----------------------------------------------------------------------------
    def _on_request(self, event: RequestReceived) -> None:
        """Dispatch a request through the tables below the class (_OUT_OF_DIALOG,
        _IN_DIALOG), as sip/transaction.py keeps RFC 3261 §17."""
        request = event.request
        method = request.method
        try:
            has_to_tag = request.to.tag is not None
        except ParseError:
            has_to_tag = False
        if not has_to_tag:
            starts = _OUT_OF_DIALOG.get(method)
            if starts is not None:
                starts(self, event)
                return
        found = self._find_dialog(request)
        if found is None:
            # §12.2.2: no such dialog (481); §21.4.6 / §21.5.2: a method we know but do not
            # serve outside a dialog is 405, one we do not know at all 501 (both with Allow).
            status = no_dialog_status(method, has_to_tag)
            self._reply(event.txn_id, request, status,
                        extra=() if status == 481 else _ALLOW_HEADER)
            return
        ctx, leg = found
        if leg is Leg.B:
            ctx.b_source = event.source
        _IN_DIALOG.get(method, Engine._refuse_in_dialog)(self, event, ctx, leg)

    def _answer_options(self, event: RequestReceived) -> None:
        """§11.2: OPTIONS is answered as an INVITE would be, after the same checks (RFC 4475
        §3.3)."""
        try:
            routing.check_request(event.request)
        except SipError as exc:
            self._reply(event.txn_id, event.request, exc.status, extra=_refusal_headers(exc))
            return
        self._reply(event.txn_id, event.request, 200,
                    extra=(*_ALLOW_HEADER, ("Accept", SDP), ("Supported", "")))

    def _in_cseq_order(self, dialog: Dialog | None, event: RequestReceived) -> bool:
        """§12.2.2: a request whose CSeq is below the dialog's last is out of order: 500
        (False). The dialog and the call stay as they were, so a valid one still works."""
        if dialog is None:
            return True
        try:
            dialog.receive_request(event.request)
        except SipError as exc:
            self._reply(event.txn_id, event.request, exc.status, reason=exc.reason)
            return False
        return True

    def _on_bye(self, event: RequestReceived, ctx: _CallContext, leg: Leg) -> None:
        dialog = self._dialog_of(ctx, leg)
        if dialog is not None and dialog.state is DialogState.TERMINATED:
            dialog = None           # the call's table answers it (ENDED: 481)
        if self._in_cseq_order(dialog, event):
            self._fire(ctx, _BYE_EVENT[leg], origin=(event.txn_id, event.request))

    def _on_prack(self, event: RequestReceived, ctx: _CallContext, leg: Leg) -> None:
        if leg is Leg.A:
            # We never send reliable provisionals to A (no 100rel on leg A), so a PRACK
            # from A matches nothing (RFC 3262 §3).
            self._reply(event.txn_id, event.request, 481)
        else:
            # B's reliable provisionals are PRACKed by us; B has nothing to PRACK.
            self._refuse_in_dialog(event, ctx, leg)

    def _on_refer(self, event: RequestReceived, ctx: _CallContext, leg: Leg) -> None:
        # REFER would carry a URI across the legs (DESIGN.md "Privacy contract").
        self._reply(event.txn_id, event.request, 403, reason="Forbidden (REFER not allowed)")

    def _refuse_in_dialog(self, event: RequestReceived, ctx: _CallContext, leg: Leg) -> None:
        # §21.4.6: not relayed inside a dialog (even an unknown method: the dialog is ours).
        self._reply(event.txn_id, event.request, 405, extra=_ALLOW_HEADER)

    def _on_relayed(self, event: RequestReceived, ctx: _CallContext, leg: Leg) -> None:
        """A request for the other leg: in CSeq order, and no offer against a pending one."""
        request = event.request
        if not self._in_cseq_order(self._dialog_of(ctx, leg), event):
            return
        if ctx.relays and _opens_offer(request):
            pending = [r.from_leg for t in ctx.relays
                       if isinstance(r := self._by_txn.get(t), _Relay)
                       and _opens_offer(r.request)]
            if leg in pending:
                # RFC 3261 §14.2, RFC 3311 §5.2: a second offer (re-INVITE, UPDATE with SDP)
                # from a party whose first is still unanswered gets 500 with Retry-After 0-10 s.
                self._reply(event.txn_id, request, 500,
                            extra=(("Retry-After", str(random.randint(0, 10))),))
                return
            if pending:
                # An offer arriving while ours is pending towards this party (the other leg's,
                # relayed to it) is glare: 491 (§14.2, RFC 3311 §5.2).
                self._reply(event.txn_id, request, 491)
                return
        self._fire(ctx, _REQUEST_EVENT[leg], origin=(event.txn_id, request))

    def _new_call(self, event: RequestReceived) -> None:
        request = event.request
        now = self.clock.wall()
        trunk_name, trunk = self._trunk_for(event.source[0])
        # A source outside every trunk's ACL and a draining node are counted, not recorded:
        # the sender chose every field such a CDR would hold (the review's 3,808 INVITEs in
        # 5 s became 3,808 CDRs in a tenant's list), and writing them costs the most when
        # refusing should cost the least.
        if trunk is None:
            self._refuse(event, SipError("Forbidden", status=403, cause="not_allowed",
                                         metric="acl"), now, ())
            return
        if self.draining:
            self._refuse(event, SipError("Service Unavailable", status=503,
                                         cause="rate_limited", metric="overload"),
                         now, (("Retry-After", "5"),))
            return
        # CONTRACT: 100 Trying at once (§17.2.1 lets the TU send it; it stops A's Timer A).
        self._reply(event.txn_id, request, 100)
        try:
            routing.check_request(request)      # 416, 420 (§8.2.2), as for OPTIONS
            a_body = self._request_body(request)
            max_forwards = masking.next_max_forwards(request)
            if self.policy is not None:
                self.policy.admit(request, event.source, trunk_name)
            x = routing.target_x(request)
            caller = routing.caller_number(request, trust_pai=trunk.trust_pai)
            if self.policy is not None:
                # Every attempt spends the caller's and X's rates before the lookup: a 404
                # or a stranger's 403 answers a question about X too.
                self.policy.admit_attempt(x, caller)
            binding = self.store.route(x, caller, now)
            target = routing.route(binding, caller)
            if self.policy is not None:
                assert binding is not None
                self.policy.admit_route(binding, caller, target.direction)
        except SipError as exc:
            self._refuse(event, exc, now, _refusal_headers(exc))
            return
        assert binding is not None
        call = Call(call_id=new_call_id(host=self.config.sip.advertise), tenant=binding.tenant,
                    binding_id=binding.id, x=x, caller=caller, callee=target.callee,
                    direction=target.direction, invite_at=now)
        ctx = _CallContext(
            call=call, a_invite=request, a_txn=event.txn_id, a_source=event.source,
            a_transport=event.transport, a_tag=new_tag(), trunk=trunk, b_tag=new_tag(),
            b_dest=(trunk.outbound.host, trunk.outbound.port),
            b_transport=trunk.outbound.transport, a_body=a_body)
        if self.policy is not None:
            ctx.max_duration_s = self.policy.max_duration(binding)
            self.policy.call_started(call)
        self.calls[call.call_id] = ctx
        ctx.a_key = (request.call_id, request.from_.tag or "")
        self._by_a[ctx.a_key] = ctx
        self._by_a_txn[event.txn_id] = ctx
        self.stats["calls"] += 1
        log.info("call.routing", call_id=call.call_id, x=x, caller=caller,
                 callee=target.callee, direction=target.direction)
        self._submit(ctx, lambda: self._place_leg_b(ctx, max_forwards))

    def _refuse(self, event: RequestReceived, exc: SipError, now: float,
                extra: tuple[tuple[str, str], ...]) -> None:
        """Answer a refused attempt; count it, and record it (CONTRACT: one CDR per call
        attempt) unless it is an ACL or load-shedding refusal (`_unrecorded`)."""
        request = event.request
        cause = exc.cause or (
            "rate_limited" if exc.status == 503 else "not_allowed")
        self.stats[f"refused_{cause}"] += 1
        if self.metrics is not None:
            metric = exc.metric or _REFUSAL_REASON.get(exc.status, cause)
            try:
                self.metrics.refused(metric)
            except ValueError:
                # A reason the metrics do not know (their labels are a fixed set): the
                # refusal is still answered; the gap shows in stats, and once in the log
                # (a flood must not become a flood of log lines).
                key = f"refusal_metric_unknown_{metric}"
                self.stats[key] += 1
                if self.stats[key] == 1:
                    log.warning("metrics.refusal_unknown", reason=metric)
        # Problems of the message itself (400, 416, 420, 483) keep sipmask's reason phrase,
        # which names the problem (CONTRACT); policy refusals get the standard one.
        reason = exc.reason if exc.status in _REFUSAL_REASON else None
        if _unrecorded(exc):
            self._reply(event.txn_id, request, exc.status, reason=reason, extra=extra)
            return
        x = _safe(lambda: routing.target_x(request)) or ""
        caller = _safe(lambda: routing.caller_number(request, trust_pai=False)) or ""
        record = Cdr(call_id=new_call_id(host=self.config.sip.advertise),
                     tenant=self._tenant_of_x(x), binding_id=None, x=x, caller=caller,
                     callee=None, direction=None, invite_at=now, ring_at=None,
                     answer_at=None, end_at=now, duration_s=0.0, release_side="sipmask",
                     sip_status=exc.status, unconnected_cause=cause)
        log.info("call.refused", status=exc.status, cause=cause, x=x, caller=caller)
        self._spawn(self._record_refusal(event, record, exc.status, reason, extra))

    async def _record_refusal(self, event: RequestReceived, record: Cdr, status: int,
                              reason: str | None, extra: tuple[tuple[str, str], ...]) -> None:
        """The refusal's CDR through the group commit (no fsync on the event loop), on disk
        before the refusal leaves, as for calls (CONTRACT: before the last response)."""
        try:
            await self._cdr_group.write(record)
        except Exception:
            self.stats["cdr_write_failed"] += 1
            log.exception("cdr.write_failed", record=record.to_json())
        self._reply(event.txn_id, event.request, status, reason=reason, extra=extra)

    # -- what crosses ------------------------------------------------------------------------
    def _crossing(self, message: Request | Response) -> masking.Crossing:
        """masking's header rule, with its refusals counted."""
        crossed = masking.crossing(message)
        if crossed.dropped:
            self.stats["header_control_chars"] += crossed.dropped
        return crossed

    def _body_of(self, message: Request | Response) -> masking.Body:
        """masking's body rule (the one for every body that could cross), counted."""
        body = masking.crossing_body(message)
        if body.dropped:
            self.stats["body_parts_dropped" if not body.untyped else "body_untyped"] += \
                body.dropped
        return body

    def _request_body(self, request: Request) -> masking.Body:
        """A request's crossing body; one without Content-Type is answered 400 (§20.15: the
        header is mandatory with a body) so that its sender learns, rather than seeing an
        offer silently become a request for one."""
        body = self._body_of(request)
        if body.untyped:
            raise SipError("Bad Request (body without Content-Type)", status=400)
        return body

    async def _cross(self, ctx: _CallContext, leg: Leg, body: masking.Body, *,
                     offer: bool) -> tuple[bytes, str | None]:
        """`body` (from `leg`) as it reaches the other leg, and its Content-Type: an SDP
        through the media backend, as an offer or an answer; a DTMF body as rebuilt.
        Raises what the media backend raises."""
        if body.kind is masking.BodyKind.SDP:
            media = self.media.offer if offer else self.media.answer
            rewritten = await media(ctx.call.call_id, leg, body.content,
                                    sip_source=self._sip_source(ctx, leg))
            return rewritten, SDP
        if body.kind is masking.BodyKind.DTMF:
            return body.content, body.content_type
        return b"", None

    def _sip_source(self, ctx: _CallContext, leg: Leg) -> str:
        """The IP a leg's SIP signalling comes from (media.latching: signalled_ip): the
        caller's INVITE for leg A; leg B's last message, else the trunk's host."""
        if leg is Leg.A:
            return ctx.a_source[0]
        return ctx.b_source[0] if ctx.b_source is not None else ctx.b_dest[0]

    # -- leg B -------------------------------------------------------------------------------
    async def _place_leg_b(self, ctx: _CallContext, max_forwards: int) -> None:
        if ctx.call.state is not CallState.ROUTING:
            return
        call = ctx.call
        try:
            body, content_type = await self._cross(ctx, Leg.A, ctx.a_body, offer=True)
        except (MediaError, SipError, ValueError) as exc:
            log.warning("call.media_failed", call_id=call.call_id, error=str(exc))
            status = exc.status if isinstance(exc, SipError) else 503
            await self._apply(ctx, CallEvent.SETUP_FAILED, status_override=status)
            return
        if content_type == SDP:
            self._media_opened(ctx)
        if call.state is not CallState.ROUTING:     # cancelled while media was set up
            self._free_media(ctx)
            return
        trunk = ctx.trunk.outbound
        host = _host(trunk.host)
        target = f"sip:{call.callee}@{host}:{trunk.port};user=phone"
        sip = self.config.sip
        identity = f"<sip:{call.x}@{sip.advertise}>"
        local = f"{identity};tag={ctx.b_tag}"
        extra: list[tuple[str, str]] = [("Allow", ALLOW)]     # ours, not the caller's
        if sip.send_pai:
            extra.append(("P-Asserted-Identity", identity))
        crossing = self._crossing(ctx.a_invite).headers
        # RFC 3262: reliable provisionals are handled per leg; on leg B we support them.
        if not any(name.lower() in _SUPPORTED_NAMES for name, _ in crossing):
            extra.append(("Supported", "100rel"))
        else:
            crossing = [(n, f"{v}, 100rel") if n.lower() == "supported" else (n, v)
                        for n, v in crossing]
        request = masking.build_request(
            "INVITE", request_uri=target, local=local, remote=f"<{target}>",
            call_id=call.call_id, cseq=1, contact=self._contact_of(ctx, Leg.B),
            max_forwards=max_forwards, crossing=crossing, extra=extra, body=body,
            content_type=content_type)
        ctx.b_invite = request
        try:
            ctx.b_txn = self.sip.send_request(request, ctx.b_dest, ctx.b_transport)
        except (TransactionError, OSError) as exc:
            log.warning("call.leg_b_failed", call_id=call.call_id, error=str(exc))
            await self._apply(ctx, CallEvent.SETUP_FAILED)
            return
        self._track(ctx.b_txn, (Role.B_INVITE, ctx), ctx)
        await self._apply(ctx, CallEvent.LEG_B_SENT)
        self._start_timer(call.call_id, CallTimer.RING, self.config.sip.ring_timeout_s)

    # -- responses ---------------------------------------------------------------------------
    def _on_response(self, response: Response, txn_id: str, source: Address) -> None:
        entry = self._by_txn.get(txn_id)
        if entry is None:
            return
        if isinstance(entry, _Relay):
            if entry.from_leg is Leg.A:        # a request we relayed to B: B answers
                entry.ctx.b_source = source
            if response.status >= 200:
                self._by_txn.pop(txn_id, None)
                entry.ctx.relays.discard(txn_id)
            if response.status > 100:
                self._submit(entry.ctx, lambda: self._relay_response(entry, response))
            return
        role, ctx = entry
        status = response.status
        if role is not Role.BYE_A:             # every other request we send goes to B
            ctx.b_source = source
        if role is Role.B_INVITE:
            if status == 100:
                return
            if status < 200:
                if not _in_order_reliable(ctx, response):
                    return
                self._fire(ctx, CallEvent.B_PROVISIONAL, response=response)
            elif status < 300:
                self._fire(ctx, CallEvent.B_ANSWER, response=response)
            else:
                self._by_txn.pop(txn_id, None)
                self._fire(ctx, CallEvent.B_FAILURE, response=response)
        elif role in _BYE_ROLES and status >= 200:
            self._bye_done(ctx, txn_id)

    def _on_timeout(self, txn_id: str, *, unreachable: bool = False) -> None:
        """Timer B/F fired, or (`unreachable`) the transport could not deliver (§17.1.4):
        leg B's INVITE that never left ends the call with 503, cause trunk_unreachable."""
        entry = self._by_txn.pop(txn_id, None)
        if entry is None:
            return
        if isinstance(entry, _Relay):
            entry.ctx.relays.discard(txn_id)
            self._reply(entry.origin_txn, entry.request, 408)
            return
        role, ctx = entry
        if role is Role.B_INVITE:
            self._fire(ctx, CallEvent.B_UNREACHABLE if unreachable else CallEvent.B_TIMEOUT)
        elif role in _BYE_ROLES:
            self._bye_done(ctx, txn_id)

    def _on_stray(self, response: Response, source: Address) -> None:
        # A 2xx to leg B's INVITE retransmitted after its transaction ended (§13.2.2.4:
        # the UAC core ACKs every 2xx retransmission).
        try:
            ctx = self.calls.get(response.call_id)
            if ctx is None or response.cseq.method != "INVITE" or not 200 <= response.status < 300:
                return
        except ParseError:
            return
        ctx.b_source = source
        ctx.b_acked.discard(response.to.tag or "")
        self._fire(ctx, CallEvent.B_ANSWER, response=response)

    def _on_ack(self, event: AckReceived) -> None:
        found = self._find_dialog(event.request)
        if found is None:
            return
        ctx, leg = found
        if leg is Leg.B:
            ctx.b_source = event.source
        if leg is Leg.A and event.request.cseq.number == ctx.a_invite.cseq.number:
            self._fire(ctx, CallEvent.A_ACK)
        late = ctx.late_acks.pop((leg, event.request.cseq.number), None)
        if late is not None:
            self._submit(ctx, lambda: self._send_late_ack(ctx, leg, late, event.request))
        # Other ACKs for relayed re-INVITE 2xx are absorbed: we ACKed the other 2xx ourselves.

    def _on_cancel(self, event: CancelReceived) -> None:
        if event.invite_txn_id is None:
            return
        ctx = self._by_a_txn.get(event.invite_txn_id)
        if ctx is not None:
            self._fire(ctx, CallEvent.A_CANCEL)
            return
        # §9.2: a CANCEL of a re-INVITE we relayed: cancel ours on the other leg; its 487
        # comes back through the relay. (One still waiting for media is not sent yet.)
        found = self._find_dialog(event.request)
        if found is None:
            return
        for txn in found[0].relays:
            relay = self._by_txn.get(txn)
            if isinstance(relay, _Relay) and relay.origin_txn == event.invite_txn_id:
                with contextlib.suppress(TransactionError):
                    self.sip.cancel(txn)

    # -- the state machine -------------------------------------------------------------------
    def _fire(self, ctx: _CallContext, event: CallEvent, *, response: Response | None = None,
              origin: tuple[str, Request] | None = None) -> None:
        """Queue an event for the call; the per-call queue keeps its order."""
        self._submit(ctx, lambda: self._run(ctx, event, response, origin))

    async def _run(self, ctx: _CallContext, event: CallEvent, response: Response | None,
                   origin: tuple[str, Request] | None) -> None:
        if ctx.call.state is CallState.ENDED:
            if origin is not None:
                self._reply(origin[0], origin[1], 481)
            return
        try:
            actions = ctx.call.apply(event, self.clock.wall(),
                                     status=response.status if response else None)
        except CallStateError as exc:
            log.warning("call.unexpected_event", call_id=ctx.call.call_id, error=str(exc))
            if origin is not None:
                self._reply(origin[0], origin[1], 481 if event in (
                    CallEvent.A_BYE, CallEvent.B_BYE) else 491)
            return
        for action in actions:
            if action in _AWAITED_ACTIONS:
                await self._do(ctx, action, response, origin)
            else:
                self._do_now(ctx, action, response, origin)
        self._after(ctx)

    async def _apply(self, ctx: _CallContext, event: CallEvent,
                     status_override: int | None = None) -> None:
        """Apply an event inside an already running call task (no re-queueing). Its CDR goes
        through the group commit like any other: a flood of refused offers (488) must not
        become one fsync each on the event loop."""
        actions = ctx.call.apply(event, self.clock.wall())
        if status_override is not None and Action.ANSWER_A_503 in actions:
            ctx.call.sip_status = status_override
        for action in actions:
            if action is Action.WRITE_CDR:
                await self._commit_call_cdr(ctx)
            else:
                self._do_sync(ctx, action)
        self._after(ctx)

    def _after(self, ctx: _CallContext) -> None:
        call = ctx.call
        if call.state is not CallState.CALLING and call.state is not CallState.EARLY:
            self.timers.stop(call.call_id, CallTimer.RING)
        if call.state is CallState.ENDING and not ctx.pending_byes:
            actions = call.apply(CallEvent.BYES_DONE, self.clock.wall())
            for action in actions:
                self._do_sync(ctx, action)
        if call.state is CallState.ENDED:
            self._forget(ctx)

    def _do_sync(self, ctx: _CallContext, action: Action) -> None:
        """Actions that need no media round trip."""
        if action is Action.FREE_MEDIA:
            self._free_media(ctx)
        elif action in (Action.ANSWER_A_487, Action.ANSWER_A_408, Action.ANSWER_A_503):
            status = {Action.ANSWER_A_487: 487, Action.ANSWER_A_408: 408}.get(action, 503)
            if action is Action.ANSWER_A_503 and ctx.call.sip_status not in (None, 503):
                status = ctx.call.sip_status or 503
            self._reply(ctx.a_txn, ctx.a_invite, status, to_tag=ctx.a_tag)
        elif action is Action.CANCEL_B:
            if ctx.b_txn is not None:
                # A final response may have raced the CANCEL; then there is nothing to cancel.
                with contextlib.suppress(TransactionError):
                    self.sip.cancel(ctx.b_txn)
        elif action is Action.BYE_A:
            self._send_bye(ctx, Leg.A)
        elif action is Action.BYE_B:
            self._send_bye(ctx, Leg.B)
        else:
            raise CallStateError(f"{action.value} needs a response or request")

    async def _do(self, ctx: _CallContext, action: Action, response: Response | None,
                  origin: tuple[str, Request] | None) -> None:
        call = ctx.call
        if action is Action.RELAY_PROVISIONAL_TO_A:
            assert response is not None
            self._track_b_dialog(ctx, response)
            if response.headers.get("rseq") is not None and _requires_100rel(response) \
                    and ctx.b_dialog is not None:
                # RFC 3262 §4: PRACK the reliable provisional on leg B ourselves.
                prack = ctx.b_dialog.prack(response)
                txn = self._send_in_dialog(ctx, Leg.B, prack)
                if txn is not None:
                    self._track(txn, (Role.PRACK, ctx), ctx)
            body, content_type = await self._answer_body(ctx, response)
            contact = self._contact_of(ctx, Leg.A)
            if ctx.a_dialog is None and response.to.tag is not None:
                ctx.a_dialog = Dialog.as_uas(ctx.a_invite, ctx.a_tag, local_contact=contact)
            out = masking.build_relayed_response(
                response, ctx.a_invite, to_tag=ctx.a_tag, contact=contact, body=body,
                content_type=content_type, crossed=self._crossing(response), allow=ALLOW)
            self._send_response(ctx.a_txn, out)
            if not ctx.ring_sent:          # one ring event per call, however many 18x
                ctx.ring_sent = True
                self._emit("ring", ctx)
        elif action is Action.RELAY_ANSWER_TO_A:
            assert response is not None
            body, content_type = await self._answer_body(ctx, response)
            if call.state is not CallState.ANSWERED:
                return  # the call ended while media was being answered
            contact = self._contact_of(ctx, Leg.A)
            if ctx.a_dialog is None:
                ctx.a_dialog = Dialog.as_uas(ctx.a_invite, ctx.a_tag, local_contact=contact,
                                             confirmed=True)
            out = masking.build_relayed_response(
                response, ctx.a_invite, to_tag=ctx.a_tag, contact=contact, body=body,
                content_type=content_type, crossed=self._crossing(response), allow=ALLOW)
            ctx.a_dialog.on_response(out)
            # Crash safety: an answered call is journalled before the caller hears of it.
            await self._journal_up(ctx)
            self._send_response(ctx.a_txn, out)
            if ctx.max_duration_s is not None:
                # The binding's limit counts talk time, from the answer (CDR answer_at).
                self._start_timer(call.call_id, CallTimer.MAX_DURATION, ctx.max_duration_s)
            self._emit("answer", ctx)
            log.info("call.answered", call_id=call.call_id)
        elif action is Action.WRITE_CDR:
            # Group commit (cdr/group.py): on disk before the responses after it leave.
            await self._commit_call_cdr(ctx)
        elif action is Action.RELAY_REQUEST_TO_B or action is Action.RELAY_REQUEST_TO_A:
            assert origin is not None
            await self._relay_request(
                ctx, Leg.A if action is Action.RELAY_REQUEST_TO_B else Leg.B, origin)
        else:
            self._do_now(ctx, action, response, origin)

    def _do_now(self, ctx: _CallContext, action: Action, response: Response | None,
                origin: tuple[str, Request] | None) -> None:
        """The actions that never wait (all but _AWAITED_ACTIONS): run without a coroutine."""
        if action is Action.ACK_B:
            assert response is not None
            self._ack_b(ctx, response)
        elif action is Action.ANSWER_BYE_A or action is Action.ANSWER_BYE_B:
            if origin is not None:
                self._reply(origin[0], origin[1], 200)
        elif action is Action.RELAY_FAILURE_TO_A:
            assert response is not None
            out = masking.build_relayed_response(response, ctx.a_invite, to_tag=ctx.a_tag,
                                                 contact=None, crossed=self._crossing(response),
                                                 allow=ALLOW)
            self._send_response(ctx.a_txn, out)
        else:
            self._do_sync(ctx, action)

    # -- pieces ------------------------------------------------------------------------------
    def _track_b_dialog(self, ctx: _CallContext, response: Response) -> None:
        """§12.1.2: leg B's dialog from its first response with a To tag."""
        tag = response.to.tag
        if ctx.b_invite is None or tag is None:
            return
        if ctx.b_dialog is None or (ctx.b_dialog.remote_tag != tag
                                    and response.status >= 200):
            # The first dialog, or the one a 2xx confirms when B forked (§13.2.2.4).
            ctx.b_dialog = Dialog.as_uac(ctx.b_invite, response,
                                         local_contact=self._contact_of(ctx, Leg.B))
        elif response.status >= 200 and ctx.b_dialog.state is DialogState.EARLY:
            ctx.b_dialog.on_response(response)

    def _ack_b(self, ctx: _CallContext, response: Response) -> None:
        self._track_b_dialog(ctx, response)
        tag = response.to.tag or ""
        if tag in ctx.b_acked or ctx.b_dialog is None or ctx.b_invite is None:
            return  # the transaction layer re-sends our ACK for 2xx retransmissions
        ctx.b_acked.add(tag)
        if ctx.a_body.kind is not masking.BodyKind.SDP and \
                masking.crossing_body(response).kind is masking.BodyKind.SDP:
            # RFC 3264 §4 delayed offer: B's 2xx made the offer, A's ACK brings the answer.
            ctx.late_acks[(Leg.A, ctx.a_invite.cseq.number)] = (
                Leg.B, ctx.b_invite.cseq.number, ctx.b_txn)
            return
        ack = ctx.b_dialog.ack(ctx.b_invite.cseq.number)
        dest, transport = self._next_hop(ctx, Leg.B)
        self.sip.send_ack(ctx.b_txn, ack, dest, transport)

    async def _answer_body(self, ctx: _CallContext, response: Response
                           ) -> tuple[bytes, str | None]:
        """What of B's 18x/2xx body reaches A: its SDP as the answer to A's offer, or as the
        offer when A sent none (delayed offer, RFC 3264 §4)."""
        body = self._body_of(response)
        try:
            out = await self._cross(ctx, Leg.B, body, offer=not ctx.media_open)
        except (MediaError, SipError, ValueError) as exc:
            log.warning("call.media_answer_failed", call_id=ctx.call.call_id, error=str(exc))
            return b"", None
        if out[1] == SDP:
            self._media_opened(ctx)
        return out

    async def _relay_request(self, ctx: _CallContext, from_leg: Leg,
                             origin: tuple[str, Request]) -> None:
        txn_id, request = origin
        to_leg = from_leg.other
        dialog = self._dialog_of(ctx, to_leg)
        if dialog is None:
            self._reply(txn_id, request, 481)
            return
        try:
            incoming = self._request_body(request)
        except SipError as exc:
            self._reply(txn_id, request, exc.status, reason=exc.reason)
            return
        try:
            body, content_type = await self._cross(ctx, from_leg, incoming, offer=True)
        except (MediaError, SipError, ValueError) as exc:
            status = exc.status if isinstance(exc, SipError) else 488
            self._reply(txn_id, request, status)
            return
        extra = tuple(self._crossing(request).headers)
        if masking.carries_allow(request.method):
            extra = (("Allow", ALLOW), *extra)
        out = dialog.new_request(request.method, body=body, content_type=content_type,
                                 extra=extra)
        sent = self._send_in_dialog(ctx, to_leg, out)
        if sent is None:
            self._reply(txn_id, request, 503)
            return
        self._track(sent, _Relay(ctx, from_leg, txn_id, request, sent,
                                 offered=content_type == SDP), ctx)
        ctx.relays.add(sent)

    async def _relay_response(self, relay: _Relay, response: Response) -> None:
        ctx = relay.ctx
        answered_leg = relay.from_leg.other
        incoming = self._body_of(response)
        # RFC 3264 §4: a re-INVITE without a body asks for the offer in the 2xx.
        late_offer = relay.request.method == "INVITE" and not relay.offered and \
            incoming.kind is masking.BodyKind.SDP
        try:
            body, content_type = await self._cross(ctx, answered_leg, incoming,
                                                   offer=late_offer)
        except (MediaError, SipError, ValueError):
            body, content_type = b"", None
        if relay.request.method == "INVITE" and 200 <= response.status < 300:
            if late_offer and body:
                # The answer comes in the ACK of the leg we relay the offer to (§13.2.2.4).
                ctx.late_acks[(relay.from_leg, relay.request.cseq.number)] = (
                    answered_leg, response.cseq.number, relay.sent_txn)
            else:
                # ACK the other leg's 2xx ourselves (§13.2.2.4); the origin's ACK is absorbed.
                dialog = self._dialog_of(ctx, answered_leg)
                if dialog is not None:
                    ack = dialog.ack(response.cseq.number)
                    dest, transport = self._next_hop(ctx, answered_leg)
                    # With our transaction's id, 2xx retransmissions get this ACK again.
                    self.sip.send_ack(relay.sent_txn, ack, dest, transport)
        leg_contact = self._contact_of(ctx, relay.from_leg)
        origin_dialog = self._dialog_of(ctx, relay.from_leg)
        to_tag = origin_dialog.local_tag if origin_dialog is not None else None
        out = masking.build_relayed_response(
            response, relay.request, to_tag=to_tag, contact=leg_contact, body=body,
            content_type=content_type, crossed=self._crossing(response), allow=ALLOW)
        self._send_response(relay.origin_txn, out)

    async def _send_late_ack(self, ctx: _CallContext, from_leg: Leg,
                             late: tuple[Leg, int, str | None], ack_in: Request) -> None:
        """The ACK that carries the answer to an offer made in a relayed 2xx: its SDP is
        rewritten like any answer and crosses in our ACK of the other leg's 2xx."""
        to_leg, cseq, invite_txn = late
        dialog = self._dialog_of(ctx, to_leg)
        if dialog is None or dialog.state is DialogState.TERMINATED:
            return
        # An ACK cannot be answered (§17.1.1.3): a body it may not carry across is dropped.
        try:
            body, content_type = await self._cross(ctx, from_leg, self._body_of(ack_in),
                                                   offer=False)
        except (MediaError, SipError, ValueError) as exc:
            log.warning("call.media_answer_failed", call_id=ctx.call.call_id, error=str(exc))
            body, content_type = b"", None
        ack = dialog.ack(cseq, body=body, content_type=content_type)
        dest, transport = self._next_hop(ctx, to_leg)
        # The INVITE's transaction re-sends this ACK for 2xx retransmissions.
        self.sip.send_ack(invite_txn, ack, dest, transport)

    def _send_bye(self, ctx: _CallContext, leg: Leg) -> None:
        dialog = self._dialog_of(ctx, leg)
        if dialog is None or dialog.state is DialogState.TERMINATED:
            return
        try:
            bye = dialog.new_request("BYE")
        except CallStateError:
            return
        txn = self._send_in_dialog(ctx, leg, bye)
        if txn is not None:
            ctx.pending_byes.add(txn)
            self._track(txn, (_BYE_ROLE[leg], ctx), ctx)

    def _track(self, txn: str, entry: tuple[Role, _CallContext] | _Relay,
               ctx: _CallContext) -> None:
        self._by_txn[txn] = entry
        ctx.txns.add(txn)

    def _bye_done(self, ctx: _CallContext, txn_id: str) -> None:
        self._by_txn.pop(txn_id, None)
        ctx.pending_byes.discard(txn_id)
        if not ctx.pending_byes and ctx.call.state is CallState.ENDING:
            self._fire(ctx, CallEvent.BYES_DONE)

    def _send_in_dialog(self, ctx: _CallContext, leg: Leg, request: Request) -> str | None:
        dest, transport = self._next_hop(ctx, leg)
        try:
            return self.sip.send_request(request, dest, transport)
        except (TransactionError, OSError) as exc:
            log.warning("call.send_failed", call_id=ctx.call.call_id, leg=leg.value,
                        error=str(exc))
            return None

    def _next_hop(self, ctx: _CallContext, leg: Leg) -> tuple[Address, Transport]:
        """Where an in-dialog request on `leg` goes. Over TCP/TLS, the connection the
        party's signalling came on, while it is open: a party behind NAT can be reached on
        no other (RFC 5923 §1, RFC 5626's practice; its Contact names an address it does not
        listen on). Else the dialog's next hop when it names an IP address (no DNS in the
        call path), else where the leg's signalling came from."""
        if leg is Leg.A:
            fallback = (ctx.a_source, ctx.a_transport)
        else:
            fallback = (ctx.b_source or ctx.b_dest, ctx.b_transport)
        if is_reliable(fallback[1]) and self.sip.connected(*fallback):
            return fallback
        if leg is Leg.B:
            fallback = (ctx.b_dest, ctx.b_transport)
        dialog = self._dialog_of(ctx, leg)
        if dialog is None:
            return fallback
        try:
            hop = dialog.next_hop()
        except ParseError:
            return fallback
        cached = ctx.hops.get(leg)
        if cached is None or cached[0] != hop:
            cached = ctx.hops[leg] = (hop, routing.hop_of(hop))
        found = cached[1]
        return fallback if found is None else found

    def _dialog_of(self, ctx: _CallContext, leg: Leg) -> Dialog | None:
        return ctx.a_dialog if leg is Leg.A else ctx.b_dialog

    def _find_dialog(self, request: Request) -> tuple[_CallContext, Leg] | None:
        try:
            call_id = request.call_id
            from_tag = request.from_.tag or ""
            to_tag = request.to.tag or ""
        except ParseError:
            return None
        ctx = self.calls.get(call_id)
        if ctx is not None and to_tag == ctx.b_tag:
            return ctx, Leg.B
        ctx = self._by_a.get((call_id, from_tag))
        if ctx is not None and (to_tag == ctx.a_tag or request.method == "ACK"):
            return ctx, Leg.A
        return None

    def _contact_of(self, ctx: _CallContext, leg: Leg) -> str:
        """Our Contact for the call's X on `leg`, made once per call and leg: on the leg's
        transport, and a sips URI on leg A when A's Request-URI was one (§12.1.1)."""
        contact = ctx.contacts.get(leg)
        if contact is None:
            transport = ctx.a_transport if leg is Leg.A else ctx.b_transport
            secure = leg is Leg.A and ctx.a_invite.uri[:5].lower() == "sips:"
            contact = ctx.contacts[leg] = masking.local_contact(
                ctx.call.x, _host(self.config.sip.advertise), self.sip.local_port(transport),
                transport, secure=secure)
        return contact

    def _reply(self, txn_id: str, request: Request, status: int, *, reason: str | None = None,
               extra: tuple[tuple[str, str], ...] = (), to_tag: str | None = None) -> None:
        tag = to_tag if to_tag is not None else (new_tag() if status > 100 else None)
        response = build_response(request, status, reason, to_tag=tag, extra=extra)
        self._send_response(txn_id, response)

    def _send_response(self, txn_id: str, response: Response) -> None:
        try:
            self.sip.respond(txn_id, response)
        except TransactionError as exc:
            # The transaction ended under us (e.g. Timer H): nothing left to answer.
            log.debug("call.response_dropped", status=response.status, error=str(exc))

    def _media_opened(self, ctx: _CallContext) -> None:
        """The backend holds a session for the call now. A call that ended while the offer
        was on its way (its FREE_MEDIA found nothing open) gives it back at once (DESIGN
        rule 13: the opener releases on every path)."""
        ctx.media_open = True
        if ctx.call.state is CallState.ENDED:
            self._free_media(ctx)

    def _free_media(self, ctx: _CallContext) -> None:
        if not ctx.media_open:
            return
        ctx.media_open = False
        self._spawn(self._delete_media(ctx.call.call_id))

    async def _delete_media(self, call_id: str) -> None:
        try:
            await self.media.delete(call_id)
        except MediaError as exc:
            log.warning("call.media_delete_failed", call_id=call_id, error=str(exc))

    @staticmethod
    def _record(call: Call) -> Cdr:
        return Cdr(call_id=call.call_id, tenant=call.tenant, binding_id=call.binding_id,
                   x=call.x, caller=call.caller, callee=call.callee,
                   direction=call.direction, invite_at=call.invite_at, ring_at=call.ring_at,
                   answer_at=call.answer_at, end_at=call.end_at, duration_s=call.duration_s,
                   release_side=call.release_side, sip_status=call.sip_status,
                   unconnected_cause=call.unconnected_cause)

    async def _journal_up(self, ctx: _CallContext) -> None:
        try:
            await self._cdr_group.call_up(self._record(ctx.call))
        except Exception:
            self.stats["cdr_write_failed"] += 1
            log.exception("cdr.journal_failed", call_id=ctx.call.call_id)

    async def _commit_call_cdr(self, ctx: _CallContext) -> None:
        record = self._record(ctx.call)
        try:
            await self._cdr_group.write(record)
        except Exception:
            self.stats["cdr_write_failed"] += 1
            log.exception("cdr.write_failed", record=record.to_json())
        self._call_recorded(ctx, record)

    def _call_recorded(self, ctx: _CallContext, record: Cdr) -> None:
        call = ctx.call
        self._emit("hangup", ctx, cdr=record)
        if self.metrics is not None:
            self.metrics.call_finished(call)

    def _emit(self, kind: str, ctx: _CallContext, *, cdr: Cdr | None = None) -> None:
        if self.events is None:
            return
        try:
            self.events.call_event(kind, ctx.call, self.clock.wall(), cdr)
        except Exception:
            log.exception("events.enqueue_failed", kind=kind, call_id=ctx.call.call_id)

    def _forget(self, ctx: _CallContext) -> None:
        call = ctx.call
        self.calls.pop(call.call_id, None)
        self._by_a.pop(ctx.a_key, None)
        self._by_a_txn.pop(ctx.a_txn, None)
        for txn in ctx.relays:
            relay = self._by_txn.get(txn)
            if isinstance(relay, _Relay):
                # §15.1.2: requests still pending when the dialog ends are answered (487).
                self._reply(relay.origin_txn, relay.request, 487)
        # Only this call's own entries: scanning every transaction at each call end was a
        # few percent of the loop at a few hundred calls/s.
        by_txn = self._by_txn
        for txn in ctx.txns:
            entry = by_txn.get(txn)
            if entry is not None and (entry.ctx if isinstance(entry, _Relay)
                                      else entry[1]) is ctx:
                del by_txn[txn]
        ctx.txns.clear()
        self.timers.stop_all(call.call_id)
        if self.policy is not None:
            self.policy.call_ended(call)
        log.info("call.ended", call_id=call.call_id, status=call.sip_status,
                 release=call.release_side, duration_s=call.duration_s)

    # -- per-call ordering ------------------------------------------------------------------
    def _submit(self, ctx: _CallContext, work: Callable[[], Awaitable[None]]) -> None:
        ctx.queue.append(work)
        if not ctx.running:
            ctx.running = True
            self._spawn(self._pump(ctx))

    async def _pump(self, ctx: _CallContext) -> None:
        try:
            while ctx.queue:
                work = ctx.queue.popleft()
                try:
                    await work()
                except Exception:
                    self.stats["internal_errors"] += 1
                    log.exception("call.internal_error", call_id=ctx.call.call_id)
        finally:
            ctx.running = False

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` now, up to its first real wait; only a coroutine that has to wait (for
        a CDR commit, a media round trip) becomes a task. Most of a call's steps finish
        without waiting, and a task each cost a loop pass and a few µs (bench/call_cpu.py)."""
        task = run_eagerly(coro)
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def media_timeout(self, call_id: str) -> None:
        """The media backend saw no RTP for media.timeout_s: BYE both ways (CallEvent)."""
        ctx = self.calls.get(call_id)
        if ctx is not None:
            self._fire(ctx, CallEvent.MEDIA_TIMEOUT)

    # -- shutdown ----------------------------------------------------------------------------
    def reconfigure(self, config: Config) -> None:
        """`sipmask reload`: new calls see `config` (trunks, timers, tenants); calls in
        progress keep what they were placed with."""
        self.config = config
        self._trunks_seen.clear()       # sources matched against the old trunks

    def start_drain(self) -> None:
        """SIGTERM: refuse new calls (503), let running ones finish."""
        self.draining = True

    def end_all(self) -> None:
        """Drain timeout: hang up what is left (BYE both ways / CANCEL)."""
        for ctx in list(self.calls.values()):
            self._fire(ctx, CallEvent.SHUTDOWN)

    # -- helpers -----------------------------------------------------------------------------
    def _trunk_for(self, host: str) -> tuple[str | None, TrunkConfig | None]:
        # Matching a source against every trunk's networks parses the address each time:
        # remember the answer per source (bounded, so rotating sources cannot grow it).
        found = self._trunks_seen.get(host)
        if found is None:
            found = routing.trunk_for(self.config.trunks, host)
            if len(self._trunks_seen) >= TRUNK_CACHE_MAX:
                self._trunks_seen.clear()
            self._trunks_seen[host] = found
        return found

    def _tenant_of_x(self, x: str) -> str:
        if not x:
            return ""
        for name, tenant in self.config.tenants.items():
            if any(x in pool for pool in tenant.pools):
                return name
        return ""


_EVENT_HANDLERS: dict[type, Callable[[Engine, Any], None]] = {
    RequestReceived: Engine._on_request,
    ResponseReceived: Engine._on_response_event,
    AckReceived: Engine._on_ack,
    CancelReceived: Engine._on_cancel,
    TransactionTimeout: Engine._on_txn_failed,
    TransportFailed: Engine._on_txn_failed,
    AckTimeout: Engine._on_ack_timeout,
    StrayResponse: Engine._on_stray_event,
    TransactionTerminated: lambda engine, event: None,     # nothing for the call to do
}


# -- requests, as tables (RFC 3261 §8.2, §12.2.2) ------------------------------------------
# A request without a To tag that starts something, by method. Any other request goes to
# the dialog it names, or gets methods.no_dialog_status.
_OUT_OF_DIALOG: dict[str, Callable[[Engine, RequestReceived], None]] = {
    "INVITE": Engine._new_call,
    "OPTIONS": Engine._answer_options,
}
# A request inside one of our calls' dialogs, by method; any other: 405 with Allow.
_InDialog = Callable[[Engine, RequestReceived, _CallContext, Leg], None]
_IN_DIALOG: dict[str, _InDialog] = {
    "BYE": Engine._on_bye,
    "PRACK": Engine._on_prack,
    "REFER": Engine._on_refer,
}
if RELAYED_IN_DIALOG & _IN_DIALOG.keys() or not _IN_DIALOG.keys() <= KNOWN_METHODS:
    raise ValueError("a relayed method with its own in-dialog rule, or an unknown method")
_IN_DIALOG.update(dict.fromkeys(RELAYED_IN_DIALOG, Engine._on_relayed))

_ALLOW_HEADER = (("Allow", ALLOW),)
_BYE_EVENT = {Leg.A: CallEvent.A_BYE, Leg.B: CallEvent.B_BYE}
_REQUEST_EVENT = {Leg.A: CallEvent.A_REQUEST, Leg.B: CallEvent.B_REQUEST}

_TIMER_EVENTS = {CallTimer.RING: CallEvent.RING_TIMEOUT,
                 CallTimer.MAX_DURATION: CallEvent.MAX_DURATION}

_SUPPORTED_NAMES = frozenset({"supported", "k"})     # Supported, long and compact

# The actions that may wait (media, the CDR commit); Engine._run awaits only these.
_AWAITED_ACTIONS = frozenset({Action.RELAY_PROVISIONAL_TO_A, Action.RELAY_ANSWER_TO_A,
                              Action.WRITE_CDR, Action.RELAY_REQUEST_TO_B,
                              Action.RELAY_REQUEST_TO_A})

# Refusals whose status says more than the CDR cause (metrics reasons, not CDR causes).
_REFUSAL_REASON = {400: "bad_request", 416: "bad_request", 420: "bad_request", 483: "loop"}


def _unrecorded(exc: SipError) -> bool:
    """Refusals counted but not recorded as CDRs: a source outside every trunk's ACL, and
    load shedding (503: flood, overload, draining). Both come before any lookup, in
    volumes the sender controls; every other refusal (404, 403 by rules, 420, 483…) is a
    call attempt on a tenant's X and keeps its CDR."""
    return exc.status == 503 or exc.metric == "acl"


def _refusal_headers(exc: SipError) -> tuple[tuple[str, str], ...]:
    """The headers a refusal carries: Unsupported with 420 (§8.2.2.3), Retry-After when
    the refusal says when to come back (§21.5.4)."""
    if isinstance(exc, routing.BadExtension):
        return (("Unsupported", exc.unsupported),)
    if exc.retry_after is not None:
        return (("Retry-After", str(exc.retry_after)),)
    return ()


def _in_order_reliable(ctx: _CallContext, response: Response) -> bool:
    """RFC 3262 §4: a reliable provisional whose RSeq is not one higher than the last one
    of its dialog (a retransmission while our PRACK is on its way) gets no PRACK and is not
    processed further. Unreliable provisionals always pass."""
    raw = (response.headers.get("rseq") or "").strip()
    if not raw.isdigit() or not _requires_100rel(response):
        return True
    tag = response.to.tag or ""
    last = ctx.b_rseq.get(tag)
    if last is not None and int(raw) != last + 1:
        return False
    ctx.b_rseq[tag] = int(raw)
    return True


def run_eagerly(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run `coro` up to its first wait; a task goes on with it from there (None: it
    finished without waiting). Python 3.12's eager task factory, for one coroutine."""
    try:
        pending = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_resume(coro, pending))


async def _resume(coro: Coroutine[Any, Any, None], pending: object) -> None:
    """Go on with a coroutine whose step yielded `pending`, as asyncio.Task would: wait for
    the future it yielded (None: a bare yield, one loop pass), then resume it, which reads
    the future's result or exception itself."""
    while True:
        try:
            if pending is None:
                await asyncio.sleep(0)
            else:
                assert isinstance(pending, asyncio.Future)
                # The coroutine's own await marked the future as yielded to a task; a task
                # clears that before waiting (the C future refuses a second await otherwise).
                pending._asyncio_future_blocking = False
                with contextlib.suppress(Exception):   # the coroutine reads it itself
                    await pending
            pending = coro.send(None)
        except asyncio.CancelledError:
            if not (isinstance(pending, asyncio.Future) and pending.cancelled()):
                # This task was cancelled (the loop is shutting down): so is the coroutine.
                with contextlib.suppress(StopIteration, asyncio.CancelledError):
                    coro.throw(asyncio.CancelledError())
                raise
            # The future it waited for was cancelled: the coroutine sees that itself.
            try:
                pending = coro.send(None)
            except StopIteration:
                return
        except StopIteration:
            return


def _requires_100rel(response: Response) -> bool:
    return any(t.strip().lower() == "100rel" for t in response.headers.get_all("require"))


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _safe(fn: Callable[[], str | None]) -> str | None:
    try:
        return fn()
    except (ParseError, SipError, numbers.NumberError, ValueError):
        return None

