"""What the fast SIP builders are checked against (DESIGN.md rule 14: the full path is the
fast one's test oracle): the plain implementations they replaced, kept verbatim; every form
the parser can hand out for one message (`parses`); and hypothesis-made header blocks as
peers write them (compact forms, odd case, duplicates, folded lines, unknown headers)."""

from __future__ import annotations

from itertools import repeat
from operator import itemgetter

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from sipmask.errors import ParseError
from sipmask.sip.headers import Field, Headers, canonical
from sipmask.sip.message import Message
from sipmask.sip.parser import parse_message
from tests.support.corpus import CORPUS_MESSAGES

# -- the reference: the code the fast builders replaced ----------------------------------
_FIRST = itemgetter(0)
_SECOND = itemgetter(1)


def ref_of(*pairs: tuple[str, str]) -> Headers:
    names = list(map(_FIRST, pairs))
    keys = list(map(canonical, names))
    fields: list[Field] = list(zip(keys, names, map(_SECOND, pairs), repeat(None)))
    return Headers(fields, keys)


def ref_serialize(headers: Headers) -> str:
    lines = [raw if raw is not None else f"{name}: {value}"
             for _key, name, value, raw in headers.fields()]
    lines.append("")
    return "\r\n".join(lines)


def ref_to_bytes(message: Message) -> bytes:
    headers = message.headers
    raw = message.raw
    if raw is not None:
        return raw
    length = str(len(message.body))
    if headers.get("content-length") != length:
        headers.set("Content-Length", length)
    head = message.start_line() + "\r\n" + ref_serialize(headers) + "\r\n"
    return head.encode("utf-8", "surrogateescape") + message.body


# -- hypothesis-made header blocks, and every parsed form of a message ------------------
# Names as a peer may write them: long, compact, odd case, with whitespace before the colon.
NAMES = st.sampled_from([
    "Supported", "k", "K", "SUPPORTED", "Require", "require", "Unsupported", "Retry-After",
    "retry-after", "Content-Type", "c", "C", "Allow", "ALLOW", "Event", "o", "Allow-Events",
    "u", "Session-Expires", "x", "Min-SE", "Accept", "Expires", "Content-Disposition",
    "Content-Encoding", "e", "MIME-Version", "Recv-Info", "Info-Package", "Accept-Language",
    "P-Asserted-Identity", "User-Agent", "Server", "Subject", "s", "X-Secret", "Contact", "m",
    "Record-Route", "Route", "Diversion", "Timestamp", "Allow ", "Supported\t",
])
VALUES = st.one_of(
    st.sampled_from([
        "100rel", "100rel, timer", "timer,  path ,GRUU", "replaces", "", "  ", ",", "timer,",
        "120", "120 (busy);duration=30", "abc", "5;x", "application/sdp", "INVITE, ACK, BYE",
        "<sip:a@b>;tag=1", '"Bob, Jr" <sip:b@c>', "1800;refresher=uac", "dialog",
    ]),
    st.text(alphabet="abcdeXYZ019 ,;=<>@:.-()\"", max_size=24),
)
FIELD = st.tuples(NAMES, VALUES, st.booleans())   # (name, value, folded)


def make_message(fields: list[tuple[str, str, bool]], response: int | None,
                 body: bytes) -> bytes:
    """A message with the fields a parser requires and the generated ones after them;
    a folded field has its value continued on a second line (§7.3.1)."""
    start = (f"SIP/2.0 {response} Whatever" if response is not None
             else "INVITE sip:x@10.0.0.1 SIP/2.0")
    lines = [start,
             "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1",
             "v: SIP/2.0/UDP 10.0.0.3;branch=z9hG4bK2, SIP/2.0/TCP 10.0.0.4;branch=z9hG4bK3",
             'f: "A" <sip:a@10.0.0.2>;tag=a1', "To: <sip:x@10.0.0.1>",
             "i: call-1@10.0.0.2", "CSeq: 1 INVITE", "Max-Forwards: 70"]
    for name, value, folded in fields:
        if folded and value.strip():
            cut = len(value) // 2
            lines.append(f"{name}: {value[:cut]}\r\n {value[cut:]}")
        else:
            lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


MESSAGES = st.builds(make_message, st.lists(FIELD, max_size=12),
                     st.one_of(st.none(), st.sampled_from([180, 200, 302, 486, 503, 599])),
                     st.sampled_from([b"", b"v=0\r\n"]))


def parses(data: bytes) -> list[Message]:
    """`data` parsed, and parsed again after other messages (parsing keeps no state, so
    both are the same); [] when the parser refuses it (the generated value may be
    something a header cannot hold)."""
    try:
        first = parse_message(data)
    except ParseError:
        return []
    for other in CORPUS_MESSAGES[:3]:
        parse_message(other)
    return [first, parse_message(data)]


# Settings for the hypothesis tests over MESSAGES: enough examples, no deadline.
RELAXED = settings(max_examples=150, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])

