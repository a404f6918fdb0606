"""Placing the call: from the caller's INVITE to the callee's answer (part of the call core).

Pure, as b2bua/core.py: A's INVITE is checked and admitted, then the store is asked (a
Lookup action; the answer comes back as LookupDone) and the call made; A's offer goes
through the media backend (MediaOffer / MediaDone) and leg B is built from a whitelist
(masking.py). B's provisionals, its answer (journalled before A hears it: JournalUp /
JournalDone) and its failure cross back to A. A refused attempt is answered once its CDR
is on disk (CommitCdr / CdrCommitted), as every call attempt's is (CONTRACT).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from sipmask import numbers
from sipmask.b2bua import masking, refusals, routing
from sipmask.b2bua.actions import (
    CdrCommitted,
    CommitCdr,
    Emit,
    JournalDone,
    JournalUp,
    Lookup,
    LookupDone,
    MediaDone,
    Refused,
    StartRecording,
    TrunkTargets,
)
from sipmask.b2bua.call import Call, CallEvent, CallState, Leg
from sipmask.b2bua.context import CallContext, Role, Transition, record_of
from sipmask.b2bua.timers import CallTimer
from sipmask.cdr.record import Cdr
from sipmask.config.schema import TenantConfig, TrunkConfig
from sipmask.errors import ParseError, SipError, StoreError
from sipmask.sip.dialog import Dialog, DialogState, new_call_id, new_tag
from sipmask.sip.locate import Server, Target, TargetList
from sipmask.sip.message import Request, Response
from sipmask.sip.methods import ALLOW
from sipmask.sip.transaction import RequestReceived

if TYPE_CHECKING:
    from sipmask.b2bua.core import CallCore
    from sipmask.store.base import Binding

SDP = masking.SDP
_SUPPORTED_NAMES = frozenset({"supported", "k"})     # Supported, long and compact
# Refusals whose status says more than the CDR cause (metrics reasons, not CDR causes).
_REFUSAL_REASON = {400: "bad_request", 416: "bad_request", 420: "bad_request", 483: "loop"}
# Enum members each call reads, bound once as module globals: in Python 3.11 reading a
# member off its Enum class goes through EnumType.__getattr__'s slow attribute hook (as in
# core.py).
_LEG_A, _LEG_B = Leg.A, Leg.B
_ROUTING, _ANSWERED = CallState.ROUTING, CallState.ANSWERED
_RING, _FAILOVER = CallTimer.RING, CallTimer.FAILOVER
_B_INVITE = Role.B_INVITE
_SDP_BODY = masking.BodyKind.SDP
_EARLY_DIALOG = DialogState.EARLY
_LEG_B_SENT = CallEvent.LEG_B_SENT


@dataclass
class Setup:
    """An INVITE for X whose binding is being looked up (no call exists yet)."""

    event: RequestReceived
    trunk_name: str | None
    trunk: TrunkConfig
    a_body: masking.Body
    max_forwards: int
    x: str               # the 700 number dialled (X, or an AXYB binding's Y)
    ext: str | None      # the AXE extension keyed after it in the Request-URI
    caller: str
    invite_at: float
    ending: CallEvent | None = None     # A_CANCEL or SHUTDOWN arrived meanwhile
    # (call id, A's To tag) of the early dialog and media the AXE extension prompt opened
    # (b2bua/announcing.py): the call keeps them, the caller's media is that session.
    prompted: tuple[str, str] | None = None


# A draining node (SIGTERM) refuses new calls, and OPTIONS as it would an INVITE (§11.2):
# a dispatcher's probe then takes it out of rotation (configs/kamailio-dispatcher.cfg).
DRAINING = SipError("Service Unavailable", status=503, cause="rate_limited", metric="overload")
DRAINING_HEADERS = (("Retry-After", "5"),)


# -- A's INVITE ------------------------------------------------------------------------------
def new_call(core: CallCore, event: RequestReceived) -> None:
    """An INVITE outside a dialog: the trunk it came from, 100 Trying, the checks and the
    admission that need no binding, then the store (answered in `_routed`)."""
    request = event.request
    trunk_name, trunk = core.trunk_for(event.source[0])
    # A source outside every trunk's ACL and a draining node are counted, not recorded:
    # the sender chose every field such a CDR would hold (the review's 3,808 INVITEs in
    # 5 s became 3,808 CDRs in a tenant's list), and writing them costs the most when
    # refusing should cost the least.
    if trunk is None:
        refuse(core, event, SipError("Forbidden", status=403, cause="not_allowed",
                                     metric="acl"), core.wall, ())
        return
    if core.draining:
        refuse(core, event, DRAINING, core.wall, DRAINING_HEADERS)
        return
    # CONTRACT: 100 Trying at once (§17.2.1 lets the TU send it; it stops A's Timer A).
    core.reply(event.txn_id, request, 100)
    policy = core.policy
    try:
        routing.check_request(request)      # 416, 420 (§8.2.2), as for OPTIONS
        a_body = core.request_body(request)
        max_forwards = masking.next_max_forwards(request)
        if policy is not None:
            policy.admit(request, event.source, trunk_name, core.now)
        x, ext = routing.dialled(request)
        caller = routing.caller_number(request, trust_pai=trunk.trust_pai)
        if policy is not None:
            # Every attempt spends the caller's and X's rates before the lookup: a 404
            # or a stranger's 403 answers a question about X too.
            policy.admit_attempt(x, caller, core.now)
    except SipError as exc:
        refuse(core, event, exc, core.wall, refusal_headers(exc))
        return
    setup = Setup(event, trunk_name, trunk, a_body, max_forwards, x, ext, caller, core.wall)
    core.setups[event.txn_id] = setup
    op = core.wait(None, partial(_routed, core, setup))
    core.add(Lookup(op, x, caller, core.wall, ext))


def _routed(core: CallCore, setup: Setup, done: LookupDone) -> None:
    """The lookup's answer: refuse, or make the call and place leg B. Whatever fails here
    still answers the INVITE (500), as SipServer does for a request its handler failed on."""
    event = setup.event
    del core.setups[event.txn_id]
    try:
        route_setup(core, setup, done)
    except Exception:
        core.reply(event.txn_id, event.request, 500)
        raise


def route_setup(core: CallCore, setup: Setup, done: LookupDone) -> None:
    """Refuse, or make the call and place leg B (also for an AXE extension the caller keyed
    at the prompt, b2bua/announcing.py)."""
    event = setup.event
    if done.error is not None:
        # The store failed (not "no binding"): nothing is known of the call to record.
        # Unreachable (a database failover, a full lookup queue) is this node's trouble,
        # not the call's: 503 with Retry-After, so the trunk or the dispatcher tries again
        # (RFC 3261 §21.5.4). Anything else is a fault: 500.
        core.stats["lookup_failed"] += 1
        core.log.warning("call.lookup_failed", error=str(done.error))
        if isinstance(done.error, StoreError):
            core.reply(event.txn_id, event.request, 503,
                       extra=(("Retry-After", str(core.config.policy.retry_after_s)),))
        else:
            core.reply(event.txn_id, event.request, 500)
        return
    binding = done.binding
    caller = setup.caller
    try:
        target = routing.route(binding, setup.x, caller, setup.ext)
        if core.policy is not None:
            assert binding is not None
            core.policy.admit_route(binding, caller, target.direction, core.now)
    except SipError as exc:
        # Issue 15: an announcement may come first (unbound, the AXE prompt, not_allowed).
        if not core.announcer.refused(setup, exc, binding):
            refuse(core, event, exc, setup.invite_at, refusal_headers(exc))
        return
    assert binding is not None
    request, trunk = event.request, setup.trunk
    targets = trunk_targets(core, setup.trunk_name or "", trunk)
    first = targets[0].server if targets else _NO_TARGET
    call_id, a_tag = setup.prompted or (new_call_id(host=core.config.sip.advertise), new_tag())
    call = Call(call_id=call_id, tenant=binding.tenant,
                binding_id=binding.id, x=setup.x, caller=caller, callee=target.callee,
                direction=target.direction, invite_at=setup.invite_at)
    ctx = CallContext(
        call=call, a_invite=request, a_txn=event.txn_id, a_source=event.source,
        a_transport=event.transport, a_tag=a_tag, trunk=trunk, b_tag=new_tag(),
        b_dest=first.address, b_transport=first.transport, b_shown=target.shown,
        a_body=setup.a_body, b_targets=list(targets))
    if core.policy is not None:
        ctx.max_duration_s = core.policy.max_duration(binding)
    ctx.record = _should_record(binding, core.config.tenants)
    ctx.media_open = setup.prompted is not None     # the prompt's early media session
    core.add_call(ctx)
    core.log.info("call.routing", call_id=call.call_id, x=setup.x, caller=caller,
                  callee=target.callee, direction=target.direction)
    if setup.ending is not None:
        # Cancelled (or shut down) while the store answered: no leg B, no media.
        core.fire(ctx, setup.ending)
        return
    core.submit(ctx, partial(_place_leg_b, core, ctx, setup.max_forwards))


def refuse(core: CallCore, event: RequestReceived, exc: SipError, invite_at: float,
           extra: tuple[tuple[str, str], ...]) -> None:
    """Answer a refused attempt; count it, and record it (CONTRACT: one CDR per call
    attempt) unless it is an ACL or load-shedding refusal (`_unrecorded`)."""
    cause = count_refusal(core, exc)
    # Problems of the message itself (400, 416, 420, 483) keep sipmask's reason phrase,
    # which names the problem (CONTRACT); policy refusals get the standard one.
    reason = exc.reason if exc.status in _REFUSAL_REASON else None
    if _unrecorded(exc):
        core.reply(event.txn_id, event.request, exc.status, reason=reason, extra=extra)
        return
    record_refusal(core, event, exc.status, cause, invite_at, reason=reason, extra=extra)


def count_refusal(core: CallCore, exc: SipError) -> str:
    """Count a refused attempt (stats, the refusals metric); its CDR cause."""
    cause = exc.cause or (
        "rate_limited" if exc.status == 503 else "not_allowed")
    core.stats[f"refused_{cause}"] += 1
    core.add(Refused(exc.metric or _REFUSAL_REASON.get(exc.status, cause)))
    return cause


def record_refusal(core: CallCore, event: RequestReceived, status: int, cause: str,
                   invite_at: float, *, reason: str | None = None,
                   extra: tuple[tuple[str, str], ...] = (), call_id: str | None = None,
                   to_tag: str | None = None, release_side: str = "sipmask") -> None:
    """The CDR of an attempt that made no call, then its final response `status`. An
    announcement before it (b2bua/announcing.py) gave the attempt its call id and the
    early dialog's To tag, and the caller may have ended it (release_side caller)."""
    request = event.request
    x = _safe(lambda: routing.target_x(request)) or ""
    caller = _safe(lambda: routing.caller_number(request, trust_pai=False)) or ""
    record = Cdr(call_id=call_id or new_call_id(host=core.config.sip.advertise),
                 tenant=core.tenant_of_x(x), binding_id=None, x=x, caller=caller,
                 callee=None, direction=None, invite_at=invite_at, ring_at=None,
                 answer_at=None, end_at=core.wall, duration_s=0.0,
                 release_side=release_side, sip_status=status, unconnected_cause=cause)
    core.log.info("call.refused", status=status, cause=cause, x=x, caller=caller)
    # The refusal leaves once its CDR is on disk, as for calls (CONTRACT: before the
    # last response).
    op = core.wait(None, partial(_refusal_recorded, core, event, status, reason, extra,
                                 to_tag))
    core.add(CommitCdr(op, record))


def _refusal_recorded(core: CallCore, event: RequestReceived, status: int,
                      reason: str | None, extra: tuple[tuple[str, str], ...],
                      to_tag: str | None, done: CdrCommitted) -> None:
    if done.error is not None:
        core.stats["cdr_write_failed"] += 1
    core.reply(event.txn_id, event.request, status, reason=reason, extra=extra,
               to_tag=to_tag)


# -- leg B -----------------------------------------------------------------------------------
def _place_leg_b(core: CallCore, ctx: CallContext, max_forwards: int) -> None:
    if ctx.call.state is not _ROUTING:
        return
    if not ctx.b_targets:
        # No server to try (a name that did not resolve, RFC 3263 §4.3): 503 at once,
        # before any media is opened.
        core.stats["trunk_no_target"] += 1
        core.log.warning("call.trunk_unreachable", call_id=ctx.call.call_id)
        core.transition(ctx, CallEvent.B_UNREACHABLE)
        return
    crossed = core.cross(ctx, _LEG_A, ctx.a_body, offer=True,
                         then=partial(_leg_b_offered, core, ctx, max_forwards))
    if crossed is not None:
        _send_leg_b(core, ctx, max_forwards, *crossed)


def _leg_b_offered(core: CallCore, ctx: CallContext, max_forwards: int,
                   done: MediaDone) -> None:
    error = done.error
    if error is not None:
        core.log.warning("call.media_failed", call_id=ctx.call.call_id, error=str(error))
        status = error.status if isinstance(error, SipError) else 503
        core.transition(ctx, CallEvent.SETUP_FAILED, status_override=status)
        return
    if ctx.call.state is _ROUTING:
        _send_leg_b(core, ctx, max_forwards, done.sdp, SDP)


def _send_leg_b(core: CallCore, ctx: CallContext, max_forwards: int, body: bytes,
                content_type: str | None) -> None:
    ctx.b_offer = (max_forwards, body, content_type)
    send_attempt(core, ctx)
    core.transition(ctx, _LEG_B_SENT)
    core.timers.start(ctx.call.call_id, _RING,
                      core.now + core.config.sip.ring_timeout_s)


def send_attempt(core: CallCore, ctx: CallContext) -> None:
    """Leg B's INVITE to the next of the trunk's targets, as a new client transaction.
    A later attempt (b2bua/failover.py) is a dialog of its own: a new From tag and the next
    CSeq (RFC 3263 §4.3 asks for a new branch; the tag and CSeq keep a late message of the
    abandoned attempt out of this dialog, and an element reached through both targets from
    taking the second for a merged request, RFC 3261 §8.2.2.2)."""
    target = ctx.b_targets.pop(0)
    previous = ctx.b_invite
    if previous is not None:
        ctx.b_tag = new_tag()
        ctx.b_dialog, ctx.b_source, ctx.b_heard = None, None, False
        ctx.b_rseq.clear()
        ctx.contacts.pop(_LEG_B, None)          # the transport may differ
        ctx.hops.pop(_LEG_B, None)
    ctx.b_dest, ctx.b_transport = target.server.address, target.server.transport
    cseq = 1 if previous is None else previous.cseq.number + 1
    ctx.b_invite = request = _leg_b_invite(core, ctx, target, cseq)
    ctx.b_txn = core.send_request(request, ctx.b_dest, ctx.b_transport, None)
    core.track(ctx.b_txn, (_B_INVITE, ctx), ctx)
    timeout_ms = ctx.trunk.failover_timeout_ms
    if timeout_ms:
        core.timers.start(ctx.call.call_id, _FAILOVER, core.now + timeout_ms / 1000)


def _leg_b_invite(core: CallCore, ctx: CallContext, target: Target, cseq: int) -> Request:
    max_forwards, body, content_type = ctx.b_offer
    call = ctx.call
    host = routing.uri_host(target.host)
    port = f":{target.port}" if target.port is not None else ""
    uri = f"sip:{call.callee}@{host}{port};user=phone"
    sip = core.config.sip
    # CONTRACT: the callee sees the binding's number (AXYB: Y when A calls B).
    identity = f"<sip:{ctx.b_shown}@{sip.advertise}>"
    local = f"{identity};tag={ctx.b_tag}"
    extra: list[tuple[str, str]] = [("Allow", ALLOW)]     # ours, not the caller's
    if sip.send_pai:
        extra.append(("P-Asserted-Identity", identity))
    crossing = core.crossing(ctx.a_invite).headers
    # RFC 3262: reliable provisionals are handled per leg; on leg B we support them.
    if not any(name.lower() in _SUPPORTED_NAMES for name, _ in crossing):
        extra.append(("Supported", "100rel"))
    else:
        crossing = [(n, f"{v}, 100rel") if n.lower() == "supported" else (n, v)
                    for n, v in crossing]
    return masking.build_request(
        "INVITE", request_uri=uri, local=local, remote=f"<{uri}>",
        call_id=call.call_id, cseq=cseq, contact=core.contact_of(ctx, _LEG_B),
        max_forwards=max_forwards, crossing=crossing, extra=extra, body=body,
        content_type=content_type)


# -- the trunk's targets ---------------------------------------------------------------------
# A call with no target to try ends before leg B (_place_leg_b); its context names this.
_NO_TARGET = Server("udp", "0.0.0.0", 0)


def target_list(trunk: TrunkConfig) -> TargetList:
    """The trunk's outbound URIs as sip/locate.py plans them (IP addresses known at once,
    host names to resolve), with its probe timing: the one reading of the config, for the
    core's defaults and the shell's monitor (b2bua/trunks.py)."""
    timeout_ms = trunk.failover_timeout_ms
    return TargetList.of([(u.transport, u.host, u.port) for u in trunk.outbound],
                         probe_interval_s=trunk.probe_interval_s,
                         probe_timeout_s=timeout_ms / 1000 if timeout_ms else None)


def trunk_targets(core: CallCore, name: str, trunk: TrunkConfig) -> tuple[Target, ...]:
    """What a new call on the trunk tries, in order: what the shell fed last, else the
    servers its config names by address (a host name needs the shell's resolver)."""
    found = core.trunk_targets.get(name)
    if found is None:
        found = core.trunk_targets[name] = tuple(target_list(trunk).targets())
    return found


def targets_fed(core: CallCore, event: TrunkTargets) -> None:
    """The shell's trunk monitor: the trunk's targets changed (calls placed go on)."""
    core.trunk_targets[event.trunk] = event.targets


# -- B's answers (the call table's RELAY_*_TO_A and ACK_B actions) --------------------------
def relay_failure(core: CallCore, ctx: CallContext, transition: Transition) -> None:
    response = transition.response
    assert response is not None
    out = masking.build_relayed_response(response, ctx.a_invite, to_tag=ctx.a_tag,
                                         contact=None, crossed=core.crossing(response),
                                         allow=ALLOW)
    core.send_response(ctx.a_txn, out)


def relay_provisional(core: CallCore, ctx: CallContext, transition: Transition) -> None:
    """B's 18x to A. Its SDP reaches A as the answer to A's offer, or as the offer when A
    sent none (delayed offer, RFC 3264 §4); so does a 2xx's (relay_answer)."""
    response = transition.response
    assert response is not None
    _track_b_dialog(core, ctx, response)
    if response.headers.get("rseq") is not None and _requires_100rel(response) \
            and ctx.b_dialog is not None:
        # RFC 3262 §4: PRACK the reliable provisional on leg B ourselves.
        prack = ctx.b_dialog.prack(response)
        core.track(core.send_in_dialog(ctx, _LEG_B, prack), (Role.PRACK, ctx), ctx)
    crossed = core.cross(ctx, _LEG_B, core.body_of(response), offer=not ctx.media_open,
                         then=partial(_provisional_crossed, core, ctx, response))
    if crossed is not None:
        _send_provisional(core, ctx, response, *crossed)


def _provisional_crossed(core: CallCore, ctx: CallContext, response: Response,
                         done: MediaDone) -> None:
    _send_provisional(core, ctx, response, *core.crossed(ctx, done))


def _send_provisional(core: CallCore, ctx: CallContext, response: Response, body: bytes,
                      content_type: str | None) -> None:
    contact = core.contact_of(ctx, _LEG_A)
    if ctx.a_dialog is None and response.to.tag is not None:
        ctx.a_dialog = Dialog.as_uas(ctx.a_invite, ctx.a_tag, local_contact=contact)
    out = masking.build_relayed_response(
        response, ctx.a_invite, to_tag=ctx.a_tag, contact=contact, body=body,
        content_type=content_type, crossed=core.crossing(response), allow=ALLOW)
    core.send_response(ctx.a_txn, out)
    if not ctx.ring_sent:          # one ring event per call, however many 18x
        ctx.ring_sent = True
        core.add(Emit("ring", ctx.call, core.wall))


def relay_answer(core: CallCore, ctx: CallContext, transition: Transition) -> None:
    response = transition.response
    assert response is not None
    crossed = core.cross(ctx, _LEG_B, core.body_of(response), offer=not ctx.media_open,
                         then=partial(_answer_crossed, core, ctx, response))
    if crossed is not None:
        _journal_answer(core, ctx, response, *crossed)


def _answer_crossed(core: CallCore, ctx: CallContext, response: Response,
                    done: MediaDone) -> None:
    _journal_answer(core, ctx, response, *core.crossed(ctx, done))


def _journal_answer(core: CallCore, ctx: CallContext, response: Response, body: bytes,
                    content_type: str | None) -> None:
    if ctx.call.state is not _ANSWERED:
        return  # the call ended while media was being answered
    if core.announcer.notices_first(ctx, body, content_type, partial(
            _journal_answer, core, ctx, response, body, content_type)):
        return  # issue 15 §4: notices play first; this runs again when they end
    contact = core.contact_of(ctx, _LEG_A)
    if ctx.a_dialog is None:
        ctx.a_dialog = Dialog.as_uas(ctx.a_invite, ctx.a_tag, local_contact=contact,
                                     confirmed=True)
    out = masking.build_relayed_response(
        response, ctx.a_invite, to_tag=ctx.a_tag, contact=contact, body=body,
        content_type=content_type, crossed=core.crossing(response), allow=ALLOW)
    ctx.a_dialog.on_response(out)
    # Crash safety: an answered call is journalled before the caller hears of it.
    op = core.wait(ctx, partial(_answer_journalled, core, ctx, out))
    core.add(JournalUp(op, record_of(ctx.call)))


def _answer_journalled(core: CallCore, ctx: CallContext, out: Response,
                       done: JournalDone) -> None:
    if done.error is not None:
        core.stats["cdr_write_failed"] += 1
    call = ctx.call
    core.send_response(ctx.a_txn, out)
    if ctx.max_duration_s is not None:
        # The binding's limit counts talk time, from the answer (CDR answer_at).
        core.timers.start(call.call_id, CallTimer.MAX_DURATION,
                          core.now + ctx.max_duration_s)
    core.add(Emit("answer", call, core.wall))
    if ctx.record and ctx.media_open:
        # Issue 15 §4: what the parties say to each other, from the answer on.
        ctx.recording = True
        core.add(StartRecording(call.call_id, call.tenant))
    core.log.info("call.answered", call_id=call.call_id)


def ack_b(core: CallCore, ctx: CallContext, transition: Transition) -> None:
    assert transition.response is not None
    _ack_b_response(core, ctx, transition.response)


def _track_b_dialog(core: CallCore, ctx: CallContext, response: Response) -> None:
    """§12.1.2: leg B's dialog from its first response with a To tag."""
    tag = response.to.tag
    if ctx.b_invite is None or tag is None:
        return
    if ctx.b_dialog is None or (ctx.b_dialog.remote_tag != tag
                                and response.status >= 200):
        # The first dialog, or the one a 2xx confirms when B forked (§13.2.2.4).
        ctx.b_dialog = Dialog.as_uac(ctx.b_invite, response,
                                     local_contact=core.contact_of(ctx, _LEG_B))
    elif response.status >= 200 and ctx.b_dialog.state is _EARLY_DIALOG:
        ctx.b_dialog.on_response(response)


def _ack_b_response(core: CallCore, ctx: CallContext, response: Response) -> None:
    _track_b_dialog(core, ctx, response)
    tag = response.to.tag or ""
    if tag in ctx.b_acked or ctx.b_dialog is None or ctx.b_invite is None:
        return  # the transaction layer re-sends our ACK for 2xx retransmissions
    ctx.b_acked.add(tag)
    if ctx.a_body.kind is not _SDP_BODY and \
            masking.crossing_body(response).kind is _SDP_BODY:
        # RFC 3264 §4 delayed offer: B's 2xx made the offer, A's ACK brings the answer.
        ctx.late_acks[(_LEG_A, ctx.a_invite.cseq.number)] = (
            _LEG_B, ctx.b_invite.cseq.number, ctx.b_txn)
        return
    core.send_ack(ctx, _LEG_B, ctx.b_txn, ctx.b_dialog.ack(ctx.b_invite.cseq.number))


def _should_record(binding: Binding, tenants: Mapping[str, TenantConfig]) -> bool:
    # Imported here: store/recordings.py holds the rule, but the store package opens LMDB
    # on import, which the sans-IO core must not (tests/unit/test_import_contract.py).
    from sipmask.store.recordings import should_record
    return should_record(binding, tenants)


def _unrecorded(exc: SipError) -> bool:
    """Refusals counted but not recorded as CDRs: a source outside every trunk's ACL, and
    load shedding (503: flood, overload, draining). Both come before any lookup, in
    volumes the sender controls; every other refusal (404, 403 by rules, 420, 483…) is a
    call attempt on a tenant's X and keeps its CDR."""
    return exc.status == 503 or exc.metric == "acl"


def refusal_headers(exc: SipError) -> tuple[tuple[str, str], ...]:
    """The headers a refusal carries: Unsupported with 420 (§8.2.2.3), Retry-After when
    the refusal says when to come back (§21.5.4)."""
    if isinstance(exc, refusals.BadExtension):
        return (("Unsupported", exc.unsupported),)
    if exc.retry_after is not None:
        return (("Retry-After", str(exc.retry_after)),)
    return ()


def in_order_reliable(ctx: CallContext, response: Response) -> bool:
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


def _requires_100rel(response: Response) -> bool:
    return any(t.strip().lower() == "100rel" for t in response.headers.get_all("require"))


def _safe(fn: Callable[[], str | None]) -> str | None:
    try:
        return fn()
    except (ParseError, SipError, numbers.NumberError, ValueError):
        return None
