"""RFC 4475 torture messages (tests/corpus/rfc4475/): what the parser does with each one.

Valid messages parse, and `to_bytes()` gives back their exact bytes while unchanged; after a
header change, every untouched header keeps its original text. Invalid ones are refused the
way RFC 4475 §3.1.2 asks: ParseError with status 400 (or 505 for a bad version). A response
that fails to parse is dropped by the shell, never answered (RFC 3261 §8.1.3.3).

Messages from §3.2-§3.4 are well-formed; their problem is for the transaction or the
application layer, which the table notes.
"""

from __future__ import annotations

import pytest

from sipmask.errors import ParseError
from sipmask.sip.message import Request, Response
from sipmask.sip.parser import parse_message
from sipmask.sip.uri import AbsoluteUri, NameAddr, SipUri, Via
from tests.support.corpus import RFC4475 as CORPUS
from tests.support.corpus import rfc4475_message as _load
from tests.support.engine import A_ADDR, Harness, run

# file → (RFC 4475 section, decision and why)
VALID: dict[str, tuple[str, str]] = {
    "wsinv.dat": ("3.1.1.1", "folding, LWS everywhere, compact forms, unknown headers"),
    "intmeth.dat": ("3.1.1.2", "every token character, escaped controls in quoted strings"),
    "esc01.dat": ("3.1.1.3", "% escapes in user parts and URI params"),
    "escnull.dat": ("3.1.1.4", "%00 in URIs is data, not a terminator"),
    "esc02.dat": ("3.1.1.5", "% in method/headers names is a plain token character"),
    "lwsdisp.dat": ("3.1.1.6", "no LWS between display name and <"),
    "longreq.dat": ("3.1.1.7", "long values, 34 Vias in mixed case and compact form"),
    "dblreq.dat": ("3.1.1.8", "second request after Content-Length: discarded (§18.3)"),
    "semiuri.dat": ("3.1.1.9", "; inside the user part of a Request-URI"),
    "transports.dat": ("3.1.1.10", "unknown Via transports are kept"),
    "mpart01.dat": ("3.1.1.11", "binary multipart body kept byte for byte"),
    "unreason.dat": ("3.1.1.12", "UTF-8 reason phrase"),
    "noreason.dat": ("3.1.1.13", "empty reason phrase"),
    "badbranch.dat": ("3.2.1", "branch 'z9hG4bK' alone: transaction layer matches by 2543 rules"),
    "unkscm.dat": ("3.3.2", "unknown Request-URI scheme parses; application answers 416"),
    "novelsc.dat": ("3.3.3", "novel scheme (soap.beep) parses; application answers 416"),
    "unksm2.dat": ("3.3.4", "unknown schemes in To/From/Contact parse; a registrar refuses"),
    "bext01.dat": ("3.3.5", "unknown Require: application answers 420"),
    "invut.dat": ("3.3.6", "unknown Content-Type: application answers 415"),
    "regaut01.dat": ("3.3.7", "unknown auth scheme: the header is opaque to the parser"),
    "bcast.dat": ("3.3.10", "broadcast address in a response Via: transport layer ignores"),
    "zeromf.dat": ("3.3.11", "Max-Forwards 0: application answers 483 or handles OPTIONS"),
    "cparam01.dat": ("3.3.12", "bare addr-spec Contact: ;unknownparam is a header param"),
    "cparam02.dat": ("3.3.13", "<> Contact: ;unknownparam is a URI param"),
    "regescrt.dat": ("3.3.14", "escaped Route in a Contact URI inside <>"),
    "sdp01.dat": ("3.3.15", "Accept without SDP: application answers 415"),
    "inv2543.dat": ("3.4.1", "RFC 2543 style: no branch, no Content-Length (UDP), bare URIs"),
}

# file → (RFC 4475 section, status, reason fragment, decision and why)
INVALID: dict[str, tuple[str, int, str, str]] = {
    "badinv01.dat": ("3.1.2.1", 400, "Via", "empty Via parameters ;;,;,,"),
    "clerr.dat": ("3.1.2.2", 400, "Content-Length larger", "§18.3: body shorter than CL"),
    "ncl.dat": ("3.1.2.3", 400, "Content-Length", "negative Content-Length"),
    "scalar02.dat": ("3.1.2.4", 400, "CSeq", "CSeq over 2**31 (and Max-Forwards 300)"),
    "scalarlg.dat": ("3.1.2.5", 400, "CSeq", "response with huge CSeq: dropped by the shell"),
    "quotbal.dat": ("3.1.2.6", 400, "quoted", "unterminated quoted display name"),
    "ltgtruri.dat": ("3.1.2.7", 400, "URI", "<> around the Request-URI"),
    "lwsruri.dat": ("3.1.2.8", 400, "Request-Line", "LWS inside the Request-URI"),
    "lwsstart.dat": ("3.1.2.9", 400, "Request-Line", "several SP between start-line parts"),
    "trws.dat": ("3.1.2.10", 400, "Request-Line",
                 "trailing SP after SIP/2.0: RFC allows either; we refuse"),
    "escruri.dat": ("3.1.2.11", 400, "headers are not allowed",
                    "?headers in a Request-URI (§19.1.1 table 1)"),
    "regbadct.dat": ("3.1.2.13", 400, "must be in <>",
                     "Contact URI with ? but no <> (§20.10)"),
    "badaspec.dat": ("3.1.2.14", 400, "whitespace inside <>", "LAQUOT/RAQUOT take no LWS"),
    "baddn.dat": ("3.1.2.15", 400, "display name", "unquoted display name with a comma"),
    "badvers.dat": ("3.1.2.16", 505, "Version Not Supported", "SIP/7.0"),
    "mismatch01.dat": ("3.1.2.17", 400, "CSeq method", "CSeq INVITE on an OPTIONS"),
    "mismatch02.dat": ("3.1.2.18", 400, "CSeq method", "unknown method, CSeq INVITE"),
    "bigcode.dat": ("3.1.2.19", 400, "status code", "status 4294967301: dropped"),
    "insuf.dat": ("3.3.1", 400, "Missing", "no To, From, Call-ID or Max-Forwards"),
    "multi01.dat": ("3.3.8", 400, "Multiple", "two From, To, CSeq and Call-ID"),
    "mcl01.dat": ("3.3.9", 400, "Content-Length", "two different Content-Length values"),
}

# §3.1.2.12 baddate: the Date uses EST, not GMT. RFC 4475 lets an element ignore it; sipmask
# never reads Date (it does not cross legs), so the message parses.
LENIENT: dict[str, tuple[str, str]] = {
    "baddate.dat": ("3.1.2.12", "non-GMT Date is ignored: Date is never read"),
}


def test_the_table_covers_every_file_and_all_49_messages() -> None:
    valid = {p.name for p in (CORPUS / "valid").iterdir()}
    invalid = {p.name for p in (CORPUS / "invalid").iterdir()}
    assert valid == set(VALID)
    assert invalid == set(INVALID) | set(LENIENT)
    assert len(valid) + len(invalid) == 49


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_message_parses_and_keeps_its_bytes(name: str) -> None:
    data = _load("valid", name)
    msg = parse_message(data)
    out = msg.to_bytes()
    if name == "dblreq.dat":
        # §18.3: the INVITE after Content-Length: 0 is discarded, the REGISTER kept exactly.
        assert data.startswith(out) and out.endswith(b"Content-Length: 0\r\n\r\n")
        assert isinstance(msg, Request) and msg.method == "REGISTER"
    else:
        assert out == data


@pytest.mark.parametrize("name", sorted(VALID))
def test_a_header_change_keeps_every_other_header_text(name: str) -> None:
    data = _load("valid", name)
    msg = parse_message(data)
    untouched = [raw for key, _n, _v, raw in msg.headers.fields() if key != "max-forwards"]
    msg.headers.set("Max-Forwards", "42")
    out = msg.to_bytes()
    assert out != data
    for raw in untouched:
        assert raw is not None
        assert raw.encode("utf-8", "surrogateescape") + b"\r\n" in out
    assert out.endswith(b"\r\n\r\n" + msg.body)
    again = parse_message(out)
    assert again.headers.get("max-forwards") == "42"
    assert again.body == msg.body
    assert again.headers.keys() == msg.headers.keys()


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_message_is_refused(name: str) -> None:
    _section, status, fragment, _why = INVALID[name]
    with pytest.raises(ParseError) as err:
        parse_message(_load("invalid", name))
    assert err.value.status == status
    assert fragment in err.value.reason


@pytest.mark.parametrize("name", sorted(LENIENT))
def test_lenient_decisions_parse(name: str) -> None:
    data = _load("invalid", name)
    assert parse_message(data).to_bytes() == data


def test_wsinv_folding_lws_and_compact_forms() -> None:
    msg = parse_message(_load("valid", "wsinv.dat"))
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert msg.uri == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert msg.to.tag == "1918181833n"
    assert not msg.to.bracketed
    sender = msg.from_
    assert sender.display == '"J Rosenberg \\\\\\""'
    assert sender.display_name == 'J Rosenberg \\"'
    assert sender.tag == "98asjd8"
    assert msg.headers.get("max-forwards") == "0068"
    assert (msg.cseq.number, msg.cseq.method) == (9, "INVITE")
    vias = msg.vias
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.headers.get("subject") == ""          # `s :` compact, empty value
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("unknownheaderwithunusualvalue") == ";;,,;;,;"
    contact = NameAddr.parse(msg.headers.get("m") or "")
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == [("newparam", "newvalue"), ("secondparam", None), ("q", "0.33")]
    route = NameAddr.parse(msg.headers.get("route") or "")
    assert isinstance(route.uri, SipUri)
    assert route.uri.params == [("lr", None), ("unknownwith", "value"),
                                ("unknown-no-value", None)]
    assert msg.headers.count("content-length") == 1
    assert len(msg.body) == 150


def test_intmeth_token_characters_and_escaped_controls() -> None:
    msg = parse_message(_load("valid", "intmeth.dat"))
    assert isinstance(msg, Request)
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.method == method and msg.cseq.method == method
    ruri = msg.parsed_uri
    assert isinstance(ruri, SipUri)
    unusual = "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert ruri.user == unusual
    assert ruri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert ruri.host == "example.com"
    to = msg.to
    assert to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert isinstance(to.uri, SipUri) and to.uri.user == unusual
    sender = msg.from_
    assert sender.display == "token1~` token2'+_ token3*%!.-"
    assert sender.tag == "_token~1'+`*%!-."
    assert sender.params[0] == ("fromParam''~+*_!.-%", '"работающий"')
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    assert msg.headers.get("max-forwards") == "255"


def test_escapes_in_uris_are_kept_and_decoded_on_request() -> None:
    msg = parse_message(_load("valid", "esc01.dat"))
    assert isinstance(msg, Request)
    ruri = msg.parsed_uri
    assert isinstance(ruri, SipUri)
    assert ruri.user == "sips%3Auser%40example.com" and ruri.host == "example.net"
    assert ruri.user_unescaped == "sips:user@example.com"
    assert isinstance(msg.to.uri, SipUri) and msg.to.uri.user_unescaped == "user"
    assert isinstance(msg.from_.uri, SipUri)
    assert msg.from_.uri.user_unescaped == "I have spaces"
    assert msg.headers.get("c") == "application/sdp"
    contact = NameAddr.parse(msg.headers.get("contact") or "")
    assert isinstance(contact.uri, SipUri)
    assert contact.uri.params == [("%6C%72", None), ("n%61me", "v%61lue%25%34%31")]

    nulls = parse_message(_load("valid", "escnull.dat"))
    assert isinstance(nulls.to.uri, SipUri) and nulls.to.uri.user_unescaped == "null-\x00-null"
    assert nulls.headers.get_all("contact") == ["<sip:%00@host5.example.com>",
                                                "<sip:%00%00@host5.example.com>"]

    pct = parse_message(_load("valid", "esc02.dat"))
    assert isinstance(pct, Request) and pct.method == "RE%47IST%45R"
    assert pct.to.display_name == "%Z%45"
    # C%6Fntact is an unknown header, not a third Contact (no unescaping in names).
    assert pct.headers.count("contact") == 2 and pct.headers.count("c%6fntact") == 1


def test_user_part_semicolon_and_unknown_schemes() -> None:
    semi = parse_message(_load("valid", "semiuri.dat"))
    assert isinstance(semi, Request)
    ruri = semi.parsed_uri
    assert isinstance(ruri, SipUri)
    assert (ruri.user, ruri.host, ruri.params) == ("user;par=u%40example.net", "example.com", [])
    assert semi.headers.get_all("accept") == [
        "application/sdp", "application/pkcs7-mime", "multipart/mixed", "multipart/signed",
        "message/sip", "message/sipfrag"]

    for name, scheme in (("unkscm.dat", "nobodyKnowsThisScheme"), ("novelsc.dat", "soap.beep")):
        req = parse_message(_load("valid", name))
        assert isinstance(req, Request)
        assert isinstance(req.parsed_uri, AbsoluteUri) and req.parsed_uri.scheme == scheme

    reg = parse_message(_load("valid", "unksm2.dat"))
    assert str(reg.to.uri) == "isbn:2983792873" and isinstance(reg.to.uri, AbsoluteUri)
    assert isinstance(reg.from_.uri, AbsoluteUri) and reg.from_.tag == "3234233"


def test_longreq_mixed_case_and_compact_vias_and_transports() -> None:
    msg = parse_message(_load("valid", "longreq.dat"))
    vias = msg.vias
    assert len(vias) == 34
    assert vias[0].host == "sip33.example.com" and vias[-1].received == "192.0.2.5"
    transports = parse_message(_load("valid", "transports.dat"))
    assert [v.transport for v in transports.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert transports.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def test_bodies_reasons_and_contacts() -> None:
    mpart = parse_message(_load("valid", "mpart01.dat"))
    assert len(mpart.body) == 553 and b"\x00" in mpart.body
    assert mpart.content_type == "multipart/mixed"

    unreason = parse_message(_load("valid", "unreason.dat"))
    assert isinstance(unreason, Response) and unreason.status == 200
    assert unreason.reason.startswith("= 2**3 * 5**2 но сто")
    noreason = parse_message(_load("valid", "noreason.dat"))
    assert isinstance(noreason, Response) and (noreason.status, noreason.reason) == (100, "")

    bare = NameAddr.parse(parse_message(_load("valid", "cparam01.dat")).headers.get("m") or "")
    assert not bare.bracketed and bare.params == [("unknownparam", None)]
    assert isinstance(bare.uri, SipUri) and bare.uri.params == []
    angle = NameAddr.parse(parse_message(_load("valid", "cparam02.dat")).headers.get("m") or "")
    assert angle.params == [] and isinstance(angle.uri, SipUri)
    assert angle.uri.params == [("unknownparam", None)]

    escrt = NameAddr.parse(parse_message(_load("valid", "regescrt.dat")).headers.get("m") or "")
    assert isinstance(escrt.uri, SipUri)
    assert escrt.uri.header_pairs == [("Route", "<sip:sip.example.com>")]


def test_rfc2543_style_invite() -> None:
    msg = parse_message(_load("valid", "inv2543.dat"))
    assert "content-length" not in msg.headers
    assert len(msg.body) == 105          # UDP without Content-Length: the rest is the body
    top = msg.top_via
    assert top.branch is None and top.port is None
    # §20.10: without <>, ;user=phone belongs to the To header, not to the URI.
    assert msg.to.params == [("user", "phone")]
    assert isinstance(msg.to.uri, SipUri) and msg.to.uri.param("user") is None
    assert isinstance(msg.from_.uri, SipUri) and msg.from_.uri.param("user") == "phone"
    # A host name as sent-by: the answer goes to the source IP (no DNS), default port.
    assert Via.parse("SIP/2.0/UDP iftgw.example.com").response_target(("192.0.2.9", 5999)) == (
        "192.0.2.9", 5060)


# §3.3 messages whose answer is the application's: sipmask's engine answers them as RFC 3261
# §8.2.2 asks, with one check for OPTIONS and INVITE outside a dialog (scheme first, §8.2.2.1,
# then Require, §8.2.2.3). Run through the engine in test_engine.py's in-memory harness.
APPLICATION: dict[str, tuple[int, str | None]] = {
    "bext01.dat": (420, "nothingSupportsThis, nothingSupportsThisEither"),
    "unkscm.dat": (416, None),
    "novelsc.dat": (416, None),
}


def _engine_answers(data: bytes) -> list[Response]:
    answers: list[Response] = []

    def flow(h: Harness) -> None:
        h.deliver(data, A_ADDR)
        answers.extend(m for m in h.take() if isinstance(m, Response) and m.status > 100)
    run(flow)
    return answers


@pytest.mark.parametrize("name", sorted(APPLICATION))
def test_options_outside_a_dialog_is_checked_before_its_200(name: str) -> None:
    status, unsupported = APPLICATION[name]
    [answer] = _engine_answers(_load("valid", name))
    assert answer.status == status
    assert answer.headers.get("unsupported") == unsupported


@pytest.mark.parametrize("name", ["unkscm.dat", "novelsc.dat"])
def test_invite_to_an_unknown_scheme_is_416_not_404(name: str) -> None:
    options = _load("valid", name)
    invite = (options.replace(b"OPTIONS ", b"INVITE ", 1).replace(b" OPTIONS\r\n", b" INVITE\r\n")
              .replace(b"Via: SIP/2.0/TCP host9.example.com", b"Via: SIP/2.0/UDP 192.0.2.10"))
    [answer] = _engine_answers(invite)
    assert answer.status == 416


def test_zero_max_forwards_options_is_answered_200() -> None:
    """§3.3.11: OPTIONS with Max-Forwards 0 addressed to us is answered, not 483."""
    [answer] = _engine_answers(_load("valid", "zeromf.dat"))
    assert answer.status == 200
