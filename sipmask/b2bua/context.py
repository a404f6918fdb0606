"""What the call core (b2bua/core.py, b2bua/relaying.py) keeps per call: its two legs'
dialogs and transactions, and the call's own order of work.

A call's work runs in order: while it waits for the result of an action (a media answer,
a CDR commit), the events that arrive for it queue here and run once that result has been
taken, as they arrived (CallCore._pump).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from sipmask.b2bua import masking
from sipmask.b2bua.call import Action, Call, Leg
from sipmask.cdr.record import Cdr
from sipmask.config.schema import TrunkConfig
from sipmask.sip.dialog import Dialog
from sipmask.sip.locate import Target
from sipmask.sip.message import Request, Response
from sipmask.sip.transports import Address, Transport


class Role(Enum):
    """What a transaction the core sent is to its call (CallCore's transaction map): its
    responses and its timeout mean different events."""

    __hash__ = object.__hash__     # identity, in C (as call.py's enums)

    B_INVITE = "b_invite"          # leg B's INVITE: 1xx/2xx/failure drive the call
    PRACK = "prack"                # our PRACK of B's reliable provisional (RFC 3262 §4)
    BYE_A = "bye_a"                # our BYE on leg A
    BYE_B = "bye_b"                # our BYE on leg B


@dataclass(slots=True)
class Transition:
    """A transition of the call's table being carried out: its actions, and the response
    or the request (with its server transaction) that caused it."""

    actions: tuple[Action, ...]
    response: Response | None = None
    origin: tuple[str, Request] | None = None


@dataclass(eq=False)
class Notice:
    """The notices a call plays after B's answer, before A hears it (b2bua/announcing.py):
    the steps still to play, as (announcement key, its configured file, the legs that hear
    it), the result ids of the prompts playing now, the body of the 183 that lets A hear
    one as early media (None: A hears none), and the rest of the answer (`then`)."""

    steps: list[tuple[str, str, tuple[Leg, ...]]]
    then: Callable[[], None]
    early_body: bytes | None = None
    early_sent: bool = False
    playing: set[int] = field(default_factory=set)


@dataclass
class CallContext:
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
    b_shown: str                                        # the 700 number leg B's From shows
    a_body: masking.Body = masking.NO_BODY              # what of A's INVITE body crosses
    b_source: Address | None = None                     # where leg B's signalling came from
    a_dialog: Dialog | None = None
    b_dialog: Dialog | None = None
    b_invite: Request | None = None
    b_txn: str | None = None
    # The trunk's targets not tried yet, in order (RFC 3263 §4.3, b2bua/failover.py); what
    # leg B's INVITE carries on each (Max-Forwards, body, Content-Type); the last final
    # response a target failed with (503), for the caller when every target failed.
    b_targets: list[Target] = field(default_factory=list)
    b_offer: tuple[int, bytes, str | None] = (70, b"", None)
    b_failure: Response | None = None
    b_heard: bool = False            # the current attempt got a response (its server is up)
    b_acked: set[str] = field(default_factory=set)     # To tags we sent an ACK for
    pending_byes: set[str] = field(default_factory=set)
    relays: set[str] = field(default_factory=set)       # txn ids of relayed requests
    txns: set[str] = field(default_factory=set)         # every txn id the core tracks for it
    b_rseq: dict[str, int] = field(default_factory=dict)  # last in-order RSeq per To tag
    # (leg, CSeq) of an INVITE whose 2xx carried the offer -> (other leg, its CSeq, our
    # INVITE transaction there): the other leg's ACK waits for this leg's, which carries
    # the answer (RFC 3264 §4).
    late_acks: dict[tuple[Leg, int], tuple[Leg, int, str | None]] = field(
        default_factory=dict)
    max_duration_s: float | None = None                 # the binding's call length limit
    record: bool = False                                # the binding's calls are recorded
    recording: bool = False                             # StartRecording went out
    media_open: bool = False
    ring_sent: bool = False                             # the webhook's ring event went out
    notice: Notice | None = None                        # decided at B's answer (issue 15 §4)
    contacts: dict[Leg, str] = field(default_factory=dict)  # leg -> our Contact there
    a_key: tuple[str, str] = ("", "")                   # (A's Call-ID, A's From tag)
    # leg -> (the dialog's next hop, where and how requests to it go): next_hop's cache
    hops: dict[Leg, tuple[str, tuple[Address, Transport] | None]] = field(
        default_factory=dict)
    # The call's order of work (module docstring): the result id it waits for, the rest
    # of the transition that waits (from which action on), and the work that came in
    # meanwhile.
    wait: int | None = None
    rest: tuple[Transition, int] | None = None
    queue: collections.deque[Callable[[], None]] = field(default_factory=collections.deque)
    running: bool = False


@dataclass(slots=True)
class Relay:
    """An in-dialog request relayed from one leg to the other: answer `origin_txn` on
    `from_leg` with what the other leg answers."""

    ctx: CallContext
    from_leg: Leg                 # the leg the request came from
    origin_txn: str
    request: Request
    sent_txn: str                 # our transaction on the other leg (its 2xx get our ACK)
    offered: bool = False         # the request carried an SDP offer (crossing_body)


def record_of(call: Call) -> Cdr:
    """The call's CDR as its state has it now (final once it left the live states)."""
    return Cdr(call_id=call.call_id, tenant=call.tenant, binding_id=call.binding_id,
               x=call.x, caller=call.caller, callee=call.callee,
               direction=call.direction, invite_at=call.invite_at, ring_at=call.ring_at,
               answer_at=call.answer_at, end_at=call.end_at, duration_s=call.duration_s,
               release_side=call.release_side, sip_status=call.sip_status,
               unconnected_cause=call.unconnected_cause, recording=call.recording)
