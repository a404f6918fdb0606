"""Masking: a leg is built from a whitelist; identities and topology never cross."""

from __future__ import annotations

import pytest

from sipmask.b2bua import masking
from sipmask.errors import SipError
from sipmask.sip.headers import Headers
from sipmask.sip.message import Request, Response
from sipmask.sip.parser import parse_message
from tests.support.corpus import rfc4475_message

A_INVITE = (
    b"INVITE sip:700100000000001@198.51.100.1;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKabc;rport\r\n"
    b"Max-Forwards: 69\r\n"
    b'From: "Zhang San" <sip:13800000001@203.0.113.5;user=phone>;tag=a1\r\n'
    b"To: <sip:700100000000001@198.51.100.1;user=phone>\r\n"
    b"Call-ID: leak-callid@203.0.113.5\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"Contact: <sip:13800000001@203.0.113.5:5060>\r\n"
    b"P-Asserted-Identity: <tel:+8613800000001>\r\n"
    b"P-Preferred-Identity: <sip:13800000001@x>\r\n"
    b"Remote-Party-ID: <sip:13800000001@x>;party=calling\r\n"
    b"Diversion: <sip:13700000003@x>;reason=unconditional\r\n"
    b"History-Info: <sip:13700000003@x>;index=1\r\n"
    b"Record-Route: <sip:203.0.113.9;lr>\r\n"
    b"Route: <sip:198.51.100.1;lr>\r\n"
    b"User-Agent: LeakyPhone 1.0 (13800000001)\r\n"
    b"Organization: Example Corp\r\n"
    b"Subject: call from Zhang San\r\n"
    b"Call-Info: <http://example.com/zhang.jpg>;purpose=icon\r\n"
    b"Reply-To: <sip:13800000001@x>\r\n"
    b"X-Customer-Id: 13800000001\r\n"
    b"Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO, PRACK\r\n"
    b"k: timer, 100rel, replaces\r\n"
    b"Session-Expires: 1800;refresher=uac\r\n"
    b"Min-SE: 90\r\n"
    b"c: application/sdp\r\n"
    b"Content-Length: 4\r\n\r\nv=0\n"
)

NEVER = ("13800000001", "13700000003", "203.0.113", "leak-callid", "Zhang", "LeakyPhone",
         "Example Corp", "example.com", "tag=a1", "z9hG4bKabc", "198.51.100.1")


def a_invite() -> Request:
    msg = parse_message(A_INVITE)
    assert isinstance(msg, Request)
    return msg


def test_whitelist_keeps_session_headers_only() -> None:
    # Allow is sipmask's own on each leg; Content-Type and the other body headers describe
    # the body sipmask builds (crossing_body), not the one that came in.
    crossing = masking.crossing_headers(a_invite())
    assert crossing == [
        ("Supported", "timer"),            # 100rel and replaces are per leg
        ("Session-Expires", "1800;refresher=uac"),
        ("Min-SE", "90"),
    ]


def test_built_leg_b_invite_carries_nothing_of_a() -> None:
    src = a_invite()
    leg_b = masking.build_request(
        "INVITE", request_uri="sip:13900000002@127.0.0.1:5090;user=phone",
        local="<sip:700100000000001@127.0.0.1>;tag=sm1",
        remote="<sip:13900000002@127.0.0.1:5090;user=phone>", call_id="sm-call-1", cseq=1,
        contact="<sip:700100000000001@127.0.0.1:5060>",
        max_forwards=masking.next_max_forwards(src), crossing=masking.crossing_headers(src),
        body=b"v=0\r\nrewritten\r\n", content_type="application/sdp")
    assert "via" not in leg_b.headers  # the transaction layer adds sipmask's own
    leg_b.headers.add("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsm1", first=True)
    text = leg_b.to_bytes().decode()
    for secret in NEVER:
        assert secret not in text, secret
    reparsed = parse_message(leg_b.to_bytes())
    assert reparsed.headers.get("max-forwards") == "68"
    assert reparsed.headers.get("content-type") == "application/sdp"
    assert reparsed.body == b"v=0\r\nrewritten\r\n"
    assert reparsed.headers.get("from") == "<sip:700100000000001@127.0.0.1>;tag=sm1"


def test_max_forwards_zero_is_483() -> None:
    src = a_invite()
    src.headers.set("Max-Forwards", "0")
    with pytest.raises(SipError) as err:
        masking.next_max_forwards(src)
    assert err.value.status == 483


def test_relayed_response_keeps_status_not_reason_or_identity() -> None:
    b_resp = Response(486, "Busy - Li Si 13900000002 on another line", Headers.of(
        ("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsm"),
        ("From", "<sip:700100000000001@127.0.0.1>;tag=sm1"),
        ("To", "<sip:13900000002@127.0.0.1>;tag=b7"),
        ("Call-ID", "sm-call-1"), ("CSeq", "1 INVITE"),
        ("Contact", "<sip:13900000002@192.0.2.44>"),
        ("Server", "CalleePBX 13900000002"),
        ("Warning", '399 192.0.2.44 "Li Si is busy"'),
        ("P-Asserted-Identity", "<sip:13900000002@192.0.2.44>"),
        ("Retry-After", "60 (in a meeting);duration=3600"),
        ("Content-Length", "0")))
    out = masking.build_relayed_response(b_resp, a_invite(), to_tag="smA", contact=None)
    text = out.to_bytes().decode()
    assert out.status == 486 and out.reason == "Busy Here"
    for secret in ("13900000002", "192.0.2.44", "Li Si", "CalleePBX", "b7", "sm-call-1"):
        assert secret not in text, secret
    reparsed = parse_message(out.to_bytes())
    assert reparsed.headers.get("call-id") == "leak-callid@203.0.113.5"  # A's own dialog
    assert reparsed.headers.get("retry-after") == "60"
    assert reparsed.to.tag == "smA"
    assert reparsed.headers.get_fields("via") == [
        "SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKabc;rport"]


def test_2xx_gets_our_contact() -> None:
    b_ok = Response(200, "OK", Headers.of(("Contact", "<sip:13900000002@192.0.2.44>"),
                                          ("Content-Type", "application/sdp")), b"v=0\r\n")
    out = masking.build_relayed_response(b_ok, a_invite(), to_tag="smA",
                                         contact="<sip:700100000000001@127.0.0.1:5060>",
                                         body=b"v=0\r\nours\r\n",
                                         content_type="application/sdp", allow="INVITE, BYE")
    assert out.headers.get("contact") == "<sip:700100000000001@127.0.0.1:5060>"
    assert out.headers.get("content-type") == "application/sdp"
    assert out.headers.get("allow") == "INVITE, BYE"
    assert b"192.0.2.44" not in out.to_bytes()


# -- bodies: only sipmask's own SDP or a rebuilt DTMF body crosses ------------------------------
SDP = b"v=0\r\no=alice-13800000001 1 1 IN IP4 127.1.2.3\r\ns=-\r\nc=IN IP4 127.1.2.3\r\n"
ISUP = b"\x01\x00\x60\x01\x0a\x00\x02\x0a\x08\x83\x90\x31\x08"


def message(body: bytes, *headers: tuple[str, str]) -> Request:
    return Request("INFO", "sip:x@h", Headers.of(*headers), body)


def multipart(*parts: tuple[bytes, bytes], boundary: str = "b1", close: bool = True) -> bytes:
    out = b"preamble\r\n"
    for head, content in parts:
        out += f"--{boundary}\r\n".encode() + head + b"\r\n" + content + b"\r\n"
    if close:
        out += f"--{boundary}--\r\n".encode()
    return out


def test_no_body_crosses_as_none() -> None:
    body = masking.crossing_body(message(b""))
    assert (body.kind, body.content, body.dropped, body.untyped) == (
        masking.BodyKind.NONE, b"", 0, False)


def test_sdp_crosses_to_be_rewritten() -> None:
    body = masking.crossing_body(message(SDP, ("c", "Application/SDP; charset=utf-8")))
    assert (body.kind, body.content, body.content_type, body.dropped) == (
        masking.BodyKind.SDP, SDP, "application/sdp", 0)


def test_body_without_content_type_is_untyped_and_never_sdp() -> None:
    """RFC 3261 §20.15: a body needs a Content-Type; without one it is not SDP."""
    body = masking.crossing_body(message(SDP))
    assert (body.kind, body.untyped, body.dropped) == (masking.BodyKind.NONE, True, 1)


def test_multipart_sdp_part_crosses_alone() -> None:
    data = multipart((b"Content-Type: application/sdp\r\n", SDP),
                     (b"Content-Type: application/isup;version=itu-t92+\r\n"
                      b"Content-Disposition: signal;handling=required\r\n", ISUP))
    body = masking.crossing_body(message(data, ("Content-Type",
                                                'multipart/mixed; boundary="b1"')))
    assert (body.kind, body.content, body.dropped) == (masking.BodyKind.SDP, SDP, 1)


@pytest.mark.parametrize(("data", "dropped"), [
    # no SDP part at all
    (multipart((b"Content-Type: text/plain\r\n", b"13800000001"),
               (b"Content-Type: application/isup\r\n", ISUP)), 2),
    # a part without headers is text/plain (RFC 2046 §5.1)
    (multipart((b"", SDP)), 1),
    # no close delimiter: not a multipart we can read
    (multipart((b"Content-Type: application/sdp\r\n", SDP), close=False), 1),
    # another boundary
    (multipart((b"Content-Type: application/sdp\r\n", SDP), boundary="other"), 1),
    # an encoded SDP part cannot be rewritten
    (multipart((b"Content-Type: application/sdp\r\nContent-Transfer-Encoding: base64\r\n",
                b"dj0w")), 1),
    # nested multiparts are not opened
    (multipart((b"Content-Type: multipart/mixed;boundary=b2\r\n",
                b"--b2\r\nContent-Type: application/sdp\r\n\r\n" + SDP + b"\r\n--b2--")), 1),
])
def test_multipart_without_a_usable_sdp_part_crosses_nothing(data: bytes, dropped: int) -> None:
    body = masking.crossing_body(message(data, ("Content-Type", "multipart/mixed;boundary=b1")))
    assert (body.kind, body.content, body.dropped) == (masking.BodyKind.NONE, b"", dropped)


def test_two_sdp_parts_keep_the_first() -> None:
    other = SDP.replace(b"127.1.2.3", b"127.9.9.9")
    data = multipart((b"Content-Type: application/sdp\r\n", SDP),
                     (b"content-type: application/sdp\r\n", other))
    body = masking.crossing_body(message(data, ("Content-Type",
                                                "multipart/alternative;boundary=b1")))
    assert (body.kind, body.content, body.dropped) == (masking.BodyKind.SDP, SDP, 1)


def test_rfc4475_mpart01_binary_multipart_crosses_nothing() -> None:
    body = masking.crossing_body(parse_message(rfc4475_message("valid", "mpart01.dat")))
    assert body.kind is masking.BodyKind.NONE and body.dropped >= 1


@pytest.mark.parametrize("ctype", ["text/plain", "application/isup", "message/sipfrag",
                                   "application/pidf+xml"])
def test_other_bodies_are_dropped(ctype: str) -> None:
    body = masking.crossing_body(message(b"13800000001", ("Content-Type", ctype)))
    assert (body.kind, body.content, body.dropped) == (masking.BodyKind.NONE, b"", 1)


def test_content_encoded_body_is_dropped() -> None:
    body = masking.crossing_body(message(SDP, ("Content-Type", "application/sdp"),
                                         ("Content-Encoding", "gzip")))
    assert (body.kind, body.dropped) == (masking.BodyKind.NONE, 1)


@pytest.mark.parametrize(("ctype", "data", "rebuilt"), [
    ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", b"Signal=5\r\nDuration=160\r\n"),
    ("application/dtmf-relay", b"signal= #\nduration = 250\nCaller=13800000001\r\n",
     b"Signal=#\r\nDuration=250\r\n"),
    ("application/dtmf-relay", b"Signal=11\r\n", b"Signal=11\r\n"),
    ("application/dtmf-relay", b"Signal=13800000001\r\nDuration=160\r\n", None),
    ("application/dtmf-relay", b"Duration=160\r\n", None),
    ("application/dtmf-relay", b"Signal=5\r\nDuration=13800000001\r\n", None),
    ("application/dtmf", b"7", b"7"),
    ("application/dtmf", b" *\r\n", b"*"),
    ("application/dtmf", b"78", None),
])
def test_dtmf_bodies_are_rebuilt_from_their_digit(ctype: str, data: bytes,
                                                  rebuilt: bytes | None) -> None:
    body = masking.crossing_body(message(data, ("Content-Type", ctype)))
    if rebuilt is None:
        assert (body.kind, body.dropped) == (masking.BodyKind.NONE, 1)
    else:
        assert (body.kind, body.content, body.content_type, body.dropped) == (
            masking.BodyKind.DTMF, rebuilt, ctype, 0)


# -- header values with control characters ----------------------------------------------------
@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1b", "\x7f", "\x0b", "\x85"])
def test_a_crossing_header_with_a_control_character_is_dropped_and_counted(char: str) -> None:
    src = message(b"", ("Supported", f"timer{char}"), ("Min-SE", "90"),
                  ("Session-Expires", f"1800;x={char}y"))
    crossed = masking.crossing(src)
    assert crossed.headers == [("Min-SE", "90")]
    assert crossed.dropped == 2


def test_a_tab_in_a_header_value_is_whitespace_not_a_control() -> None:
    src = message(b"", ("Session-Expires", "1800;\trefresher=uac"))
    assert masking.crossing(src).headers == [("Session-Expires", "1800;\trefresher=uac")]
