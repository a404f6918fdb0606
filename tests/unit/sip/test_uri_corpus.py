"""The URI, name-addr and Via parsers on a corpus of real and odd texts.

The corpus: every From/To/Contact/Route/Via value and Request-URI of the RFC 4475 messages
and the trunk capture, hand-picked odd shapes (tel:, user=phone, IPv6, escapes, quoted and
flag parameters, LWS, controls), seeded one-character mutations of all of those, and
generated texts. For each: only ParseError ever leaves a parser; what parses prints back to
a text that parses to the same value; every accessor the call path reads works; and a URI
is read alike wherever it stands (alone, inside <>, bare in a header, as a Via's sent-by):
one grammar, one answer.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipmask.errors import ParseError
from sipmask.sip.headers import split_commas
from sipmask.sip.uri import (
    NameAddr,
    SipUri,
    Via,
    get_param,
    match_name_addr,
    parse_uri,
    set_param,
    written_uri,
)

CORPUS = Path(__file__).resolve().parents[2] / "corpus"


def _corpus_values() -> list[str]:
    """Header values (comma-split where a list is allowed) and Request-URIs of the corpus."""
    wanted = {"f", "from", "t", "to", "m", "contact", "v", "via", "route", "record-route"}
    out: list[str] = []
    for path in sorted(CORPUS.glob("rfc4475/*/*.dat")) + sorted(CORPUS.glob("trunk/*.sip")):
        head = path.read_bytes().split(b"\r\n\r\n", 1)[0].decode("utf-8", "surrogateescape")
        lines = re.split(r"\r?\n", head)
        parts = lines[0].split(" ")
        if len(parts) >= 3 and not parts[0].startswith("SIP/"):
            out.append(parts[1])
        unfolded: list[str] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and unfolded:
                unfolded[-1] += " " + line.strip()
            else:
                unfolded.append(line)
        for line in unfolded:
            name, colon, value = line.partition(":")
            if colon and name.strip().lower() in wanted:
                out.append(value.strip())
                out.extend(split_commas(value))
    return out


HAND_PICKED = [
    # test_uri's round trips
    "sip:13800000001@10.0.0.1", "sips:13800000001@example.com:5061;transport=tls",
    "SIP:Alice@Example.COM;Transport=UDP", "sip:+8613800000001@10.1.2.3:5060;user=phone",
    "sip:+8613800000001;npdi;rn=+8613900000002@10.1.2.3;user=phone",
    "sip:alice:secret@example.com", "sip:alice:@example.com", "sip:%61lice@example.com",
    "sip:example.com", "sip:[2001:db8::10]",
    "sip:13800000001@[2001:db8::10]:5070;maddr=[2001:db8::1]",
    "sip:alice@example.com;lr;ttl=1", "sip:alice@example.com?subject=project%20x&priority=urgent",
    "sip:*21#@10.0.0.1", "tel:+86-138-0000-0001", "tel:+8613800000001;npdi;rn=+8613900000002",
    "tel:7042;phone-context=example.com", "urn:service:sos", "mailto:alice@example.com",
    # name-addr shapes
    '"13800000001" <sip:+8613800000001@10.1.2.3:5060;user=phone>;tag=as6f1c2b3a',
    "<sip:700100000000001@10.20.30.40:5060;user=phone>",
    "<sip:+8613800000001@10.1.2.3:5060;transport=udp>",
    '"张三 \\"Boss\\" \\\\ x" <sip:13800000001@10.0.0.1>;tag=abc', '"a <b>, c" <sip:x@y>',
    "Bob Smith <sip:b@h>", "caller<sip:caller@example.com>;tag=323", "张三 <sip:a@b>",
    "\xa0Bob <sip:a@b>", "Bob\xa0 <sip:a@b>", " <sip:a@b>", "<sip:a@b> ", "<sip:a@b>;tag=1 ",
    "sip:13800000001@10.0.0.1;user=phone;tag=x1", "<sip:13800000001@10.0.0.1;user=phone>;tag=x1",
    "<sip:b@h>", "<sip:b@h>;tag=old", "<tel:+8613800000001>;tag=t", "tel:+8613800000001;tag=t",
    "<sip:a@b>;tagx=1;tag=2", "<sip:a@b>;tag;tag=1", "<sip:a@b>;tag=1;tag=2",
    "<sip:a@b>;ta;tag=3", "SIP/2.0/UDP h;branchx=1;branch=z9hG4bK2", "SIP/2.0/UDP h;rport;branch=z",
    "<sip:a@b;users=x;user=phone>", "<sip:a@b;user;user=phone>",
    "<sip:a@b>;TAG=X;tag=y", "<sip:a@b>;tag", "<sip:a@b>;tag=", "<sip:a@b>;;tag=1", "<sip:a@b>;",
    "<sip:a@b>;tag = 1", "<sip:a@b> ;tag=1", "<sip:a@b>;p=\"q;r\"", "<sip:a@b>;p=\"unterminated",
    "<sip:a@b>;p=a<b", "<sip:a@b>;+sip.instance=\"<urn:uuid:1>\"", "<sip:a@b>;expires=0;q=0.5",
    "<sip:a@b;lr>", "<sip:a@b;lr=>", "<sip:a@b;=x>", "<sip:a@b;x@y=1>", "<sip:host;x=a@b>",
    "<sip:a;b=c@h>", "<sip:a?b@h>", "<sip:a@h?x=y>", "<sip:a:pw@h>", "<sip:@h>", "<sip:a@>",
    "<sip:a@h:>", "<sip:a@h:0>", "<sip:a@h:65535>", "<sip:a@h:65536>", "<sip:a@h:99999>",
    "<sip:a@h:123456>", "<sip:a@[::1]:5060>", "<sip:a@[::1>", "<sip:a@::1>", "<sip:a@h_1.x>",
    "<sips:a@h>", "<SIPS:a@h>", "<sIp:a@h>", "< sip:a@b>", "<sip:a@b >", "<>", "<sip:a@b",
    '"Bob <sip:a@b>', '"Bob"<sip:a@b>', '"Bob"  \t<sip:a@b>', '"Bob" sip:a@b', '"" <sip:a@b>',
    "Bob, Smith <sip:a@b>", "Bob\t\tSmith <sip:a@b>", "*", "sip:a@b,c", "sip:a@b?x",
    "sip:a@b;tag=<x>", "sip:a@b;p=\"1\"", "sip:a@b ;tag=1", "sip:%2B86%20138@example.com",
    "sip:null-%00-null@h", "sip:user;par=u%40example.net@example.com", "sip:a@b;lr;tag=1",
    "<sip:a@b>junk", "<sip:a@b>,<sip:c@d>", "<urn:service:sos>", "<mailto:a@b>",
    "Sip:a@b", "sip:", "sip:a@", "sip:@b", ":a@b", "sip:a@b:5060:5060", "sip:a b@c",
    "sip:a@b\x00", "<sip:a@b>;x=\x00", "<sip:a@b>;x=é", "<sip:é@b>", "<sip:a@b;é=1>",
    # Via shapes
    "SIP/2.0/UDP 10.1.2.3:5060;branch=z9hG4bK-524287-1---5c3a8e6f0c1d2b3a;rport",
    "SIP/2.0/UDP 10.1.2.3;branch=z9hG4bK1;rport=5062;received=10.9.9.9",
    "SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bKx;maddr=[2001:db8::2]",
    "SIP/2.0/TCP host.example.com;branch=z9hG4bKx;ttl=1", "sip/2.0/udp h;branch=z9hG4bKx",
    "SIP/3.0/UDP h;branch=z9hG4bKx", "SIP / 2.0 / UDP h;branch=z9hG4bKx",
    "SIP/2.0/UDP  h;branch=z9hG4bKx", "SIP/2.0/UDP\th;branch=z9hG4bKx",
    "SIP/2.0/UDP h : 5060;branch=z9hG4bKx", "SIP/2.0/UDP h;branch=z9hG4bKx ; rport",
    "SIP/2.0/UDP h;branch=\"z9hG4bK;x\"", "SIP/2.0/UDP h:0;branch=z9hG4bKx",
    "SIP/2.0/UDP h:70000;branch=z9hG4bKx", "SIP/2.0/UDP h;;branch=z9hG4bKx",
    "SIP/2.0/UDP h;branch", "SIP/2.0/UDP h;branch=", "SIP/2.0/UDP h;=x", "SIP/2.0/UDP",
    "SIP/2.0 h;branch=x", " SIP/2.0/UDP h", "SIP/2.0/UDP h ", "SIP/2.0/UDP h;x=<a>",
    "SIP/2.0/UDP [::1;branch=x", "SIP/2.0/UDP h;received=1.2.3.4;rport=1",
    # parameters edited in their text: duplicates, case, flags, quoted look-alikes
    "SIP/2.0/UDP h;rport;branch=z;rport", "SIP/2.0/UDP h;RPort;received=1.1.1.1;Received=2",
    "SIP/2.0/UDP h;x=\"a;rport;received=b\";rport", "SIP/2.0/UDP h;rportx;rport=",
    "SIP/2.0/UDP 10.0.0.9:5070;branch=z9;rport", "SIP/2.0/UDP 10.0.0.9;rport=5070;received=1",
    "<sip:a@b>;x=\";tag=no\";tag=yes", "<sip:a@b>;x=\";tag=no\"", "<sip:a@b>;Tag=A;TAG=b",
    "<sip:a@b;tag=u>", "<sip:a@b;tag=u>;tag=h", "<sip:a@b>;tagx=1;xtag=2",
    # a URI read off its text, or not: leading zeros, an empty `?`, headers, other schemes
    "<sip:a@h:05060>", "sip:a@h:0005", "<sip:a@h?>", "<sip:a@h;lr?x=1&y=2>", "<SIP:A@H:5060>",
    "<tel:+86-138;phone-context=x;a=>", "<urn:service:sos>", "sip:a:@h:5060;tag=1",
]

BASE = HAND_PICKED + _corpus_values()
MUTATION_CHARS = ";=@:<>\"' \t,?\\%[]/.a0\x00\x0cé"


def _mutations(texts: list[str], per_text: int, seed: int) -> list[str]:
    """Seeded one-character deletions, insertions and replacements of each text."""
    rng = random.Random(seed)
    out: list[str] = []
    for text in texts:
        for _ in range(per_text):
            i = rng.randrange(len(text) + 1)
            kind = rng.randrange(3)
            c = rng.choice(MUTATION_CHARS)
            if kind == 0 and i < len(text):
                out.append(text[:i] + text[i + 1:])
            elif kind == 1:
                out.append(text[:i] + c + text[i:])
            else:
                out.append(text[:i] + c + text[i + 1:])
    return out


CORPUS_TEXTS = list(dict.fromkeys(BASE + _mutations(BASE, 12, 4475)))


PARSERS: dict[str, Callable[[str], object]] = {
    "parse_uri": parse_uri, "SipUri": SipUri.parse, "NameAddr": NameAddr.parse,
    "Via": Via.parse}


def _reads(value: object) -> list[object]:
    """The accessors the call path reads, each of which must work on a parsed value."""
    seen: list[object] = [repr(value), str(value)]
    if isinstance(value, SipUri):
        seen += [value.params, value.user_unescaped, value.phone_number, value.header_pairs,
                 value.param("user"), value.param("transport")]
        try:
            seen.append(value.user_params)
        except ParseError as e:                   # the user part's own parameters
            seen.append(e.reason)
    if isinstance(value, NameAddr):
        seen += [value.tag, value.display_name, value.params, str(value.uri),
                 str(value.with_tag("t1")), value.with_tag("t-2").tag,
                 str(value.without_tag()), value.without_tag().tag]
    if isinstance(value, Via):
        stamped = value.stamped(("10.0.0.9", 5070))
        seen += [value.branch, value.rport, value.received, value.default_port,
                 str(stamped), stamped.stamped(("10.0.0.9", 5070)) is stamped,
                 str(value.with_params(rport="1")), value.response_target(("10.0.0.9", 5070))]
    return seen


def _check(text: str) -> None:
    for name, parse in PARSERS.items():
        try:
            value = parse(text)
        except ParseError:
            continue
        _reads(value)
        # What parses prints to a text that parses to the same value: str() drops only the
        # LWS of header parameters and a port's leading zeros, and puts a bare addr-spec
        # that is not a plain sip: URI in <>.
        again = parse(str(value))
        if isinstance(value, NameAddr) and isinstance(again, NameAddr):
            again.bracketed = value.bracketed
        assert again == value, (name, text)
        assert str(again) == str(value), (name, text)
    _check_one_grammar(text)


def _outcome(parse: Callable[[str], object], text: str) -> object:
    try:
        return parse(text)
    except ParseError:
        return "refused"


def _check_one_grammar(text: str) -> None:
    """A URI alone, inside <>, bare in a header and as a Via's sent-by: read alike."""
    if any(c in text for c in '<>" \t'):
        return
    alone = _outcome(parse_uri, text)
    bracketed = _outcome(NameAddr.parse, f"<{text}>")
    assert (alone == "refused") == (bracketed == "refused"), text
    if isinstance(bracketed, NameAddr):
        assert bracketed.uri == alone and bracketed.params == [], text
    if not any(c in text for c in ",;?"):
        bare = _outcome(NameAddr.parse, text)
        assert (alone == "refused") == (bare == "refused"), text
        if isinstance(bare, NameAddr):
            assert bare.uri == alone, text
    hostport = text[4:] if text.startswith("sip:") else None
    if hostport is not None and not any(c in hostport for c in ",;?@"):
        via = _outcome(Via.parse, f"SIP/2.0/UDP {hostport}")
        assert (alone == "refused") == (via == "refused"), text
        if isinstance(via, Via) and isinstance(alone, SipUri):
            assert (via.host, via.port) == (alone.host, alone.port), text


def test_the_corpus_is_big_and_both_accepted_and_refused() -> None:
    assert len(CORPUS_TEXTS) > 3000
    accepted = 0
    for text in CORPUS_TEXTS:
        accepted += any(_outcome(parse, text) != "refused" for parse in PARSERS.values())
    assert 1000 < accepted < len(CORPUS_TEXTS) - 1000


@pytest.mark.parametrize("chunk", range(8))
def test_the_parsers_on_the_corpus(chunk: int) -> None:
    for text in CORPUS_TEXTS[chunk::8]:
        _check(text)


FRAGMENTS = ["sip:", "sips:", "SIP:", "tel:", "alice", "+8613800000001", "%2B", "@", "@@",
             "example.com", "10.0.0.1", "[::1]", "[2001:db8::1", ":5060", ":0", ":65536", ":",
             ":60000", ";tag=abc", ";TAG=x", ";lr", ";user=phone", ";rport",
             ";branch=z9hG4bK1", ";", "=", "<", ">", '"Bob"', '"B\\"b"', "Bob ", "张", " ",
             "\t", "?h=v", "?", ",", '"', "\\", "SIP/2.0/UDP ", "SIP/2.0/TCP", "/", "\x00",
             "\xa0", "\x0c", "*"]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=10).map("".join))
def test_the_parsers_on_generated_texts(text: str) -> None:
    _check(text)


def test_values_compare_by_fields_and_stay_unhashable() -> None:
    assert NameAddr.parse("<sip:a@b>;tag=1") == NameAddr(SipUri("sip", "a", "b"), None,
                                                          [("tag", "1")])
    assert Via.parse("SIP/2.0/UDP h;branch=z9hG4bKx") == Via("UDP", "h", None,
                                                              [("branch", "z9hG4bKx")])
    assert SipUri.parse("sip:a@b") != NameAddr.parse("<sip:a@b>")
    with pytest.raises(TypeError):
        hash(SipUri.parse("sip:a@b"))


def test_a_changed_value_prints_its_change() -> None:
    addr = NameAddr.parse("<sip:a@b;user=phone>;tag=1;x")
    addr.params = [("tag", "2")]
    assert str(addr) == "<sip:a@b;user=phone>;tag=2"
    assert isinstance(addr.uri, SipUri)
    addr.uri.params = []
    assert str(addr) == "<sip:a@b>;tag=2"
    bare = NameAddr.parse("sip:a@b:5060;tag=1")
    bare.bracketed = True
    assert str(bare) == "<sip:a@b:5060>;tag=1"


# -- parameters edited in their text: the same as editing the list ---------------------------

def _reference_stamped(via: Via, source: tuple[str, int]) -> str:
    """Via.stamped as the parameter list edits wrote it (set_param)."""
    params = via.params
    if get_param(params, "rport") == "":
        params = set_param(set_param(params, "rport", str(source[1])), "received", source[0])
    elif via.host.strip("[]") != source[0]:
        params = set_param(params, "received", source[0])
    return str(Via(via.transport, via.host, via.port, params, via.protocol))


def _check_text_edits(text: str) -> None:
    for parse in (NameAddr.parse, Via.parse, SipUri.parse):
        try:
            value = parse(text)
        except ParseError:
            continue
        for name in ("tag", "branch", "rport", "received", "user", "lr", "x", "tagx"):
            assert value.param(name) == get_param(value.params, name), (text, name)
        if isinstance(value, NameAddr):
            listed = NameAddr(value.uri, value.display,
                              set_param(value.params, "tag", "t1"), value.bracketed)
            tagged = value.with_tag("t1")
            assert (str(tagged), tagged.tag) == (str(listed), listed.tag), text
            bare = NameAddr(value.uri, value.display,
                            [(k, v) for k, v in value.params if k.lower() != "tag"],
                            value.bracketed)
            untagged = value.without_tag()
            assert (str(untagged), untagged.tag) == (str(bare), bare.tag), text
        if isinstance(value, Via):
            for source in (("10.0.0.9", 5070), (value.host.strip("[]"), 5060)):
                assert str(value.stamped(source)) == _reference_stamped(value, source), text


@pytest.mark.parametrize("chunk", range(4))
def test_text_edits_of_parameters_are_the_list_edits_on_the_corpus(chunk: int) -> None:
    # A lookup by name, a tag set or removed and a Via stamped work on the parameters'
    # text (a search where no value is quoted); the list of parameters is the oracle.
    for text in CORPUS_TEXTS[chunk::4]:
        _check_text_edits(text)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=10).map("".join))
def test_text_edits_of_parameters_are_the_list_edits(text: str) -> None:
    _check_text_edits(text)


def _check_written_uri(text: str) -> None:
    try:
        found = match_name_addr(text)
    except ParseError:
        return
    written = written_uri(found)
    assert written is None or written == str(NameAddr.of_match(found).uri), text


def test_a_uri_read_off_its_text_is_what_str_writes_on_the_corpus() -> None:
    # Message.contact_uri (a dialog's remote target) takes the URI from the matched text
    # when it says what str() of the value would, and from the value otherwise.
    for text in CORPUS_TEXTS:
        _check_written_uri(text)
    for text, written in (("<sip:a@h:5060;lr>", "sip:a@h:5060;lr"), ("<sip:a@h:05060>", None),
                          ("<sip:a@h?>", None), ("sip:a@h:5;tag=1", "sip:a@h:5")):
        assert written_uri(match_name_addr(text)) == written


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=10).map("".join))
def test_a_uri_read_off_its_text_is_what_str_writes(text: str) -> None:
    _check_written_uri(text)
