"""Header fields: case-insensitive, compact forms equal to long ones, original text kept."""

from __future__ import annotations

import pytest

from sipmask.errors import ParseError
from sipmask.sip.headers import (
    Headers,
    canonical,
    is_token,
    split_commas,
)
from sipmask.sip.parser import parse_message

INVITE = (
    b"INVITE sip:700100000000001@127.0.0.1 SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport\r\n"
    b"VIA: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK0, SIP/2.0/TCP 127.0.0.3;branch=z9hG4bKx\r\n"
    b"f: <sip:13800000001@127.0.0.1>;tag=a1\r\n"
    b"t: <sip:700100000000001@127.0.0.1>\r\n"
    b"i: c1@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Supported: timer,\r\n 100rel\r\n"
    b"Allow: INVITE, ACK\r\n"
    b"Allow: BYE\r\n"
    b"l: 0\r\n"
    b"\r\n"
)


@pytest.mark.parametrize(("name", "key"), [
    ("v", "via"), ("V", "via"), ("Via", "via"), ("f", "from"), ("t", "to"), ("i", "call-id"),
    ("m", "contact"), ("l", "content-length"), ("c", "content-type"), ("k", "supported"),
    ("CALL-ID", "call-id"), ("X-Custom", "x-custom"), ("o", "event"), ("x", "session-expires"),
])
def test_canonical(name: str, key: str) -> None:
    assert canonical(name) == key


def test_compact_and_long_forms_are_one_header() -> None:
    msg = parse_message(INVITE)
    h = msg.headers
    assert h.get("Via") == "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport"
    assert h.get_fields("v") == [
        "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport",
        "SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK0, SIP/2.0/TCP 127.0.0.3;branch=z9hG4bKx",
    ]
    assert len(h.get_all("via")) == 3
    assert h.count("VIA") == 2
    assert "call-id" in h and "I" in h and "route" not in h
    assert h.get("missing") is None and h.get("missing", "d") == "d"


def test_iteration_keeps_names_as_written() -> None:
    names = [name for name, _ in parse_message(INVITE).headers]
    assert names == ["v", "VIA", "f", "t", "i", "CSeq", "Supported", "Allow", "Allow", "l"]


def test_get_all_splits_lists_but_not_single_valued_headers() -> None:
    h = parse_message(INVITE).headers
    assert h.get_all("allow") == ["INVITE", "ACK", "BYE"]
    assert h.get("supported") == "timer, 100rel"          # folded: one SP
    assert h.get_all("supported") == ["timer", "100rel"]
    dated = Headers.of(("Date", "Sat, 13 Nov 2010 23:29:00 GMT"))
    assert dated.get_all("date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]


def test_split_commas_respects_quotes_and_brackets() -> None:
    assert split_commas('"a, b" <sip:x@y;p=1,2>, <sip:z@w>') == [
        '"a, b" <sip:x@y;p=1,2>', "<sip:z@w>"]
    assert split_commas('"a\\", b" <sip:x@y>') == ['"a\\", b" <sip:x@y>']
    assert split_commas("") == []
    assert split_commas(" a ,, b ") == ["a", "b"]


def test_unchanged_headers_serialize_to_their_raw_text() -> None:
    h = parse_message(INVITE).headers
    head = INVITE.split(b"\r\n", 1)[1].rsplit(b"\r\n\r\n", 1)[0] + b"\r\n"
    assert h.serialize().encode() == head
    assert not h.modified


def test_set_keeps_position_and_written_name_and_drops_duplicates() -> None:
    h = parse_message(INVITE).headers
    h.set("Allow", "INVITE")
    assert h.modified
    assert [n for n, _ in h].count("Allow") == 1
    assert h.keys().index("allow") == 7
    h.set("call-id", "new@127.0.0.1")
    assert "i: new@127.0.0.1\r\n" in h.serialize()        # compact name kept
    h.set("Max-Forwards", "70")
    assert h.serialize().endswith("Max-Forwards: 70\r\n")


def test_add_remove_pop_first() -> None:
    h = parse_message(INVITE).headers
    h.add("Via", "SIP/2.0/UDP 127.0.0.9;branch=z9hG4bKnew", first=True)
    assert h.get("via") == "SIP/2.0/UDP 127.0.0.9;branch=z9hG4bKnew"
    assert h.pop_first("via") == "SIP/2.0/UDP 127.0.0.9;branch=z9hG4bKnew"
    assert h.pop_first("via") == "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport"
    assert h.pop_first("route") is None
    assert h.remove("allow") == 2 and "allow" not in h
    assert h.remove("allow") == 0
    h.add("X-Trace", "1")
    assert h.keys()[-1] == "x-trace" and len(h) == len(h.keys())


def test_untouched_fields_keep_their_folding_after_a_change() -> None:
    h = parse_message(INVITE).headers
    h.set("CSeq", "2 INVITE")
    text = h.serialize()
    assert "Supported: timer,\r\n 100rel\r\n" in text
    assert "CSeq: 2 INVITE\r\n" in text


def test_copy_is_independent() -> None:
    h = parse_message(INVITE).headers
    clone = h.copy()
    clone.set("CSeq", "9 INVITE")
    assert h.get("cseq") == "1 INVITE" and not h.modified
    assert clone.get("cseq") == "9 INVITE"


def test_of_builds_unmodified_fields_without_raw_text() -> None:
    h = Headers.of(("Via", "SIP/2.0/UDP h"), ("Content-Length", "0"))
    assert h.serialize() == "Via: SIP/2.0/UDP h\r\nContent-Length: 0\r\n"
    assert [f[3] for f in h.fields()] == [None, None]


def test_names_match_in_any_case_and_compact_form() -> None:
    # §7.3.1 / §7.3.3: names are case-insensitive; compact forms equal their long forms.
    # The same answer for a name sipmask knows and one it has never seen, every time.
    for _ in range(2):
        assert canonical("v") == canonical("V") == canonical("Via") == canonical("VIA") == "via"
        assert canonical("Call-Id") == canonical("i") == "call-id"
        assert canonical("X-Never-Seen-Before") == "x-never-seen-before"
    assert is_token("C%6Fntact") and not is_token("a,b") and not is_token("")
    with pytest.raises(ParseError, match="header name"):
        parse_message(INVITE.replace(b"Allow: BYE", b"Al low: BYE"))
    assert parse_message(INVITE.replace(b"Allow: BYE", b"Allow \t: BYE")).headers.count(
        "allow") == 2
