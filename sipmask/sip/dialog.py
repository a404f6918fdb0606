"""RFC 3261 §12 dialogs, sans-IO: identity, sequence numbers, route set, remote target.

A `Dialog` is created from the request and response that establish it (`as_uac`, §12.1.2;
`as_uas`, §12.1.1), builds the requests sent inside it (`new_request`, §12.2.1.1; `ack`,
§13.2.2.4; `prack`, RFC 3262 §7.1), checks requests received inside it (`receive_request`,
§12.2.2) and follows its state (early → confirmed → terminated) as a table.

Requests built here have no Via: the transaction layer adds one with a fresh branch
(`TransactionLayer.send_request` / `send_ack`). Identifiers come from an injected random
source (`sipmask.entropy.token_bytes`, pooled urandom, by default; tests pass
`random.Random(n).randbytes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from sipmask.entropy import token_bytes
from sipmask.errors import CallStateError, ParseError, SipError
from sipmask.sip.headers import Headers
from sipmask.sip.message import CSeq, Request, Response
from sipmask.sip.transaction import RandomBytes, new_branch
from sipmask.sip.uri import NameAddr, SipUri, has_param, parse_uri

__all__ = ["Dialog", "DialogEvent", "DialogId", "DialogState", "RandomBytes", "incoming_id",
           "new_branch", "new_call_id", "new_tag"]

# §8.1.1.5: the first CSeq number is arbitrary but below 2**31; §12.2.1.1: a UAS that sends
# its first request in a dialog picks one too.
INITIAL_CSEQ = 1

# §12.2.1.1 / §8.1.1.6: Max-Forwards of a request we originate.
MAX_FORWARDS = "70"

# RFC 3261 §12.2 with RFC 3311 §5.1: requests that refresh the remote target (Contact).
TARGET_REFRESH = frozenset({"INVITE", "UPDATE"})


def new_tag(rand: RandomBytes = token_bytes) -> str:
    """A From/To tag (§19.3: at least 32 random bits; we use 64)."""
    return rand(8).hex()


def new_call_id(rand: RandomBytes = token_bytes, host: str | None = None) -> str:
    """A Call-ID (§8.1.1.4: globally unique; 128 random bits, `@host` when given)."""
    local = rand(16).hex()
    return f"{local}@{host}" if host else local


@dataclass(frozen=True)
class DialogId:
    """§12: Call-ID, local tag and remote tag identify a dialog."""

    call_id: str
    local_tag: str
    remote_tag: str


def incoming_id(message: Request | Response) -> DialogId:
    """The id of the dialog a received message belongs to, as seen by the receiver: for a
    request the local tag is in To (§12.2.2), for a response it is in From (§12.2.1.2)."""
    if isinstance(message, Request):
        return DialogId(message.call_id, message.to.tag or "", message.from_.tag or "")
    return DialogId(message.call_id, message.from_.tag or "", message.to.tag or "")


class DialogState(Enum):
    __hash__ = object.__hash__     # identity, in C (members are singletons)

    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class DialogEvent(Enum):
    __hash__ = object.__hash__

    PROVISIONAL = "1xx to INVITE"
    SUCCESS = "2xx to INVITE"
    FAILURE = "3xx-6xx to INVITE"
    GONE = "481 or 408"        # §12.2.1.2: the dialog is gone
    BYE = "BYE"                # §15: BYE ends the dialog


# States and events as module names, for the table and for the methods that read them on
# every message in a dialog: in Python 3.11 reading a member off its Enum class goes through
# EnumType.__getattr__'s slow attribute hook (as in b2bua/core.py).
_E, _C, _T = DialogState.EARLY, DialogState.CONFIRMED, DialogState.TERMINATED
_PROVISIONAL, _SUCCESS, _FAILURE = (DialogEvent.PROVISIONAL, DialogEvent.SUCCESS,
                                    DialogEvent.FAILURE)
_GONE, _BYE = DialogEvent.GONE, DialogEvent.BYE

# §12.1, §12.3, §13.2.2.4, §15. A failure to a re-INVITE leaves the dialog as it was (§14.1);
# a non-2xx final response to the INVITE that created an early dialog ends it (§12.3).
TRANSITIONS: dict[tuple[DialogState, DialogEvent], DialogState] = {
    (_E, _PROVISIONAL): _E,
    (_E, _SUCCESS): _C,
    (_E, _FAILURE): _T,
    (_E, _GONE): _T,
    (_E, _BYE): _T,
    (_C, _PROVISIONAL): _C,
    (_C, _SUCCESS): _C,
    (_C, _FAILURE): _C,
    (_C, _GONE): _T,
    (_C, _BYE): _T,
}


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str                  # name-addr of our side, without tag
    remote_uri: str                 # name-addr of the peer, without tag
    remote_target: str              # the peer's Contact URI (§12.1.1, §12.1.2)
    route_set: tuple[str, ...]      # Route values in the order requests carry them
    local_seq: int | None           # None: no request sent yet (UAS, §12.1.1)
    remote_seq: int | None          # None: no request received yet (UAC, §12.1.2)
    is_uac: bool
    local_contact: str | None = None  # our Contact, sent on target refresh requests
    secure: bool = False
    state: DialogState = DialogState.EARLY
    # _constant_parts' cache: the fields it read, and what it made of them.
    # (The three caches are set in __post_init__, not by field(default=None, init=False):
    # a class compiled by mypyc never gives such a field its default.)
    _parts: tuple[tuple[str, tuple[str, ...], str, str, str, str], _Parts] | None = field(
        init=False, repr=False, compare=False)
    # The values `local_uri` and `remote_uri` were written from (as_uac, as_uas), each with
    # that text: _constant_parts parses a text only when it is not the one written.
    _addrs: tuple[str, NameAddr, str, NameAddr] | None = field(
        init=False, repr=False, compare=False)
    # The remote target as written from a Contact the parser checked (_contact_uri):
    # _constant_parts checks a target only when it is not that text.
    _checked_target: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._parts = None
        self._addrs = None
        self._checked_target = None

    # -- creation ---------------------------------------------------------------------------
    @classmethod
    def as_uac(cls, request: Request, response: Response, *,
               local_contact: str | None = None) -> Dialog:
        """§12.1.2: the dialog a 1xx (with To tag) or 2xx to our INVITE creates. The route set
        is the response's Record-Route reversed; the remote target its Contact."""
        from_ = request.from_
        to = response.to
        local, remote = from_.without_tag(), to.without_tag()
        target = _contact_uri(response)
        dialog = cls(
            call_id=request.call_id,
            local_tag=from_.tag or "",
            remote_tag=to.tag or "",
            local_uri=str(local),
            remote_uri=str(remote),
            remote_target=target or request.uri,
            route_set=tuple(reversed(response.headers.get_all("record-route"))),
            local_seq=request.cseq.number,
            remote_seq=None,
            is_uac=True,
            local_contact=local_contact,
            secure=request.uri.lower().startswith("sips:"),
        )
        if response.status >= 200:
            dialog.state = _C
        dialog._addrs = (dialog.local_uri, local, dialog.remote_uri, remote)
        dialog._checked_target = target
        return dialog

    @classmethod
    def as_uas(cls, request: Request, local_tag: str, *, local_contact: str | None = None,
               confirmed: bool = False) -> Dialog:
        """§12.1.1: the dialog our 1xx (early) or 2xx (`confirmed=True`) to `request` creates.
        The route set is the request's Record-Route in order; the remote target its Contact.
        The responses that create it must carry `local_tag` in To."""
        from_ = request.from_
        local, remote = request.to.without_tag(), from_.without_tag()
        target = _contact_uri(request)
        dialog = cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=from_.tag or "",
            local_uri=str(local),
            remote_uri=str(remote),
            remote_target=target or str(from_.uri),
            route_set=tuple(request.headers.get_all("record-route")),
            local_seq=None,
            remote_seq=request.cseq.number,
            is_uac=False,
            local_contact=local_contact,
            secure=request.uri.lower().startswith("sips:"),
            state=_C if confirmed else _E,
        )
        dialog._addrs = (dialog.local_uri, local, dialog.remote_uri, remote)
        dialog._checked_target = target
        return dialog

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    def matches(self, message: Request | Response) -> bool:
        """Whether a received message belongs to this dialog (§12.2.2, §12.2.1.2)."""
        try:
            return incoming_id(message) == self.id
        except ParseError:
            return False

    # -- state --------------------------------------------------------------------------------
    def apply(self, event: DialogEvent) -> DialogState:
        """Move along TRANSITIONS; a terminated dialog takes nothing (CallStateError)."""
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise CallStateError(f"dialog in state {self.state.value} cannot take "
                                 f"{event.value}")
        self.state = nxt
        return nxt

    def on_response(self, response: Response) -> DialogState:
        """A response inside this dialog: received (UAC side) or sent (UAS side). Updates the
        state, and on a 2xx or reliable 1xx to a target refresh the remote target
        (§12.2.1.2); a 2xx to the INVITE that confirms an early dialog recomputes the route
        set (§13.2.2.4)."""
        status = response.status
        method = response.cseq.method
        if status in (408, 481):
            return self.apply(_GONE)
        if method == "INVITE":
            was_early = self.state is _E
            if status < 200:
                self.apply(_PROVISIONAL)
            elif status < 300:
                self.apply(_SUCCESS)
                if was_early and self.is_uac:
                    self.route_set = tuple(reversed(response.headers.get_all("record-route")))
            else:
                self.apply(_FAILURE)
        if self.is_uac and method in TARGET_REFRESH and 100 < status < 300:
            target = _contact_uri(response)
            if target is not None:
                self.remote_target = self._checked_target = target
        return self.state

    def terminate(self) -> None:
        """Sending or receiving BYE (§15.1.1, §15.1.2) ends the dialog."""
        self.apply(_BYE)

    # -- requests received ----------------------------------------------------------------------
    def receive_request(self, request: Request) -> None:
        """§12.2.2: check and take a request received in this dialog. A CSeq number lower
        than the last one is out of order: SipError(500). ACK and CANCEL carry the number of
        the request they refer to, so they neither move nor fail the check. A target refresh
        request updates the remote target; BYE ends the dialog."""
        if self.state is _T:
            raise SipError("Call/Transaction Does Not Exist", status=481)
        method = request.method
        number = request.cseq.number
        if method not in ("ACK", "CANCEL"):
            if self.remote_seq is not None and number < self.remote_seq:
                raise SipError("CSeq out of order", status=500)
            self.remote_seq = number
        if method in TARGET_REFRESH:
            target = _contact_uri(request)
            if target is not None:
                self.remote_target = self._checked_target = target
        if method == "BYE":
            self.apply(_BYE)

    # -- requests sent ---------------------------------------------------------------------
    def new_request(self, method: str, *, body: bytes = b"", content_type: str | None = None,
                    extra: tuple[tuple[str, str], ...] = ()) -> Request:
        """§12.2.1.1: a request inside the dialog, with the next local CSeq number. No Via:
        the transaction layer adds it."""
        if method in ("ACK", "CANCEL"):
            raise CallStateError(f"{method} is not a new request in the dialog: use "
                                 "Dialog.ack or TransactionLayer.cancel")
        if self.state is _T:
            raise CallStateError(f"dialog is terminated: no {method}")
        self.local_seq = INITIAL_CSEQ if self.local_seq is None else self.local_seq + 1
        return self._build(method, self.local_seq, body, content_type, extra)

    def ack(self, invite_cseq: int, *, body: bytes = b"",
            content_type: str | None = None) -> Request:
        """§13.2.2.4: the ACK for a 2xx to INVITE: the INVITE's CSeq number, method ACK, the
        dialog's route set and remote target. The transaction layer gives it a new branch."""
        return self._build("ACK", invite_cseq, body, content_type, ())

    def prack(self, response: Response, *, body: bytes = b"",
              content_type: str | None = None) -> Request:
        """RFC 3262 §7.2: PRACK for a reliable provisional response, RAck = RSeq, CSeq
        number and method of the response."""
        rseq = (response.headers.get("rseq") or "").strip()
        if not rseq.isdigit():
            raise ParseError("Bad RSeq")
        cseq = response.cseq
        return self.new_request("PRACK", body=body, content_type=content_type,
                                extra=(("RAck", f"{rseq} {cseq.number} {cseq.method}"),))

    def next_hop(self) -> str:
        """The URI the request goes to first (§8.1.2): the first route, or the remote target."""
        if self.route_set:
            return str(NameAddr.parse(self.route_set[0]).uri)
        return self.remote_target

    def _request_uri_and_routes(self) -> tuple[str, list[str]]:
        """§12.2.1.1: loose routing keeps the remote target as Request-URI; a strict router
        first in the route set (no `lr`) becomes the Request-URI, and the remote target goes
        last in Route."""
        if not self.route_set:
            return self.remote_target, []
        first = NameAddr.parse(self.route_set[0]).uri
        if isinstance(first, SipUri) and has_param(first.params, "lr"):
            return self.remote_target, list(self.route_set)
        if isinstance(first, SipUri):
            # §19.1.1 table 1: method, maddr, ttl, transport, lr are fine in a Request-URI;
            # header parameters are not.
            first = SipUri(first.scheme, first.user, first.host, first.port, first.password,
                           first.params, "")
        return str(first), [*self.route_set[1:], f"<{self.remote_target}>"]

    def _build(self, method: str, number: int, body: bytes, content_type: str | None,
               extra: tuple[tuple[str, str], ...]) -> Request:
        uri, routes, from_, to, from_addr, to_addr = self._constant_parts()
        pairs: list[tuple[str, str]] = [("Route", r) for r in routes] if routes else []
        pairs += [
            ("Max-Forwards", MAX_FORWARDS),
            ("From", from_),
            ("To", to),
            ("Call-ID", self.call_id),
            ("CSeq", f"{number} {method}"),
        ]
        # §8.1.1.8 / §12.2.1.1: target refresh requests carry our Contact.
        if self.local_contact is not None and method in TARGET_REFRESH:
            pairs.append(("Contact", self.local_contact))
        if extra:
            pairs.extend(extra)
        if content_type is not None:
            pairs.append(("Content-Type", content_type))
        pairs.append(("Content-Length", str(len(body))))
        headers = Headers.of(*pairs)
        # What the transaction layer and the engine read of it, as written: not parsed again.
        headers.keep_values(cseq=CSeq(number, method), from_=from_addr, to=to_addr)
        return Request(method, uri, headers, body)

    def _constant_parts(self) -> _Parts:
        """Request-URI, Route values, From and To (as text and as values) of the requests
        built in this dialog. They change only with the fields they come from, so they are
        worked out once per value of those fields (most dialogs build their ACK and BYE
        from the same)."""
        key = (self.remote_target, self.route_set, self.local_uri, self.local_tag,
               self.remote_uri, self.remote_tag)
        cached = self._parts
        if cached is not None and cached[0] == key:
            return cached[1]
        uri, routes = self._request_uri_and_routes()
        if uri is not self._checked_target:
            parse_uri(uri)  # a remote target we could not route to fails here, not on the wire
        local, remote = self._local_and_remote()
        from_ = local.with_tag(self.local_tag) if self.local_tag else local
        to = remote.with_tag(self.remote_tag) if self.remote_tag else remote
        parts = (uri, tuple(routes), self._written(self.local_uri, self.local_tag, from_),
                 self._written(self.remote_uri, self.remote_tag, to), from_, to)
        self._parts = (key, parts)
        return parts

    def _written(self, text: str, tag: str, value: NameAddr) -> str:
        """str(value), where `value` is `local_uri` or `remote_uri` (`text`) with `tag` set:
        while both texts are the ones written from their values (_addrs: str() of a
        NameAddr without a tag), with_tag appends the tag to the parameters of the value,
        so str() is the text with the tag appended."""
        addrs = self._addrs
        if addrs is not None and addrs[0] is self.local_uri and addrs[2] is self.remote_uri:
            return f"{text};tag={tag}" if tag else text
        return str(value)

    def _local_and_remote(self) -> tuple[NameAddr, NameAddr]:
        """`local_uri` and `remote_uri` as values: the ones they were written from while
        they are still those texts, else parsed."""
        addrs = self._addrs
        if addrs is not None and addrs[0] is self.local_uri and addrs[2] is self.remote_uri:
            return addrs[1], addrs[3]
        return NameAddr.parse(self.local_uri), NameAddr.parse(self.remote_uri)


# What _constant_parts gives: Request-URI, Route values, From and To texts, their values.
_Parts = tuple[str, tuple[str, ...], str, str, NameAddr, NameAddr]


def _contact_uri(message: Request | Response) -> str | None:
    try:
        return message.contact_uri
    except ParseError:
        return None
