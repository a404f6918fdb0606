"""Requests inside a call's dialogs: answered by sipmask, or relayed to the other leg.

Part of the call core (b2bua/core.py): pure, with the same events-in, actions-out rules.
BYE drives the call's table; PRACK, REFER and methods not relayed are answered here; the
relayed methods (sip/methods.py RELAYED_IN_DIALOG: re-INVITE, UPDATE, INFO, OPTIONS,
MESSAGE) cross to the other leg inside its own dialog, their SDP re-offered through the
media backend, and the other leg's answer comes back the same way. Offer/answer rules:
RFC 3261 §14, RFC 3264 §4 (an offer in a 2xx is answered in the ACK), RFC 3311 §5.2.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from sipmask.b2bua import masking
from sipmask.b2bua.actions import Cancel, MediaDone
from sipmask.b2bua.call import CallEvent, Leg
from sipmask.b2bua.context import CallContext, Relay, Transition
from sipmask.errors import SipError
from sipmask.sip.dialog import Dialog, DialogState
from sipmask.sip.message import Request, Response
from sipmask.sip.methods import ALLOW, KNOWN_METHODS, RELAYED_IN_DIALOG, no_dialog_status
from sipmask.sip.transaction import CancelReceived, RequestReceived, ResponseReceived

if TYPE_CHECKING:
    from sipmask.b2bua.core import CallCore

SDP = masking.SDP
ALLOW_HEADER = (("Allow", ALLOW),)
NOT_CONNECTED = "Server Internal Error (call not connected yet)"
_BYE_EVENT = {Leg.A: CallEvent.A_BYE, Leg.B: CallEvent.B_BYE}
_REQUEST_EVENT = {Leg.A: CallEvent.A_REQUEST, Leg.B: CallEvent.B_REQUEST}
# Enum members in-dialog requests read, bound once as module globals: in Python 3.11 reading
# a member off its Enum class goes through EnumType.__getattr__'s slow attribute hook (as in
# core.py).
_LEG_A = Leg.A
_DIALOG_ENDED = DialogState.TERMINATED
_SDP_BODY = masking.BodyKind.SDP


def opens_offer(request: Request) -> bool:
    """An in-dialog request that starts an offer/answer exchange: a re-INVITE (an empty one
    asks for an offer in the 2xx) or an UPDATE with a body (RFC 3311 §5.2)."""
    return request.method == "INVITE" or (request.method == "UPDATE" and bool(request.body))


# -- the requests ----------------------------------------------------------------------------
def no_dialog(core: CallCore, event: RequestReceived, has_to_tag: bool) -> None:
    """§12.2.2: no such dialog (481); §21.4.6 / §21.5.2: a method we know but do not serve
    outside a dialog is 405, one we do not know at all 501 (both with Allow)."""
    status = no_dialog_status(event.request.method, has_to_tag)
    core.reply(event.txn_id, event.request, status,
               extra=() if status == 481 else ALLOW_HEADER)


def in_cseq_order(core: CallCore, dialog: Dialog | None, event: RequestReceived) -> bool:
    """§12.2.2: a request whose CSeq is below the dialog's last is out of order: 500
    (False). The dialog and the call stay as they were, so a valid one still works."""
    if dialog is None:
        return True
    try:
        dialog.receive_request(event.request)
    except SipError as exc:
        core.reply(event.txn_id, event.request, exc.status, reason=exc.reason)
        return False
    return True


def on_bye(core: CallCore, event: RequestReceived, ctx: CallContext, leg: Leg) -> None:
    dialog = core.dialog_of(ctx, leg)
    if dialog is not None and dialog.state is _DIALOG_ENDED:
        dialog = None           # the call's table answers it (ENDED: 481)
    if in_cseq_order(core, dialog, event):
        core.fire(ctx, _BYE_EVENT[leg], origin=(event.txn_id, event.request))


def on_prack(core: CallCore, event: RequestReceived, ctx: CallContext, leg: Leg) -> None:
    if leg is _LEG_A:
        # We never send reliable provisionals to A (no 100rel on leg A), so a PRACK from A
        # matches nothing (RFC 3262 §3).
        core.reply(event.txn_id, event.request, 481)
    else:
        # B's reliable provisionals are PRACKed by us; B has nothing to PRACK.
        refuse_in_dialog(core, event, ctx, leg)


def on_refer(core: CallCore, event: RequestReceived, ctx: CallContext, leg: Leg) -> None:
    # REFER would carry a URI across the legs (DESIGN.md "Privacy contract").
    core.reply(event.txn_id, event.request, 403, reason="Forbidden (REFER not allowed)")


def refuse_in_dialog(core: CallCore, event: RequestReceived, ctx: CallContext,
                     leg: Leg) -> None:
    # §21.4.6: not relayed inside a dialog (even an unknown method: the dialog is ours).
    core.reply(event.txn_id, event.request, 405, extra=ALLOW_HEADER)


def on_relayed(core: CallCore, event: RequestReceived, ctx: CallContext, leg: Leg) -> None:
    """A request for the other leg: in CSeq order, and no offer against a pending one."""
    request = event.request
    if not in_cseq_order(core, core.dialog_of(ctx, leg), event):
        return
    if ctx.relays and opens_offer(request):
        pending = [r.from_leg for t in ctx.relays
                   if isinstance(r := core.tracked(t), Relay) and opens_offer(r.request)]
        if leg in pending:
            # RFC 3261 §14.2, RFC 3311 §5.2: a second offer (re-INVITE, UPDATE with SDP)
            # from a party whose first is still unanswered gets 500 with Retry-After 0-10 s.
            core.reply(event.txn_id, request, 500,
                       extra=(("Retry-After", core.retry_after()),))
            return
        if pending:
            # An offer arriving while ours is pending towards this party (the other leg's,
            # relayed to it) is glare: 491 (§14.2, RFC 3311 §5.2).
            core.reply(event.txn_id, request, 491)
            return
    core.fire(ctx, _REQUEST_EVENT[leg], origin=(event.txn_id, request))


InDialog = Callable[["CallCore", RequestReceived, CallContext, Leg], None]


def in_dialog_table() -> dict[str, InDialog]:
    """A request inside one of our calls' dialogs, by method; any other: refuse_in_dialog
    (405 with Allow). Checked: the relayed methods have no rule of their own, and every
    method named is one we know."""
    table: dict[str, InDialog] = {"BYE": on_bye, "PRACK": on_prack, "REFER": on_refer}
    # isdisjoint/issubset, not `frozenset & dict.keys()`: that is a set at run time where
    # typeshed says frozenset, and compiled code (mypyc) checks the declared type.
    if not RELAYED_IN_DIALOG.isdisjoint(table) or not KNOWN_METHODS.issuperset(table):
        raise ValueError("a relayed method with its own in-dialog rule, or an unknown method")
    table.update(dict.fromkeys(RELAYED_IN_DIALOG, on_relayed))
    return table


# -- relaying a request (the call's table: RELAY_REQUEST_TO_A / _TO_B) -------------------------
def relay_request(core: CallCore, ctx: CallContext, from_leg: Leg,
                  origin: tuple[str, Request]) -> None:
    """Relay `origin` to the other leg (its SDP through the media backend first)."""
    txn_id, request = origin
    if core.dialog_of(ctx, from_leg.other) is None:
        core.reply(txn_id, request, 481)
        return
    try:
        incoming = core.request_body(request)
    except SipError as exc:
        core.reply(txn_id, request, exc.status, reason=exc.reason)
        return
    crossed = core.cross(ctx, from_leg, incoming, offer=True,
                         then=partial(_request_crossed, core, ctx, from_leg, origin))
    if crossed is not None:
        _send_relayed(core, ctx, from_leg, origin, *crossed)


def _request_crossed(core: CallCore, ctx: CallContext, from_leg: Leg,
                     origin: tuple[str, Request], done: MediaDone) -> None:
    error = done.error
    if error is not None:
        core.reply(origin[0], origin[1], error.status if isinstance(error, SipError) else 488)
        return
    _send_relayed(core, ctx, from_leg, origin, done.sdp, SDP)


def _send_relayed(core: CallCore, ctx: CallContext, from_leg: Leg,
                  origin: tuple[str, Request], body: bytes, content_type: str | None) -> None:
    txn_id, request = origin
    to_leg = from_leg.other
    dialog = core.dialog_of(ctx, to_leg)
    # Made before anything is relayed to it; leg B's early dialog is dropped only by a
    # failover (b2bua/failover.py), which waits in the call's order for this relay's
    # media step (core.submit), so it cannot fall between the two.
    assert dialog is not None
    extra = tuple(core.crossing(request).headers)
    if masking.carries_allow(request.method):
        extra = (("Allow", ALLOW), *extra)
    out = dialog.new_request(request.method, body=body, content_type=content_type,
                             extra=extra)
    sent = core.send_in_dialog(ctx, to_leg, out)
    core.track(sent, Relay(ctx, from_leg, txn_id, request, sent,
                           offered=content_type == SDP), ctx)
    ctx.relays.add(sent)


def on_response(core: CallCore, relay: Relay, event: ResponseReceived) -> None:
    """The other leg answered a request we relayed: relay the answer, in the call's order."""
    ctx, response = relay.ctx, event.response
    if relay.from_leg is _LEG_A:        # a request we relayed to B: B answers
        ctx.b_source = event.source
    if response.status >= 200:
        core.untrack(event.txn_id)
        ctx.relays.discard(event.txn_id)
    if response.status > 100:
        core.submit(ctx, partial(_relay_response, core, relay, response))


def _relay_response(core: CallCore, relay: Relay, response: Response) -> None:
    incoming = core.body_of(response)
    # RFC 3264 §4: a re-INVITE without a body asks for the offer in the 2xx.
    late_offer = relay.request.method == "INVITE" and not relay.offered and \
        incoming.kind is _SDP_BODY
    crossed = core.cross(relay.ctx, relay.from_leg.other, incoming, offer=late_offer,
                         then=partial(_response_crossed, core, relay, response, late_offer))
    if crossed is not None:
        _send_relayed_response(core, relay, response, late_offer, *crossed)


def _response_crossed(core: CallCore, relay: Relay, response: Response, late_offer: bool,
                      done: MediaDone) -> None:
    body, content_type = (b"", None) if done.error is not None else (done.sdp, SDP)
    _send_relayed_response(core, relay, response, late_offer, body, content_type)


def _send_relayed_response(core: CallCore, relay: Relay, response: Response,
                           late_offer: bool, body: bytes, content_type: str | None) -> None:
    ctx = relay.ctx
    answered_leg = relay.from_leg.other
    if relay.request.method == "INVITE" and 200 <= response.status < 300:
        if late_offer and body:
            # The answer comes in the ACK of the leg we relay the offer to (§13.2.2.4).
            ctx.late_acks[(relay.from_leg, relay.request.cseq.number)] = (
                answered_leg, response.cseq.number, relay.sent_txn)
        else:
            # ACK the other leg's 2xx ourselves (§13.2.2.4); the origin's ACK is absorbed.
            dialog = core.dialog_of(ctx, answered_leg)
            if dialog is not None:
                # With our transaction's id, 2xx retransmissions get this ACK again.
                core.send_ack(ctx, answered_leg, relay.sent_txn,
                              dialog.ack(response.cseq.number))
    origin_dialog = core.dialog_of(ctx, relay.from_leg)
    to_tag = origin_dialog.local_tag if origin_dialog is not None else None
    out = masking.build_relayed_response(
        response, relay.request, to_tag=to_tag, contact=core.contact_of(ctx, relay.from_leg),
        body=body, content_type=content_type, crossed=core.crossing(response), allow=ALLOW)
    core.send_response(relay.origin_txn, out)


def answer_unbridged(core: CallCore, ctx: CallContext, transition: Transition) -> None:
    """A request for the other party while a notice plays (call state NOTICE): the parties
    are not connected, so nothing crosses and sipmask answers. INFO (keys pressed during
    the notice) gets 200, as RFC 6086 §4.2.2 asks of an INFO taken, and is dropped:
    the other party never hears the keys. Anything else gets 500 with Retry-After: the
    caller's offer is unanswered while its INVITE has no final response, so its second
    offer is refused so by RFC 3261 §14.2 (re-INVITE) and RFC 3311 §5.2 (UPDATE); the
    callee has no offer pending (491 would say glare), but what it offers could reach
    nobody yet, and the notice ends within seconds. Both are counted."""
    assert transition.origin is not None
    txn_id, request = transition.origin
    try:
        core.request_body(request)          # a body without Content-Type: 400, as ever
    except SipError as exc:
        core.reply(txn_id, request, exc.status, reason=exc.reason)
        return
    if request.method == "INFO":
        core.stats["info_during_notice"] += 1
        core.reply(txn_id, request, 200)
        return
    core.stats["requests_during_notice"] += 1
    core.reply(txn_id, request, 500, reason=NOT_CONNECTED,
               extra=(("Retry-After", core.retry_after()),))


def failed(core: CallCore, relay: Relay, txn_id: str, status: int) -> None:
    """Our relayed request timed out (408) or could not be sent (503): its origin hears so."""
    relay.ctx.relays.discard(txn_id)
    core.reply(relay.origin_txn, relay.request, status)


# -- ACK and CANCEL ----------------------------------------------------------------------------
def on_ack(core: CallCore, ctx: CallContext, leg: Leg, ack: Request) -> None:
    """An ACK that answers an offer made in a 2xx crosses in our ACK of the other leg's
    2xx; other ACKs for relayed re-INVITE 2xx are absorbed (we ACKed the other 2xx)."""
    late = ctx.late_acks.pop((leg, ack.cseq.number), None)
    if late is not None:
        core.submit(ctx, partial(_send_late_ack, core, ctx, leg, late, ack))


def _send_late_ack(core: CallCore, ctx: CallContext, from_leg: Leg,
                   late: tuple[Leg, int, str | None], ack_in: Request) -> None:
    """Its SDP is rewritten like any answer. An ACK cannot be answered (§17.1.1.3): a body
    it may not carry across is dropped."""
    crossed = core.cross(ctx, from_leg, core.body_of(ack_in), offer=False,
                         then=partial(_late_ack_crossed, core, ctx, late))
    if crossed is not None:
        _ack_other_leg(core, ctx, late, *crossed)


def _late_ack_crossed(core: CallCore, ctx: CallContext, late: tuple[Leg, int, str | None],
                      done: MediaDone) -> None:
    _ack_other_leg(core, ctx, late, *core.crossed(ctx, done))


def _ack_other_leg(core: CallCore, ctx: CallContext, late: tuple[Leg, int, str | None],
                   body: bytes, content_type: str | None) -> None:
    to_leg, cseq, invite_txn = late
    dialog = core.dialog_of(ctx, to_leg)
    if dialog is None or dialog.state is _DIALOG_ENDED:
        return
    # The INVITE's transaction re-sends this ACK for 2xx retransmissions.
    core.send_ack(ctx, to_leg, invite_txn, dialog.ack(cseq, body=body,
                                                      content_type=content_type))


def on_cancel(core: CallCore, event: CancelReceived, invite_txn: str) -> None:
    """§9.2: a CANCEL of a re-INVITE we relayed: cancel ours on the other leg; its 487
    comes back through the relay. (One still waiting for media is not sent yet.)"""
    found = core.find_dialog(event.request)
    if found is None:
        return
    for txn in found[0].relays:
        relay = core.tracked(txn)
        if isinstance(relay, Relay) and relay.origin_txn == invite_txn:
            core.add(Cancel(txn))


def end_pending(core: CallCore, ctx: CallContext) -> None:
    """The call ended: §15.1.2, requests still pending in its dialogs are answered 487."""
    for txn in ctx.relays:
        relay = core.tracked(txn)
        if isinstance(relay, Relay):
            core.reply(relay.origin_txn, relay.request, 487)
