"""Identity masking: a leg's messages are built, not copied (DESIGN.md, privacy contract).

From the other leg only the body (rewritten by the caller), Max-Forwards (decremented) and
the header whitelist below cross. Everything that names a party or a hop — Call-ID, tags,
CSeq, Via, Contact, From, To, Request-URI, P-Asserted-Identity, Record-Route, User-Agent,
unknown X- headers and the rest — is made new or dropped, on requests and responses alike.
A whitelist, not a blacklist: a header we have never heard of cannot leak by default.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sipmask.errors import SipError
from sipmask.sip.headers import Field, Headers, fields_of
from sipmask.sip.message import REASONS, Message, Request, Response, echoed_fields

# Headers that describe the session or the request's semantics, never a party or a hop.
# Require/Supported lose `100rel` (reliable provisionals are per leg, RFC 3262) and
# `Session-Expires` refreshers stay end-to-end (RFC 4028 §8 allows a B2BUA to pass them).
CROSSING: frozenset[str] = frozenset({
    "content-type", "content-disposition", "content-encoding", "content-language",
    "allow", "supported", "require", "accept", "accept-encoding", "accept-language",
    "session-expires", "min-se", "event", "expires", "min-expires", "allow-events",
    "mime-version", "info-package", "recv-info", "unsupported", "retry-after",
})

# Option tags that only make sense between the two ends of one leg.
_PER_LEG_OPTIONS = frozenset({"100rel", "path", "gruu", "outbound", "replaces", "norefersub",
                              "tdialog", "join", "from-change", "sec-agree"})

DEFAULT_MAX_FORWARDS = 70


def crossing_headers(message: Message) -> list[tuple[str, str]]:
    """The (name, value) pairs of `message` allowed onto the other leg, in order."""
    return [(name, value) for _key, name, value, _raw in _crossing_fields(message)]


def _crossing_fields(message: Message) -> list[Field]:
    """`crossing_headers` as the fields our builders take, keys included: only the fields
    whose canonical key is in CROSSING are read (`Headers.select`); the rest of a parsed
    message is never sliced out of its lines."""
    out: list[Field] = []
    long_names = _LONG_NAMES
    for key, name, value, _raw in message.headers.select(CROSSING):
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
    return out


# The crossing headers whose option tags are filtered (_PER_LEG_OPTIONS).
_OPTION_HEADERS = frozenset({"supported", "require", "unsupported"})

_LONG_NAMES = {
    "content-type": "Content-Type", "content-encoding": "Content-Encoding",
    "supported": "Supported", "event": "Event", "allow-events": "Allow-Events",
    "session-expires": "Session-Expires",
}


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
                           extra: Iterable[tuple[str, str]] = ()) -> Response:
    """The answer on leg A to `request` (leg A's), carrying leg B's `source` status.

    The status code crosses unchanged (CONTRACT: 486 stays 486); the reason phrase does not:
    free text is a classic leak (names, internal hosts), so the standard phrase is used.
    """
    status = source.status
    reason = REASONS.get(status)
    if reason is None:
        reason = _class_reason(status)
    to_value = request.headers.get("to") or ""
    if to_tag is not None and "tag=" not in to_value.lower():
        to_value = f"{to_value};tag={to_tag}"
    fields = echoed_fields(request, to_value)
    if contact is not None and (100 < status < 300) and request.method in _DIALOG_METHODS:
        fields.append(("contact", "Contact", contact, None))
    fields += fields_of(extra)
    crossed = _crossing_fields(source)
    if not body:
        crossed = [f for f in crossed if f[0] != "content-type"]
    fields += crossed
    fields.append(("content-length", "Content-Length", str(len(body)), None))
    return Response(status, reason, Headers.built(fields), body)


_DIALOG_METHODS = frozenset({"INVITE", "UPDATE", "SUBSCRIBE"})

_CLASS_REASONS = {1: "Progress", 2: "OK", 3: "Redirection", 4: "Request Failure",
                  5: "Server Failure", 6: "Global Failure"}


def _class_reason(status: int) -> str:
    return _CLASS_REASONS.get(status // 100, "Unknown")
