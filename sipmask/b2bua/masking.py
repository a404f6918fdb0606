"""Identity masking: a leg's messages are built, not copied (DESIGN.md, privacy contract).

From the other leg only the body (`crossing_body`: sipmask's own rewritten SDP or a rebuilt
DTMF body), Max-Forwards (decremented) and the header whitelist below cross. Everything that
names a party or a hop — Call-ID, tags, CSeq, Via, Contact, From, To, Request-URI,
P-Asserted-Identity, Record-Route, User-Agent, unknown X- headers and the rest — is made new
or dropped, on requests and responses alike. A whitelist, not a blacklist: a header or a body
type we have never heard of cannot leak by default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from sipmask.errors import ParseError, SipError
from sipmask.sip.headers import Field, Headers, fields_of
from sipmask.sip.message import REASONS, Message, Request, Response, echoed_fields
from sipmask.sip.uri import NameAddr

# Headers that describe the session or the request's semantics, never a party or a hop.
# Require/Supported lose `100rel` (reliable provisionals are per leg, RFC 3262) and
# `Session-Expires` refreshers stay end-to-end (RFC 4028 §8 allows a B2BUA to pass them).
# Not here: Allow (each leg gets sipmask's own: the other party's list names methods, REFER
# among them, that sipmask does not relay) and the headers that describe the body
# (Content-Type, -Disposition, -Encoding, -Language, MIME-Version): the body that crosses is
# the one crossing_body makes, labelled by the builders.
CROSSING: frozenset[str] = frozenset({
    "supported", "require", "accept", "accept-encoding", "accept-language",
    "session-expires", "min-se", "event", "expires", "min-expires", "allow-events",
    "info-package", "recv-info", "unsupported", "retry-after",
})

# C0 controls but HTAB, DEL and C1 controls: no header value we let cross needs them, and a
# terminal, a log viewer or a peer's parser may act on them (NUL ends C strings, ESC starts
# terminal sequences). A whitelisted header carrying one is dropped, not cleaned.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")

# Option tags that only make sense between the two ends of one leg.
_PER_LEG_OPTIONS = frozenset({"100rel", "path", "gruu", "outbound", "replaces", "norefersub",
                              "tdialog", "join", "from-change", "sec-agree"})

DEFAULT_MAX_FORWARDS = 70


@dataclass(frozen=True, slots=True)
class Crossing:
    """The header fields of one message allowed onto the other leg (keys included, as our
    builders take them), and how many whitelisted fields were refused for a control
    character."""

    fields: list[Field]
    dropped: int = 0

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(name, value) for _key, name, value, _raw in self.fields]


def crossing_headers(message: Message) -> list[tuple[str, str]]:
    """The (name, value) pairs of `message` allowed onto the other leg, in order."""
    return crossing(message).headers


def crossing(message: Message) -> Crossing:
    """What of `message`'s header crosses: only the fields whose canonical key is in
    CROSSING are read (`Headers.select`); the rest of a parsed message is never sliced out
    of its lines."""
    out: list[Field] = []
    dropped = 0
    long_names = _LONG_NAMES
    for key, name, value, _raw in message.headers.select(CROSSING):
        if _CONTROL.search(value) is not None:
            dropped += 1
            continue
        if key in _OPTION_HEADERS:
            tags = [t.strip() for t in value.split(",")]
            kept = [t for t in tags if t and t.lower() not in _PER_LEG_OPTIONS]
            if not kept:
                continue
            value = ", ".join(kept)
        elif key == "retry-after":
            # Retry-After may carry a comment; keep only the delta-seconds (§20.33).
            value = value.split("(", 1)[0].split(";", 1)[0].strip()
            if not value.isdigit():
                continue
        # Long names on our legs: a compact form is a fingerprint of the other side's stack.
        # The key stays: it is the canonical key of the long name too.
        out.append((key, long_names.get(key, name), value, None))
    return Crossing(out, dropped)


# The crossing headers whose option tags are filtered (_PER_LEG_OPTIONS).
_OPTION_HEADERS = frozenset({"supported", "require", "unsupported"})

_LONG_NAMES = {
    "supported": "Supported", "event": "Event", "allow-events": "Allow-Events",
    "session-expires": "Session-Expires",
}


# -- bodies ------------------------------------------------------------------------------------
SDP = "application/sdp"
DTMF_TYPES = frozenset({"application/dtmf-relay", "application/dtmf"})


class BodyKind(Enum):
    __hash__ = object.__hash__     # identity, in C (members are singletons)

    NONE = "none"      # nothing crosses
    SDP = "sdp"        # `content` is an SDP for the media backend to rewrite
    DTMF = "dtmf"      # `content` is a DTMF body rebuilt from its digit and duration


@dataclass(frozen=True, slots=True)
class Body:
    """What of a message's body may cross onto the other leg (`crossing_body`)."""

    kind: BodyKind
    content: bytes = b""
    content_type: str | None = None  # the Content-Type the crossing body gets (sipmask's)
    dropped: int = 0                 # body parts (or a whole body) not allowed across
    untyped: bool = False            # a body without Content-Type (RFC 3261 §20.15)


NO_BODY = Body(BodyKind.NONE)
# Bound once: crossing_body runs for every message with a body, and in Python 3.11 reading a
# member off its Enum class goes through EnumType.__getattr__'s slow attribute hook (as in
# core.py).
_SDP_KIND, _DTMF_KIND, _NO_KIND = BodyKind.SDP, BodyKind.DTMF, BodyKind.NONE
_DROPPED = Body(BodyKind.NONE, dropped=1)
_UNTYPED = Body(BodyKind.NONE, dropped=1, untyped=True)


def crossing_body(message: Message) -> Body:
    """The one rule for every body that could cross (INVITE, in-dialog requests, 18x/2xx and
    other responses, ACKs with an answer): it crosses only as sipmask's own rewritten SDP or
    as a whitelisted DTMF body rebuilt from its values. A multipart body (SIP-I's SDP +
    ISUP, RFC 3204; ISUP carries the calling number) gives its first SDP part; every other
    part is dropped. Any other body is dropped, and so is one without Content-Type: RFC 3261
    §20.15 makes the header mandatory, and guessing SDP let a caller's own c=/o= lines
    cross. The result counts what was dropped; the caller decides what to answer."""
    raw = message.body
    if not raw:
        return NO_BODY
    value = message.headers.get("content-type")
    if value is None or not value.strip():
        return _UNTYPED
    # §20.12: a content-coded body (gzip) is not an SDP we can read and rewrite.
    encoding = message.headers.get("content-encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        return _DROPPED
    media_type, params = _media_type(value)
    if media_type.startswith("multipart/"):
        return _from_multipart(raw, params.get("boundary"))
    if media_type == SDP:
        return Body(_SDP_KIND, raw, SDP)
    if media_type in DTMF_TYPES:
        rebuilt = _dtmf(media_type, raw)
        if rebuilt is not None:
            return Body(_DTMF_KIND, rebuilt, media_type)
    return _DROPPED


def _media_type(value: str) -> tuple[str, dict[str, str]]:
    """`type/subtype` in lower case and the parameters (RFC 3261 §20.15, RFC 2045 §5.1);
    boundary characters include no `;` (RFC 2046 §5.1.1), so a split on it is enough."""
    kind, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for item in rest.split(";"):
        name, eq, param = item.partition("=")
        if eq:
            params[name.strip().lower()] = param.strip().strip('"')
    return kind.strip().lower(), params


def _from_multipart(raw: bytes, boundary: str | None) -> Body:
    parts = _split_multipart(raw, boundary) if boundary else None
    if not parts:
        return _DROPPED
    sdp: bytes | None = None
    dropped = 0
    for part in parts:
        media_type, content = _part(part)
        if sdp is None and media_type == SDP:
            sdp = content
        else:
            dropped += 1
    if sdp is None:
        return Body(_NO_KIND, dropped=dropped)
    return Body(_SDP_KIND, sdp, SDP, dropped)


def _split_multipart(raw: bytes, boundary: str) -> list[bytes] | None:
    """The body parts of a multipart body (RFC 2046 §5.1.1); None when it is not one: no
    delimiter, no close delimiter, or text after a delimiter on its line."""
    if not 0 < len(boundary) <= 70 or not boundary.isascii():
        return None
    # A delimiter is CRLF "--" boundary; the first may open the body without the CRLF.
    chunks = (b"\r\n" + raw).split(b"\r\n--" + boundary.encode())
    parts: list[bytes] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            return parts                  # the close delimiter; the epilogue is ignored
        line_end = chunk.find(b"\r\n")
        if line_end < 0 or chunk[:line_end].strip(b" \t"):
            return None                   # only transport padding may follow a delimiter
        parts.append(chunk[line_end + 2:])
    return None


# RFC 2045 §6.1: the encodings under which a part's bytes are the content itself.
_IDENTITY_TRANSFER = frozenset({"7bit", "8bit", "binary"})


def _part(part: bytes) -> tuple[str, bytes]:
    """A body part's media type and content. No headers means text/plain (RFC 2046
    §5.1); a part whose content is transfer-encoded (base64…) has no type we use ("")."""
    if part.startswith(b"\r\n"):
        return "text/plain", part[2:]
    head, sep, content = part.partition(b"\r\n\r\n")
    if not sep:
        return "", b""
    media_type, transfer = "text/plain", "7bit"
    # Header lines of the part; a folded line continues the one before (RFC 5322 §2.2.3).
    text = re.sub(r"\r\n[ \t]+", " ", head.decode("latin-1"))
    for line in text.split("\r\n"):
        name, _, value = line.partition(":")
        key = name.strip().lower()
        if key in ("content-type", "c"):
            media_type = _media_type(value)[0]
        elif key == "content-transfer-encoding":
            transfer = value.strip().lower()
    if transfer not in _IDENTITY_TRANSFER:
        return "", b""
    return media_type, content


# RFC 4733 §3.2 events 0-16 as keys (0-9 * # A-D) or codes, the values SIP INFO DTMF
# (application/dtmf-relay) carries in Signal=; Duration= is milliseconds.
_DTMF_SIGNAL = re.compile(r"[0-9*#A-Da-d]|1[0-6]")
_DTMF_DURATION = re.compile(r"[0-9]{1,5}")


def _dtmf(media_type: str, raw: bytes) -> bytes | None:
    """The DTMF body rebuilt from its event (and duration): only those values cross, so a
    body that carries anything else (a number in a Signal=, extra lines) cannot smuggle it."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    if media_type == "application/dtmf":
        digit = text.strip()
        return digit.encode() if _DTMF_SIGNAL.fullmatch(digit) else None
    signal: str | None = None
    duration: str | None = None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        key = key.strip().lower()
        if key == "signal":
            signal = value.strip()
        elif key == "duration":
            duration = value.strip()
    if signal is None or not _DTMF_SIGNAL.fullmatch(signal):
        return None
    out = f"Signal={signal}\r\n"
    if duration is not None:
        if not _DTMF_DURATION.fullmatch(duration):
            return None
        out += f"Duration={duration}\r\n"
    return out.encode()


# -- Allow and Contact: sipmask's own on each leg ------------------------------------------------
# RFC 3261 §20.5 with §13.2.1 (an INVITE may list what its sender allows), §13.3.1.4 (a 2xx
# to INVITE should), §13.3.1.1 (a 18x may), §11.2 (the answer to OPTIONS should) and §21.4.6
# (405 must); RFC 3311 §5.1 and §5.2 treat UPDATE as a target refresh like re-INVITE.
_ALLOW_REQUESTS = frozenset({"INVITE", "UPDATE"})
_ALLOW_RESPONSES = frozenset({"INVITE", "UPDATE", "OPTIONS"})


def carries_allow(method: str, status: int | None = None) -> bool:
    """Whether sipmask's Allow goes on a request of `method` (status None) or on a response
    with `status` to one: where a UA would put its own."""
    if status is None:
        return method in _ALLOW_REQUESTS
    return status == 405 or (100 < status < 300 and method in _ALLOW_RESPONSES)


def local_contact(x: str, host: str, port: int, transport: str, *, secure: bool) -> str:
    """sipmask's Contact on a leg, for X. RFC 3261 §8.1.1.8 and §12.1.1: a sips
    Request-URI makes it a sips URI (TLS by definition, §19.1.2); else a stream transport is
    named, since a bare sip URI means UDP to whoever uses it (§18.1.1)."""
    if secure:
        return f"<sips:{x}@{host}:{port}>"
    suffix = f";transport={transport}" if transport != "udp" else ""
    return f"<sip:{x}@{host}:{port}{suffix}>"


def next_max_forwards(request: Request) -> int:
    """RFC 3261 §16.6 step 3 applied by a B2BUA: decrement; at zero answer 483."""
    raw = request.headers.get("max-forwards")
    value = int(raw) if raw is not None and raw.strip().isdigit() else DEFAULT_MAX_FORWARDS
    if value <= 0:
        raise SipError("Too Many Hops", status=483)
    return value - 1


@dataclass(frozen=True)
class LegIdentity:
    """Who sipmask says it is on one leg, and who it is talking to."""

    local_uri: str        # From of requests we originate on this leg, e.g. sip:X@advertise
    remote_uri: str       # To of requests we originate, e.g. sip:B@trunk
    contact: str          # our Contact on this leg
    display: str | None = None


def build_request(method: str, *, request_uri: str, local: str, remote: str, call_id: str,
                  cseq: int, contact: str | None, max_forwards: int,
                  crossing: Iterable[tuple[str, str]] = (),
                  extra: Iterable[tuple[str, str]] = (), route: Iterable[str] = (),
                  body: bytes = b"", content_type: str | None = None) -> Request:
    """A request on one leg, from parts sipmask chose. `local`/`remote` are full From/To values
    (with tags); no Via: the transaction layer adds its own (§8.1.1.7)."""
    # The fields are written out with the keys of the names we write (what Headers.of would
    # look up); only the caller's extra and crossing pairs need theirs.
    fields: list[Field] = [("route", "Route", r, None) for r in route]
    fields += [
        ("max-forwards", "Max-Forwards", str(max_forwards), None),
        ("from", "From", local, None),
        ("to", "To", remote, None),
        ("call-id", "Call-ID", call_id, None),
        ("cseq", "CSeq", f"{cseq} {method}", None),
    ]
    if contact is not None:
        fields.append(("contact", "Contact", contact, None))
    fields += fields_of(extra)
    crossed = fields_of(crossing)
    has_type = any(f[0] == "content-type" for f in crossed)
    fields += crossed
    if body and not has_type and content_type:
        fields.append(("content-type", "Content-Type", content_type, None))
    if not body:
        fields = [f for f in fields if f[0] != "content-type"]
    fields.append(("content-length", "Content-Length", str(len(body)), None))
    return Request(method, request_uri, Headers.built(fields), body)


def build_relayed_response(source: Response, request: Request, *, to_tag: str | None,
                           contact: str | None, body: bytes = b"",
                           content_type: str | None = None,
                           extra: Iterable[tuple[str, str]] = (),
                           crossed: Crossing | None = None,
                           allow: str | None = None) -> Response:
    """The answer on one leg to `request` (that leg's), carrying the other leg's `source`
    status. `body` is the one crossing_body let through (rewritten), labelled
    `content_type`; `crossed` what of `source`'s header crosses (default: worked out here);
    `allow` sipmask's Allow, put on the responses `carries_allow` names.

    The status code crosses unchanged (CONTRACT: 486 stays 486); the reason phrase does not:
    free text is a classic leak (names, internal hosts), so the standard phrase is used.
    """
    status = source.status
    reason = REASONS.get(status)
    if reason is None:
        reason = _class_reason(status)
    to_value = request.headers.get("to") or ""
    to_changed = False
    tagged: NameAddr | None = None
    if to_tag is not None and "tag=" not in to_value.lower():
        to_changed = True
        to_value = f"{to_value};tag={to_tag}"
        tagged = _tagged_to(request, to_tag)
    fields = echoed_fields(request, to_value)
    if contact is not None and (100 < status < 300) and request.method in _DIALOG_METHODS:
        fields.append(("contact", "Contact", contact, None))
    fields += fields_of(extra)
    if allow is not None and carries_allow(request.method, status):
        fields.append(("allow", "Allow", allow, None))
    fields += (crossed if crossed is not None else crossing(source)).fields
    if body and content_type:
        fields.append(("content-type", "Content-Type", content_type, None))
    fields.append(("content-length", "Content-Length", str(len(body)), None))
    headers = Headers.built(fields)
    # The transaction layer reads the To tag, CSeq and top Via of what it sends: the values
    # parsed from the request these fields echo, not parsed again.
    headers.share_parsed(request.headers, to=tagged, to_changed=to_changed)
    return Response(status, reason, headers, body)


def _tagged_to(request: Request, tag: str) -> NameAddr | None:
    """What the request's To text with ";tag=`tag`" appended reads as, from the request's
    To as parsed: that value with the tag, when it had none (with_tag then appends it to
    its parameters, as to the text); else None (read from the text when asked)."""
    try:
        to_addr = request.to
    except ParseError:
        return None
    if to_addr.tag is not None:
        return None
    return to_addr.with_tag(tag)


_DIALOG_METHODS = frozenset({"INVITE", "UPDATE", "SUBSCRIBE"})

_CLASS_REASONS = {1: "Progress", 2: "OK", 3: "Redirection", 4: "Request Failure",
                  5: "Server Failure", 6: "Global Failure"}


def _class_reason(status: int) -> str:
    return _CLASS_REASONS.get(status // 100, "Unknown")
