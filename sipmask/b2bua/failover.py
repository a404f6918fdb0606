"""Trying a trunk's targets in turn (issue 14 §4, RFC 3263 §4.3), as part of the call core.

A call takes its trunk's targets when it is routed (calling.trunk_targets: what the shell's
trunk monitor fed, b2bua/trunks.py) and places leg B on the first (calling.send_attempt).
An attempt that fails as a server fails goes to the next target as a new INVITE
transaction: no response at all within `failover_timeout_ms` (not even 100 Trying: the
FAILOVER call timer), Timer B, a transport error, or a 503 (RFC 3261 §8.1.3.4: try an
alternate server). Any other final response is the callee's answer and ends the search.
When every target failed, the caller hears the last final response a target gave,
unchanged (CONTRACT), or 503 with cause trunk_unreachable when none gave one.

An attempt given up before its final response is abandoned, not forgotten: it is CANCELled
(§9.1: the transaction layer holds the CANCEL until a provisional response arrives) and a
2xx it still gets is acknowledged and hung up at once (§15), so a late target never
connects a second callee. Abandoned transactions, and the BYEs that hang them up, live in
`CallCore.abandoned` until the layer retires them (TransactionTerminated), whatever became
of the call meanwhile: nothing of them outlives their transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from sipmask.b2bua import calling, routing
from sipmask.b2bua.actions import Cancel, SendAck
from sipmask.b2bua.call import PLACING, CallEvent, Leg
from sipmask.b2bua.context import CallContext
from sipmask.errors import CallStateError, ParseError
from sipmask.sip.dialog import Dialog
from sipmask.sip.message import Request, Response
from sipmask.sip.transaction import ResponseReceived, TransactionTerminated
from sipmask.sip.transports import Address, Transport

if TYPE_CHECKING:
    from sipmask.b2bua.core import CallCore

@dataclass(slots=True)
class Abandoned:
    """A transaction of leg B's that no call follows any more: an INVITE given up (`invite`;
    a 2xx it gets is ACKed and hung up) or the BYE that hangs one up (`invite` None)."""

    invite: Request | None
    dest: Address
    transport: Transport
    contact: str
    hung_up: set[str] = field(default_factory=set)    # To tags of 2xx given ACK and BYE


def attempt_failed(core: CallCore, ctx: CallContext, txn_id: str, event: CallEvent,
                   response: Response | None) -> None:
    """Leg B's INVITE `txn_id` ended without an answer: `event` is B_FAILURE (with its
    final `response`), B_TIMEOUT or B_UNREACHABLE. In the call's order (as the call's
    table would take the event), the next target or the end of the call."""
    core.submit(ctx, partial(_attempt_failed, core, ctx, txn_id, event, response))


def _attempt_failed(core: CallCore, ctx: CallContext, txn_id: str, event: CallEvent,
                    response: Response | None) -> None:
    if txn_id == ctx.b_txn and ctx.call.state in PLACING and (
            response is None or response.status == 503):
        if response is not None:
            ctx.b_failure = response
        if ctx.b_targets:
            core.stats["trunk_failover"] += 1
            core.log.info("call.trunk_failover", call_id=ctx.call.call_id,
                          failed=f"{ctx.b_dest[0]}:{ctx.b_dest[1]}",
                          status=response.status if response is not None else None)
            calling.send_attempt(core, ctx)
            return
        # Every target failed: the last status one gave reaches the caller unchanged;
        # none gave one: the trunk could not be reached (503, trunk_unreachable).
        if ctx.b_failure is not None:
            event, response = CallEvent.B_FAILURE, ctx.b_failure
        else:
            event = CallEvent.B_UNREACHABLE
    core.transition(ctx, event, response)


def no_answer(core: CallCore, ctx: CallContext) -> None:
    """The FAILOVER timer: leg B's INVITE got no response at all within the trunk's
    failover_timeout_ms (it stops at the first, 100 Trying included)."""
    txn_id = ctx.b_txn
    if txn_id is not None:
        core.submit(ctx, partial(_no_answer, core, ctx, txn_id))


def _no_answer(core: CallCore, ctx: CallContext, txn_id: str) -> None:
    # A response that came while this step waited in the call's queue keeps the attempt.
    if txn_id != ctx.b_txn or ctx.call.state not in PLACING or ctx.b_heard:
        return
    _abandon(core, ctx, txn_id)
    _attempt_failed(core, ctx, txn_id, CallEvent.B_TIMEOUT, None)


def _abandon(core: CallCore, ctx: CallContext, txn_id: str) -> None:
    """The call stops following leg B's INVITE `txn_id`; CANCEL it (held by the layer until
    a provisional response, §9.1)."""
    assert ctx.b_invite is not None
    core.untrack(txn_id)
    ctx.txns.discard(txn_id)
    core.abandoned[txn_id] = Abandoned(ctx.b_invite, ctx.b_dest, ctx.b_transport,
                                       core.contact_of(ctx, Leg.B))
    core.add(Cancel(txn_id))


def on_response(core: CallCore, event: ResponseReceived) -> None:
    """A response to a transaction no call follows: a 2xx to an abandoned INVITE gets the
    ACK a 2xx needs and a BYE at once (RFC 3261 §15: a UAC that no longer wants the
    session answered a 2xx ACKs it and ends it). Anything else needs nothing: the layer
    sends the held CANCEL on a provisional and ACKs a non-2xx final."""
    found = core.abandoned.get(event.txn_id)
    response = event.response
    if found is None or found.invite is None or not 200 <= response.status < 300:
        return
    tag = response.to.tag
    if tag is None or tag in found.hung_up:
        return      # a retransmission: the layer sends our ACK again (§13.2.2.4)
    found.hung_up.add(tag)
    core.stats["trunk_late_answer"] += 1
    dialog = Dialog.as_uac(found.invite, response, local_contact=found.contact)
    try:
        hop = routing.hop_of(dialog.next_hop())
    except ParseError:
        hop = None
    dest, transport = hop if hop is not None else (found.dest, found.transport)
    core.add(SendAck(event.txn_id, dialog.ack(found.invite.cseq.number), dest, transport))
    try:
        bye = dialog.new_request("BYE")
    except CallStateError:
        return
    bye_txn = core.send_request(bye, dest, transport, None)
    core.abandoned[bye_txn] = Abandoned(None, dest, transport, found.contact)


def terminated(core: CallCore, event: TransactionTerminated) -> None:
    """The layer retired a transaction: an abandoned one is forgotten with it."""
    core.abandoned.pop(event.txn_id, None)
