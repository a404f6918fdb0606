"""From, To, CSeq and the top Via are parsed once and kept on the Headers.

The parser parses them to check a message and keeps them; every change of a field,
whichever method makes it, makes the next read of that field parse the new text (the others
stay parsed), and so does a new Headers object.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sipmask.errors import ParseError
from sipmask.sip import headers as headers_module
from sipmask.sip.headers import Headers, canonical, split_commas
from sipmask.sip.message import Message, Request, build_response
from sipmask.sip.parser import parse_message
from sipmask.sip.transaction import stamp_top_via
from sipmask.sip.uri import NameAddr, Via

INVITE = (b"INVITE sip:700100000000001@127.0.0.1 SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKone;rport\r\n"
          b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKold, SIP/2.0/TCP 10.0.0.2;branch=z9\r\n"
          b"From: \"A\" <sip:13800000001@127.0.0.2>;tag=a1\r\n"
          b"To: <sip:700100000000001@127.0.0.1>\r\n"
          b"Call-ID: c1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
          b"Allow: INVITE, ACK\r\nl: 0\r\n\r\n")


def parsed() -> Message:
    return parse_message(INVITE)


# Each change, and the To / CSeq / From / top Via branch it leaves behind.
CHANGES: list[tuple[str, Callable[[Headers], object], tuple[str | None, int, str | None, str]]] = [
    ("set", lambda h: h.set("t", "<sip:x@h>;tag=t2"), ("t2", 1, "a1", "z9hG4bKone")),
    ("set_first", lambda h: h.set_first("CSeq", "7 INVITE"), (None, 7, "a1", "z9hG4bKone")),
    ("add first", lambda h: h.add("Via", "SIP/2.0/UDP h;branch=z9hG4bKnew", first=True),
     (None, 1, "a1", "z9hG4bKnew")),
    ("pop_first", lambda h: h.pop_first("via"), (None, 1, "a1", "z9hG4bKold")),
    ("remove", lambda h: h.remove("From") and h.add("f", "<sip:b@h>;tag=f2"),
     (None, 1, "f2", "z9hG4bKone")),
    ("add to", lambda h: h.remove("to") and h.add("To", "<sip:y@h>;tag=t3"),
     ("t3", 1, "a1", "z9hG4bKone")),
]


def reads(message: Message) -> tuple[str | None, int, str | None, str]:
    return (message.to.tag, message.cseq.number, message.from_.tag,
            message.top_via.branch or "")


@pytest.mark.parametrize(("label", "change", "expected"), CHANGES, ids=[c[0] for c in CHANGES])
def test_a_change_after_a_read_is_read_fresh(label: str,
                                              change: Callable[[Headers], object],
                                              expected: tuple[str | None, int, str | None, str],
                                              ) -> None:
    message = parsed()
    assert reads(message) == (None, 1, "a1", "z9hG4bKone")
    assert message.to is message.to and message.cseq is message.cseq     # kept
    change(message.headers)
    assert reads(message) == expected
    assert message.raw is None and message.to_bytes() != INVITE
    again = parse_message(message.to_bytes())
    assert reads(again) == expected


def test_every_changing_method_forgets_what_was_parsed_from_its_field_only() -> None:
    # A guard for methods added later: each one that marks the headers modified must also
    # forget what was parsed from the field it changed (Headers._changed does both), and
    # keep the rest: stamping the top Via must not make From, To and CSeq be parsed again.
    message = parsed()
    reads(message)
    headers = message.headers
    for name in ("add", "set", "set_first", "remove", "pop_first"):
        assert name in Headers.__dict__
    headers.remove("x-absent")                        # nothing changed: nothing forgotten
    assert headers._p_to is not None and not headers.modified
    kept = (headers._p_to, headers._p_from, headers._p_cseq, headers._p_via)
    headers.set("Max-Forwards", "69")
    assert headers.modified
    assert (headers._p_to, headers._p_from, headers._p_cseq, headers._p_via) == kept
    for change, slot in [(lambda: headers.set("t", "<sip:x@h>;tag=t2"), "_p_to"),
                         (lambda: headers.set_first("CSeq", "7 INVITE"), "_p_cseq"),
                         (lambda: headers.pop_first("via"), "_p_via"),
                         (lambda: headers.remove("From"), "_p_from")]:
        reads_before = {s: getattr(headers, s) for s in ("_p_to", "_p_from", "_p_cseq",
                                                          "_p_via")}
        change()
        assert getattr(headers, slot) is None, slot
        assert all(getattr(headers, s) is v for s, v in reads_before.items() if s != slot)
        if slot != "_p_from":
            reads(message)


def test_a_new_headers_object_is_read_fresh_and_drops_the_bytes() -> None:
    message = parsed()
    assert reads(message) == (None, 1, "a1", "z9hG4bKone")
    assert message.raw == INVITE and message.to_bytes() == INVITE
    message.headers = Headers.of(("Via", "SIP/2.0/UDP h;branch=z9hG4bKb"),
                                 ("From", "<sip:a@h>;tag=fb"), ("To", "<sip:b@h>;tag=tb"),
                                 ("Call-ID", "c2"), ("CSeq", "9 INVITE"))
    assert not message.headers.modified
    assert reads(message) == ("tb", 9, "fb", "z9hG4bKb")
    assert message.raw is None
    assert b"Call-ID: c2" in message.to_bytes()


def test_a_missing_field_raises_every_time_and_parses_once_added() -> None:
    message = Request("BYE", "sip:b@h", Headers.of(("Call-ID", "c")))
    for _ in range(2):
        with pytest.raises(ParseError):
            message.to  # noqa: B018
        with pytest.raises(ParseError):
            message.cseq  # noqa: B018
    message.headers.add("To", "<sip:b@h>;tag=x")
    message.headers.add("CSeq", "2 BYE")
    assert message.to.tag == "x" and message.cseq.method == "BYE"


def test_a_copy_reads_its_own_fields() -> None:
    message = parsed()
    reads(message)
    clone = message.headers.copy()
    clone.set("To", "<sip:z@h>;tag=cz")
    assert message.to.tag is None
    assert Request("INVITE", "sip:z@h", clone).to.tag == "cz"


def test_the_parser_keeps_what_it_parsed() -> None:
    message = parsed()
    headers = message.headers
    assert headers._p_via == Via.parse("SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKone;rport")
    assert headers._p_cseq is not None and str(headers._p_cseq) == "1 INVITE"
    assert message.top_via is headers._p_via and message.cseq is headers._p_cseq
    # From and To were only checked: parsed on first read, then kept.
    assert headers._p_from is None and headers._p_to is None
    assert message.from_ == NameAddr.parse('"A" <sip:13800000001@127.0.0.2>;tag=a1')
    assert message.from_ is headers._p_from and message.to is headers._p_to


def test_stamping_changes_the_top_via_line_only() -> None:
    message = parsed()
    assert isinstance(message, Request)
    before = parsed().headers.fields()
    assert message.top_via.received is None
    cseq, from_, to = message.cseq, message.from_, message.to
    via = stamp_top_via(message, ("192.0.2.9", 40000))
    assert via.rport == "40000" and via.received == "192.0.2.9"
    assert message.top_via is via and message.top_via.received == "192.0.2.9"
    assert message.cseq is cseq and message.from_ is from_ and message.to is to
    after = message.headers.fields()
    assert after[0][2] == str(via) and after[0][3] is None and after[0][1] == "Via"
    assert after[1:] == before[1:]                   # the others keep their text
    assert message.raw is None and str(via).encode() in message.to_bytes()
    # Idempotent: the stamped Via is left as it is.
    assert stamp_top_via(message, ("192.0.2.9", 40000)) == via
    assert message.headers.fields() == after


def test_stamping_a_via_line_of_several_values_keeps_the_others() -> None:
    text = INVITE.replace(b"Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKone;rport\r\n", b"")
    message = parse_message(text)
    assert isinstance(message, Request)
    via = stamp_top_via(message, ("192.0.2.9", 5060))
    line = message.headers.get_fields("via")[0]
    assert split_commas(line) == [str(via), "SIP/2.0/TCP 10.0.0.2;branch=z9"]
    assert via.received == "192.0.2.9" and message.top_via == via


def test_canonical_is_a_fixed_table() -> None:
    # The same key for a name whether or not it was asked for before, and asking adds
    # nothing: what a lookup gives never depends on the names seen before.
    keys = headers_module._KEYS
    size = len(keys)
    for name, key in [("via", "via"), ("V", "via"), ("call-id", "call-id"), ("I", "call-id"),
                      ("X-Odd-Name", "x-odd-name"), ("x-odd-name", "x-odd-name"),
                      ("X-" + "a" * 200, "x-" + "a" * 200)]:
        assert canonical(name) == key == canonical(name)
    assert len(keys) == size
    assert canonical("v") == "via" and canonical("Content-Length") == "content-length"


def test_get_all_splits_where_allowed() -> None:
    headers = parsed().headers
    assert headers.get_all("via") == [
        "SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKone;rport",
        "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKold", "SIP/2.0/TCP 10.0.0.2;branch=z9"]
    for name in ("via", "v", "Allow", "allow", "From", "content-length", "l", "x-none",
                 "Max-Forwards", "call-id", "i", "CSeq"):
        expected: list[str] = []
        for value in headers.get_fields(name):
            expected.extend(split_commas(value))
        if canonical(name) not in headers_module._UNSPLITTABLE:
            assert headers.get_all(name) == expected, name
        else:
            assert headers.get_all(name) == headers.get_fields(name), name
    empty = Headers.of(("Supported", ""))
    assert empty.get_all("supported") == [] and empty.get_fields("supported") == [""]


def test_build_response_adds_the_tag_to_a_to_already_read() -> None:
    message = parsed()
    assert isinstance(message, Request)
    assert message.to.tag is None
    response = build_response(message, 180, to_tag="b7")
    assert response.to.tag == "b7" and message.to.tag is None
    assert response.headers.get("to") == "<sip:700100000000001@127.0.0.1>;tag=b7"
    tagged = build_response(parse_message(response.to_bytes().replace(  # type: ignore[arg-type]
        b"SIP/2.0 180 Ringing", b"INVITE sip:a@h SIP/2.0")), 200, to_tag="other")
    assert tagged.to.tag == "b7"


@pytest.mark.parametrize("value", ["SIP/2.0/UDP h;branch=z9hG4bKs", "  SIP/2.0/UDP h;branch=x "])
def test_set_first_replaces_the_first_line_only(value: str) -> None:
    message = parsed()
    message.headers.set_first("v", value)
    assert message.headers.modified and message.raw is None
    for name in ("via", "from", "allow", "l"):
        assert parsed().headers.get_fields(name)[1:] == message.headers.get_fields(name)[1:]
    assert message.headers.get_fields("via")[0] == value
    assert message.headers.get("to") == parsed().headers.get("to")
    assert message.headers.get_all("via")[1:] == parsed().headers.get_all("via")[1:]
    message.headers.set_first("X-New", "1")            # absent: appended
    assert message.headers.get_fields("x-new") == ["1"]


def test_a_parsed_block_reads_alike_before_and_after_its_fields_are_made() -> None:
    # A parsed message keeps its header block split (Headers.parsed) until a change needs
    # the fields; every read gives what the made fields give, and set_first of the top Via
    # (stamping) keeps the block split.
    from tests.support.corpus import CORPUS_MESSAGES
    keys = frozenset({"via", "supported", "content-type", "x-secret", "allow"})
    for data in [*CORPUS_MESSAGES, INVITE]:
        try:
            split, made = parse_message(data).headers, parse_message(data).headers
        except ParseError:
            continue
        made.fields()
        assert split._fields is None and made._fields is not None
        assert list(split) == list(made) and split.select(keys) == made.select(keys)
        for name in {*split.keys(), "x-none", "v", "Call-ID"}:
            assert split.get(name) == made.get(name), name
            assert split.get_all(name) == made.get_all(name), name
            assert split.get_fields(name) == made.get_fields(name), name
        if "via" in split:
            split.set_first("Via", "SIP/2.0/UDP h;branch=z9hG4bKs")
            made.set_first("Via", "SIP/2.0/UDP h;branch=z9hG4bKs")
            assert split._fields is None
        assert split.fields() == made.fields() and split.serialize() == made.serialize()
