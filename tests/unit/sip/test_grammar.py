"""One grammar (sipmask/sip/grammar.py) read alike in every place a rule applies.

A port, a host, the whitespace between two pieces: each has one definition, so a Request-
URI, From, To, Contact, Route and Via accept and refuse the same texts, the TCP framer and
the parser read Content-Length alike, and what parsing decides depends on the bytes given,
never on the messages parsed before.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from sipmask.errors import ParseError
from sipmask.sip import headers, message, parser, uri
from sipmask.sip.parser import StreamFramer, parse_message
from sipmask.sip.uri import NameAddr, SipUri, Via, parse_uri

SIP = Path(__file__).resolve().parents[3] / "sipmask" / "sip"
CORPUS = Path(__file__).resolve().parents[2] / "corpus"


def request(*, ruri: str = "sip:700100000000001@127.0.0.1",
            via: str = "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1",
            from_: str = '"A" <sip:13800000001@127.0.0.1>;tag=f1',
            to: str = "<sip:700100000000001@127.0.0.1>", cseq: str = "7 OPTIONS",
            extra: str = "Content-Length: 0\r\n") -> bytes:
    return (f"OPTIONS {ruri} SIP/2.0\r\nVia: {via}\r\nFrom: {from_}\r\nTo: {to}\r\n"
            f"Call-ID: g1@127.0.0.1\r\nCSeq: {cseq}\r\nMax-Forwards: 70\r\n{extra}"
            "\r\n").encode()


def outcome(data: bytes) -> str:
    try:
        parse_message(data)
    except ParseError as refused:
        return f"refused: {refused.reason}"
    return "accepted"


# -- ports: 1-65535 in every place ---------------------------------------------------------

PLACES = {
    "Request-URI": lambda port: request(ruri=f"sip:x@h.example:{port}"),
    "From": lambda port: request(from_=f"<sip:a@h.example:{port}>;tag=1"),
    "To": lambda port: request(to=f"sip:x@h.example:{port}"),
    "Contact": lambda port: request(extra=f"Contact: <sip:a@h.example:{port}>\r\nl: 0\r\n"),
    "Via": lambda port: request(via=f"SIP/2.0/UDP h.example:{port};branch=z9hG4bK-1"),
}


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("port", ["1", "5060", "59999", "60000", "65535", "05060", "000001"])
def test_every_place_accepts_the_same_ports(place: str, port: str) -> None:
    assert outcome(PLACES[place](port)) == "accepted"


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("port", ["0", "00", "65536", "99999", "100000", "0065536"])
def test_every_place_refuses_the_same_ports(place: str, port: str) -> None:
    assert "invalid port" in outcome(PLACES[place](port))


def test_the_port_rule_is_the_tcp_udp_range() -> None:
    for port in (*range(0, 70000, 7), 65535, 65536):
        via, sip = f"SIP/2.0/UDP h:{port}", f"sip:h:{port}"
        if 0 < port < 65536:
            assert Via.parse(via).port == port == SipUri.parse(sip).port
            continue
        for parse, text in ((Via.parse, via), (SipUri.parse, sip)):
            with pytest.raises(ParseError, match="invalid port"):
                parse(text)


# -- whitespace: SP and HTAB, nothing else, in every place ---------------------------------

# Where the grammar allows LWS between two pieces (§25.1 LWS, SWS, SEMI, LAQUOT, RAQUOT),
# with `{}` for the whitespace.
SEPARATED = {
    "Via sent-protocol LWS sent-by": lambda ws: request(
        via=f"SIP/2.0/UDP{ws}127.0.0.1:5070;branch=z9hG4bK-1"),
    "Via sent-by SEMI": lambda ws: request(
        via=f"SIP/2.0/UDP 127.0.0.1:5070{ws};branch=z9hG4bK-1"),
    "Via SEMI param": lambda ws: request(via=f"SIP/2.0/UDP 127.0.0.1:5070;{ws}branch=z9hG4bK-1"),
    "From display LAQUOT": lambda ws: request(from_=f'"A"{ws}<sip:a@127.0.0.1>;tag=f1'),
    "From RAQUOT SEMI": lambda ws: request(from_=f"<sip:a@127.0.0.1>{ws};tag=f1"),
    "From SEMI param": lambda ws: request(from_=f"<sip:a@127.0.0.1>;{ws}tag=f1"),
    "To EQUAL value": lambda ws: request(to=f"<sip:b@127.0.0.1>;tag={ws}t1"),
    "CSeq number LWS method": lambda ws: request(cseq=f"7{ws}OPTIONS"),
}


@pytest.mark.parametrize("place", sorted(SEPARATED))
@pytest.mark.parametrize("ws", [" ", "\t", " \t "])
def test_sp_and_htab_separate_everywhere(place: str, ws: str) -> None:
    assert outcome(SEPARATED[place](ws)) == "accepted"


@pytest.mark.parametrize("place", sorted(SEPARATED))
@pytest.mark.parametrize("ws", ["\x0b", "\x0c", "\x1c"])
def test_no_other_character_is_whitespace_anywhere(place: str, ws: str) -> None:
    # RFC 3261 §25.1 (RFC 5234 WSP): LWS is SP / HTAB. A form feed or another control used
    # as a separator is refused in every place alike, never read as a space in one header
    # and refused in the next.
    assert outcome(SEPARATED[place](ws)).startswith("refused")


@pytest.mark.parametrize("place", [place for place in sorted(SEPARATED)
                                   if not place.endswith((" param", " value"))])
@pytest.mark.parametrize("ws", ["\x85", "\xa0", "\u3000"])
def test_unicode_spaces_do_not_separate_either(place: str, ws: str) -> None:
    # Where only whitespace may stand (not at the start of a parameter's name or value,
    # where the grammar's leniency takes UTF-8 as data).
    assert outcome(SEPARATED[place](ws)).startswith("refused")


# -- what the ABNF leaves out of a value is refused, not trimmed or read past -------------

# Each of these was accepted by the parser the grammar replaced (its `strip()` took any
# control at a value's ends for whitespace, and its parameter splitting took any character
# but ';' into a value). RFC 3261 §25.1 refuses each: a token (a tag, a branch, a
# parameter's name) holds no control, SP, `<`, `>` or `,`; gen-value = token / host /
# quoted-string; a URI holds no control (§19.1.1, RFC 3986 §2); generic-param's name is
# 1*token, so ";" ends in a parameter.
OUTSIDE_THE_ABNF = {
    "NUL in a From tag": request(from_="<sip:a@127.0.0.1>;tag=f\x001"),
    "FF in a From tag": request(from_="<sip:a@127.0.0.1>;tag=f\x0c1"),
    "HTAB in a From tag": request(from_="<sip:a@127.0.0.1>;tag=f\t1"),
    "HTAB in a bare From's tag": request(from_="sip:a@127.0.0.1;tag=f\t1"),
    "comma in a From tag": request(from_="<sip:a@127.0.0.1>;tag=f,1"),
    "comma in a bare From's tag": request(from_="sip:a@127.0.0.1;tag=f,1"),
    "NUL in a branch": request(via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK\x001"),
    "< in a branch": request(via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK<1"),
    "> in a branch": request(via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK>1"),
    "SP inside a Contact's q": request(extra="Contact: <sip:a@127.0.0.1>;q=0. 5\r\nl: 0\r\n"),
    "NUL in a Contact's user": request(extra="Contact: <sip:a\x00@127.0.0.1>\r\nl: 0\r\n"),
    "NUL in the Request-URI's user": request(ruri="sip:7001\x0000@127.0.0.1"),
    "NUL ending the Request-URI": request(ruri="sip:700100000000001@127.0.0.1;x=\x00"),
    # Refused in <> by both parsers, taken bare by the old one: one rule, one answer.
    "an empty parameter after a bare To": request(to="sip:700100000000001@127.0.0.1;"),
}


@pytest.mark.parametrize("case", sorted(OUTSIDE_THE_ABNF))
def test_what_the_abnf_leaves_out_of_a_value_is_refused(case: str) -> None:
    assert outcome(OUTSIDE_THE_ABNF[case]).startswith("refused: Bad ")


@pytest.mark.parametrize(("parse", "text"), [
    # A Via header's comma-separated list is split before each via-parm is read (§7.3.1);
    # one via-parm holding a comma is not one Via with the rest in its last parameter.
    (Via.parse, "SIP/2.0/TCP a.example;branch=z9hG4bK1, SIP/2.0/UDP b.example;branch=z9hG4bK2"),
    # A bare URI ends where its characters do: no trailing HTAB, no leading FF.
    (parse_uri, "tel:7042;phone-context=example.com\t"),
    (NameAddr.parse, "\x0cmailto:alice@example.com"),
    # SEMI is SWS ";" SWS in header parameters, not inside a URI's own parameters.
    (parse_uri, "tel:+8613800000001; tag=t"),
])
def test_a_value_with_more_than_its_rule_is_refused(parse: Callable[[str], object],
                                                     text: str) -> None:
    with pytest.raises(ParseError):
        parse(text)


def test_nbsp_is_part_of_a_display_name_not_whitespace() -> None:
    # LWS is SP / HTAB only; the display name's leniency takes UTF-8, so a leading NBSP is
    # the name's first character, kept as sent (the old parser dropped it).
    addr = NameAddr.parse("\xa0Bob <sip:a@b>")
    assert addr.display_name == "\xa0Bob" and str(addr) == "\xa0Bob <sip:a@b>"


# -- the framer reads Content-Length as the parser does -----------------------------------

@pytest.mark.parametrize("line", [
    "Content-Length: 4", "l: 4", "Content-Length:4", "Content-Length  :  4",
    "Content-Length:\r\n 4", "Content-Length: \r\n\t4", "CONTENT-LENGTH: 4",
    "Content-Length: 4\r\nl: 4", "Content-Length: 4\r\nl: 5", "Content-Length: 0004",
    "Content-Length: x", "Content-Length: -4", "Content-Length: 4 4", "X-Length: 4",
])
def test_the_framer_and_the_parser_agree_on_content_length(line: str) -> None:
    data = request(extra=line + "\r\n") + b"abcd"
    try:
        framed: object = StreamFramer().feed(data)
    except ParseError as refused:
        framed = refused.reason
    try:
        parsed: object = [parse_message(data, stream=True).to_bytes()]
    except ParseError as refused:
        parsed = refused.reason
    assert framed == parsed


# -- parsing depends on the bytes only -----------------------------------------------------

def _module_state(module: ModuleType) -> dict[str, int]:
    """The sizes of a module's containers (its tables, caches)."""
    return {name: len(value) for name, value in vars(module).items()
            if isinstance(value, dict | list | set | bytearray)}


def test_parsing_leaves_nothing_behind_in_module_state() -> None:
    modules = (headers, message, parser, uri)
    before = [_module_state(m) for m in modules]
    seeds = sorted(CORPUS.rglob("*.dat")) + sorted(CORPUS.rglob("*.sip"))
    for i in range(3):
        for path in seeds:
            data = path.read_bytes().replace(b"Call-ID: ", b"Call-ID: %d" % i, 1)
            try:
                msg = parse_message(data)
            except ParseError:
                continue
            _ = msg.from_, msg.to, msg.vias, msg.cseq, msg.headers.get(f"X-Name-{i}")
            for contact in msg.headers.get_all("contact"):
                if contact != "*":
                    NameAddr.parse(contact)
    assert [_module_state(m) for m in modules] == before


def test_no_object_is_built_behind_init() -> None:
    # DESIGN.md rule 14: values are made by their constructors (or classmethods that call
    # them), so the invariants __init__ sets hold for every object.
    for path in sorted(SIP.glob("*.py")):
        assert "__new__" not in path.read_text(), path.name


# -- one parameter by name: the first one, as `params` lists them -----------------------

@pytest.mark.parametrize("text", [
    ";tag=a1", ";x=1;tag=a1;tag=b2", ';x=";tag=no";tag=a1', ";TAG=a1", ";Tag", ";tag=",
    ";tagx=1;tag=a1", ";tagx=1", ';q="a;b";lr', ";lr;tag", "", ";x=\"\\\";tag=no\";tag=ok",
])
def test_a_parameter_read_by_name_is_the_first_params_lists(text: str) -> None:
    addr = NameAddr.parse(f"<sip:a@h>{text}")
    listed = [v for k, v in addr.params if k.lower() == "tag"]
    assert addr.tag == (("" if listed[0] is None else listed[0]) if listed else None)
    unquoted = text.replace('"', "").replace("\\", "")
    uri = SipUri.parse(f"sip:a@h{unquoted}")
    listed = [v for k, v in uri.params if k.lower() == "tag"]
    assert uri.param("tag") == (("" if listed[0] is None else listed[0]) if listed else None)
    via = Via.parse(f"SIP/2.0/UDP h{text.replace('tag', 'branch')}")
    listed = [v for k, v in via.params if k.lower() == "branch"]
    assert via.branch == (("" if listed[0] is None else listed[0]) if listed else None)
    assert via.param("x") == next((("" if v is None else v) for k, v in via.params
                                   if k.lower() == "x"), None)


def test_a_tag_read_is_forgotten_when_the_parameters_change() -> None:
    addr = NameAddr.parse("<sip:a@h>;tag=t1;x")
    assert addr.tag == "t1" and addr.tag == "t1"
    addr.params = [("x", None), ("TAG", "t2")]
    assert addr.tag == "t2" and str(addr) == "<sip:a@h>;x;TAG=t2"
    addr.params = []
    assert addr.tag is None
