"""Bytes → Request / Response, and the stream framer for TCP.

`parse_message` takes one complete message (a UDP datagram, or what `StreamFramer` cut from
a TCP stream) and raises ParseError with a reason that names the problem; that reason
becomes the 400's reason phrase. `salvage` reads what it can from a message that failed to
parse, so the shell can still answer 400 when the Via is readable (RFC 3261 §8.2).

What is checked here is what every later layer relies on: the start line, the five headers
RFC 3261 §8.1.1 requires (present, single where single-valued, well-formed), Max-Forwards,
Contact and Content-Length. RFC 4475 §3.1.2 is the reference for what must be refused.

Speed matters (every packet of every call goes through here), so the header block is cut
with C-level `str.split` / `map` / `zip` and the common shapes of From, To, Contact, Via and
the Request-URI are checked with one compiled regex each; anything the fast patterns do
not recognise falls back to the full parsers in `uri.py`, which have the last word. The
fast patterns only ever accept a subset of what the full parsers accept.

Faster still for the messages a peer sends again and again: a peer's software writes its
header names in the same order every time, so once a message has parsed, its sequence of
names is kept as a *layout* (which line is From, which are Vias, ...; learned once every
name is known, i.e. on a layout's second sighting, so a one-off message takes no slot and
no name is trusted before it was checked as a token). A later message
whose lines start with exactly those names skips the name split and the presence and
duplicate checks (the layout answered them), and has its checked lines (start line, CSeq,
From, To, Via, Max-Forwards, Content-Length, Contact, Call-ID) verified by one regex call
built from the same fast shapes. Whatever that path does not accept it hands, untouched, to
the full path above, so it can only ever accept a subset of what the full path accepts,
and every refusal is still made (and worded) by the full path.

That is tier 1. A layout that has served `_WHOLE_AFTER` messages is busy enough to earn tier
2: one pattern for its whole header block, names literal, checked values in their shapes,
other values any characters but CR. It replaces the line split, the name check and the
joined match with one regex call (the block is split only when a header is first read),
and declines to tier 1 and then the full path like tier 1 does. Compiling such a pattern
costs milliseconds, hence the threshold and the `_WHOLE_MAX` cap. A tier-2 pattern serves the
kind (request or response) of the message that promoted its layout: a request and a response
with as many lines would fail each other's pattern only late in the block.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from itertools import repeat
from operator import itemgetter

from sipmask.errors import MessageTooLarge, ParseError
from sipmask.sip.headers import (
    Headers,
    canonical,
    is_token,
    key_of_wire_name,
    known_wire_keys,
    split_commas,
)
from sipmask.sip.message import SIP_VERSION, CSeq, Request, Response
from sipmask.sip.uri import NameAddr, SipUri, Via, parse_uri

DEFAULT_MAX_BYTES = 65535

# RFC 3261 §8.1.1: a request MUST hold these; without them it cannot be answered properly.
_REQUIRED = ("to", "from", "cseq", "call-id", "via")
_REQUIRED_SET = frozenset(_REQUIRED)
_PRETTY = {"to": "To", "from": "From", "cseq": "CSeq", "call-id": "Call-ID", "via": "Via",
           "content-length": "Content-Length"}

_KNOWN_METHODS = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK",
                            "UPDATE", "INFO", "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE",
                            "PUBLISH"})


# Fast shapes (see the module docstring). RFC 3261 §25.1 character classes, narrowed.
# Every repetition is possessive (`*+`, `++`, `?+`): none of these shapes needs to give
# characters back to what follows, and a possessive pattern matches a subset of what its
# greedy form matches, so this only ever sends more to the full parsers; in return, `re`
# keeps no backtrack points, which halves the time of a match.
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]++"
_PORT = r"(?::(?:[1-5][0-9]{4}|[1-9][0-9]{0,3}))?+"
_HOSTNAME = r"(?:[A-Za-z0-9\-.]++|\[[0-9A-Fa-f:.]++\])"
_FAST_SIP = (r"[sS][iI][pP][sS]?+:(?:[A-Za-z0-9\-_.!~*'()%&=+$,;?/]++"
             r"(?::[A-Za-z0-9\-_.!~*'()%&=+$,]*+)?+@)?+"
             + _HOSTNAME + _PORT +
             r"(?:;[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]++(?:=[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]++)?+)*+")
_FAST_REQUEST_URI = re.compile(_FAST_SIP)
# A bare addr-spec may not hold `;`, `?` or `,` in its URI (§20.10), so its shape is narrower.
_FAST_SIP_BARE = (r"[sS][iI][pP][sS]?+:(?:[A-Za-z0-9\-_.!~*'()%&=+$/]++"
                  r"(?::[A-Za-z0-9\-_.!~*'()%&=+$]*+)?+@)?+" + _HOSTNAME + _PORT)
_HEADER_PARAMS = r"(?:;" + _TOKEN + r"(?:=" + _TOKEN + r")?+)*+"
_FAST_NAME_ADDR = re.compile(
    r'(?:(?:"[^"\\\r\n]*+"|' + _TOKEN + r"(?: " + _TOKEN + r")*+) ?+)?+<" + _FAST_SIP + r">"
    + _HEADER_PARAMS + r"|" + _FAST_SIP_BARE + _HEADER_PARAMS
)
_FAST_VIA = re.compile(
    r"SIP/2\.0/(?:UDP|TCP|TLS|SCTP|WS|WSS) " + _HOSTNAME + _PORT +
    r"(?:;" + _TOKEN + r"(?:=[A-Za-z0-9\-.!%*_+`'~:\[\]]++)?+)*+"
)


# -- layouts (see the module docstring) ------------------------------------------------------
#
# The value shapes below are the fast shapes above, with the SP/HT `str.strip` would remove
# allowed around them: what is inside begins and ends with a character `strip` keeps, so
# the stripped value is exactly what the full path would match. CSeq, Max-Forwards and
# Content-Length capture their numbers for the range checks made in Python.
_W = r"[ \t]*+"
_NAME_ADDR_VALUE = _W + "(?:" + _FAST_NAME_ADDR.pattern + ")" + _W
_VALUE_SHAPES = {
    # §8.1.1.5 CSeq: number (below 2**31, checked by the caller) and a known method.
    "cseq": _W + r"(?P<number>[0-9]{1,10}+) (?P<cseq_method>"
            + "|".join(sorted(_KNOWN_METHODS)) + ")" + _W,
    "from": _NAME_ADDR_VALUE,
    "to": _NAME_ADDR_VALUE,
    "via": _W + "(?:" + _FAST_VIA.pattern + ")" + _W,
    "contact": _W + r"(?:\*|(?:" + _FAST_NAME_ADDR.pattern + "))" + _W,
    "max-forwards": _W + r"(?P<max_forwards>[0-9]{1,10}+)" + _W,
    "content-length": _W + r"(?P<length>[0-9]{1,10}+)" + _W,
    "call-id": _W + "[!-~]",          # §8.1.1.4: not empty (the rest of it is not checked)
}
# §7.1 Request-Line: exactly three parts, SIP/2.0; §7.2 Status-Line: 100-699.
_START_LINE = (r"(?:(?P<method>" + _TOKEN + ") (?P<uri>" + _FAST_SIP + r") SIP/2\.0"
               r"|SIP/2\.0 (?P<code>[1-6][0-9][0-9])(?: (?P<reason>[^\r\n]*+))?+)")
_GROUPS = ("method", "uri", "code", "reason", "number", "cseq_method", "max_forwards",
           "length")
_Groups = tuple[str | None, ...]


@cache
def _shape(with_max_forwards: bool, with_length: bool, with_contact: bool) -> re.Pattern[str]:
    """Tier 1's pattern: a layout's checked lines joined by LF (no line may hold one) in
    this order: start line, CSeq, From, To, Via+, [Contact+], [Max-Forwards],
    [Content-Length], Call-ID (a line that cannot start a Contact follows the Contacts, so
    the repeat's last, failing try is short). The groups come in `_GROUPS` order, the last
    two empty when the layout has no such line. The names were checked by the caller, so
    `[^:]*+:` skips them. At most 8 patterns exist, so a peer cannot make us compile."""
    field = r"\n[^:]*+:"
    parts = [
        _START_LINE,
        field + _VALUE_SHAPES["cseq"],
        field + _VALUE_SHAPES["from"],
        field + _VALUE_SHAPES["to"],
        "(?:" + field + _VALUE_SHAPES["via"] + ")++",
        "(?:" + field + _VALUE_SHAPES["contact"] + ")++" if with_contact else "",
        field + _VALUE_SHAPES["max-forwards"] if with_max_forwards else "(?P<max_forwards>)",
        field + _VALUE_SHAPES["content-length"] if with_length else "(?P<length>)",
        # Call-ID last and matched with `match`, so the rest of its line is never scanned.
        field + _VALUE_SHAPES["call-id"],
    ]
    return re.compile("".join(parts))


def _whole_pattern(layout: _Layout) -> re.Pattern[str]:
    """Tier 2's pattern: the whole header block of this layout, names literal, each checked
    value in its shape and every other value any run of characters but CR. With exactly
    one LF per CRLF (the caller counts them), a match leaves no room for a bare CR or LF."""
    parts = [_START_LINE]
    for name, key in zip(layout.names, layout.keys, strict=True):
        shape = _VALUE_SHAPES.get(key)
        tail = r"[^\r]*+" if shape is None or key == "call-id" else ""
        parts.append(r"\r\n" + re.escape(name) + ":" + (shape or "") + tail)
    for group, key in (("max_forwards", "max-forwards"), ("length", "content-length")):
        if key not in layout.keys:
            parts.append(f"(?P<{group}>)")
    return re.compile("".join(parts))


@dataclass(slots=True, eq=False)
class _Layout:
    """One learned sequence of header names; see the module docstring."""

    names: tuple[str, ...]          # as written, one per header line
    keys: tuple[str, ...]           # their canonical keys
    prefixes: tuple[str, ...]       # "" for the start line, then "name:" per header line
    cuts: tuple[slice, ...]         # where each header line's value starts
    pick: Callable[[list[str]], tuple[str, ...]]   # the checked lines, `_shape`'s order
    shape: re.Pattern[str]
    hits: int = 0                   # tier-1 parses served, until tier 2 takes over
    whole: re.Pattern[str] | None = None
    order: Callable[[_Groups], _Groups] | None = None   # whole's groups → `_GROUPS` order
    # The kind of message tier 2 serves with `whole`: True responses, False requests, None
    # both. A layout is learned from one kind and nearly always sees only that kind, while
    # a request and a response with as many lines fail each other's pattern late (after
    # most of the block), so tier 2 skips a layout of the other kind (tier 1 serves it).
    response: bool | None = None


# Header-line count → layouts with that many lines, newest first. Bounded both ways so a
# peer inventing header orders costs a few list slots, never memory or compiles.
_LAYOUTS: dict[int, list[_Layout]] = {}
_LAYOUTS_PER_COUNT = 4
_LAYOUT_COUNTS_MAX = 64
# Tier 2: header-line count → layouts with a whole-block pattern. Compiling one costs a few
# milliseconds, so it is done only for a layout that has already served `_WHOLE_AFTER`
# messages (a peer must send that many valid messages to cost us one compile) and never
# for more than `_WHOLE_MAX` layouts in all.
_WHOLE: dict[int, list[_Layout]] = {}
_WHOLE_AFTER = 2000
_WHOLE_MAX = 64


def _forget_layouts() -> None:
    """Drop every learned layout (tests use it to compare the tiers with the full path)."""
    _LAYOUTS.clear()
    _WHOLE.clear()


def _learn(names: tuple[str, ...], keys: list[str]) -> None:
    """Keep the layout of a message that just parsed on the full path, when it is one the
    fast path can serve: the §8.1.1 headers there once each (Via at least once), at most
    one Max-Forwards and one Content-Length."""
    bucket = _LAYOUTS.get(len(names))
    if bucket is not None and any(layout.names == names for layout in bucket):
        return
    counts = {key: keys.count(key) for key in
              ("from", "to", "call-id", "cseq", "via", "max-forwards", "content-length",
               "contact")}
    if counts["from"] != 1 or counts["to"] != 1 or counts["call-id"] != 1 or \
            counts["cseq"] != 1 or not counts["via"] or counts["max-forwards"] > 1 or \
            counts["content-length"] > 1:
        return
    at = [i + 1 for i in range(len(keys))]        # line numbers: line 0 is the start line
    order = [0, at[keys.index("cseq")], at[keys.index("from")], at[keys.index("to")]]
    order += [at[i] for i, key in enumerate(keys) if key == "via"]
    order += [at[i] for i, key in enumerate(keys) if key == "contact"]
    for key in ("max-forwards", "content-length"):
        if counts[key]:
            order.append(at[keys.index(key)])
    order.append(at[keys.index("call-id")])
    layout = _Layout(names, tuple(keys), ("", *(name + ":" for name in names)),
                     tuple(slice(len(name) + 1, None) for name in names),
                     itemgetter(order[0], *order[1:]),
                     _shape(bool(counts["max-forwards"]), bool(counts["content-length"]),
                            bool(counts["contact"])))
    if bucket is None:
        if len(_LAYOUTS) >= _LAYOUT_COUNTS_MAX:
            _LAYOUTS.clear()
        bucket = _LAYOUTS[len(names)] = []
    bucket.insert(0, layout)
    del bucket[_LAYOUTS_PER_COUNT:]


def _promote(layout: _Layout, response: bool | None = None) -> None:
    """Give a busy layout its tier-2 pattern, within `_WHOLE_MAX` and 4 per line count,
    for responses, requests or (None) both."""
    layout.hits = 0
    layout.response = response
    bucket = _WHOLE.setdefault(len(layout.names), [])
    if sum(map(len, _WHOLE.values())) >= _WHOLE_MAX or len(bucket) >= _LAYOUTS_PER_COUNT:
        return
    whole = _whole_pattern(layout)
    layout.order = itemgetter(*(whole.groupindex[g] - 1 for g in _GROUPS))
    layout.whole = whole
    bucket.append(layout)


def _by_whole(data: bytes, body_start: int, head: str, wholes: list[_Layout],
              stream: bool) -> Request | Response | None:
    """Tier 2: `head` (the header block, one LF per line break) against the whole-block
    patterns of the busy layouts with that many lines; None to go on to tier 1."""
    # A method is a token, which holds no `/`: only a Status-Line starts with `SIP/`.
    response = head.startswith("SIP/")
    for layout in wholes:
        if layout.response is not None and layout.response is not response:
            continue
        assert layout.whole is not None and layout.order is not None
        match = layout.whole.fullmatch(head)
        if match is not None:
            return _finish(layout, layout.order(match.groups()), data, body_start, head,
                           stream)
    return None


def _by_layout(data: bytes, body_start: int, lines: list[str], layouts: list[_Layout],
               stream: bool) -> Request | Response | None:
    """Tier 1: a message for a known layout, or None to let the full path decide. `lines`
    is the CRLF-split header block, already free of bare CR and LF."""
    for layout in layouts:
        if all(map(str.startswith, lines, layout.prefixes)):
            break
    else:
        return None
    match = layout.shape.match("\n".join(layout.pick(lines)))
    if match is None:
        return None
    message = _finish(layout, match.groups(), data, body_start, lines, stream)
    if message is not None and layout.whole is None:
        layout.hits += 1
        if layout.hits >= _WHOLE_AFTER:
            _promote(layout, isinstance(message, Response))
    return message


def _finish(layout: _Layout, groups: _Groups, data: bytes, body_start: int,
            raws: list[str] | str, stream: bool) -> Request | Response | None:
    """The checks a shape cannot make, then the message; None sends it to the full path.
    `raws` is the header block as lines (start line first) or, from tier 2, unsplit."""
    method, uri, code, reason, number, cseq_method, max_forwards, length_text = groups
    # §8.1.1.5: CSeq below 2**31; §20.22 Max-Forwards 0-255 (requests only, but refusing
    # a response here just sends it down the full path).
    assert number is not None and max_forwards is not None
    # Both are runs of digits (leading zeros allowed): fewer than 10 (3) digits are in range
    # without reading them.
    if (len(number) > 9 and int(number) >= 2**31) or \
            (len(max_forwards) > 2 and int(max_forwards) > 255):
        return None
    if code is None and cseq_method != method:
        return None
    if length_text:
        length = int(length_text)
        available = len(data) - body_start
        if length > available:
            return None
        if length == available:
            body = data[body_start:]
            raw = data
        else:
            body = data[body_start: body_start + length]
            raw = data[: body_start + length]
    else:
        if stream:
            return None
        body = data[body_start:]
        raw = data
    if isinstance(raws, list):
        del raws[0]
    headers = Headers._from_lines(list(layout.keys), layout.names, raws, layout.cuts)
    if code is None:
        assert method is not None and uri is not None
        return Request(method, uri, headers, body, SIP_VERSION, raw)
    return Response(int(code), reason or "", headers, body, SIP_VERSION, raw)


def parse_message(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES,
                  *, stream: bool = False) -> Request | Response:
    """Parse one message. `stream=True` (TCP) makes Content-Length mandatory (§18.3)."""
    if len(data) > max_bytes:
        raise MessageTooLarge(f"Message Too Large: over {max_bytes} bytes")
    if data.startswith((b"\r", b"\n")):
        # §7.5: implementations SHOULD ignore CRLFs before the start line.
        data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    body_start = end + 4
    crlf = end >= 0
    if not crlf:
        # Be lenient with bare-LF senders (§7.5 asks for CRLF, some old UAs send LF).
        end = data.find(b"\n\n")
        if end < 0:
            if not data:
                raise ParseError("Empty message")
            raise ParseError("Missing blank line after headers")
        body_start = end + 2
    head = data[:end].decode("utf-8", "surrogateescape")
    if crlf:
        line_feeds = head.count("\n")
        wholes = _WHOLE.get(line_feeds)
        if wholes is not None:
            fast = _by_whole(data, body_start, head, wholes, stream)
            if fast is not None:
                return fast
        lines = head.split("\r\n")
        breaks = len(lines) - 1
        # A lone CR or LF inside a field would let a value smuggle a header line into a
        # message we build from it; count them instead of trusting the split.
        if line_feeds != breaks:
            crlf = False  # bare LFs among the CRLFs: split on LF below
        elif head.count("\r") != breaks:
            raise ParseError("Bare CR in header")
        else:
            layouts = _LAYOUTS.get(breaks)
            if layouts is not None:
                fast = _by_layout(data, body_start, lines, layouts, stream)
                if fast is not None:
                    return fast
    if not crlf:
        lines = [line[:-1] if line.endswith("\r") else line for line in head.split("\n")]
        if any("\r" in line for line in lines):
            raise ParseError("Bare CR in header")
    first = lines[0]
    del lines[0]
    keys, names, values, raws = _split_fields(lines, crlf)

    # -- body: Content-Length (§20.14, §18.3) ------------------------------------------------
    n_cl = keys.count("content-length")
    if n_cl:
        text = values[keys.index("content-length")].strip()
        if n_cl > 1 and any(v.strip() != text for k, v in zip(keys, values, strict=True)
                            if k == "content-length"):
            raise ParseError("Conflicting Content-Length headers")
        if not (text.isdigit() and text.isascii()) or len(text) > 10:
            raise ParseError("Bad Content-Length")
        length = int(text)
        available = len(data) - body_start
        if length > available:
            # §18.3: a datagram that ends before the body does is an error (400 for a
            # request, dropped for a response).
            raise ParseError("Content-Length larger than the body")
        if length == available:
            body = data[body_start:]
            raw: bytes | None = data
        else:
            # §18.3: over UDP, octets past Content-Length are discarded.
            body = data[body_start: body_start + length]
            raw = data[: body_start + length]
    else:
        if stream:
            raise ParseError("Missing Content-Length on a stream transport")
        body = data[body_start:]
        raw = data
    if not crlf:
        raw = None  # rebuilt messages use CRLF, so the original bytes are never reused

    headers = Headers._deferred(keys, names, values, raws)
    message: Request | Response
    if first.startswith("SIP/"):
        message = _response(first, keys, values, headers, body, raw)
    else:
        message = _request(first, keys, values, headers, body, raw)
    if raws is lines:
        # CRLF lines of clean, known names: a layout the fast path may serve next time.
        _learn(names, keys)
    return message


_Split = tuple[list[str], tuple[str, ...], tuple[str, ...], list[str] | None]


def _split_fields(lines: list[str], crlf: bool) -> _Split:
    """Header lines → keys, names as written, unstripped values and raw lines (None when
    the raw text may not be reused). The fast path handles lines of known header names;
    anything else (folding, new names, LWS before the colon, junk) takes `_careful`."""
    if not lines:
        return [], (), (), [] if crlf else None
    parts = list(map(str.partition, lines, repeat(":", len(lines))))
    names, colons, values = zip(*parts, strict=True)
    if "" in colons:
        return _careful(lines, crlf)
    keys = known_wire_keys(names)
    if keys is None:
        return _careful(lines, crlf)
    return keys, names, values, lines if crlf else None


def _careful(lines: list[str], crlf: bool) -> _Split:
    raws: list[str] = []
    logical: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t") and line:
            # §7.3.1 folding: a line starting with SP or HT continues the previous one; the
            # value reads as if the line break and leading whitespace were one SP.
            if not raws:
                raise ParseError("Continuation line before any header")
            raws[-1] += "\r\n" + line
            logical[-1] = logical[-1].rstrip(" \t") + " " + line.strip(" \t")
        else:
            raws.append(line)
            logical.append(line)
    keys: list[str] = []
    names: list[str] = []
    values: list[str] = []
    for line in logical:
        name, colon, value = line.partition(":")
        if not colon:
            raise ParseError("Header line without a colon")
        keys.append(key_of_wire_name(name))
        names.append(name.rstrip(" \t"))
        values.append(value)
    return keys, tuple(names), tuple(values), raws if crlf else None


def _request(first: str, keys: list[str], values: tuple[str, ...], headers: Headers,
             body: bytes, raw: bytes | None) -> Request:
    parts = first.split(" ")
    if len(parts) != 3 or not all(parts):
        # RFC 4475 §3.1.2.8-10: LWS inside the Request-URI, extra SP, trailing SP → 400.
        raise ParseError("Bad Request-Line")
    method, uri, version = parts
    if version != SIP_VERSION and version.upper() != SIP_VERSION:
        if version.upper().startswith("SIP/"):
            # RFC 3261 §8.2.1 / RFC 4475 §3.1.2.16.
            raise ParseError("Version Not Supported", status=505)
        raise ParseError("Bad Request-Line: not SIP/2.0")
    if method not in _KNOWN_METHODS and not is_token(method):
        raise ParseError("Bad method")
    if _FAST_REQUEST_URI.fullmatch(uri) is None:
        parsed = parse_uri(uri)
        # RFC 3261 §19.1.1 table 1: headers are not allowed in a Request-URI
        # (RFC 4475 §3.1.2.11 escruri: 400).
        if isinstance(parsed, SipUri) and parsed.headers:
            raise ParseError("Bad Request-URI: headers are not allowed")
    _check_required(keys, values)
    cseq_method = _check_cseq(values[keys.index("cseq")].strip())
    # RFC 3261 §8.1.1.5 / RFC 4475 §3.1.2.17-18: CSeq method must match the request.
    if cseq_method != method:
        raise ParseError("CSeq method does not match the request")
    if "max-forwards" in keys:
        mf = values[keys.index("max-forwards")].strip()
        # §20.22: 0-255; RFC 4475 §3.1.2.4 refuses 300. Leading zeros are fine (wsinv).
        if not (mf.isdigit() and mf.isascii()) or len(mf) > 10 or int(mf) > 255:
            raise ParseError("Bad Max-Forwards")
    return Request(method, uri, headers, body, version, raw)


def _response(first: str, keys: list[str], values: tuple[str, ...], headers: Headers,
              body: bytes, raw: bytes | None) -> Response:
    parts = first.split(" ", 2)
    if len(parts) < 2:
        raise ParseError("Bad Status-Line")
    version, code = parts[0], parts[1]
    reason = parts[2] if len(parts) == 3 else ""
    if version != SIP_VERSION and version.upper() != SIP_VERSION:
        raise ParseError("Bad Status-Line: not SIP/2.0")
    # §7.2 Status-Code = 3DIGIT, 100-699 (RFC 4475 §3.1.2.19 bigcode is dropped).
    if len(code) != 3 or not (code.isdigit() and code.isascii()) or not 100 <= int(code) <= 699:
        raise ParseError("Bad status code")
    _check_required(keys, values)
    _check_cseq(values[keys.index("cseq")].strip())
    return Response(int(code), reason, headers, body, version, raw)


def _check_required(keys: list[str], values: tuple[str, ...]) -> None:
    """The §8.1.1 headers are present, single where single-valued, and parse; so do Via
    and Contact (RFC 4475 §3.1.2.1, §3.1.2.6, §3.1.2.13-15, §3.3.1, §3.3.8)."""
    present = set(keys)
    if not present >= _REQUIRED_SET:
        for key in _REQUIRED:
            if key not in present:
                raise ParseError(f"Missing {_PRETTY[key]}")
    unique = len(present) == len(keys)
    if not unique:
        for key in ("from", "to", "call-id", "cseq"):
            if keys.count(key) > 1:
                raise ParseError(f"Multiple {_PRETTY[key]} headers")
    for key in ("from", "to"):
        value = values[keys.index(key)].strip()
        if _FAST_NAME_ADDR.fullmatch(value) is None:
            NameAddr.parse(value)
    if not values[keys.index("call-id")].strip():
        raise ParseError("Empty Call-ID")
    for value in _all_of("via", keys, values, unique):
        if _FAST_VIA.fullmatch(value) is not None:
            continue
        parms = split_commas(value)
        if not parms:
            raise ParseError("Empty Via")
        for parm in parms:
            Via.parse(parm)
    if "contact" in present:
        for value in _all_of("contact", keys, values, unique):
            if value != "*" and _FAST_NAME_ADDR.fullmatch(value) is None:
                for addr in split_commas(value):
                    NameAddr.parse(addr)


def _all_of(key: str, keys: list[str], values: tuple[str, ...], unique: bool) -> list[str]:
    """Stripped values of every line with this key (one line is the common case)."""
    if unique or keys.count(key) == 1:
        return [values[keys.index(key)].strip()]
    return [v.strip() for k, v in zip(keys, values, strict=True) if k == key]


def _check_cseq(value: str) -> str:
    """CSeq is `number method` with number < 2**31 (§8.1.1.5); returns the method."""
    number, sp, method = value.partition(" ")
    if sp and number.isdigit() and number.isascii() and len(number) <= 10 and \
            int(number) < 2**31 and method in _KNOWN_METHODS:
        return method
    return CSeq.parse(value).method


def salvage(data: bytes) -> Headers | None:
    """Best-effort header read of a message that failed to parse: enough to build a 400
    when Via, From, To, Call-ID and CSeq are all readable, else None (drop it)."""
    data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    head = (data if end < 0 else data[:end]).decode("utf-8", "replace")
    lines = [line.rstrip("\r") for line in head.split("\n")]
    if not lines or lines[0].startswith("SIP/"):
        return None  # never answer a response (§8.1.3.3 has no error path for them)
    joined: list[str] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and joined:
            joined[-1] = joined[-1] + " " + line.strip(" \t")
        else:
            joined.append(line)
    pairs: list[tuple[str, str]] = []
    for line in joined:
        name, colon, value = line.partition(":")
        name = name.strip(" \t")
        key = canonical(name)
        if colon and key in _REQUIRED_SET:
            pairs.append((name, value.strip(" \t")))
    headers = Headers.of(*pairs)
    try:
        vias = headers.get_all("via")
        if not vias:
            return None
        Via.parse(vias[0])
        for key in ("from", "to", "call-id", "cseq"):
            if not headers.get(key):
                return None
    except ParseError:
        return None
    return headers


class StreamFramer:
    """Cuts a TCP byte stream into messages by Content-Length (RFC 3261 §18.3).

    `feed(data)` returns the complete messages now available. Keep-alive CRLFs between
    messages (RFC 5626 §3.5.1) are skipped and counted in `keepalives`; a double-CRLF ping
    should be answered with a single-CRLF pong (RFC 5626 §4.4.1): `take_pings()` says how
    many are due. A header block over `max_bytes`, a missing or bad Content-Length raises
    ParseError; the connection cannot be resynchronised after that.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._need = -1          # total length of the message being read, once known
        self._scanned = 0        # bytes of the header block already searched for CRLFCRLF
        self._crlf_run = 0       # CRLFs seen since the last message or ping
        self._pings = 0
        self.keepalives = 0

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while True:
            if self._need < 0:
                if self._scanned == 0:
                    skip = 0
                    while buf.startswith(b"\r\n", skip):
                        skip += 2
                    if skip:
                        del buf[:skip]
                        self._count_crlfs(skip // 2)
                    if not buf or buf == b"\r":
                        return out
                end = buf.find(b"\r\n\r\n", self._scanned)
                if end < 0:
                    if len(buf) > self.max_bytes:
                        raise MessageTooLarge("Message Too Large: header block too long")
                    self._scanned = max(0, len(buf) - 3)
                    return out
                self._scanned = 0
                self._crlf_run = 0
                total = end + 4 + _content_length(bytes(buf[:end]))
                if total > self.max_bytes:
                    raise MessageTooLarge(f"Message Too Large: over {self.max_bytes} bytes")
                self._need = total
            if len(buf) < self._need:
                return out
            out.append(bytes(buf[: self._need]))
            del buf[: self._need]
            self._need = -1

    def take_pings(self) -> int:
        """How many CRLFCRLF pings arrived since the last call (each wants a CRLF pong)."""
        pings, self._pings = self._pings, 0
        return pings

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _count_crlfs(self, n: int) -> None:
        self.keepalives += n
        self._crlf_run += n
        self._pings += self._crlf_run // 2
        self._crlf_run %= 2


_CL_LINE = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*(?=\r\n|$)",
                      re.IGNORECASE)


def _content_length(head: bytes) -> int:
    found = _CL_LINE.findall(head)
    if not found:
        raise ParseError("Missing Content-Length on a stream transport")
    if len(set(found)) > 1:
        raise ParseError("Conflicting Content-Length headers")
    text = found[0]
    if not text.isdigit() or len(text) > 10:
        raise ParseError("Bad Content-Length")
    return int(text)
