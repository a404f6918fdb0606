"""Property tests for sipmask.sdp: generated RFC 4566 bodies round-trip byte for byte through
the model, any order of lines settles after one pass, the call path (sdp/scan.py) gives its
oracle's answers and bytes, and the relay rewrite never lets an input address, port or
identity line through."""

from __future__ import annotations

import random
import re

from hypothesis import given
from hypothesis import strategies as st

from sipmask.errors import ParseError
from sipmask.sdp import scan
from sipmask.sdp.model import Connection, Origin
from sipmask.sdp.origin import OriginCounter
from sipmask.sdp.parser import parse
from sipmask.sdp.rewrite import (
    is_on_hold,
    media_endpoints,
    relay_body,
    relay_ports_needed,
    rewrite_for_relay,
)

RELAY = "192.0.2.200"
RELAY6 = "2001:db8::200"
ORIGIN = Origin.for_address(RELAY, 1000001, 1000001)

_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._",
                 min_size=1, max_size=12)
# RFC 4566 §9 byte-string: anything but NUL, CR, LF (surrogates cannot be sent as UTF-8).
_TEXT = st.text(st.characters(exclude_characters="\r\n\x00",
                              exclude_categories=["Cs"]), max_size=30)
_DIGITS = st.integers(min_value=0, max_value=2**64).map(str)
_PORT = st.integers(min_value=0, max_value=65535)

_IPV4 = st.ip_addresses(v=4).filter(lambda a: not a.is_unspecified and str(a) != RELAY)
_IPV6 = st.ip_addresses(v=6).filter(lambda a: not a.is_unspecified)
_HOST = _TOKEN.map(lambda t: f"h{t.lower()}.example.net")
_ADDRESS = st.one_of(_IPV4.map(str), _IPV6.map(str), _HOST)

_CODECS = st.sampled_from([
    ("0", ["rtpmap:0 PCMU/8000"]), ("8", ["rtpmap:8 PCMA/8000"]),
    ("18", ["rtpmap:18 G729/8000", "fmtp:18 annexb=no"]),
    ("101", ["rtpmap:101 telephone-event/8000", "fmtp:101 0-15"]),
    ("111", ["rtpmap:111 opus/48000/2", "fmtp:111 minptime=10;useinbandfec=1"]),
])
_PLAIN_ATTRIBUTES = st.sampled_from(["sendrecv", "sendonly", "recvonly", "inactive",
                                     "ptime:20", "maxptime:40", "rtcp-mux"])


def _addrtype(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _connection(address: str) -> str:
    return f"c=IN {_addrtype(address)} {address}"


@st.composite
def identity_lines(draw: st.DrawFn, address: str) -> list[str]:
    """Lines that name a peer: the ones rewrite must drop or point elsewhere."""
    port = draw(_PORT)
    return draw(st.lists(st.sampled_from([
        f"a=candidate:1 1 UDP 2130706431 {address} {port} typ host",
        f"a=rtcp:{port} IN {_addrtype(address)} {address}",
        f"a=X-relay:{address}", f"a=tool:softphone on {address}",
        f"a=ssrc:1 cname:user@{address}", f"a=path:msrp://{address}:2855/s;tcp",
        "a=ice-ufrag:F7gI", "a=ice-pwd:x9cml/YzichV2+XlhiMu8g",
    ]), max_size=4))


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, set[str]]:
    """A CRLF SDP in RFC 4566 §5 order, and the set of peer addresses written into it."""
    used: set[str] = set()

    def address() -> str:
        chosen = draw(_ADDRESS)
        used.add(chosen)
        return chosen

    origin_address = address()
    lines = ["v=0", f"o={draw(_TOKEN)} {draw(_DIGITS)} {draw(_DIGITS)} IN "
             f"{_addrtype(origin_address)} {origin_address}", "s=" + draw(_TEXT)]
    for kind in "iuep":
        if draw(st.booleans()):
            lines.append(f"{kind}={draw(_TEXT)} {address()}")
    if draw(st.booleans()):
        lines.append(_connection(address()))
    lines += [f"b=AS:{n}" for n in draw(st.lists(st.integers(0, 10**6), max_size=2))]
    for _ in range(draw(st.integers(1, 2))):
        lines.append(f"t={draw(_DIGITS)} {draw(_DIGITS)}")
        lines += ["r=7d 1h 0 25h"] * draw(st.integers(0, 1))
    if draw(st.booleans()):
        lines.append(f"x={draw(_TEXT)}")
    lines += [f"a={a}" for a in draw(st.lists(_PLAIN_ATTRIBUTES, max_size=2))]
    lines += draw(identity_lines(origin_address))
    for _ in range(draw(st.integers(0, 3))):
        codecs = draw(st.lists(_CODECS, min_size=1, max_size=4, unique_by=lambda c: c[0]))
        port = draw(_PORT)
        proto = draw(st.sampled_from(["RTP/AVP", "RTP/SAVP", "UDP/TLS/RTP/SAVPF", "udptl"]))
        lines.append(f"m={draw(st.sampled_from(['audio', 'video', 'image']))} {port} "
                     f"{proto} {' '.join(pt for pt, _ in codecs)}")
        if draw(st.booleans()):
            lines.append(f"i={draw(_TEXT)}")
        media_address = address()
        lines.append(_connection(media_address))
        if draw(st.booleans()):
            lines.append(f"b=TIAS:{draw(st.integers(0, 10**6))}")
        lines += [f"a={a}" for _, attrs in codecs for a in attrs]
        lines += [f"a={a}" for a in draw(st.lists(_PLAIN_ATTRIBUTES, max_size=2))]
        lines += draw(identity_lines(media_address))
        # Vendor attributes with any text: no kept name starts with "x", so all are dropped.
        lines += [f"a=x{draw(_TOKEN)}:{draw(_TEXT)}" for _ in range(draw(st.integers(0, 2)))]
    return "".join(line + "\r\n" for line in lines).encode(), used


@given(bodies())
def test_generated_bodies_round_trip_byte_for_byte(case: tuple[bytes, set[str]]) -> None:
    body, _ = case
    assert parse(body).to_bytes() == body


@given(bodies(), st.randoms(use_true_random=False))
def test_any_line_order_settles_after_one_pass(case: tuple[bytes, set[str]],
                                               rnd: random.Random) -> None:
    body, _ = case
    head, *rest = body.split(b"\r\n")[:-1]
    rnd.shuffle(rest)
    # Some orders are invalid SDP (o= after m=); those must raise, the others settle.
    try:
        once = parse(b"\r\n".join([head, *rest]) + b"\r\n").to_bytes()
    except ParseError:
        return
    assert parse(once).to_bytes() == once


def _written(address: str, text: str) -> bool:
    """`address` appears as itself, not as part of a longer address or name (2.0.2.20 is
    inside the relay's 192.0.2.200 but is not written there)."""
    return re.search(r"(?<![0-9A-Za-z.])" + re.escape(address) + r"(?![0-9A-Za-z.])",
                     text) is not None


@given(bodies(), st.sampled_from([RELAY, RELAY6]), st.integers(0, 2**31))
def test_the_call_path_gives_the_oracles_answers_and_bytes(case: tuple[bytes, set[str]],
                                                           address: str, sess_id: int) -> None:
    body, _ = case
    sd = parse(body)
    scanned = scan.scan(body)
    scan.check_relayable(scanned)
    assert scan.media_endpoints(scanned) == media_endpoints(sd)
    assert scan.is_on_hold(scanned) is is_on_hold(sd)
    ports = [30000 + 2 * i for i in range(relay_ports_needed(sd))]
    assert scan.relay_ports_needed(scanned) == len(ports)
    call_path = OriginCounter(address=address, sess_id=sess_id)
    oracle = OriginCounter(address=address, sess_id=sess_id)
    assert (scan.rewrite(scanned, address, ports, call_path)
            == relay_body(sd, address=address, ports=ports, counter=oracle))


@given(bodies())
def test_rewrite_never_leaks_an_input_address(case: tuple[bytes, set[str]]) -> None:
    body, used = case
    sd = parse(body)
    ports = [30000 + 2 * i for i in range(relay_ports_needed(sd))]
    out = rewrite_for_relay(sd, address=RELAY, ports=ports, origin=ORIGIN)
    # What leaves sipmask is the call path's body; the model's is the same, and typed.
    data = scan.rewrite(scan.scan(body), RELAY, ports,
                        OriginCounter(address=RELAY, sess_id=int(ORIGIN.sess_id)))
    assert data == out.to_bytes()
    text = data.decode("utf-8", "surrogateescape")
    assert not [address for address in used if _written(address, text)]
    for kind in ("i=", "u=", "e=", "p=", "x=", "a=candidate", "a=ice-", "a=X-", "a=tool",
                 "a=ssrc", "a=path"):
        assert f"\n{kind}" not in text
    assert [m.port for m in out.media if m.port] == ports
    for media in out.media:
        rtcp = media.attribute("rtcp")
        assert rtcp is None or rtcp.value == f"{media.port + 1} IN IP4 {RELAY}"
    assert all(c == Connection("IN", "IP4", RELAY) for m in out.media for c in m.connections)
    assert out.connection == Connection("IN", "IP4", RELAY)
    assert parse(data) == out
