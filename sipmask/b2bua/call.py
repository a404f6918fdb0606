"""The two-leg call as a state machine written down as data (h11 style).

Leg A is the caller's side (the trunk that sent the INVITE for X), leg B the callee's (the
new leg sipmask places). `TRANSITIONS` says, for each (state, event), the next state and the
actions the engine must carry out, in order. An event a state does not list raises
CallStateError: nothing falls through an if chain. The module is pure: no I/O, no clock;
times come in with the events, and the call's record (CDR fields) is kept here so that the
record is always consistent with the state that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum

from sipmask.errors import CallStateError


class Leg(StrEnum):
    """The call's two legs. A StrEnum: the media backend's API names them "a" and "b"
    (media/backend.py) and takes these as they are; comparing one is a string compare."""

    A = "a"       # the caller's side: the trunk that sent the INVITE for X (we are its UAS)
    B = "b"       # the callee's side: the leg sipmask places (we are its UAC)

    @property
    def other(self) -> Leg:
        return Leg.B if self is Leg.A else Leg.A


class CallState(Enum):
    # Members are singletons compared by identity: hash them by identity too (in C), not
    # by Enum.__hash__ (hash of the name, a Python call) every time they key a dict.
    __hash__ = object.__hash__

    ROUTING = "routing"          # INVITE from A accepted; media and leg B being prepared
    CALLING = "calling"          # INVITE sent on leg B, nothing back yet
    EARLY = "early"              # B sent a provisional; relayed to A
    # B answered; a notice plays (callee_notice to B, recording_notice to both) before A
    # hears the answer (b2bua/announcing.py): A has had no final response yet.
    NOTICE = "notice"
    ANSWERED = "answered"        # B answered 2xx, relayed to A; waiting for A's ACK
    CONFIRMED = "confirmed"      # A acknowledged: both legs up
    CANCELLING = "cancelling"    # A cancelled or ring timeout: CANCEL sent on leg B
    ENDING = "ending"            # BYE sent on one or both legs, waiting for the answers
    ENDED = "ended"


# Leg B being placed, nothing final from it yet: its ring timer runs, a failed attempt may
# go to the trunk's next target (failover.py), and its 2xx is the call's answer.
PLACING = frozenset({CallState.CALLING, CallState.EARLY})


class CallEvent(Enum):
    __hash__ = object.__hash__

    LEG_B_SENT = "leg_b_sent"            # engine placed the INVITE on leg B
    SETUP_FAILED = "setup_failed"        # media or leg B could not be set up (503 to A)
    B_PROVISIONAL = "b_provisional"      # 18x from B
    B_ANSWER = "b_answer"                # 2xx from B
    B_FAILURE = "b_failure"              # 3xx-6xx from B
    B_TIMEOUT = "b_timeout"              # Timer B on leg B
    B_UNREACHABLE = "b_unreachable"      # leg B's transport could not deliver (§17.1.4)
    A_CANCEL = "a_cancel"                # CANCEL from A matched the INVITE
    RING_TIMEOUT = "ring_timeout"        # sip.ring_timeout_s passed without an answer
    A_ACK = "a_ack"                      # ACK from A for our 2xx
    A_ACK_TIMEOUT = "a_ack_timeout"      # our 2xx to A was never acknowledged (§13.3.1.4)
    A_BYE = "a_bye"
    B_BYE = "b_bye"
    A_REQUEST = "a_request"              # in-dialog request from A (re-INVITE, UPDATE, INFO…)
    B_REQUEST = "b_request"              # in-dialog request from B
    MEDIA_TIMEOUT = "media_timeout"      # no RTP for media.timeout_s
    MAX_DURATION = "max_duration"        # the binding's call length limit
    SHUTDOWN = "shutdown"                # drain timeout on SIGTERM
    BYES_DONE = "byes_done"              # every BYE we sent got an answer or timed out
    NOTICE_STARTED = "notice_started"    # notices play before A hears B's answer
    NOTICE_DONE = "notice_done"          # they ended: A hears the answer now


class Action(Enum):
    __hash__ = object.__hash__

    SEND_B_INVITE = "send_b_invite"
    RELAY_PROVISIONAL_TO_A = "relay_provisional_to_a"
    RELAY_ANSWER_TO_A = "relay_answer_to_a"
    RELAY_FAILURE_TO_A = "relay_failure_to_a"
    ANSWER_A_487 = "answer_a_487"          # Request Terminated for A's INVITE (§9.2)
    ANSWER_A_408 = "answer_a_408"          # leg B timed out / never answered
    ANSWER_A_503 = "answer_a_503"          # we could not set the call up
    ANSWER_A_480 = "answer_a_480"          # B hung up before A was answered (its notice)
    ACK_B = "ack_b"                        # ACK B's 2xx (§13.2.2.4)
    CANCEL_B = "cancel_b"
    BYE_A = "bye_a"
    BYE_B = "bye_b"
    ANSWER_BYE_A = "answer_bye_a"          # 200 to A's BYE
    ANSWER_BYE_B = "answer_bye_b"
    RELAY_REQUEST_TO_B = "relay_request_to_b"
    RELAY_REQUEST_TO_A = "relay_request_to_a"
    ANSWER_UNBRIDGED = "answer_unbridged"  # a request no party may get yet (a notice plays)
    FREE_MEDIA = "free_media"
    WRITE_CDR = "write_cdr"


S, E, A = CallState, CallEvent, Action
# CONTRACT: the CDR is written before the call's last response leaves, so every transition
# that decides the end starts with these two, ahead of the final response or BYE answer.
_END = (A.FREE_MEDIA, A.WRITE_CDR)

LIVE = frozenset({S.ROUTING, S.CALLING, S.EARLY, S.NOTICE, S.ANSWERED, S.CONFIRMED})

TRANSITIONS: dict[tuple[CallState, CallEvent], tuple[CallState, tuple[Action, ...]]] = {
    (S.ROUTING, E.LEG_B_SENT): (S.CALLING, ()),
    (S.ROUTING, E.SETUP_FAILED): (S.ENDED, (*_END, A.ANSWER_A_503)),
    (S.ROUTING, E.A_CANCEL): (S.ENDED, (*_END, A.ANSWER_A_487)),
    (S.ROUTING, E.SHUTDOWN): (S.ENDED, (*_END, A.ANSWER_A_503)),
    # The trunk has no target to try (none resolved, RFC 3263): 503 before leg B.
    (S.ROUTING, E.B_UNREACHABLE): (S.ENDED, (*_END, A.ANSWER_A_503)),
    # §15: the caller may BYE an early dialog (the 183 of an announcement made one): as a
    # CANCEL, and the BYE gets its 200 (§15.1.2).
    (S.ROUTING, E.A_BYE): (S.ENDED, (*_END, A.ANSWER_BYE_A, A.ANSWER_A_487)),

    (S.CALLING, E.B_PROVISIONAL): (S.EARLY, (A.RELAY_PROVISIONAL_TO_A,)),
    (S.EARLY, E.B_PROVISIONAL): (S.EARLY, (A.RELAY_PROVISIONAL_TO_A,)),
    (S.CALLING, E.B_ANSWER): (S.ANSWERED, (A.ACK_B, A.RELAY_ANSWER_TO_A)),
    (S.EARLY, E.B_ANSWER): (S.ANSWERED, (A.ACK_B, A.RELAY_ANSWER_TO_A)),
    (S.CALLING, E.B_FAILURE): (S.ENDED, (*_END, A.RELAY_FAILURE_TO_A)),
    (S.EARLY, E.B_FAILURE): (S.ENDED, (*_END, A.RELAY_FAILURE_TO_A)),
    (S.CALLING, E.B_TIMEOUT): (S.ENDED, (*_END, A.ANSWER_A_408)),
    (S.EARLY, E.B_TIMEOUT): (S.ENDED, (*_END, A.ANSWER_A_408)),
    # The trunk cannot be reached (a refused destination, a refused connection): 503 at
    # once, RFC 3261 §16.7's answer when no target could be tried.
    (S.CALLING, E.B_UNREACHABLE): (S.ENDED, (*_END, A.ANSWER_A_503)),
    (S.EARLY, E.B_UNREACHABLE): (S.ENDED, (*_END, A.ANSWER_A_503)),
    # §9.1: CANCEL leg B; A gets 487 at once (§9.2: the UAS answers the INVITE with 487).
    (S.CALLING, E.A_CANCEL): (S.CANCELLING, (*_END, A.CANCEL_B, A.ANSWER_A_487)),
    (S.EARLY, E.A_CANCEL): (S.CANCELLING, (*_END, A.CANCEL_B, A.ANSWER_A_487)),
    (S.CALLING, E.RING_TIMEOUT): (S.CANCELLING, (*_END, A.CANCEL_B, A.ANSWER_A_408)),
    (S.EARLY, E.RING_TIMEOUT): (S.CANCELLING, (*_END, A.CANCEL_B, A.ANSWER_A_408)),
    (S.CALLING, E.SHUTDOWN): (S.CANCELLING, (*_END, A.CANCEL_B, A.ANSWER_A_503)),
    (S.EARLY, E.SHUTDOWN): (S.CANCELLING, (*_END, A.CANCEL_B, A.ANSWER_A_503)),
    (S.CALLING, E.A_BYE): (S.CANCELLING, (*_END, A.ANSWER_BYE_A, A.CANCEL_B, A.ANSWER_A_487)),
    (S.EARLY, E.A_BYE): (S.CANCELLING, (*_END, A.ANSWER_BYE_A, A.CANCEL_B, A.ANSWER_A_487)),
    # In-dialog requests in the early dialog (UPDATE, INFO, PRACK) cross as they are.
    (S.EARLY, E.A_REQUEST): (S.EARLY, (A.RELAY_REQUEST_TO_B,)),
    (S.EARLY, E.B_REQUEST): (S.EARLY, (A.RELAY_REQUEST_TO_A,)),

    (S.CANCELLING, E.B_PROVISIONAL): (S.CANCELLING, ()),
    (S.CANCELLING, E.B_FAILURE): (S.ENDED, ()),     # B's 487; its ACK is the txn's job
    (S.CANCELLING, E.B_TIMEOUT): (S.ENDED, ()),
    (S.CANCELLING, E.B_UNREACHABLE): (S.ENDED, ()),
    # The 2xx crossed our CANCEL (§9.1): acknowledge it and hang the leg up at once.
    (S.CANCELLING, E.B_ANSWER): (S.ENDING, (A.ACK_B, A.BYE_B)),
    (S.CANCELLING, E.A_CANCEL): (S.CANCELLING, ()),
    (S.CANCELLING, E.SHUTDOWN): (S.CANCELLING, ()),
    (S.CANCELLING, E.RING_TIMEOUT): (S.CANCELLING, ()),

    # Issue 15 §4: notices between B's answer and A's (b2bua/announcing.py). A has had no
    # final response: a CANCEL or BYE from A still ends it with 487, B hanging up with 480,
    # and B is hung up; the record then shows a call never answered (Call.apply).
    (S.ANSWERED, E.NOTICE_STARTED): (S.NOTICE, ()),
    (S.NOTICE, E.NOTICE_DONE): (S.ANSWERED, ()),
    (S.NOTICE, E.B_ANSWER): (S.NOTICE, (A.ACK_B,)),          # 2xx retransmission
    (S.NOTICE, E.A_CANCEL): (S.ENDING, (*_END, A.ANSWER_A_487, A.BYE_B)),
    (S.NOTICE, E.A_BYE): (S.ENDING, (*_END, A.ANSWER_BYE_A, A.ANSWER_A_487, A.BYE_B)),
    (S.NOTICE, E.B_BYE): (S.ENDING, (*_END, A.ANSWER_BYE_B, A.ANSWER_A_480)),
    (S.NOTICE, E.MEDIA_TIMEOUT): (S.ENDING, (*_END, A.ANSWER_A_503, A.BYE_B)),
    (S.NOTICE, E.SHUTDOWN): (S.ENDING, (*_END, A.ANSWER_A_503, A.BYE_B)),
    # The parties are not connected while a notice plays: what either sends the other
    # (keys, offers) is answered by sipmask, never relayed (relaying.answer_unbridged).
    (S.NOTICE, E.A_REQUEST): (S.NOTICE, (A.ANSWER_UNBRIDGED,)),
    (S.NOTICE, E.B_REQUEST): (S.NOTICE, (A.ANSWER_UNBRIDGED,)),

    (S.ANSWERED, E.A_ACK): (S.CONFIRMED, ()),
    (S.ANSWERED, E.A_ACK_TIMEOUT): (S.ENDING, (*_END, A.BYE_A, A.BYE_B)),
    (S.ANSWERED, E.A_BYE): (S.ENDING, (*_END, A.ANSWER_BYE_A, A.BYE_B)),
    (S.ANSWERED, E.B_BYE): (S.ENDING, (*_END, A.ANSWER_BYE_B, A.BYE_A)),
    (S.ANSWERED, E.B_ANSWER): (S.ANSWERED, (A.ACK_B,)),     # 2xx retransmission
    (S.ANSWERED, E.SHUTDOWN): (S.ENDING, (*_END, A.BYE_A, A.BYE_B)),
    # The limit counts from the answer, so it can fall before the caller's ACK arrives.
    (S.ANSWERED, E.MAX_DURATION): (S.ENDING, (*_END, A.BYE_A, A.BYE_B)),
    (S.ANSWERED, E.MEDIA_TIMEOUT): (S.ENDING, (*_END, A.BYE_A, A.BYE_B)),
    (S.ANSWERED, E.A_CANCEL): (S.ANSWERED, ()),             # too late (§9.2): ignored

    (S.CONFIRMED, E.A_ACK): (S.CONFIRMED, ()),             # ACK retransmission
    (S.CONFIRMED, E.B_ANSWER): (S.CONFIRMED, (A.ACK_B,)),  # 2xx retransmission: ACK again
    (S.CONFIRMED, E.A_BYE): (S.ENDING, (*_END, A.ANSWER_BYE_A, A.BYE_B)),
    (S.CONFIRMED, E.B_BYE): (S.ENDING, (*_END, A.ANSWER_BYE_B, A.BYE_A)),
    (S.CONFIRMED, E.A_REQUEST): (S.CONFIRMED, (A.RELAY_REQUEST_TO_B,)),
    (S.CONFIRMED, E.B_REQUEST): (S.CONFIRMED, (A.RELAY_REQUEST_TO_A,)),
    (S.CONFIRMED, E.MEDIA_TIMEOUT): (S.ENDING, (*_END, A.BYE_A, A.BYE_B)),
    (S.CONFIRMED, E.MAX_DURATION): (S.ENDING, (*_END, A.BYE_A, A.BYE_B)),
    (S.CONFIRMED, E.SHUTDOWN): (S.ENDING, (*_END, A.BYE_A, A.BYE_B)),
    (S.CONFIRMED, E.A_CANCEL): (S.CONFIRMED, ()),

    # Crossing BYEs and late messages while hanging up: answer, keep waiting.
    (S.ENDING, E.A_BYE): (S.ENDING, (A.ANSWER_BYE_A,)),
    (S.ENDING, E.B_BYE): (S.ENDING, (A.ANSWER_BYE_B,)),
    (S.ENDING, E.A_ACK): (S.ENDING, ()),
    (S.ENDING, E.B_ANSWER): (S.ENDING, (A.ACK_B,)),
    (S.ENDING, E.B_FAILURE): (S.ENDING, ()),
    (S.ENDING, E.B_TIMEOUT): (S.ENDING, ()),
    (S.ENDING, E.B_UNREACHABLE): (S.ENDING, ()),
    (S.ENDING, E.MEDIA_TIMEOUT): (S.ENDING, ()),
    (S.ENDING, E.MAX_DURATION): (S.ENDING, ()),
    (S.ENDING, E.SHUTDOWN): (S.ENDING, ()),
    (S.ENDING, E.A_ACK_TIMEOUT): (S.ENDING, ()),
    (S.ENDING, E.A_CANCEL): (S.ENDING, ()),
    (S.ENDING, E.BYES_DONE): (S.ENDED, ()),
}

# Who ended the call, by the event that started the end (CONTRACT: release_side).
_RELEASE_SIDE: dict[CallEvent, str] = {
    E.A_CANCEL: "caller", E.A_BYE: "caller",
    E.B_FAILURE: "callee", E.B_BYE: "callee",
    E.B_TIMEOUT: "sipmask", E.B_UNREACHABLE: "sipmask", E.RING_TIMEOUT: "sipmask",
    E.MEDIA_TIMEOUT: "sipmask",
    E.MAX_DURATION: "sipmask", E.SHUTDOWN: "sipmask", E.SETUP_FAILED: "sipmask",
    E.A_ACK_TIMEOUT: "sipmask",
}

# The final status leg A gets, for actions that choose it themselves.
_STATUS_FOR_ACTION = {A.ANSWER_A_487: 487, A.ANSWER_A_408: 408, A.ANSWER_A_503: 503,
                      A.ANSWER_A_480: 480}

_CAUSE_FOR_EVENT: dict[CallEvent, str] = {
    E.B_FAILURE: "callee_failed", E.B_TIMEOUT: "timeout", E.RING_TIMEOUT: "timeout",
    E.B_UNREACHABLE: "trunk_unreachable",
    E.A_CANCEL: "none", E.SETUP_FAILED: "callee_failed", E.SHUTDOWN: "none",
}
# An end during NOTICE (A never heard the answer), where it names a cause of its own.
_NOTICE_CAUSE: dict[CallEvent, str] = {E.B_BYE: "callee_failed"}


# The time a transition stamps on the record (Call.apply), by its event and state: B's
# first provisional (ring_at, not while cancelling), B's answer while ringing (answer_at and
# the status), the notices' end (answer_at: talk time starts at A's 200).
_RING, _ANSWER, _TALK = "ring", "answer", "talk"


def _stamp(state: CallState, event: CallEvent) -> str | None:
    if event is E.B_PROVISIONAL and state is not S.CANCELLING:
        return _RING
    if event is E.B_ANSWER and state in PLACING:
        return _ANSWER
    if event is E.NOTICE_DONE:
        return _TALK
    return None


# What Call.apply does for each transition, worked out once from the tables above (so
# apply compares no Enum members: reading one off its class is a slow attribute hook in
# Python 3.11): (next state, actions, decides the end (WRITE_CDR), the status an ANSWER_A_*
# action fixes, relays B's failure, release side it sets, unconnected cause it sets, the
# time it stamps (_stamp), ends while a notice plays).
_Step = tuple[CallState, tuple[Action, ...], bool, int | None, bool, str | None, str | None,
              str | None, bool]


def _step(state: CallState, event: CallEvent, next_state: CallState,
          actions: tuple[Action, ...]) -> _Step:
    fixed = next((_STATUS_FOR_ACTION[a] for a in actions if a in _STATUS_FOR_ACTION), None)
    release = _RELEASE_SIDE.get(event) if (actions or event is E.A_CANCEL) else None
    cause = _CAUSE_FOR_EVENT.get(event)
    if state is S.NOTICE:
        cause = _NOTICE_CAUSE.get(event, cause)
    ends = A.WRITE_CDR in actions
    return (next_state, actions, ends, fixed, A.RELAY_FAILURE_TO_A in actions, release,
            cause, _stamp(state, event), ends and state is S.NOTICE)


_STEPS: dict[tuple[CallState, CallEvent], _Step] = {
    key: _step(key[0], key[1], next_state, actions)
    for key, (next_state, actions) in TRANSITIONS.items()}


@dataclass
class Call:
    """One call attempt through X: its state and the record it will leave behind."""

    call_id: str                       # sipmask's own id; also leg B's Call-ID
    tenant: str
    binding_id: str
    x: str
    caller: str
    callee: str
    direction: str                     # a_to_b, b_to_a, n_to_a
    invite_at: float
    state: CallState = CallState.ROUTING
    ring_at: float | None = None
    # When the caller got its 200: B's answer, or the end of the notices that followed it.
    answer_at: float | None = None
    end_at: float | None = None
    release_side: str | None = None
    sip_status: int | None = None      # final status sent to leg A
    unconnected_cause: str = "none"
    recording: str | None = None       # the recording's file name (CDR `recording`)
    history: list[tuple[CallState, CallEvent]] = field(default_factory=list)

    def apply(self, event: CallEvent, now: float, *, status: int | None = None
              ) -> tuple[Action, ...]:
        """Take one event; return what the engine must do. `status` is B's status for
        B_PROVISIONAL / B_ANSWER / B_FAILURE."""
        state = self.state
        step = _STEPS.get((state, event))
        if step is None:
            raise CallStateError(f"{event.value} is not allowed in state {state.value}")
        (next_state, actions, ends, fixed_status, relay_failure, release, cause, stamp,
         notice_end) = step
        self.history.append((state, event))
        # The record (CDR fields), from what _STEPS worked out for this transition.
        if stamp is None:
            pass
        elif stamp == _RING:
            if self.ring_at is None:
                self.ring_at = now
        elif stamp == _ANSWER:
            if self.answer_at is None:
                self.answer_at = now
                self.sip_status = status or 200
        else:
            # _TALK: the parties are connected now, the caller's 200 on its way: talk time
            # (and billing, as the caller's carrier counts it from that 200) starts here,
            # not at the callee's answer. A notice is not talk time.
            self.answer_at = now
        if relay_failure:
            self.sip_status = status
        if notice_end:
            # A never heard B's answer (a notice was playing): to the record the call was
            # not answered, and its status is the one A gets now.
            self.answer_at = None
            self.sip_status = fixed_status
        if fixed_status is not None and self.sip_status is None:
            self.sip_status = fixed_status
        if release is not None and self.release_side is None:
            self.release_side = release
        if cause is not None and self.answer_at is None and self.unconnected_cause == "none":
            self.unconnected_cause = cause
        if ends:
            self.end_at = now   # the moment the end was decided, before any answer leaves
        self.state = next_state
        return actions

    @property
    def duration_s(self) -> float:
        """Talk time: answer to end, 0 for calls never answered."""
        if self.answer_at is None or self.end_at is None:
            return 0.0
        return round(self.end_at - self.answer_at, 3)

    @property
    def done(self) -> bool:
        return self.state is CallState.ENDED

    @property
    def recorded(self) -> bool:
        """The CDR has been written (the call left the live states)."""
        return self.state not in LIVE
