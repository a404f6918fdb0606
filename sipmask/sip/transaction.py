"""RFC 3261 §17 transactions, sans-IO (aioquic style).

The shell hands every parsed message to `TransactionLayer.receive(msg, source, transport,
now)`, drains `outgoing()` (bytes to send) and `events()` (for the TU: the B2BUA), and keeps
one `loop.call_at(next_timer())` armed that calls `handle_timer(now)`. Nothing here reads a
clock or touches a socket.

Each of the four transaction kinds is a state enum plus a transition table held as data:
(state, input) → (next state, steps). An input the table does not list raises
TransactionError. Every input that can come from the network is listed for every state (a
peer cannot make the layer raise); what is missing is TU misuse, such as a second final
response.

Choices, where RFC 3261 leaves one:
- 2xx to INVITE follows RFC 6026: both INVITE transactions enter "Accepted" (Timers L, M)
  instead of terminating, so retransmitted INVITEs are absorbed and retransmitted 2xx still
  reach the TU. The server transaction also retransmits the 2xx itself until the ACK comes
  (§13.3.1.4, the UAS core's duty: T1 doubling to T2, give up at 64*T1 with `AckTimeout`).
  The ACK for a 2xx (a transaction of its own, new branch) is matched to it by Call-ID, CSeq
  number and tags, and handed to the TU as `AckReceived`.
- 100 Trying: the server INVITE transaction sends it itself when the TU has sent nothing
  within 200 ms (§17.2.1), or at once when the INVITE is retransmitted before that.
  `trying_delay=None` turns this off (then the TU sends 100 itself).
- CANCEL (§9.2) is answered by the layer: 200 when it matches an INVITE server transaction,
  481 otherwise. The TU gets `CancelReceived`; `invite_txn_id` is set when that INVITE is
  still waiting for its final response (the TU then answers it 487 and cancels its own leg).
- A CANCEL sent gives the INVITE 64*T1 to end; then its client transaction is destroyed
  (§9.1) and the TU gets `TransactionTimeout`. Otherwise an INVITE in Proceeding waits for
  its final response as long as it takes (no Timer C: how long to ring is the TU's call),
  and a server transaction waits for the TU's final response: the TU must answer every
  request it is given, or the transaction stays.
- The ACK for a non-2xx final response is built and sent by the client INVITE transaction
  (§17.1.1.3) and sent again for each retransmitted final response while Timer D runs. The
  ACK for a 2xx is the TU's (`send_ack`); the layer keeps it and sends it again when the 2xx
  is retransmitted during Timer M.
- RFC 2543 requests (no z9hG4bK branch) are matched on Call-ID, From tag, CSeq number,
  sent-by and method (a subset of §17.2.3's fallback, enough for retransmissions and ACK).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from sipmask.entropy import token_bytes
from sipmask.errors import ParseError, TransactionError
from sipmask.sip.headers import Headers, split_commas
from sipmask.sip.message import Request, Response, build_response
from sipmask.sip.timers import (
    TRYING_DELAY,
    Timer,
    TimerConfig,
    backoff,
    initial,
)
from sipmask.sip.transports import ALL, RELIABLE, Address, Transport
from sipmask.sip.uri import Via

RandomBytes = Callable[[int], bytes]

# RFC 3261 §8.1.1.7: a branch that starts with this cookie was built by an RFC 3261 element
# and is unique across space and time, so it alone can identify a transaction.
MAGIC_COOKIE = "z9hG4bK"


def new_branch(rand: RandomBytes = token_bytes) -> str:
    """A fresh Via branch (§8.1.1.7): the magic cookie and 96 random bits."""
    return MAGIC_COOKIE + rand(12).hex()


# Outgoing and the TU events are built for every message, so they are plain slotted
# dataclasses: a frozen one's __init__ goes through object.__setattr__ per field. They
# compare and hash by value as before (unsafe_hash); nothing may change one once built.
@dataclass(slots=True, unsafe_hash=True)
class Outgoing:
    """Bytes for the shell to send."""

    data: bytes
    dest: Address
    transport: Transport


# -- events for the TU ----------------------------------------------------------------------
@dataclass(slots=True, unsafe_hash=True)
class RequestReceived:
    """A new request with its server transaction; answer it with `send_response(txn_id…)`."""

    request: Request
    source: Address
    transport: Transport
    txn_id: str


@dataclass(slots=True, unsafe_hash=True)
class ResponseReceived:
    """A response for a client transaction the TU started."""

    response: Response
    txn_id: str
    source: Address
    transport: Transport


@dataclass(slots=True, unsafe_hash=True)
class AckReceived:
    """An ACK for a 2xx (§17.1.1.3, §13.2.2.4: its own transaction, so it goes straight to
    the TU). `invite_txn_id` names the accepted INVITE server transaction it acknowledges,
    or is None when that transaction is gone or unknown."""

    request: Request
    source: Address
    transport: Transport
    invite_txn_id: str | None


@dataclass(slots=True, unsafe_hash=True)
class CancelReceived:
    """A CANCEL (§9.2), already answered by the layer (200 or 481). `invite_txn_id` is set
    when the INVITE it matches still awaits its final response: answer that one 487."""

    request: Request
    source: Address
    transport: Transport
    txn_id: str
    invite_txn_id: str | None


@dataclass(slots=True, unsafe_hash=True)
class TransactionTimeout:
    """Timer B or F fired (the TU treats it as a 408, §8.1.3.1), or Timer H fired on a
    server INVITE transaction (the ACK never came, §17.2.1)."""

    txn_id: str
    request: Request


@dataclass(slots=True, unsafe_hash=True)
class TransportFailed:
    """The transport could not deliver for this transaction (§17.1.4, §17.2.4); a client
    TU treats it as 503 (§8.1.3.1)."""

    txn_id: str
    request: Request


@dataclass(slots=True, unsafe_hash=True)
class AckTimeout:
    """A 2xx was retransmitted for 64*T1 without an ACK (§13.3.1.4): the dialog is
    confirmed, but the session SHOULD be ended with a BYE."""

    txn_id: str
    response: Response


@dataclass(slots=True, unsafe_hash=True)
class TransactionTerminated:
    txn_id: str


@dataclass(slots=True, unsafe_hash=True)
class StrayResponse:
    """A response no client transaction matches, e.g. a 2xx retransmitted after Timer M
    (§17.1.1.2: the TU gets 2xx, so it is delivered, not dropped)."""

    response: Response
    source: Address
    transport: Transport


TUEvent = (RequestReceived | ResponseReceived | AckReceived | CancelReceived
           | TransactionTimeout | TransportFailed | AckTimeout | TransactionTerminated
           | StrayResponse)


# -- the state machines, as data ------------------------------------------------------------
class _Member(Enum):
    """Enum members hash by identity: they key the transition tables, and Enum's own
    name-based __hash__ is a Python call on every lookup of the hot path."""

    __hash__ = object.__hash__


class Kind(_Member):
    INVITE_CLIENT = "invite_client"
    NON_INVITE_CLIENT = "non_invite_client"
    INVITE_SERVER = "invite_server"
    NON_INVITE_SERVER = "non_invite_server"


class ClientInviteState(_Member):      # §17.1.1.2 figure 5, with RFC 6026 §7.2 Accepted
    CALLING = "calling"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


class ClientNonInviteState(_Member):   # §17.1.2.2 figure 6
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    TERMINATED = "terminated"


class ServerInviteState(_Member):      # §17.2.1 figure 7, with RFC 6026 §7.1 Accepted
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


class ServerNonInviteState(_Member):   # §17.2.2 figure 8
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    TERMINATED = "terminated"


State = ClientInviteState | ClientNonInviteState | ServerInviteState | ServerNonInviteState


class Input(_Member):
    """What a transaction is told. Responses are received (client) or sent by the TU
    (server); timers arrive as `Timer` members."""

    REQUEST = "request"            # server: its request again (a retransmission)
    ACK = "ack"                    # server INVITE: an ACK with its branch
    PROVISIONAL = "1xx"
    SUCCESS = "2xx"
    FAILURE = "3xx-6xx"
    CANCEL = "cancel"              # client INVITE: the TU cancels (§9.1)
    TRANSPORT_ERROR = "transport error"


Event = Input | Timer


class Step(_Member):
    """What a transition does, in order."""

    SEND = "send"                      # server: send the TU's response; client: the request
    RETRANSMIT = "retransmit"          # client: the request again
    RESEND = "resend"                  # server: the last response again (100 if none yet)
    SEND_TRYING = "send 100"
    SEND_ACK = "send ack"              # client INVITE: build and send the non-2xx ACK
    RESEND_ACK = "resend ack"
    DELIVER = "deliver"                # client: the response to the TU
    DELIVER_2XX = "deliver 2xx"        # client Accepted: resend the TU's ACK, or deliver
    DELIVER_ACK = "deliver ack"        # server Accepted: ACK with our branch to the TU
    TIMEOUT = "timeout"
    TRANSPORT_FAILED = "transport failed"
    ACK_TIMEOUT = "ack timeout"        # server Accepted: Timer L and still no ACK
    HOLD_CANCEL = "hold cancel"        # §9.1: no CANCEL before a provisional response
    SEND_CANCEL = "send cancel"
    DROP_CANCEL = "drop cancel"        # final response came first: nothing to cancel


@dataclass(frozen=True)
class Start:
    timer: Timer


@dataclass(frozen=True)
class Stop:
    timer: Timer


@dataclass(frozen=True)
class Backoff:
    """Restart a retransmit timer with its next interval (doubling, §17.1.1.2 / §17.1.2.2)."""

    timer: Timer


@dataclass(frozen=True)
class RestartAtT2:
    """§17.1.2.2: Timer E firing in Proceeding is reset to T2."""

    timer: Timer


Action = Step | Start | Stop | Backoff | RestartAtT2


class Transition(NamedTuple):
    next: State
    actions: tuple[Action, ...]


Table = dict[tuple[State, Event], Transition]


def _table(rows: list[tuple[tuple[State, ...], tuple[Event, ...], State | None,
                            tuple[Action, ...]]]) -> Table:
    """Expand rows of (states, inputs, next state or None for "stay", actions)."""
    table: Table = {}
    for states, inputs, nxt, actions in rows:
        for state in states:
            for event in inputs:
                assert (state, event) not in table, (state, event)
                table[(state, event)] = Transition(nxt if nxt is not None else state, actions)
    return table


_CI = ClientInviteState
_CN = ClientNonInviteState
_SI = ServerInviteState
_SN = ServerNonInviteState
_RESPONSES = (Input.PROVISIONAL, Input.SUCCESS, Input.FAILURE)
_FINALS = (Input.SUCCESS, Input.FAILURE)

# §17.1.1.2 with RFC 6026 §8.4.
CLIENT_INVITE: Table = _table([
    ((_CI.CALLING,), (Timer.A,), None, (Step.RETRANSMIT, Backoff(Timer.A))),
    ((_CI.CALLING,), (Timer.B,), _CI.TERMINATED, (Step.DROP_CANCEL, Step.TIMEOUT)),
    # In Proceeding the request is no longer retransmitted and Timer B no longer applies
    # (figure 5: it only fires in Calling); how long to ring is the TU's decision.
    ((_CI.CALLING,), (Input.PROVISIONAL,), _CI.PROCEEDING,
     (Stop(Timer.A), Stop(Timer.B), Step.DELIVER, Step.SEND_CANCEL)),
    ((_CI.PROCEEDING,), (Input.PROVISIONAL,), None, (Step.DELIVER,)),
    ((_CI.CALLING, _CI.PROCEEDING), (Input.SUCCESS,), _CI.ACCEPTED,
     (Stop(Timer.A), Stop(Timer.B), Stop(Timer.CANCELLED), Step.DROP_CANCEL, Step.DELIVER,
      Start(Timer.M))),
    ((_CI.CALLING, _CI.PROCEEDING), (Input.FAILURE,), _CI.COMPLETED,
     (Stop(Timer.A), Stop(Timer.B), Stop(Timer.CANCELLED), Step.DROP_CANCEL, Step.SEND_ACK,
      Step.DELIVER, Start(Timer.D))),
    # §9.1: no final response 64*T1 after the CANCEL went: the INVITE is given up (the TU
    # hears TransactionTimeout and treats the call as cancelled).
    ((_CI.PROCEEDING,), (Timer.CANCELLED,), _CI.TERMINATED, (Step.TIMEOUT,)),
    ((_CI.CALLING, _CI.PROCEEDING), (Input.TRANSPORT_ERROR,), _CI.TERMINATED,
     (Step.DROP_CANCEL, Step.TRANSPORT_FAILED)),
    ((_CI.CALLING,), (Input.CANCEL,), None, (Step.HOLD_CANCEL,)),
    ((_CI.PROCEEDING,), (Input.CANCEL,), None, (Step.HOLD_CANCEL, Step.SEND_CANCEL)),
    # §9.1: a request with a final response cannot be cancelled; no CANCEL is sent.
    ((_CI.COMPLETED, _CI.ACCEPTED), (Input.CANCEL,), None, ()),
    # §17.1.1.2: retransmitted final responses in Completed get the ACK again (Timer D).
    ((_CI.COMPLETED,), (Input.FAILURE,), None, (Step.RESEND_ACK,)),
    ((_CI.COMPLETED,), (Input.PROVISIONAL, Input.SUCCESS), None, ()),
    ((_CI.COMPLETED,), (Timer.D,), _CI.TERMINATED, ()),
    # RFC 6026 §8.4: 2xx in Accepted go to the TU; anything else is absorbed.
    ((_CI.ACCEPTED,), (Input.SUCCESS,), None, (Step.DELIVER_2XX,)),
    ((_CI.ACCEPTED,), (Input.PROVISIONAL, Input.FAILURE), None, ()),
    ((_CI.ACCEPTED,), (Timer.M,), _CI.TERMINATED, ()),
    ((_CI.COMPLETED, _CI.ACCEPTED), (Input.TRANSPORT_ERROR,), _CI.TERMINATED, ()),
])

# §17.1.2.2.
CLIENT_NON_INVITE: Table = _table([
    ((_CN.TRYING,), (Timer.E,), None, (Step.RETRANSMIT, Backoff(Timer.E))),
    ((_CN.PROCEEDING,), (Timer.E,), None, (Step.RETRANSMIT, RestartAtT2(Timer.E))),
    ((_CN.TRYING, _CN.PROCEEDING), (Timer.F,), _CN.TERMINATED, (Step.TIMEOUT,)),
    ((_CN.TRYING, _CN.PROCEEDING), (Input.PROVISIONAL,), _CN.PROCEEDING, (Step.DELIVER,)),
    ((_CN.TRYING, _CN.PROCEEDING), _FINALS, _CN.COMPLETED,
     (Stop(Timer.E), Stop(Timer.F), Step.DELIVER, Start(Timer.K))),
    ((_CN.TRYING, _CN.PROCEEDING), (Input.TRANSPORT_ERROR,), _CN.TERMINATED,
     (Step.TRANSPORT_FAILED,)),
    ((_CN.COMPLETED,), _RESPONSES, None, ()),
    ((_CN.COMPLETED,), (Timer.K,), _CN.TERMINATED, ()),
    ((_CN.COMPLETED,), (Input.TRANSPORT_ERROR,), _CN.TERMINATED, ()),
])

# §17.2.1 with RFC 6026 §8.5–§8.7.
SERVER_INVITE: Table = _table([
    ((_SI.PROCEEDING,), (Timer.TRYING,), None, (Step.SEND_TRYING,)),
    ((_SI.PROCEEDING,), (Input.REQUEST,), None, (Stop(Timer.TRYING), Step.RESEND)),
    ((_SI.PROCEEDING,), (Input.PROVISIONAL,), None, (Stop(Timer.TRYING), Step.SEND)),
    ((_SI.PROCEEDING,), (Input.SUCCESS,), _SI.ACCEPTED,
     (Stop(Timer.TRYING), Step.SEND, Start(Timer.RETRANSMIT_2XX), Start(Timer.L))),
    ((_SI.PROCEEDING,), (Input.FAILURE,), _SI.COMPLETED,
     (Stop(Timer.TRYING), Step.SEND, Start(Timer.G), Start(Timer.H))),
    # An ACK before any final response is a peer's mistake: nothing to acknowledge.
    ((_SI.PROCEEDING,), (Input.ACK,), None, ()),
    ((_SI.COMPLETED,), (Input.REQUEST,), None, (Step.RESEND,)),
    ((_SI.COMPLETED,), (Timer.G,), None, (Step.RESEND, Backoff(Timer.G))),
    ((_SI.COMPLETED,), (Timer.H,), _SI.TERMINATED, (Step.TIMEOUT,)),
    ((_SI.COMPLETED,), (Input.ACK,), _SI.CONFIRMED,
     (Stop(Timer.G), Stop(Timer.H), Start(Timer.I))),
    # Confirmed absorbs ACK retransmissions until Timer I (§17.2.1).
    ((_SI.CONFIRMED,), (Input.REQUEST, Input.ACK), None, ()),
    ((_SI.CONFIRMED,), (Timer.I,), _SI.TERMINATED, ()),
    # RFC 6026 §8.7: Accepted absorbs INVITE retransmissions, passes a matching ACK and the
    # TU's 2xx retransmissions.
    ((_SI.ACCEPTED,), (Input.REQUEST,), None, ()),
    ((_SI.ACCEPTED,), (Input.ACK,), None, (Stop(Timer.RETRANSMIT_2XX), Step.DELIVER_ACK)),
    ((_SI.ACCEPTED,), (Input.SUCCESS,), None, (Step.SEND,)),
    ((_SI.ACCEPTED,), (Timer.RETRANSMIT_2XX,), None,
     (Step.RESEND, Backoff(Timer.RETRANSMIT_2XX))),
    ((_SI.ACCEPTED,), (Timer.L,), _SI.TERMINATED, (Step.ACK_TIMEOUT,)),
    ((_SI.PROCEEDING, _SI.COMPLETED, _SI.ACCEPTED), (Input.TRANSPORT_ERROR,), _SI.TERMINATED,
     (Step.TRANSPORT_FAILED,)),
    ((_SI.CONFIRMED,), (Input.TRANSPORT_ERROR,), _SI.TERMINATED, ()),
])

# §17.2.2.
SERVER_NON_INVITE: Table = _table([
    ((_SN.TRYING,), (Input.REQUEST,), None, ()),
    ((_SN.TRYING, _SN.PROCEEDING), (Input.PROVISIONAL,), _SN.PROCEEDING, (Step.SEND,)),
    ((_SN.TRYING, _SN.PROCEEDING), _FINALS, _SN.COMPLETED, (Step.SEND, Start(Timer.J))),
    ((_SN.PROCEEDING, _SN.COMPLETED), (Input.REQUEST,), None, (Step.RESEND,)),
    ((_SN.COMPLETED,), (Timer.J,), _SN.TERMINATED, ()),
    ((_SN.TRYING, _SN.PROCEEDING, _SN.COMPLETED), (Input.TRANSPORT_ERROR,), _SN.TERMINATED,
     (Step.TRANSPORT_FAILED,)),
])

TABLES: dict[Kind, Table] = {
    Kind.INVITE_CLIENT: CLIENT_INVITE,
    Kind.NON_INVITE_CLIENT: CLIENT_NON_INVITE,
    Kind.INVITE_SERVER: SERVER_INVITE,
    Kind.NON_INVITE_SERVER: SERVER_NON_INVITE,
}

INITIAL_STATE: dict[Kind, State] = {
    Kind.INVITE_CLIENT: _CI.CALLING,
    Kind.NON_INVITE_CLIENT: _CN.TRYING,
    Kind.INVITE_SERVER: _SI.PROCEEDING,
    Kind.NON_INVITE_SERVER: _SN.TRYING,
}

# What a transaction does when it is created: §17.1.1.2 (send, Timers A and B),
# §17.1.2.2 (send, Timers E and F), §17.2.1 (the 200 ms 100 Trying timer).
INITIAL_ACTIONS: dict[Kind, tuple[Action, ...]] = {
    Kind.INVITE_CLIENT: (Step.SEND, Start(Timer.A), Start(Timer.B)),
    Kind.NON_INVITE_CLIENT: (Step.SEND, Start(Timer.E), Start(Timer.F)),
    Kind.INVITE_SERVER: (Start(Timer.TRYING),),
    Kind.NON_INVITE_SERVER: (),
}

_CLIENT_KINDS = frozenset({Kind.INVITE_CLIENT, Kind.NON_INVITE_CLIENT})

_TERMINATED: frozenset[State] = frozenset({
    _CI.TERMINATED, _CN.TERMINATED, _SI.TERMINATED, _SN.TERMINATED})


# Bound once as globals: reading a member off its Enum class is a slow attribute hook in
# Python 3.11 (EnumType.__getattr__), and these are read for every message in and out.
_PROVISIONAL, _SUCCESS, _FAILURE = Input.PROVISIONAL, Input.SUCCESS, Input.FAILURE
_INVITE_SERVER, _NON_INVITE_SERVER = Kind.INVITE_SERVER, Kind.NON_INVITE_SERVER
_INVITE_CLIENT, _NON_INVITE_CLIENT = Kind.INVITE_CLIENT, Kind.NON_INVITE_CLIENT
_RETRANSMIT_2XX = Timer.RETRANSMIT_2XX


def response_input(status: int) -> Input:
    if status < 200:
        return _PROVISIONAL
    return _SUCCESS if status < 300 else _FAILURE


# -- one transaction ------------------------------------------------------------------------
@dataclass(eq=False, slots=True)
class Transaction:
    txn_id: str
    kind: Kind
    request: Request
    transport: Transport
    peer: Address                  # client: where the request goes; server: where responses go
    state: State
    source: Address | None = None  # server: where the request came from
    request_bytes: bytes = b""     # client: sent as is on every retransmission
    last_response: Response | None = None
    last_bytes: bytes | None = None
    timers: dict[Timer, int] = field(default_factory=dict)       # timer → heap entry seq
    intervals: dict[Timer, float] = field(default_factory=dict)  # current retransmit interval
    due_now: list[Timer] = field(default_factory=list)           # zero timers (TCP)
    ack_bytes: bytes | None = None                 # client INVITE: the non-2xx ACK
    acks_2xx: dict[str, Outgoing] = field(default_factory=dict)  # client: To tag → TU's ACK
    cancel: Request | None = None                  # client INVITE: CANCEL held or sent
    cancel_id: str | None = None
    cancel_sent: bool = False
    to_tag: str | None = None                      # server: tag of its responses
    acked: bool = False                            # server Accepted: the 2xx was ACKed
    dialog_key: tuple[str, int, str, str] | None = None

    @property
    def is_client(self) -> bool:
        return self.kind in _CLIENT_KINDS


@dataclass(slots=True)
class _Context:
    """What the input that is being processed carried."""

    now: float
    message: Request | Response | None = None
    source: Address | None = None
    transport: Transport | None = None


# -- the layer ------------------------------------------------------------------------------
class TransactionLayer:
    """All transactions of one sipmask process. See the module docstring."""

    def __init__(self, timers: TimerConfig | None = None, *, local_via_host: str,
                 local_port: int, rand: RandomBytes = token_bytes,
                 trying_delay: float | None = TRYING_DELAY,
                 via_ports: Mapping[str, int] | None = None) -> None:
        # How long each timer runs when started, per transport: derived from `timers` and
        # `trying_delay` whenever either is set (the properties below), so _run looks an
        # interval up instead of asking sip/timers.initial on every start.
        self._intervals: dict[str, dict[Timer, float | None]] = {}
        self._timers = timers if timers is not None else TimerConfig()
        self._trying_delay = trying_delay
        self._derive_intervals()
        self.local_via_host = local_via_host
        self.local_port = local_port
        # The port our Via names per transport when it has its own listener (TLS usually
        # does: 5061, §26.2.1); §18.2.2 sends a response there if the connection is gone.
        self.via_ports: dict[str, int] = dict(via_ports or {})
        self.rand = rand
        self._txns: dict[str, Transaction] = {}
        # Accepted server INVITE transactions by (Call-ID, CSeq number, From tag, To tag),
        # to match the ACK for their 2xx, which has a branch of its own (§17.1.1.3).
        self._accepted: dict[tuple[str, int, str, str], str] = {}
        self._heap: list[tuple[float, int, str, Timer]] = []
        self._seq = itertools.count()
        # The earliest live heap entry, kept so next_timer is O(1) between changes: valid
        # unless _next_dirty (that entry was stopped, restarted, fired or its transaction
        # ended); a push earlier than it replaces it. _next_seq is -1 when there is none.
        self._next_at: float | None = None
        self._next_seq = -1
        self._next_dirty = False
        self._out: list[Outgoing] = []
        self._events: list[TUEvent] = []
        self._live: dict[Kind, int] = dict.fromkeys(Kind, 0)

    # -- timer values ------------------------------------------------------------------------
    @property
    def timers(self) -> TimerConfig:
        """T1, T2, T4 (§17.1.1.1)."""
        return self._timers

    @timers.setter
    def timers(self, value: TimerConfig) -> None:
        self._timers = value
        self._derive_intervals()

    @property
    def trying_delay(self) -> float | None:
        """§17.2.1: when the layer sends 100 Trying itself (None: never)."""
        return self._trying_delay

    @trying_delay.setter
    def trying_delay(self, value: float | None) -> None:
        self._trying_delay = value
        self._derive_intervals()

    def _derive_intervals(self) -> None:
        for transport in ALL:
            table: dict[Timer, float | None] = {
                timer: initial(timer, self._timers, transport) for timer in Timer}
            table[Timer.TRYING] = self._trying_delay
            self._intervals[transport] = table

    # -- draining --------------------------------------------------------------------------
    def outgoing(self) -> list[Outgoing]:
        out, self._out = self._out, []
        return out

    def events(self) -> list[TUEvent]:
        out, self._events = self._events, []
        return out

    def gauges(self) -> dict[str, int]:
        """Live transactions by kind (for metrics); all zero once every flow has ended."""
        return {kind.value: n for kind, n in self._live.items()}

    def __len__(self) -> int:
        return len(self._txns)

    def state_of(self, txn_id: str) -> State | None:
        txn = self._txns.get(txn_id)
        return None if txn is None else txn.state

    def request_of(self, txn_id: str) -> Request:
        return self._get(txn_id).request

    # -- timers -----------------------------------------------------------------------------
    def next_timer(self) -> float | None:
        if not self._next_dirty:
            return self._next_at
        heap = self._heap
        txns = self._txns
        self._next_dirty = False
        while heap:
            at, seq, txn_id, timer = heap[0]
            txn = txns.get(txn_id)
            if txn is not None and txn.timers.get(timer) == seq:
                self._next_at = at
                self._next_seq = seq
                return at
            heapq.heappop(heap)  # stopped, restarted or its transaction ended
        self._next_at = None
        self._next_seq = -1
        return None

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at `now`. Each fires at its own deadline, so a late call does
        not shift the retransmit schedule (the next interval starts from the deadline)."""
        heap = self._heap
        if heap and heap[0][0] <= now:
            # Entries are about to leave the heap (and fired timers restart): look again.
            self._next_dirty = True
        while heap and heap[0][0] <= now:
            at, seq, txn_id, timer = heapq.heappop(heap)
            txn = self._txns.get(txn_id)
            if txn is None or txn.timers.get(timer) != seq:
                continue
            del txn.timers[timer]
            self._feed(txn, timer, _Context(at))

    # -- incoming ---------------------------------------------------------------------------
    def receive(self, msg: Request | Response, source: Address, transport: Transport,
                now: float) -> None:
        """One parsed message from the network. Never raises on peer input: what cannot be
        matched or used is dropped (a response missing Via or CSeq) or handed on."""
        try:
            if isinstance(msg, Response):
                self._receive_response(msg, source, transport, now)
            else:
                self._receive_request(msg, source, transport, now)
        except ParseError:
            # The parser checks Via, CSeq, From, To and Call-ID on requests; a response that
            # lacks them cannot be matched to anything (§18.1.2 discards it).
            return

    def _receive_response(self, response: Response, source: Address, transport: Transport,
                          now: float) -> None:
        # §17.1.3: branch of the top Via and the CSeq method.
        branch = response.top_via.branch or ""
        txn = self._txns.get(client_key(branch, response.cseq.method))
        if txn is None:
            self._events.append(StrayResponse(response, source, transport))
            return
        self._feed(txn, response_input(response.status),
                   _Context(now, response, source, transport))
        if response.status >= 200:
            # A final response ends the request's retransmissions: its bytes need not wait
            # out Timer D/K/M (memory per transaction under load; bench/soak.py).
            txn.request_bytes = b""

    def _receive_request(self, request: Request, source: Address, transport: Transport,
                         now: float) -> None:
        via = stamp_top_via(request, source)
        method = request.method
        key = server_key(request, via=via)
        txn = self._txns.get(key)
        if method == "ACK":
            if txn is not None and txn.kind is Kind.INVITE_SERVER:
                # §17.2.1: the ACK for a non-2xx ends inside the transaction; in Accepted
                # (RFC 6026 §8.7) the transaction hands it to the TU.
                self._feed(txn, Input.ACK, _Context(now, request, source, transport))
                return
            # §17.1.1.3: the ACK for a 2xx is a transaction of its own, for the TU.
            accepted_id = self._accepted.get(_ack_dialog_key(request))
            accepted = self._txns.get(accepted_id) if accepted_id is not None else None
            if accepted is not None and not accepted.acked:
                accepted.acked = True
                accepted.last_response = None     # kept only for AckTimeout
                self._stop(accepted, _RETRANSMIT_2XX)
            self._events.append(AckReceived(request, source, transport, accepted_id))
            return
        if txn is not None:
            self._feed(txn, Input.REQUEST, _Context(now, request, source, transport))
            return
        kind = _INVITE_SERVER if method == "INVITE" else _NON_INVITE_SERVER
        peer = source if transport in RELIABLE else via.response_target(source)
        txn = Transaction(key, kind, request, transport, peer, INITIAL_STATE[kind],
                          source=source)
        self._add(txn, _Context(now))
        if method == "CANCEL":
            self._answer_cancel(txn, request, source, transport, now)
        else:
            self._events.append(RequestReceived(request, source, transport, key))

    def _answer_cancel(self, txn: Transaction, cancel: Request, source: Address,
                       transport: Transport, now: float) -> None:
        # §9.2: the CANCEL matches the INVITE server transaction with its branch; the UAS
        # answers the CANCEL itself, 200 if it matched, 481 if not.
        invite = self._txns.get(server_key(cancel, method="INVITE"))
        if invite is None or invite.kind is not Kind.INVITE_SERVER:
            self._events.append(CancelReceived(cancel, source, transport, txn.txn_id, None))
            response = build_response(cancel, 481, to_tag=self._new_tag())
            self.send_response(txn.txn_id, response, now)
            return
        # §9.2: the To tag of the CANCEL's response SHOULD equal that of the INVITE's.
        if invite.to_tag is None:
            invite.to_tag = self._new_tag()
        pending = invite.txn_id if invite.state is _SI.PROCEEDING else None
        self._events.append(CancelReceived(cancel, source, transport, txn.txn_id, pending))
        response = build_response(cancel, 200, to_tag=invite.to_tag)
        self.send_response(txn.txn_id, response, now)

    # -- outgoing, from the TU --------------------------------------------------------------
    def send_request(self, request: Request, dest: Address, transport: Transport,
                     now: float, *, branch: str | None = None) -> str:
        """Start a client transaction. A top Via with sipmask's sent-by and a z9hG4bK
        branch (`branch`, else a new one) is added unless the request has one (§8.1.1.7).
        Returns the txn_id, `client_key(branch, method)`: a TU that chose the branch knows
        it before the request is sent."""
        if request.method == "ACK":
            raise TransactionError("ACK is not a transaction: use send_ack (§17.1.1.3)")
        branch = self._ensure_via(request, transport, branch)
        key = client_key(branch, request.cseq.method)
        if key in self._txns:
            raise TransactionError(f"a transaction with branch {branch} is already live")
        kind = _INVITE_CLIENT if request.method == "INVITE" else _NON_INVITE_CLIENT
        txn = Transaction(key, kind, request, transport, dest, INITIAL_STATE[kind],
                          request_bytes=request.to_bytes())
        self._add(txn, _Context(now))
        return key

    def send_response(self, txn_id: str, response: Response, now: float) -> None:
        """Answer a server transaction. A response its state cannot take (a second final
        one, say) raises TransactionError."""
        txn = self._get(txn_id)
        if txn.is_client:
            raise TransactionError(f"{txn_id} is a client transaction")
        self._feed(txn, response_input(response.status), _Context(now, response))

    def cancel(self, invite_txn_id: str, now: float) -> str | None:
        """CANCEL a pending INVITE (§9.1). Returns the CANCEL's txn_id, or None when the INVITE
        already has a final response (then there is nothing to cancel). Before a provisional
        response the CANCEL is held and sent when one arrives (§9.1: MUST NOT send it yet);
        if a final response comes first, the held CANCEL ends with TransactionTerminated."""
        txn = self._get(invite_txn_id)
        if txn.kind is not Kind.INVITE_CLIENT:
            # §9.1: CANCEL SHOULD NOT be sent to cancel non-INVITE requests.
            raise TransactionError(f"{invite_txn_id} is not a client INVITE transaction")
        self._feed(txn, Input.CANCEL, _Context(now))
        return txn.cancel_id

    def send_ack(self, invite_txn_id: str | None, ack: Request, dest: Address,
                 transport: Transport) -> None:
        """Send the TU's ACK for a 2xx (§13.2.2.4: a new branch, no transaction). While the
        INVITE's client transaction is Accepted, the ACK is sent again for every 2xx
        retransmission with the same To tag."""
        if ack.method != "ACK":
            raise TransactionError("send_ack sends ACKs only")
        self._ensure_via(ack, transport)
        out = Outgoing(ack.to_bytes(), dest, transport)
        self._out.append(out)
        txn = self._txns.get(invite_txn_id) if invite_txn_id is not None else None
        if txn is not None and txn.kind is _INVITE_CLIENT:
            txn.acks_2xx[ack.to.tag or ""] = out

    def send_stateless(self, msg: Request | Response, dest: Address,
                       transport: Transport) -> None:
        """Send without a transaction (e.g. a stateless 2xx retransmission, §8.2.7)."""
        self._out.append(Outgoing(msg.to_bytes(), dest, transport))

    def transport_error(self, dest: Address, transport: Transport, now: float) -> None:
        """The shell could not send to `dest` (§17.1.4, §17.2.4): every transaction talking
        to it fails, and the TU hears of it."""
        for txn in list(self._txns.values()):
            if txn.peer == dest and txn.transport == transport:
                self._feed(txn, Input.TRANSPORT_ERROR, _Context(now))

    # -- the engine ---------------------------------------------------------------------------
    def _get(self, txn_id: str) -> Transaction:
        txn = self._txns.get(txn_id)
        if txn is None:
            raise TransactionError(f"no live transaction {txn_id}")
        return txn

    def _add(self, txn: Transaction, ctx: _Context) -> None:
        self._txns[txn.txn_id] = txn
        self._live[txn.kind] += 1
        self._run(txn, _INITIAL_RULES[txn.kind], ctx)
        if txn.due_now or txn.state in _TERMINATED:
            self._settle(txn, ctx)

    def _feed(self, txn: Transaction, event: Event, ctx: _Context) -> None:
        rule = _RULES[txn.state].get(event)
        if rule is None:
            raise TransactionError(
                f"{txn.kind.value} transaction in state {txn.state.value} cannot take "
                f"{event.value}")
        txn.state = rule.next
        self._run(txn, rule, ctx)
        if txn.due_now or txn.state in _TERMINATED:
            self._settle(txn, ctx)

    def _settle(self, txn: Transaction, ctx: _Context) -> None:
        """Fire zero-length timers now (a reliable transport's D, I, J, K: §17), then retire
        a terminated transaction. Called only when there is one or the other to do."""
        while txn.due_now and txn.state not in _TERMINATED:
            self._feed(txn, txn.due_now.pop(0), _Context(ctx.now))
        if txn.state in _TERMINATED and self._txns.get(txn.txn_id) is txn:
            del self._txns[txn.txn_id]
            if self._next_seq in txn.timers.values():
                self._next_dirty = True
            txn.timers.clear()
            txn.due_now.clear()
            if txn.dialog_key is not None:
                self._accepted.pop(txn.dialog_key, None)
            self._live[txn.kind] -= 1
            self._events.append(TransactionTerminated(txn.txn_id))

    def _run(self, txn: Transaction, rule: _Rule, ctx: _Context) -> None:
        """A transition's actions, compiled (_compile): stops, steps, then timer starts."""
        for timer in rule.stops:
            self._stop(txn, timer)
        for step in rule.steps:
            step(self, txn, ctx)
        if not rule.starts:
            return
        intervals = self._intervals[txn.transport]
        for timer, how in rule.starts:
            interval: float | None
            if how is _START:
                interval = intervals[timer]
                if interval is None:
                    continue        # not used on this transport (§17.1.1.2 and on)
            elif how is _BACKOFF:
                interval = backoff(timer, txn.intervals[timer], self.timers)
            else:
                interval = self.timers.t2   # §17.1.2.2: E in Proceeding
            self._start(txn, timer, interval, ctx.now)

    def _start(self, txn: Transaction, timer: Timer, interval: float, now: float) -> None:
        txn.intervals[timer] = interval
        # A restart leaves the old entry stale: if it was the earliest, look again.
        if txn.timers.pop(timer, None) == self._next_seq:
            self._next_dirty = True
        if interval <= 0:
            txn.due_now.append(timer)
            return
        seq = next(self._seq)
        txn.timers[timer] = seq
        at = now + interval
        heapq.heappush(self._heap, (at, seq, txn.txn_id, timer))
        if not self._next_dirty and (self._next_at is None or at < self._next_at):
            self._next_at = at
            self._next_seq = seq

    def _stop(self, txn: Transaction, timer: Timer) -> None:
        # The heap entry stays; next_timer / handle_timer skip it as stale.
        if txn.timers.pop(timer, None) == self._next_seq:
            self._next_dirty = True

    # -- the steps, one method each (dispatched by STEPS below) -----------------------------
    def _do_send(self, txn: Transaction, ctx: _Context) -> None:
        if txn.is_client:
            self._out.append(Outgoing(txn.request_bytes, txn.peer, txn.transport))
        else:
            assert isinstance(ctx.message, Response)
            self._send_server_response(txn, ctx.message)

    def _do_retransmit(self, txn: Transaction, ctx: _Context) -> None:
        # Only Calling/Trying/Proceeding retransmit, so request_bytes (cleared at the final
        # response) are still there.
        self._out.append(Outgoing(txn.request_bytes, txn.peer, txn.transport))

    def _do_resend(self, txn: Transaction, ctx: _Context) -> None:
        if txn.last_bytes is None:
            # §17.2.1: a retransmitted INVITE before anything was sent: say 100 now.
            self._send_trying(txn)
        else:
            self._out.append(Outgoing(txn.last_bytes, txn.peer, txn.transport))

    def _do_send_trying(self, txn: Transaction, ctx: _Context) -> None:
        self._send_trying(txn)

    def _do_send_ack(self, txn: Transaction, ctx: _Context) -> None:
        assert isinstance(ctx.message, Response)
        txn.ack_bytes = ack_for_non_2xx(txn.request, ctx.message).to_bytes()
        self._out.append(Outgoing(txn.ack_bytes, txn.peer, txn.transport))

    def _do_resend_ack(self, txn: Transaction, ctx: _Context) -> None:
        assert txn.ack_bytes is not None
        self._out.append(Outgoing(txn.ack_bytes, txn.peer, txn.transport))

    def _do_deliver(self, txn: Transaction, ctx: _Context) -> None:
        assert isinstance(ctx.message, Response) and ctx.source and ctx.transport
        self._events.append(ResponseReceived(ctx.message, txn.txn_id, ctx.source,
                                             ctx.transport))

    def _do_deliver_2xx(self, txn: Transaction, ctx: _Context) -> None:
        assert isinstance(ctx.message, Response)
        ack = txn.acks_2xx.get(ctx.message.to.tag or "")
        if ack is not None:
            self._out.append(ack)  # §13.2.2.4: each retransmitted 2xx gets the ACK again
        else:
            self._do_deliver(txn, ctx)

    def _do_deliver_ack(self, txn: Transaction, ctx: _Context) -> None:
        assert isinstance(ctx.message, Request) and ctx.source and ctx.transport
        txn.acked = True
        txn.last_response = None                  # kept only for AckTimeout
        self._events.append(AckReceived(ctx.message, ctx.source, ctx.transport, txn.txn_id))

    def _do_timeout(self, txn: Transaction, ctx: _Context) -> None:
        self._events.append(TransactionTimeout(txn.txn_id, txn.request))

    def _do_transport_failed(self, txn: Transaction, ctx: _Context) -> None:
        self._events.append(TransportFailed(txn.txn_id, txn.request))

    def _do_ack_timeout(self, txn: Transaction, ctx: _Context) -> None:
        if not txn.acked and txn.last_response is not None:
            self._events.append(AckTimeout(txn.txn_id, txn.last_response))

    def _do_hold_cancel(self, txn: Transaction, ctx: _Context) -> None:
        if txn.cancel is None:
            txn.cancel = cancel_for(txn.request)
            txn.cancel_id = client_key(txn.request.top_via.branch or "", "CANCEL")

    def _do_send_cancel(self, txn: Transaction, ctx: _Context) -> None:
        if txn.cancel is not None and not txn.cancel_sent:
            txn.cancel_sent = True
            self.send_request(txn.cancel, txn.peer, txn.transport, ctx.now)
            # §9.1: the INVITE now has 64*T1 to end with a final response.
            self._start(txn, Timer.CANCELLED, self.timers.timeout, ctx.now)

    def _do_drop_cancel(self, txn: Transaction, ctx: _Context) -> None:
        if txn.cancel_id is not None and not txn.cancel_sent:
            self._events.append(TransactionTerminated(txn.cancel_id))
            txn.cancel = None
            txn.cancel_id = None

    def _send_server_response(self, txn: Transaction, response: Response) -> None:
        invite = txn.kind is _INVITE_SERVER
        # The To tag matters to INVITE transactions only: CANCEL's 200 and the 2xx ACK.
        tag = _to_tag(response) if invite else None
        if tag is not None:
            txn.to_tag = tag
        # A non-INVITE server resends only bytes (§17.2.2); an INVITE server keeps the
        # response for AckTimeout until its ACK comes.
        txn.last_response = response if invite else None
        txn.last_bytes = response.to_bytes()
        self._out.append(Outgoing(txn.last_bytes, txn.peer, txn.transport))
        if invite and 200 <= response.status < 300 and txn.dialog_key is None:
            key = _dialog_key(txn.request, tag or "")
            txn.dialog_key = key
            self._accepted[key] = txn.txn_id

    def _send_trying(self, txn: Transaction) -> None:
        extra: tuple[tuple[str, str], ...] = ()
        stamp = txn.request.headers.get("timestamp")
        if stamp is not None:
            extra = (("Timestamp", stamp),)  # §8.2.6.1: a 100 echoes Timestamp
        trying = build_response(txn.request, 100, extra=extra)
        txn.last_response = trying
        txn.last_bytes = trying.to_bytes()
        self._out.append(Outgoing(txn.last_bytes, txn.peer, txn.transport))

    def _ensure_via(self, request: Request, transport: Transport,
                    branch: str | None = None) -> str:
        vias = request.headers.get_all("via")
        if vias:
            found = Via.parse(vias[0]).branch
            if found:
                return found
            raise TransactionError("the request's top Via has no branch")
        if branch is None:
            branch = new_branch(self.rand)
        # RFC 3581 §3: ask for rport so answers come back to the port we sent from.
        port = self.via_ports.get(transport, self.local_port)
        via = (f"SIP/2.0/{transport.upper()} {self.local_via_host}:{port}"
               f";branch={branch};rport")
        request.headers.add("Via", via, first=True)
        return branch

    def _new_tag(self) -> str:
        return self.rand(8).hex()


STEPS: dict[Step, Callable[[TransactionLayer, Transaction, _Context], None]] = {
    Step.SEND: TransactionLayer._do_send,
    Step.RETRANSMIT: TransactionLayer._do_retransmit,
    Step.RESEND: TransactionLayer._do_resend,
    Step.SEND_TRYING: TransactionLayer._do_send_trying,
    Step.SEND_ACK: TransactionLayer._do_send_ack,
    Step.RESEND_ACK: TransactionLayer._do_resend_ack,
    Step.DELIVER: TransactionLayer._do_deliver,
    Step.DELIVER_2XX: TransactionLayer._do_deliver_2xx,
    Step.DELIVER_ACK: TransactionLayer._do_deliver_ack,
    Step.TIMEOUT: TransactionLayer._do_timeout,
    Step.TRANSPORT_FAILED: TransactionLayer._do_transport_failed,
    Step.ACK_TIMEOUT: TransactionLayer._do_ack_timeout,
    Step.HOLD_CANCEL: TransactionLayer._do_hold_cancel,
    Step.SEND_CANCEL: TransactionLayer._do_send_cancel,
    Step.DROP_CANCEL: TransactionLayer._do_drop_cancel,
}


# -- the tables, compiled for the hot path ----------------------------------------------------
# TABLES and INITIAL_ACTIONS are the specification. Every row of them is its Stops, then its
# Steps, then its timer starts (checked here), so each is compiled at import into three
# tuples that _run loops over: no isinstance chain per action, no table lookup per step.
_START, _BACKOFF, _AT_T2 = "start", "backoff", "at T2"
_StepFn = Callable[[TransactionLayer, Transaction, _Context], None]


class _Rule(NamedTuple):
    next: State
    stops: tuple[Timer, ...]
    steps: tuple[_StepFn, ...]
    starts: tuple[tuple[Timer, str], ...]


def _compile(nxt: State, actions: tuple[Action, ...]) -> _Rule:
    stops: list[Timer] = []
    steps: list[_StepFn] = []
    starts: list[tuple[Timer, str]] = []
    for action in actions:
        if isinstance(action, Stop):
            if steps or starts:
                raise ValueError(f"a Stop after a step or start: {actions}")
            stops.append(action.timer)
        elif isinstance(action, Step):
            if starts:
                raise ValueError(f"a Step after a timer start: {actions}")
            steps.append(STEPS[action])
        elif isinstance(action, Start):
            starts.append((action.timer, _START))
        elif isinstance(action, Backoff):
            starts.append((action.timer, _BACKOFF))
        else:
            starts.append((action.timer, _AT_T2))
    return _Rule(nxt, tuple(stops), tuple(steps), tuple(starts))


# State → input → rule. The four state enums have distinct members, so one map holds all;
# a state with no rows (Terminated) maps to {} and every input to it raises in _feed.
_RULES: dict[State, dict[Event, _Rule]] = {
    state: {} for states in (_CI, _CN, _SI, _SN) for state in states}
for _table_rows in TABLES.values():
    for (_state, _event), _transition in _table_rows.items():
        _RULES[_state][_event] = _compile(_transition.next, _transition.actions)
_INITIAL_RULES: dict[Kind, _Rule] = {
    kind: _compile(INITIAL_STATE[kind], actions) for kind, actions in INITIAL_ACTIONS.items()}


# -- message helpers ------------------------------------------------------------------------
def client_key(branch: str, method: str) -> str:
    """A client transaction's id (§17.1.3: the branch and the CSeq method match it)."""
    return f"c|{branch}|{method}"


def _sent_by(via: Via) -> str:
    return f"{via.host.lower()}:{via.port or via.default_port}"


def server_key(request: Request, *, method: str | None = None, via: Via | None = None) -> str:
    """The server transaction a request belongs to (§17.2.3): the top Via's branch and
    sent-by and the method, ACK counting as INVITE. Without the magic cookie (RFC 2543),
    Call-ID, From tag, CSeq number and sent-by stand in for the branch. `via`: the top Via
    when the caller has it parsed already."""
    if via is None:
        via = request.top_via
    name = method or request.method
    if name == "ACK":
        name = "INVITE"
    branch = via.branch
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return f"s|{branch}|{_sent_by(via)}|{name}"
    from_tag = request.from_.tag or ""
    return (f"s2543|{request.call_id}|{from_tag}|{request.cseq.number}|{_sent_by(via)}"
            f"|{name}")


def _to_tag(response: Response) -> str | None:
    try:
        return response.to.tag
    except ParseError:
        return None


def _dialog_key(invite: Request, to_tag: str) -> tuple[str, int, str, str]:
    return (invite.call_id, invite.cseq.number, invite.from_.tag or "", to_tag)


def _ack_dialog_key(ack: Request) -> tuple[str, int, str, str]:
    return (ack.call_id, ack.cseq.number, ack.from_.tag or "", ack.to.tag or "")


def stamp_top_via(request: Request, source: Address) -> Via:
    """§18.2.1 / RFC 3581 §4: record `received` (and fill `rport`) in the top Via, so every
    response copies it and goes back to the real source; returns that Via. Idempotent: a
    Via the transport already stamped is left as it is (and so are the request's bytes)."""
    value = request.headers.get("via")
    if value is None:
        raise ParseError("Missing Via")
    top = request.top_via                     # the first value of that line, parsed once
    stamped = top.stamped(source)
    if stamped is top:
        # Unchanged (stamped() returns the Via itself when it says so already).
        return top
    # Only the first Via line changes; the other fields keep their text.
    first = str(stamped)
    request.headers.set_first(
        "via", first if "," not in value else ", ".join([first, *split_commas(value)[1:]]))
    request.headers.keep_values(top_via=stamped)
    return stamped


def _copied(request: Request, method: str, to_value: str) -> Request:
    """A request sharing `request`'s transaction identity: its top Via only, Route, From,
    Call-ID and CSeq number; used for the non-2xx ACK (§17.1.1.3) and CANCEL (§9.1)."""
    vias = request.headers.get_all("via")
    pairs: list[tuple[str, str]] = [("Via", vias[0])]
    pairs += [("Route", r) for r in request.headers.get_fields("route")]
    pairs += [("Max-Forwards", "70"),
              ("From", request.headers.get("from") or ""),
              ("To", to_value),
              ("Call-ID", request.call_id),
              ("CSeq", f"{request.cseq.number} {method}"),
              ("Content-Length", "0")]
    return Request(method, request.uri, Headers.of(*pairs))


def ack_for_non_2xx(invite: Request, response: Response) -> Request:
    """§17.1.1.3: same Request-URI, Call-ID, From, CSeq number and top Via (same branch) as
    the INVITE, To from the response (with its tag), Route headers of the INVITE."""
    return _copied(invite, "ACK", response.headers.get("to") or "")


def cancel_for(invite: Request) -> Request:
    """§9.1: Request-URI, Call-ID, To, From, CSeq number and the single top Via (same branch)
    of the INVITE; Route headers copied; method CANCEL."""
    return _copied(invite, "CANCEL", invite.headers.get("to") or "")
