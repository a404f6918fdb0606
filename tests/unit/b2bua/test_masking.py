"""Masking: a leg is built from a whitelist; identities and topology never cross."""

from __future__ import annotations

import pytest

from sipmask.b2bua import masking
from sipmask.errors import SipError
from sipmask.sip.headers import Headers
from sipmask.sip.message import Request, Response
from sipmask.sip.parser import parse_message

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
    crossing = masking.crossing_headers(a_invite())
    assert crossing == [
        ("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO, PRACK"),
        ("Supported", "timer"),            # 100rel and replaces are per leg
        ("Session-Expires", "1800;refresher=uac"),
        ("Min-SE", "90"),
        ("Content-Type", "application/sdp"),
    ]


def test_built_leg_b_invite_carries_nothing_of_a() -> None:
    src = a_invite()
    leg_b = masking.build_request(
        "INVITE", request_uri="sip:13900000002@127.0.0.1:5090;user=phone",
        local="<sip:700100000000001@127.0.0.1>;tag=sm1",
        remote="<sip:13900000002@127.0.0.1:5090;user=phone>", call_id="sm-call-1", cseq=1,
        contact="<sip:700100000000001@127.0.0.1:5060>",
        max_forwards=masking.next_max_forwards(src), crossing=masking.crossing_headers(src),
        body=b"v=0\r\nrewritten\r\n")
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
                                         body=b"v=0\r\nours\r\n")
    assert out.headers.get("contact") == "<sip:700100000000001@127.0.0.1:5060>"
    assert out.headers.get("content-type") == "application/sdp"
    assert b"192.0.2.44" not in out.to_bytes()
