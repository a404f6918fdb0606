"""From, To, CSeq and top Via are parsed once per message and follow header changes."""

from __future__ import annotations

from sipmask.sip.parser import parse_message

INVITE = (b"INVITE sip:700100000000001@127.0.0.1 SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKone\r\n"
          b"From: <sip:13800000001@127.0.0.2>;tag=a1\r\n"
          b"To: <sip:700100000000001@127.0.0.1>\r\n"
          b"Call-ID: c1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")


def test_fields_are_parsed_once_and_follow_changes() -> None:
    message = parse_message(INVITE)
    assert message.from_ is message.from_          # the same parsed value, not a new one
    assert message.to.tag is None and message.cseq.number == 1
    assert message.top_via.branch == "z9hG4bKone"
    message.headers.set("To", "<sip:700100000000001@127.0.0.1>;tag=b2")
    message.headers.set("CSeq", "2 INVITE")
    message.headers.set("Via", "SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKtwo")
    assert message.to.tag == "b2" and message.cseq.number == 2
    assert message.top_via.branch == "z9hG4bKtwo"
    assert message.from_.tag == "a1"
