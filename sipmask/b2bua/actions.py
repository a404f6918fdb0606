"""What the call core asks of its shell (actions) and what the shell tells it back (events).

The core (b2bua/core.py) never performs anything: `CallCore.actions()` hands these to the
shell (b2bua/engine.py), which sends, looks up, offers media and commits records, and feeds
each result back with `CallCore.handle` as one of the events below, after the batch that
asked for it (DESIGN rule 15). Work whose result the core waits for carries an `id` the
core chose; its result event names the same `id`. The core also chooses the branch of every
request it sends (`SendRequest.txn_id` is the transaction layer's id for it), so no result
is needed to know a transaction.

Slotted dataclasses, as the transaction layer's events (sip/transaction.py): values, built
once and read once by the shell; nothing changes one after it is built. Not `frozen`: a
frozen one's __init__ goes through object.__setattr__ per field, and a call makes about
twenty of these (about 1 % of a call's instructions on bench/call_cpu.py under cachegrind).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sipmask.b2bua.call import Call, Leg
from sipmask.cdr.record import Cdr
from sipmask.media.backend import PlayEnd
from sipmask.sip.locate import Target
from sipmask.sip.message import Request, Response
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
from sipmask.sip.transports import Address, Transport

if TYPE_CHECKING:       # store/__init__ opens LMDB; the core only reads the record
    from sipmask.store.base import Binding

# Where a request on an existing leg may go instead of its hop: the connection the party's
# signalling came on (TCP/TLS), if the shell still has it open (RFC 5923 §1's practice).
Reuse = tuple[Address, Transport] | None


# -- actions: SIP ---------------------------------------------------------------------------
@dataclass(slots=True)
class Respond:
    """Answer a server transaction."""

    txn_id: str
    response: Response


@dataclass(slots=True)
class SendRequest:
    """Start a client transaction. The core chose `branch`, so `txn_id` is already the
    layer's id (transaction.client_key) and the core tracks it before the request leaves."""

    txn_id: str
    branch: str
    request: Request
    dest: Address
    transport: Transport
    reuse: Reuse = None


@dataclass(slots=True)
class Cancel:
    """CANCEL our pending INVITE (§9.1); nothing to do if it has its final response."""

    invite_txn_id: str


@dataclass(slots=True)
class SendAck:
    """The ACK for a 2xx (§13.2.2.4); with the INVITE's txn id, 2xx retransmissions get it
    again from the transaction layer."""

    invite_txn_id: str | None
    ack: Request
    dest: Address
    transport: Transport
    reuse: Reuse = None


# -- actions: the store, media, records ------------------------------------------------------
@dataclass(slots=True)
class Lookup:
    """The binding for X and this caller at wall time `at` (BindingStore.route); `ext`:
    the AXE extension the caller gave, if any."""

    id: int
    x: str
    caller: str
    at: float
    ext: str | None = None


@dataclass(slots=True)
class MediaOffer:
    """An SDP offer from `leg`, through the media backend."""

    id: int
    call_id: str
    leg: Leg
    sdp: bytes
    sip_source: str


@dataclass(slots=True)
class MediaAnswer:
    """An SDP answer from `leg`, through the media backend."""

    id: int
    call_id: str
    leg: Leg
    sdp: bytes
    sip_source: str


@dataclass(slots=True)
class MediaDelete:
    """Give the call's media session back (nothing comes back)."""

    call_id: str


@dataclass(slots=True)
class StartRecording:
    """Record the answered call into a new file of the tenant's (store/recordings.py).
    Nothing comes back: a file that cannot be made shows in StopRecording's outcome."""

    call_id: str
    tenant: str


@dataclass(slots=True)
class StopRecording:
    """Close the call's recording before its media is freed; RecordingStopped comes back."""

    id: int
    call_id: str


# -- actions: media services (issue 15: announcements, digits; media/backend.py) -------------
@dataclass(slots=True)
class OpenEarly:
    """Open the call's media on `leg` alone for early media (MediaBackend.open_early): the
    183's SDP comes back in EarlyOpened (None: no stream of the offer can carry a prompt)."""

    id: int
    call_id: str
    leg: Leg
    sdp: bytes
    sip_source: str


@dataclass(slots=True)
class PlayPrompt:
    """Play `announcements.<key>` (its configured value `file`: "default" or a WAV path)
    to `leg`; PromptEnded comes back when it stops, for whatever reason (PlayEnd). The
    shell reads the file; one it cannot read ends FAILED at once."""

    id: int
    call_id: str
    leg: Leg
    key: str
    file: str


@dataclass(slots=True)
class StopPrompt:
    """Stop the prompt playing to `leg` (its PromptEnded says STOPPED); nothing if none."""

    call_id: str
    leg: Leg


@dataclass(slots=True)
class CollectDigits:
    """Report `leg`'s RFC 4733 key presses as DigitHeard events until StopDigits or the
    call's media is deleted."""

    call_id: str
    leg: Leg


@dataclass(slots=True)
class StopDigits:
    call_id: str
    leg: Leg


@dataclass(slots=True)
class CommitCdr:
    """The final record of a call attempt, on disk before CdrCommitted comes back."""

    id: int
    record: Cdr


@dataclass(slots=True)
class JournalUp:
    """An answered call's journal entry (crash repair), on disk before JournalDone."""

    id: int
    record: Cdr


@dataclass(slots=True)
class Emit:
    """A webhook event (ring, answer, hangup) for the events outbox, when there is one."""

    kind: str
    call: Call
    at: float
    cdr: Cdr | None = None


@dataclass(slots=True)
class CallFinished:
    """For metrics: the call's outcome and setup time."""

    call: Call


@dataclass(slots=True)
class Refused:
    """For metrics: a refused attempt, by reason."""

    reason: str


CoreAction = (Respond | SendRequest | Cancel | SendAck | Lookup | MediaOffer | MediaAnswer
              | MediaDelete | StartRecording | StopRecording | CommitCdr | JournalUp | Emit
              | CallFinished | Refused | OpenEarly | PlayPrompt | StopPrompt | CollectDigits
              | StopDigits)


# -- events: results of actions, and what the shell reports --------------------------------
@dataclass(slots=True)
class LookupDone:
    """Lookup's answer: the binding (None: no live binding on X), or the store's error."""

    id: int
    binding: Binding | None
    error: Exception | None = None


@dataclass(slots=True)
class MediaDone:
    """MediaOffer's or MediaAnswer's answer: the rewritten SDP, or the backend's error
    (a SipError carries the status the refusal means, e.g. 488)."""

    id: int
    sdp: bytes = b""
    error: Exception | None = None


@dataclass(slots=True)
class EarlyOpened:
    """OpenEarly's answer: the 183's SDP, None when no stream can carry a prompt (nothing
    was opened), or the backend's error (nothing was opened either)."""

    id: int
    sdp: bytes | None = None
    error: Exception | None = None


@dataclass(slots=True)
class PromptEnded:
    """PlayPrompt's answer, when the prompt stopped: why (FINISHED, STOPPED, CLOSED,
    UNPLAYABLE on a leg without PCMU/PCMA, FAILED...)."""

    id: int
    reason: PlayEnd


@dataclass(slots=True)
class RecordingStopped:
    """StopRecording's answer: the recording's file name for the CDR, None when there is
    none to name (the file could not be made, the recording failed, or never started)."""

    id: int
    file: str | None = None


@dataclass(slots=True)
class CdrCommitted:
    id: int
    error: Exception | None = None


@dataclass(slots=True)
class JournalDone:
    id: int
    error: Exception | None = None


@dataclass(slots=True)
class SendFailed:
    """A SendRequest the shell could not start at all (the transaction layer refused it)."""

    txn_id: str


@dataclass(slots=True)
class MediaTimeout:
    """The media backend saw no RTP on the call for media.timeout_s."""

    call_id: str


@dataclass(slots=True)
class DigitHeard:
    """A key `leg` pressed, in its media (RFC 4733), while CollectDigits is on."""

    call_id: str
    leg: Leg
    key: str


@dataclass(slots=True)
class EndAll:
    """Drain timeout on SIGTERM: hang up every call left."""


@dataclass(slots=True)
class TrunkTargets:
    """A trunk's targets in the order new calls try them (sip/locate.py TargetList.targets:
    what DNS answered, those probing found down last), from the shell's trunk monitor
    (b2bua/trunks.py) whenever they change. Empty: nothing to try (503 at once)."""

    trunk: str
    targets: tuple[Target, ...]


Done = (LookupDone | MediaDone | RecordingStopped | CdrCommitted | JournalDone | EarlyOpened
        | PromptEnded)
CoreEvent = (RequestReceived | ResponseReceived | AckReceived | CancelReceived
             | TransactionTimeout | TransportFailed | AckTimeout | TransactionTerminated
             | StrayResponse | Done | SendFailed | MediaTimeout | DigitHeard | EndAll
             | TrunkTargets)
