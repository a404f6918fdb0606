"""parse_message: framing rules, size limits, Content-Length (RFC 3261 §7.5, §18.3, §20.14),
what a message keeps of its bytes, build_response (§8.2.6.2) and salvage (§8.2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipmask.errors import MessageTooLarge, ParseError
from sipmask.sip import parser
from sipmask.sip.headers import Headers
from sipmask.sip.message import CSeq, Request, Response, build_response
from sipmask.sip.parser import parse_message, salvage
from tests.support.paths import source_of

TRUNK_INVITE = (Path(__file__).resolve().parents[2] / "corpus" / "trunk" /
                "invite_sdp.sip").read_bytes()

HEAD = (
    "OPTIONS sip:700100000000001@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1;rport\r\n"
    "From: <sip:13800000001@127.0.0.1>;tag=f1\r\n"
    "To: <sip:700100000000001@127.0.0.1>\r\n"
    "Call-ID: p1@127.0.0.1\r\n"
    "CSeq: 7 OPTIONS\r\n"
    "Max-Forwards: 70\r\n"
)


def options(extra: str = "", body: bytes = b"") -> bytes:
    return (HEAD + extra + "\r\n").encode() + body


def test_trunk_invite_round_trips_and_reads() -> None:
    msg = parse_message(TRUNK_INVITE)
    assert isinstance(msg, Request)
    assert msg.to_bytes() == TRUNK_INVITE
    assert msg.method == "INVITE" and msg.cseq == CSeq(102, "INVITE")
    assert msg.content_type == "application/sdp"
    assert msg.body.startswith(b"v=0\r\n") and len(msg.body) == 272
    assert msg.from_.tag == "as6f1c2b3a" and msg.top_via.rport == ""
    assert msg.raw == TRUNK_INVITE


# -- size and Content-Length -------------------------------------------------------------------

def test_over_the_size_limit() -> None:
    data = options("Content-Length: 0\r\n")
    with pytest.raises(MessageTooLarge) as err:
        parse_message(data, max_bytes=len(data) - 1)
    assert err.value.status == 513
    assert parse_message(data, max_bytes=len(data)).to_bytes() == data


def test_udp_octets_past_content_length_are_discarded() -> None:
    # §18.3.
    msg = parse_message(options("Content-Length: 4\r\n", b"abcdEXTRA"))
    assert msg.body == b"abcd"
    assert msg.to_bytes() == options("Content-Length: 4\r\n", b"abcd")


def test_content_length_larger_than_the_body() -> None:
    with pytest.raises(ParseError, match="larger than the body") as err:
        parse_message(options("Content-Length: 10\r\n", b"abc"))
    assert err.value.status == 400


@pytest.mark.parametrize("value", ["-1", "x", "1 2", "", "0x10", "٣", "12345678901"])
def test_bad_content_length(value: str) -> None:
    with pytest.raises(ParseError, match="Content-Length"):
        parse_message(options(f"Content-Length: {value}\r\n"))


def test_conflicting_content_lengths_and_agreeing_duplicates() -> None:
    with pytest.raises(ParseError, match="Conflicting"):
        parse_message(options("Content-Length: 3\r\nl: 4\r\n", b"abcd"))
    assert parse_message(options("Content-Length: 4\r\nl: 4\r\n", b"abcd")).body == b"abcd"


def test_no_content_length_over_udp_takes_the_rest_and_stream_refuses() -> None:
    assert parse_message(options(body=b"xyz")).body == b"xyz"
    with pytest.raises(ParseError, match="stream"):
        parse_message(options(body=b"xyz"), stream=True)
    assert parse_message(options("l: 3\r\n", b"xyz"), stream=True).body == b"xyz"


# -- framing leniency and refusals -------------------------------------------------------------

def test_leading_crlfs_are_ignored() -> None:
    data = options("Content-Length: 0\r\n")
    msg = parse_message(b"\r\n\r\n" + data)
    assert msg.to_bytes() == data


def test_bare_lf_messages_parse_and_are_rebuilt_with_crlf() -> None:
    data = options("Content-Length: 2\r\n", b"hi").replace(b"\r\n", b"\n")
    msg = parse_message(data)
    assert msg.raw is None
    out = msg.to_bytes()
    assert out.startswith(b"OPTIONS sip:700100000000001@127.0.0.1 SIP/2.0\r\nVia: ")
    assert out.endswith(b"\r\n\r\nhi")
    assert parse_message(out).headers.keys() == msg.headers.keys()


def test_mixed_line_ends_never_leave_a_line_break_in_a_value() -> None:
    data = options("Supported: timer\nP-Asserted-Identity: <sip:x@y>\r\nl: 0\r\n")
    msg = parse_message(data)
    assert msg.headers.get("supported") == "timer"
    assert all("\n" not in v and "\r" not in v for _, v in msg.headers)


def test_bare_cr_in_a_header_is_refused() -> None:
    with pytest.raises(ParseError, match="Bare CR"):
        parse_message(options("Supported: timer\rX-Evil: 1\r\nl: 0\r\n"))


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "Empty"),
    (b"\r\n\r\n", "Empty"),
    (HEAD.encode(), "blank line"),
    (options("NoColonHere\r\n"), "without a colon"),
    (options("Bad Name: x\r\n"), "header name"),
    (b"OPTIONS sip:a@b SIP/2.0\r\n folded: x\r\n\r\n", "Continuation"),
    (options().replace(b"OPTIONS sip", b"OPT IONS sip"), "Request-Line"),
    (options().replace(b"OPTIONS sip", b"OPT<IONS sip"), "method"),
    (options().replace(b"SIP/2.0\r\n", b"HTTP/1.1\r\n", 1), "not SIP/2.0"),
    (options().replace(b"CSeq: 7 OPTIONS", b"CSeq: 7"), "CSeq"),
    (options().replace(b"CSeq: 7 OPTIONS", b"CSeq: 2147483648 OPTIONS"), "out of range"),
    (options().replace(b"Max-Forwards: 70", b"Max-Forwards: 256"), "Max-Forwards"),
    (options().replace(b"Max-Forwards: 70", b"Max-Forwards: x"), "Max-Forwards"),
    (options().replace(b"Call-ID: p1@127.0.0.1", b"Call-ID: "), "Empty Call-ID"),
    (options().replace(b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1;rport", b"Via: "),
     "Via"),
    (options("Contact: <sip:a@b\r\n"), "name-addr"),
    (options().replace(b"sip:700100000000001@127.0.0.1 SIP", b"sip:a@b c SIP"), "Request-Line"),
])
def test_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_message(data)
    assert reason in err.value.reason
    assert err.value.status == 400


@pytest.mark.parametrize("missing", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_required_headers(missing: str) -> None:
    lines = [line for line in HEAD.split("\r\n") if not line.startswith(missing + ":")]
    with pytest.raises(ParseError, match=f"Missing {missing}"):
        parse_message(("\r\n".join(lines) + "\r\n").encode())


def test_version_not_supported_is_505() -> None:
    with pytest.raises(ParseError) as err:
        parse_message(options().replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1))
    assert err.value.status == 505


def test_responses() -> None:
    data = (
        b"SIP/2.0 486 Busy Here\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1;rport=5070;received=127.0.0.1\r\n"
        b"From: <sip:13800000001@127.0.0.1>;tag=f1\r\n"
        b"To: <sip:700100000000001@127.0.0.1>;tag=t9\r\n"
        b"Call-ID: p1@127.0.0.1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    msg = parse_message(data)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (486, "Busy Here")
    assert msg.to.tag == "t9" and msg.to_bytes() == data
    for bad in (b"SIP/2.0 99 Low", b"SIP/2.0 700 High", b"SIP/2.0 2000 OK", b"SIP/2.0"):
        with pytest.raises(ParseError):
            parse_message(data.replace(b"SIP/2.0 486 Busy Here", bad))


def test_lws_before_the_colon_is_tolerated_and_names_are_cleaned() -> None:
    msg = parse_message(options("X-Odd  : 1\r\nl  :  0\r\n"))
    assert msg.headers.get("x-odd") == "1"
    assert [n for n, _ in msg.headers][-2:] == ["X-Odd", "l"]
    assert msg.to_bytes() == options("X-Odd  : 1\r\nl  :  0\r\n")


def test_utf8_and_invalid_utf8_survive() -> None:
    data = options('X-Name: "张三"\r\nX-Bin: \xff\xfe\r\nl: 0\r\n'.encode(
        "utf-8", "surrogateescape").decode("utf-8", "surrogateescape"))
    data = data.replace("\xff\xfe".encode(), b"\xff\xfe")
    msg = parse_message(data)
    assert msg.headers.get("x-name") == '"张三"'
    msg.headers.set("Max-Forwards", "69")
    assert b"X-Bin: \xff\xfe\r\n" in msg.to_bytes()


# -- what a message keeps of its bytes --------------------------------------------------------

def _msg() -> Request:
    msg = parse_message(TRUNK_INVITE)
    assert isinstance(msg, Request)
    return msg


def test_every_change_drops_the_original_bytes() -> None:
    changes = [
        lambda m: setattr(m, "method", "OPTIONS"),
        lambda m: setattr(m, "uri", "sip:700100000000002@10.20.30.40"),
        lambda m: setattr(m, "version", "SIP/2.0 "),
        lambda m: setattr(m, "body", b"v=0\r\n"),
        lambda m: setattr(m, "headers", Headers.of(("Call-ID", "x"))),
        lambda m: m.headers.set("Max-Forwards", "68"),
        lambda m: m.headers.add("X-New", "1"),
        lambda m: m.headers.remove("user-agent"),
        lambda m: m.headers.pop_first("via"),
    ]
    for change in changes:
        msg = _msg()
        change(msg)
        assert msg.to_bytes() != TRUNK_INVITE


def test_body_change_rewrites_content_length() -> None:
    msg = _msg()
    msg.body = b"v=0\r\n"
    out = msg.to_bytes()
    assert b"\r\nContent-Length: 5\r\n" in out and out.endswith(b"\r\n\r\nv=0\r\n")
    assert parse_message(out).body == b"v=0\r\n"


def test_response_status_change_drops_the_bytes() -> None:
    resp = parse_message(build_response(_msg(), 180).to_bytes())
    assert isinstance(resp, Response)
    resp.status = 183
    resp.reason = "Session Progress"
    assert resp.to_bytes().startswith(b"SIP/2.0 183 Session Progress\r\n")


def test_a_status_or_method_changed_alone_is_what_is_sent() -> None:
    """`status` and `method` are plain attributes (read on every layer): the parsed bytes
    are reused only while they still say what the message says."""
    resp = parse_message(build_response(_msg(), 180).to_bytes())
    assert isinstance(resp, Response)
    resp.status = 183
    assert resp.to_bytes().startswith(b"SIP/2.0 183 Ringing\r\n")
    req = _msg()
    assert isinstance(req, Request)
    raw = req.to_bytes()
    req.method = "OPTIONS"
    out = req.to_bytes()
    assert out != raw and out.startswith(b"OPTIONS ")
    assert out.split(b"\r\n", 1)[1] == raw.split(b"\r\n", 1)[1]


def test_build_response_copies_the_dialog_headers() -> None:
    req = _msg()
    resp = build_response(req, 486, to_tag="b2")
    assert (resp.status, resp.reason) == (486, "Busy Here")
    assert resp.headers.get_fields("via") == req.headers.get_fields("via")
    assert resp.headers.get("from") == req.headers.get("from")
    assert resp.to.tag == "b2"
    assert resp.headers.get("call-id") == req.call_id and resp.cseq == req.cseq
    trying = build_response(req, 100, to_tag="b2")
    assert trying.to.tag is None                          # §8.2.6.1: no tag on 100
    again = parse_message(resp.to_bytes())
    assert isinstance(again, Response) and again.status == 486


# -- salvage -----------------------------------------------------------------------------------

def test_salvage_reads_enough_for_a_400() -> None:
    broken = options().replace(b"CSeq: 7 OPTIONS", b"CSeq: 7 INVITE")
    with pytest.raises(ParseError):
        parse_message(broken)
    headers = salvage(broken)
    assert headers is not None
    assert headers.keys() == ["via", "from", "to", "call-id", "cseq"]
    assert headers.get("cseq") == "7 INVITE"


def test_salvage_gives_up_without_via_or_on_responses() -> None:
    no_via = options().replace(b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1;rport\r\n",
                               b"")
    assert salvage(no_via) is None
    assert salvage(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\n\r\n") is None
    assert salvage(b"\x00\x01garbage") is None
    assert salvage(options().replace(b"Via: SIP/2.0/UDP", b"Via: junk")) is None


def test_sans_io_modules_import_no_io() -> None:
    import ast

    import sipmask.sip.grammar
    import sipmask.sip.headers
    import sipmask.sip.message
    import sipmask.sip.uri

    for module in (sipmask.sip.grammar, sipmask.sip.headers, sipmask.sip.uri,
                   sipmask.sip.message, parser):
        tree = ast.parse(source_of(module).read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.Import) for alias in node.names}
        imported |= {str(node.module).split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom)}
        assert not imported & {"asyncio", "socket", "time", "lmdb", "uvloop"}, module.__name__
