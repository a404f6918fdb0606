"""The call engine's decisions as a sans-IO core: events in, actions out (DESIGN rules 1, 2, 15).

`CallCore` has the shape of sip/transaction.py's TransactionLayer and aioquic's
QuicConnection: `handle(event, now, wall)` takes one event (a TU event of the transaction
layer, or the result of an action), `actions()` drains what the shell must do
(b2bua/actions.py), `next_timer()` / `handle_timer(now, wall)` run the calls' own timers
on the injected clock. Nothing here waits, reads a clock or calls the shell: a store lookup,
a media offer or a CDR commit is an action with an id, and the core goes on with that call
when the result event with the same id comes back, after the batch that asked for it, a
microsecond or a network round trip later. Other calls proceed meanwhile.

One call's work stays in order: while a call waits for a result, its later events queue on
the call (`CallContext.queue`) and run when the result has been taken, exactly as they
arrived. A step that waits names the function that takes the result (calling.py's
`_leg_b_offered`, `_answer_crossed`…) with the state it needs bound to it; the rest of the
call table's transition (b2bua/call.py) waits in `CallContext.rest`.

Leg A is the trunk that sent the INVITE for X (sipmask is the UAS there), leg B the new call
to the real party (sipmask is the UAC). Nothing crosses between the legs but what
masking.py lets through and the SDP the media backend rewrote. This module dispatches the
events and runs the call's table; placing the call (A's INVITE to B's answer) is in
b2bua/calling.py, requests inside the dialogs in b2bua/relaying.py, announcements and the
AXE extension prompt (before any call, and the notices after B's answer) in
b2bua/announcing.py.
"""

from __future__ import annotations

import collections
import itertools
import random
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from sipmask.b2bua import announcing, calling, failover, masking, relaying, routing
from sipmask.b2bua.actions import (
    CallFinished,
    Cancel,
    CdrCommitted,
    CommitCdr,
    CoreAction,
    CoreEvent,
    DigitHeard,
    Done,
    EarlyOpened,
    Emit,
    EndAll,
    JournalDone,
    LookupDone,
    MediaAnswer,
    MediaDelete,
    MediaDone,
    MediaOffer,
    MediaTimeout,
    PromptEnded,
    RecordingStopped,
    Respond,
    Reuse,
    SendAck,
    SendFailed,
    SendRequest,
    StopRecording,
    TrunkTargets,
)
from sipmask.b2bua.call import PLACING, Action, Call, CallEvent, CallState, Leg
from sipmask.b2bua.calling import Setup
from sipmask.b2bua.context import CallContext, Relay, Role, Transition, record_of
from sipmask.b2bua.timers import CallTimer, CallTimers
from sipmask.cdr.record import Cdr
from sipmask.config.schema import Config, TrunkConfig
from sipmask.errors import CallStateError, ParseError, SipError
from sipmask.sip.dialog import Dialog, DialogState, new_tag
from sipmask.sip.locate import Target
from sipmask.sip.message import Request, Response, build_response
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
    client_key,
    new_branch,
)
from sipmask.sip.transports import Address, Transport, is_reliable

if TYPE_CHECKING:       # store/__init__ opens LMDB; the core only reads the record
    from sipmask.store.base import Binding

SDP = masking.SDP
TRUNK_CACHE_MAX = 4096        # sources whose trunk (or none) trunk_for remembers


class CoreLog(Protocol):
    """Where the core's log lines go (structlog's logger fits; the number-masking processor
    runs there). Injected, as the clock is: logging is the one thing the core hands out
    directly, and it never calls back."""

    def debug(self, event: str, **kw: Any) -> Any: ...
    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...
    def exception(self, event: str, **kw: Any) -> Any: ...


class _Quiet:
    # One def per level, not `info = warning = debug`: mypyc refuses assignments that alias
    # methods in a class body (README "mypyc").
    def debug(self, event: str, **kw: Any) -> None:
        pass

    def info(self, event: str, **kw: Any) -> None:
        pass

    def warning(self, event: str, **kw: Any) -> None:
        pass

    def exception(self, event: str, **kw: Any) -> None:
        pass


class Policy(Protocol):
    """Who may call (ACLs, rate limits, blacklists): raises a SipError (403/486/503, with its
    CDR cause) to refuse, returns to admit. policy.CallPolicy fits: its buckets are memory,
    its times the core's monotonic `now`, and its overload flag a value its shell measures
    (policy/overload.py); it performs nothing and never calls back."""

    def admit(self, request: Request, source: Address, trunk: str | None,
              now: float | None = None) -> None: ...
    def admit_attempt(self, x: str, caller: str, now: float | None = None) -> None:
        """Every attempt, before the lookup (so 404s and strangers' 403s count too): spends
        the per-caller and per-X rates; raises SipError(403, cause rate_limited) when over."""
    def admit_route(self, binding: Binding, caller: str, direction: str,
                    now: float | None = None) -> None: ...
    def call_started(self, call: Call) -> None: ...
    def call_ended(self, call: Call) -> None: ...
    def max_duration(self, binding: Binding) -> float | None: ...


_BYE_ROLE = {Leg.A: Role.BYE_A, Leg.B: Role.BYE_B}
_BYE_ROLES = frozenset(_BYE_ROLE.values())
# Enum members the per-event path reads, bound once as module globals: in Python 3.11
# reading a member off its Enum class goes through EnumType.__getattr__'s slow attribute
# hook (about 70 ns; some 70 reads a call in this module), a global read does not.
_LEG_A, _LEG_B = Leg.A, Leg.B
_ENDING, _ENDED = CallState.ENDING, CallState.ENDED
_B_INVITE, _BYE_A = Role.B_INVITE, Role.BYE_A
_RING, _FAILOVER = CallTimer.RING, CallTimer.FAILOVER
_B_PROVISIONAL, _B_ANSWER = CallEvent.B_PROVISIONAL, CallEvent.B_ANSWER
_A_ACK, _BYES_DONE = CallEvent.A_ACK, CallEvent.BYES_DONE
_DTMF_BODY = masking.BodyKind.DTMF
_DIALOG_ENDED = DialogState.TERMINATED
_SDP_BODY = masking.BodyKind.SDP


class CallCore:
    """Every call of one sipmask process. See the module docstring."""

    def __init__(self, config: Config, *, listen_ports: Mapping[str, int],
                 policy: Policy | None = None, log: CoreLog | None = None) -> None:
        self.config = config
        # The port sipmask listens on per transport, for Contact headers: fixed once the
        # listeners are open (the shell's SipServer.local_port behind a read-only Mapping).
        self.listen_ports = listen_ports
        self.policy = policy
        self.log: CoreLog = log if log is not None else _Quiet()
        self.calls: dict[str, CallContext] = {}
        self._by_a: dict[tuple[str, str], CallContext] = {}      # (Call-ID, From tag)
        self._by_a_txn: dict[str, CallContext] = {}
        self._by_txn: dict[str, tuple[Role, CallContext] | Relay] = {}
        self.setups: dict[str, Setup] = {}               # A's INVITE txn -> its lookup
        # Trunk name -> its targets in order (calling.trunk_targets; the shell feeds them),
        # and leg B transactions no call follows any more (b2bua/failover.py).
        self.trunk_targets: dict[str, tuple[Target, ...]] = {}
        self.abandoned: dict[str, failover.Abandoned] = {}
        self._trunks_seen: dict[str, tuple[str | None, TrunkConfig | None]] = {}
        self._ids = itertools.count(1)
        # Result id -> (the call waiting, or None, and the step that takes the result).
        self._waits: dict[int, tuple[CallContext | None, Callable[[Any], None]]] = {}
        self._actions: list[CoreAction] = []
        self.draining = False
        self.stats = collections.Counter[str]()
        self.timers = CallTimers()
        # Attempts an announcement or the AXE prompt holds before (or instead of) a call.
        self.announcer = announcing.Announcer(self)
        # The time of the event being handled (handle / handle_timer set them).
        self.now = 0.0          # monotonic seconds: timers, rate buckets
        self.wall = 0.0         # Unix seconds: records

    # -- the interface ---------------------------------------------------------------------
    def handle(self, event: CoreEvent, now: float, wall: float) -> None:
        """Take one event at monotonic `now` / Unix `wall`; then drain actions()."""
        self.now, self.wall = now, wall
        kind: type = type(event)
        handler = _EVENT_HANDLERS.get(kind)
        if handler is None:
            # A subclass is handled as its nearest base.
            handler = next((_EVENT_HANDLERS[c] for c in kind.__mro__ if c in _EVENT_HANDLERS),
                           None)
            if handler is None:
                raise TypeError(f"CallCore cannot handle {kind.__name__}")
        handler(self, event)

    def actions(self) -> list[CoreAction]:
        """What the shell must do now, in order; each is returned once."""
        out, self._actions = self._actions, []
        return out

    def next_timer(self) -> float | None:
        """The earliest call timer deadline, on the monotonic clock."""
        return self.timers.next_timer()

    def handle_timer(self, now: float, wall: float) -> None:
        """Fire every call timer due at `now`."""
        self.now, self.wall = now, wall
        for call_id, timer in self.timers.due(now):
            step = _TIMER_STEPS.get(timer)
            if step is None:            # the extension prompt's (keyed by its attempt)
                self.announcer.on_timer(call_id, timer)
                continue
            ctx = self.calls.get(call_id)
            if ctx is not None:
                step(self, ctx)

    @property
    def active_calls(self) -> int:
        """Calls, INVITEs whose lookup is still out, and attempts an announcement holds (a
        drain waits for all)."""
        return len(self.calls) + len(self.setups) + len(self.announcer)

    def add_call(self, ctx: CallContext) -> None:
        """A call is made (calling.py): find it by its ids from now on; it counts."""
        call = ctx.call
        if self.policy is not None:
            self.policy.call_started(call)
        self.calls[call.call_id] = ctx
        request = ctx.a_invite
        ctx.a_key = (request.call_id, request.from_.tag or "")
        self._by_a[ctx.a_key] = ctx
        self._by_a_txn[ctx.a_txn] = ctx
        self.stats["calls"] += 1

    # -- results of actions ----------------------------------------------------------------
    def wait(self, ctx: CallContext | None, then: Callable[[Any], None]) -> int:
        """A new result id; the result event with it goes to `then` (for a call, in the
        call's order: nothing else of the call runs before it)."""
        op = next(self._ids)
        self._waits[op] = (ctx, then)
        if ctx is not None:
            ctx.wait = op
        return op

    def _on_done(self, event: Done) -> None:
        found = self._waits.pop(event.id, None)
        if found is None:
            return
        ctx, then = found
        if ctx is None:
            try:
                then(event)
            except Exception:
                self.stats["internal_errors"] += 1
                self.log.exception("call.internal_error")
            return
        if isinstance(event, MediaDone) and event.error is None:
            self._media_opened(ctx)
        ctx.wait = None
        self._pump(ctx, then, event)

    def drop_wait(self, op: int | None) -> None:
        """Forget a result id nobody waits for any more (its result is then ignored)."""
        if op is not None:
            self._waits.pop(op, None)

    def submit(self, ctx: CallContext, work: Callable[[], None]) -> None:
        """Run `work` for the call now, or after what the call is busy with or waits for."""
        ctx.queue.append(work)
        if not ctx.running and ctx.wait is None:
            self._pump(ctx)

    def _pump(self, ctx: CallContext, then: Callable[[Any], None] | None = None,
              result: Any = None) -> None:
        """Run the call's work until it is done or waits for a result: `then` with the
        result just in, the rest of the transition it interrupted, then the queue."""
        ctx.running = True
        try:
            while ctx.wait is None:
                try:
                    if then is not None:
                        step, then = then, None
                        step(result)
                    elif ctx.rest is not None:
                        (transition, start), ctx.rest = ctx.rest, None
                        self._run_actions(ctx, transition, start)
                    elif ctx.queue:
                        ctx.queue.popleft()()
                    else:
                        break
                except Exception:
                    # One broken step must not stop the call's later events (nor others').
                    self.stats["internal_errors"] += 1
                    self.log.exception("call.internal_error", call_id=ctx.call.call_id)
        finally:
            ctx.running = False

    # -- requests --------------------------------------------------------------------------
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
        found = self.find_dialog(request)
        if found is None:
            # An announcement's early dialog (its 183) is the announcer's.
            if not (has_to_tag and self.announcer.request(event)):
                relaying.no_dialog(self, event, has_to_tag)
            return
        ctx, leg = found
        if leg is _LEG_B:
            ctx.b_source = event.source
        _IN_DIALOG.get(method, relaying.refuse_in_dialog)(self, event, ctx, leg)

    def _answer_options(self, event: RequestReceived) -> None:
        """§11.2: OPTIONS is answered as an INVITE would be, after the same checks (RFC 4475
        §3.3); a draining node's 503 included."""
        if self.draining:
            self.reply(event.txn_id, event.request, 503, extra=calling.DRAINING_HEADERS)
            return
        try:
            routing.check_request(event.request)
        except SipError as exc:
            self.reply(event.txn_id, event.request, exc.status,
                       extra=calling.refusal_headers(exc))
            return
        self.reply(event.txn_id, event.request, 200,
                   extra=(*relaying.ALLOW_HEADER, ("Accept", SDP), ("Supported", "")))

    # -- what crosses ----------------------------------------------------------------------
    def crossing(self, message: Request | Response) -> masking.Crossing:
        """masking's header rule, with its refusals counted."""
        crossed = masking.crossing(message)
        if crossed.dropped:
            self.stats["header_control_chars"] += crossed.dropped
        return crossed

    def body_of(self, message: Request | Response) -> masking.Body:
        """masking's body rule (the one for every body that could cross), counted."""
        body = masking.crossing_body(message)
        if body.dropped:
            self.stats["body_parts_dropped" if not body.untyped else "body_untyped"] += \
                body.dropped
        return body

    def request_body(self, request: Request) -> masking.Body:
        """A request's crossing body; one without Content-Type is answered 400 (§20.15: the
        header is mandatory with a body) so that its sender learns, rather than seeing an
        offer silently become a request for one."""
        body = self.body_of(request)
        if body.untyped:
            raise SipError("Bad Request (body without Content-Type)", status=400)
        return body

    def cross(self, ctx: CallContext, leg: Leg, body: masking.Body, *, offer: bool,
              then: Callable[[MediaDone], None]) -> tuple[bytes, str | None] | None:
        """`body` (from `leg`) as it reaches the other leg, with its Content-Type. An SDP
        goes through the media backend as an offer or an answer: None is returned and
        `then` takes the MediaDone (the call waits for it). A DTMF body crosses as rebuilt,
        anything else not at all: returned at once."""
        if body.kind is _SDP_BODY:
            op = self.wait(ctx, then)
            make = MediaOffer if offer else MediaAnswer
            self._actions.append(make(op, ctx.call.call_id, leg, body.content,
                                      self._sip_source(ctx, leg)))
            return None
        if body.kind is _DTMF_BODY:
            return body.content, body.content_type
        return b"", None

    def crossed(self, ctx: CallContext, done: MediaDone) -> tuple[bytes, str | None]:
        """What a media answer gives the other leg; a failed one gives no body (logged)."""
        if done.error is not None:
            self.log.warning("call.media_answer_failed", call_id=ctx.call.call_id,
                             error=str(done.error))
            return b"", None
        return done.sdp, SDP

    def _sip_source(self, ctx: CallContext, leg: Leg) -> str:
        """The IP a leg's SIP signalling comes from (media.latching: signalled_ip): the
        caller's INVITE for leg A; leg B's last message, else the trunk's host."""
        if leg is _LEG_A:
            return ctx.a_source[0]
        return ctx.b_source[0] if ctx.b_source is not None else ctx.b_dest[0]

    # -- responses -------------------------------------------------------------------------
    def _on_response(self, event: ResponseReceived) -> None:
        response, txn_id = event.response, event.txn_id
        entry = self._by_txn.get(txn_id)
        if entry is None:
            failover.on_response(self, event)       # an attempt the call gave up
            return
        if isinstance(entry, Relay):
            relaying.on_response(self, entry, event)
            return
        role, ctx = entry
        status = response.status
        if role is not _BYE_A:             # every other request we send goes to B
            ctx.b_source = event.source
        if role is _B_INVITE:
            # Any response, 100 included: the target is there (RFC 3263 §4.3).
            ctx.b_heard = True
            self.timers.stop(ctx.call.call_id, _FAILOVER)
            if status == 100:
                return
            if status < 200:
                if not calling.in_order_reliable(ctx, response):
                    return
                self.fire(ctx, _B_PROVISIONAL, response=response)
            elif status < 300:
                self.fire(ctx, _B_ANSWER, response=response)
            else:
                self._by_txn.pop(txn_id, None)
                failover.attempt_failed(self, ctx, txn_id, CallEvent.B_FAILURE, response)
        elif role in _BYE_ROLES and status >= 200:
            self._bye_done(ctx, txn_id)

    def _on_txn_failed(self, event: TransactionTimeout | TransportFailed | SendFailed) -> None:
        """Timer B/F fired, or the transport could not deliver (§17.1.4), or the request
        never started: leg B's INVITE that never left ends the call with 503, cause
        trunk_unreachable."""
        txn_id = event.txn_id
        entry = self._by_txn.pop(txn_id, None)
        if entry is None:
            self.abandoned.pop(txn_id, None)    # a BYE of an abandoned attempt never left
            return
        if isinstance(entry, Relay):
            relaying.failed(self, entry, txn_id, 408 if isinstance(
                event, TransactionTimeout | TransportFailed) else 503)
            return
        role, ctx = entry
        if isinstance(event, SendFailed):
            self.log.warning("call.send_failed", call_id=ctx.call.call_id, role=role.value)
        if role is _B_INVITE:
            failover.attempt_failed(self, ctx, txn_id, CallEvent.B_TIMEOUT if isinstance(
                event, TransactionTimeout) else CallEvent.B_UNREACHABLE, None)
        elif role in _BYE_ROLES:
            self._bye_done(ctx, txn_id)

    def _on_stray(self, event: StrayResponse) -> None:
        # A 2xx to leg B's INVITE retransmitted after its transaction ended (§13.2.2.4:
        # the UAC core ACKs every 2xx retransmission).
        response = event.response
        try:
            ctx = self.calls.get(response.call_id)
            if ctx is None or response.cseq.method != "INVITE" or not 200 <= response.status < 300:
                return
            if response.from_.tag != ctx.b_tag:
                return      # an attempt the call gave up (failover.py): not its answer
        except ParseError:
            return
        ctx.b_source = event.source
        ctx.b_acked.discard(response.to.tag or "")
        self.fire(ctx, _B_ANSWER, response=response)

    def _on_ack(self, event: AckReceived) -> None:
        found = self.find_dialog(event.request)
        if found is None:
            return
        ctx, leg = found
        if leg is _LEG_B:
            ctx.b_source = event.source
        if leg is _LEG_A and event.request.cseq.number == ctx.a_invite.cseq.number:
            self.fire(ctx, _A_ACK)
        relaying.on_ack(self, ctx, leg, event.request)

    def _on_ack_timeout(self, event: AckTimeout) -> None:
        ctx = self._by_a_txn.get(event.txn_id)
        if ctx is not None:
            self.fire(ctx, CallEvent.A_ACK_TIMEOUT)

    def _on_cancel(self, event: CancelReceived) -> None:
        invite_txn = event.invite_txn_id
        if invite_txn is None:
            return
        ctx = self._by_a_txn.get(invite_txn)
        if ctx is not None:
            self.fire(ctx, CallEvent.A_CANCEL)
            return
        if self.announcer.cancel(invite_txn):
            return
        setup = self.setups.get(invite_txn)
        if setup is not None:
            setup.ending = CallEvent.A_CANCEL       # the lookup's answer ends it (_routed)
            return
        relaying.on_cancel(self, event, invite_txn)

    def _on_media_timeout(self, event: MediaTimeout) -> None:
        """No RTP for media.timeout_s: BYE both ways (the call's table)."""
        ctx = self.calls.get(event.call_id)
        if ctx is not None:
            self.fire(ctx, CallEvent.MEDIA_TIMEOUT)

    def _on_end_all(self, event: EndAll) -> None:
        """Drain timeout: hang up what is left (BYE both ways / CANCEL)."""
        for ctx in list(self.calls.values()):
            self.fire(ctx, CallEvent.SHUTDOWN)
        for setup in self.setups.values():
            setup.ending = setup.ending or CallEvent.SHUTDOWN
        self.announcer.shutdown()

    def _on_digit(self, event: DigitHeard) -> None:
        self.announcer.digit(event)

    # -- the state machine -----------------------------------------------------------------
    def fire(self, ctx: CallContext, event: CallEvent, *, response: Response | None = None,
             origin: tuple[str, Request] | None = None) -> None:
        """The call's table takes `event`, in the call's order (as `submit`)."""
        ctx.queue.append(partial(self.transition, ctx, event, response, origin))
        if not ctx.running and ctx.wait is None:
            self._pump(ctx)

    def transition(self, ctx: CallContext, event: CallEvent,
                   response: Response | None = None,
                   origin: tuple[str, Request] | None = None,
                   status_override: int | None = None) -> None:
        """The call's table takes `event` now (inside the call's work) and its actions run."""
        call = ctx.call
        if call.state is _ENDED:
            if origin is not None:
                self.reply(origin[0], origin[1], 481)
            return
        try:
            actions = call.apply(event, self.wall,
                                 status=response.status if response else None)
        except CallStateError as exc:
            self.log.warning("call.unexpected_event", call_id=call.call_id, error=str(exc))
            if origin is not None:
                self.reply(origin[0], origin[1], 481 if event in (
                    CallEvent.A_BYE, CallEvent.B_BYE) else 491)
            return
        if status_override is not None and Action.ANSWER_A_503 in actions:
            call.sip_status = status_override
        self._run_actions(ctx, Transition(actions, response, origin), 0)

    def _run_actions(self, ctx: CallContext, transition: Transition, start: int) -> None:
        """Carry out a transition's actions from `start`. When one leaves the call waiting
        for a result, the rest run after the step that takes it (CallContext.rest)."""
        actions = transition.actions
        for i in range(start, len(actions)):
            _ACTIONS[actions[i]](self, ctx, transition)
            if ctx.wait is not None:
                assert ctx.rest is None, "one transition waits at a time"
                ctx.rest = (transition, i + 1)
                return
        # The transition is complete: what its new state asks for.
        call = ctx.call
        state = call.state
        if state in PLACING:                # the RING timer runs
            return
        self.timers.stop(call.call_id, _RING)
        if state is _ENDING and not ctx.pending_byes:
            self.transition(ctx, _BYES_DONE)      # its own end forgets the call
        elif state is _ENDED:
            self._forget(ctx)

    # -- the actions of the call's table (_ACTIONS); one may leave the call waiting ---------
    def _answer_a_487(self, ctx: CallContext, transition: Transition) -> None:
        self._answer_a(ctx, 487)

    def _answer_a_408(self, ctx: CallContext, transition: Transition) -> None:
        self._answer_a(ctx, 408)

    def _answer_a_480(self, ctx: CallContext, transition: Transition) -> None:
        self._answer_a(ctx, 480)

    def _answer_a_503(self, ctx: CallContext, transition: Transition) -> None:
        # A setup failure may have chosen another status (488 for a refused offer).
        status = ctx.call.sip_status
        self._answer_a(ctx, 503 if status is None else status)

    def _answer_a(self, ctx: CallContext, status: int) -> None:
        self.reply(ctx.a_txn, ctx.a_invite, status, to_tag=ctx.a_tag)

    def _cancel_b(self, ctx: CallContext, transition: Transition) -> None:
        if ctx.b_txn is not None:
            # A final response may have raced the CANCEL; then there is nothing to cancel.
            self.add(Cancel(ctx.b_txn))

    def _bye_a(self, ctx: CallContext, transition: Transition) -> None:
        self._send_bye(ctx, _LEG_A)

    def _bye_b(self, ctx: CallContext, transition: Transition) -> None:
        self._send_bye(ctx, _LEG_B)

    def _answer_bye(self, ctx: CallContext, transition: Transition) -> None:
        if transition.origin is not None:
            self.reply(transition.origin[0], transition.origin[1], 200)

    def _free_media_action(self, ctx: CallContext, transition: Transition) -> None:
        if ctx.recording:
            # The recording is closed first and its outcome kept: the CDR written next
            # names the file (or none when it failed).
            ctx.recording = False
            op = self.wait(ctx, partial(self._recording_stopped, ctx))
            self._actions.append(StopRecording(op, ctx.call.call_id))
            return
        self._free_media(ctx)

    def _recording_stopped(self, ctx: CallContext, done: RecordingStopped) -> None:
        ctx.call.recording = done.file
        self._free_media(ctx)

    def _write_cdr(self, ctx: CallContext, transition: Transition) -> None:
        """The final record, on disk before the responses after it leave (CONTRACT)."""
        record = record_of(ctx.call)
        op = self.wait(ctx, partial(self._call_recorded, ctx, record))
        self._actions.append(CommitCdr(op, record))

    def _call_recorded(self, ctx: CallContext, record: Cdr, done: CdrCommitted) -> None:
        if done.error is not None:
            self.stats["cdr_write_failed"] += 1
        self._actions.append(Emit("hangup", ctx.call, self.wall, record))
        self._actions.append(CallFinished(ctx.call))

    def _relay_to_b(self, ctx: CallContext, transition: Transition) -> None:
        assert transition.origin is not None
        relaying.relay_request(self, ctx, _LEG_A, transition.origin)

    def _relay_to_a(self, ctx: CallContext, transition: Transition) -> None:
        assert transition.origin is not None
        relaying.relay_request(self, ctx, _LEG_B, transition.origin)

    # -- pieces ----------------------------------------------------------------------------
    def _send_bye(self, ctx: CallContext, leg: Leg) -> None:
        dialog = ctx.a_dialog if leg is _LEG_A else ctx.b_dialog
        if dialog is None or dialog.state is _DIALOG_ENDED:
            return
        try:
            bye = dialog.new_request("BYE")
        except CallStateError:
            return
        txn = self.send_in_dialog(ctx, leg, bye)
        ctx.pending_byes.add(txn)
        self.track(txn, (_BYE_ROLE[leg], ctx), ctx)

    def track(self, txn: str, entry: tuple[Role, CallContext] | Relay,
              ctx: CallContext) -> None:
        self._by_txn[txn] = entry
        ctx.txns.add(txn)

    def untrack(self, txn: str) -> tuple[Role, CallContext] | Relay | None:
        return self._by_txn.pop(txn, None)

    def tracked(self, txn: str) -> tuple[Role, CallContext] | Relay | None:
        return self._by_txn.get(txn)

    def _bye_done(self, ctx: CallContext, txn_id: str) -> None:
        self._by_txn.pop(txn_id, None)
        ctx.pending_byes.discard(txn_id)
        if not ctx.pending_byes and ctx.call.state is _ENDING:
            self.fire(ctx, _BYES_DONE)

    def send_request(self, request: Request, dest: Address, transport: Transport,
                     reuse: Reuse) -> str:
        """Ask for a client transaction; its id is known now: the core picks the branch
        (§8.1.1.7) and the transaction layer keys by it. A request the shell cannot start
        comes back as SendFailed."""
        branch = new_branch()
        txn = client_key(branch, request.method)
        self._actions.append(SendRequest(txn, branch, request, dest, transport, reuse))
        return txn

    def send_in_dialog(self, ctx: CallContext, leg: Leg, request: Request) -> str:
        dest, transport, reuse = self.next_hop(ctx, leg)
        return self.send_request(request, dest, transport, reuse)

    def send_ack(self, ctx: CallContext, leg: Leg, invite_txn: str | None,
                 ack: Request) -> None:
        dest, transport, reuse = self.next_hop(ctx, leg)
        self._actions.append(SendAck(invite_txn, ack, dest, transport, reuse))

    def next_hop(self, ctx: CallContext, leg: Leg) -> tuple[Address, Transport, Reuse]:
        """Where an in-dialog request on `leg` goes: the dialog's next hop when it names an
        IP address (no DNS in the call path), else where the leg's signalling came from
        (leg B: the trunk). Over TCP/TLS, `reuse` names the connection the party's
        signalling came on: while the shell has it open the request goes there, since a
        party behind NAT can be reached on no other (RFC 5923 §1, RFC 5626's practice; its
        Contact names an address it does not listen on). Only the shell knows whether it is
        still open."""
        if leg is _LEG_A:
            source = fallback = (ctx.a_source, ctx.a_transport)
        else:
            source = (ctx.b_source or ctx.b_dest, ctx.b_transport)
            fallback = (ctx.b_dest, ctx.b_transport)
        reuse = source if is_reliable(source[1]) else None
        found = self._dialog_hop(ctx, leg)
        dest, transport = fallback if found is None else found
        return dest, transport, reuse

    def _dialog_hop(self, ctx: CallContext, leg: Leg) -> tuple[Address, Transport] | None:
        dialog = ctx.a_dialog if leg is _LEG_A else ctx.b_dialog
        if dialog is None:
            return None
        try:
            hop = dialog.next_hop()
        except ParseError:
            return None
        cached = ctx.hops.get(leg)
        if cached is None or cached[0] != hop:
            cached = ctx.hops[leg] = (hop, routing.hop_of(hop))
        return cached[1]

    @staticmethod
    def dialog_of(ctx: CallContext, leg: Leg) -> Dialog | None:
        return ctx.a_dialog if leg is _LEG_A else ctx.b_dialog

    def find_dialog(self, request: Request) -> tuple[CallContext, Leg] | None:
        try:
            call_id = request.call_id
            from_tag = request.from_.tag or ""
            to_tag = request.to.tag or ""
        except ParseError:
            return None
        ctx = self.calls.get(call_id)
        if ctx is not None and to_tag == ctx.b_tag:
            return ctx, _LEG_B
        ctx = self._by_a.get((call_id, from_tag))
        if ctx is not None and (to_tag == ctx.a_tag or request.method == "ACK"):
            return ctx, _LEG_A
        return None

    def contact_of(self, ctx: CallContext, leg: Leg) -> str:
        """Our Contact for the call's X on `leg`, made once per call and leg: on the leg's
        transport, and a sips URI on leg A when A's Request-URI was one (§12.1.1)."""
        contact = ctx.contacts.get(leg)
        if contact is None:
            # Leg B's party sees the number its From shows (AXYB: Y), leg A's the one dialled.
            contact = ctx.contacts[leg] = self.contact_for(
                ctx.b_shown if leg is _LEG_B else ctx.call.x,
                ctx.a_transport if leg is _LEG_A else ctx.b_transport,
                secure=leg is _LEG_A and ctx.a_invite.uri[:5].lower() == "sips:")
        return contact

    def contact_for(self, number: str, transport: Transport, *, secure: bool) -> str:
        """Our Contact for `number` on `transport` (a sips URI when `secure`)."""
        return masking.local_contact(number, routing.uri_host(self.config.sip.advertise),
                                     self.listen_ports[transport], transport, secure=secure)

    def reply(self, txn_id: str, request: Request, status: int, *, reason: str | None = None,
              extra: tuple[tuple[str, str], ...] = (), to_tag: str | None = None) -> None:
        tag = to_tag if to_tag is not None else (new_tag() if status > 100 else None)
        response = build_response(request, status, reason, to_tag=tag, extra=extra)
        self._actions.append(Respond(txn_id, response))

    def send_response(self, txn_id: str, response: Response) -> None:
        self._actions.append(Respond(txn_id, response))

    def add(self, action: CoreAction) -> None:
        self._actions.append(action)

    @staticmethod
    def retry_after() -> str:
        """RFC 3261 §14.2: Retry-After of 0-10 s for a 500 to a second offer."""
        return str(random.randint(0, 10))

    def _media_opened(self, ctx: CallContext) -> None:
        """The backend holds a session for the call now. A call that ended while the offer
        was on its way (its FREE_MEDIA found nothing open) gives it back at once (DESIGN
        rule 13: the opener releases on every path)."""
        ctx.media_open = True
        if ctx.call.state is _ENDED:
            self._free_media(ctx)

    def _free_media(self, ctx: CallContext) -> None:
        if ctx.media_open:
            ctx.media_open = False
            self._actions.append(MediaDelete(ctx.call.call_id))

    def _forget(self, ctx: CallContext) -> None:
        call = ctx.call
        self.calls.pop(call.call_id, None)
        self._by_a.pop(ctx.a_key, None)
        self._by_a_txn.pop(ctx.a_txn, None)
        relaying.end_pending(self, ctx)
        # Only this call's own entries: scanning every transaction at each call end was a
        # few percent of the loop at a few hundred calls/s.
        by_txn = self._by_txn
        for txn in ctx.txns:
            entry = by_txn.get(txn)
            if entry is not None and (entry.ctx if isinstance(entry, Relay)
                                      else entry[1]) is ctx:
                del by_txn[txn]
        ctx.txns.clear()
        self.timers.stop_all(call.call_id)
        if self.policy is not None:
            self.policy.call_ended(call)
        self.log.info("call.ended", call_id=call.call_id, status=call.sip_status,
                      release=call.release_side, duration_s=call.duration_s)

    # -- helpers ---------------------------------------------------------------------------
    def reconfigure(self, config: Config) -> None:
        """A reload (config/reload.py): new calls are placed with `config`."""
        self.config = config
        self._trunks_seen.clear()       # sources matched against the old trunks
        self.trunk_targets.clear()      # the new trunks' own, until the shell feeds them

    def trunk_for(self, host: str) -> tuple[str | None, TrunkConfig | None]:
        # Matching a source against every trunk's networks parses the address each time:
        # remember the answer per source (bounded, so rotating sources cannot grow it).
        found = self._trunks_seen.get(host)
        if found is None:
            found = routing.trunk_for(self.config.trunks, host)
            if len(self._trunks_seen) >= TRUNK_CACHE_MAX:
                self._trunks_seen.clear()
            self._trunks_seen[host] = found
        return found

    def tenant_of_x(self, x: str) -> str:
        if not x:
            return ""
        for name, tenant in self.config.tenants.items():
            if any(x in pool for pool in tenant.pools):
                return name
        return ""


_EVENT_HANDLERS: dict[type, Callable[[CallCore, Any], None]] = {
    RequestReceived: CallCore._on_request,
    ResponseReceived: CallCore._on_response,
    AckReceived: CallCore._on_ack,
    CancelReceived: CallCore._on_cancel,
    TransactionTimeout: CallCore._on_txn_failed,
    TransportFailed: CallCore._on_txn_failed,
    SendFailed: CallCore._on_txn_failed,
    AckTimeout: CallCore._on_ack_timeout,
    StrayResponse: CallCore._on_stray,
    TransactionTerminated: failover.terminated,
    LookupDone: CallCore._on_done,
    MediaDone: CallCore._on_done,
    CdrCommitted: CallCore._on_done,
    RecordingStopped: CallCore._on_done,
    JournalDone: CallCore._on_done,
    EarlyOpened: CallCore._on_done,
    PromptEnded: CallCore._on_done,
    DigitHeard: CallCore._on_digit,
    MediaTimeout: CallCore._on_media_timeout,
    EndAll: CallCore._on_end_all,
    TrunkTargets: calling.targets_fed,
}


# -- requests, as tables (RFC 3261 §8.2, §12.2.2) ------------------------------------------
# A request without a To tag that starts something, by method. Any other request goes to
# the dialog it names, or gets methods.no_dialog_status.
_OUT_OF_DIALOG: dict[str, Callable[[CallCore, RequestReceived], None]] = {
    "INVITE": calling.new_call,
    "OPTIONS": CallCore._answer_options,
}
# A request inside one of our calls' dialogs, by method (relaying.py); any other: 405.
_IN_DIALOG = relaying.in_dialog_table()

# -- the call table's actions (b2bua/call.py Action), a method each ------------------------
_ACTIONS: dict[Action, Callable[[CallCore, CallContext, Transition], None]] = {
    Action.RELAY_PROVISIONAL_TO_A: calling.relay_provisional,
    Action.RELAY_ANSWER_TO_A: calling.relay_answer,
    Action.RELAY_FAILURE_TO_A: calling.relay_failure,
    Action.ANSWER_A_487: CallCore._answer_a_487,
    Action.ANSWER_A_408: CallCore._answer_a_408,
    Action.ANSWER_A_503: CallCore._answer_a_503,
    Action.ANSWER_A_480: CallCore._answer_a_480,
    Action.ACK_B: calling.ack_b,
    Action.CANCEL_B: CallCore._cancel_b,
    Action.BYE_A: CallCore._bye_a,
    Action.BYE_B: CallCore._bye_b,
    Action.ANSWER_BYE_A: CallCore._answer_bye,
    Action.ANSWER_BYE_B: CallCore._answer_bye,
    Action.RELAY_REQUEST_TO_B: CallCore._relay_to_b,
    Action.RELAY_REQUEST_TO_A: CallCore._relay_to_a,
    Action.ANSWER_UNBRIDGED: relaying.answer_unbridged,
    Action.FREE_MEDIA: CallCore._free_media_action,
    Action.WRITE_CDR: CallCore._write_cdr,
}

def _timer_event(event: CallEvent) -> Callable[[CallCore, CallContext], None]:
    return lambda core, ctx: core.fire(ctx, event)


# A call's timers: an event of the call's table, or a step of their own. The extension
# prompt's timers (DIGITS, PROMPTING) are the announcer's.
_TIMER_STEPS: dict[CallTimer, Callable[[CallCore, CallContext], None]] = {
    CallTimer.RING: _timer_event(CallEvent.RING_TIMEOUT),
    CallTimer.MAX_DURATION: _timer_event(CallEvent.MAX_DURATION),
    CallTimer.FAILOVER: failover.no_answer,
}


def _check_tables() -> None:
    """Every action the call table can ask for has a method (checked at import)."""
    from sipmask.b2bua.call import TRANSITIONS
    used = {a for _, actions in TRANSITIONS.values() for a in actions}
    if not used <= _ACTIONS.keys():
        raise ValueError(f"call actions without a method: {used - _ACTIONS.keys()}")


_check_tables()
