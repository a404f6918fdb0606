"""The fast patterns in sipmask/sip/uri.py against the full parsers they stand in front of.

A fast pattern may only accept a subset of what the full parser accepts and must build the
same value: for every text below, `parse` with the fast patterns and `parse` with them
switched off give the same object (fields, repr, str before and after the parameters are
split, the accessors the call path reads) or the same error. The corpus: the URIs of
test_uri, every From/To/Contact/Route/Via value and Request-URI of the RFC 4475 messages and
the trunk capture, hand-picked odd shapes (tel:, user=phone, IPv6, escapes, quoted and flag
parameters, LWS), seeded one-character mutations of all of those, and generated texts.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipmask.errors import ParseError
from sipmask.sip import uri as uri_module
from sipmask.sip.headers import split_commas
from sipmask.sip.uri import NameAddr, SipUri, Via, parse_uri

CORPUS = Path(__file__).resolve().parents[2] / "corpus"
FAST_PATTERNS = ("_FAST_SIP_URI", "_FAST_NAME_ADDR", "_FAST_ADDR_SPEC", "_FAST_VIA")
NEVER = re.compile(r"(?!)")


@contextmanager
def full_parsers_only() -> Iterator[None]:
    """Every fast pattern replaced by one that never matches: the full parsers alone."""
    saved = {name: getattr(uri_module, name) for name in FAST_PATTERNS}
    # Remembered fast parses would answer before the patterns are asked; with the patterns
    # off, nothing new is remembered.
    uri_module._forget_seen()
    try:
        for name in FAST_PATTERNS:
            setattr(uri_module, name, NEVER)
        yield
    finally:
        for name, pattern in saved.items():
            setattr(uri_module, name, pattern)


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
]

BASE = HAND_PICKED + _corpus_values()
MUTATION_CHARS = ";=@:<>\"' \t,?\\%[]/.a0\x00é"


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


def _outcome(parse: Callable[[str], object], text: str) -> tuple[object, ...]:
    """Everything a caller can observe of parsing `text`: the error, or the value's type,
    str (before and after the parameters are split), repr, and the accessors."""
    try:
        value = parse(text)
    except ParseError as e:
        return ("error", type(e).__name__, str(e), e.status)
    # Parameter lookups first: on a fast value they read the unsplit text.
    lookups: list[object] = []
    if isinstance(value, SipUri | Via):
        lookups += [value.param(name) for name in ("user", "Transport", "lr", "maddr", "x")]
    if isinstance(value, Via):
        lookups += [value.branch, value.rport, value.received]
    if isinstance(value, NameAddr):
        lookups.append(value.tag)
    before = str(value)
    # A with_tag copy made before anything else is read keeps a fast value's laziness.
    tagged = str(value.with_tag("t0")) if isinstance(value, NameAddr) else None
    seen: list[object] = [type(value).__name__, lookups, before, tagged, repr(value),
                          str(value)]
    reads: list[Callable[[], object]] = []
    if isinstance(value, SipUri):
        uri = value
        reads += [lambda: uri.params, lambda: uri.user_unescaped, lambda: uri.phone_number,
                  lambda: uri.user_params, lambda: uri.header_pairs,
                  lambda: uri.param("user"), lambda: uri.param("transport")]
    if isinstance(value, NameAddr):
        addr = value
        reads += [lambda: addr.tag, lambda: addr.display_name, lambda: addr.params,
                  lambda: type(addr.uri).__name__, lambda: str(addr.with_tag("t1")),
                  lambda: str(addr.uri), lambda: str(addr.without_tag()),
                  lambda: addr.without_tag().params, lambda: addr.with_tag("t-2").params,
                  lambda: str(addr.with_tag("t3").without_tag()),
                  lambda: addr.with_tag("t4").tag, lambda: str(addr.with_tag(""))]
    if isinstance(value, Via):
        via = value
        reads += [lambda: via.branch, lambda: via.rport, lambda: via.received,
                  lambda: via.params, lambda: via.default_port,
                  lambda: str(via.stamped(("10.0.0.9", 5070))),
                  lambda: via.stamped(("10.0.0.9", 5070)).params,
                  lambda: str(via.stamped((via.host.strip("[]"), 5070))),
                  lambda: via.stamped(("10.0.0.9", 5070)).stamped(("10.0.0.9", 5070)) ==
                  via.stamped(("10.0.0.9", 5070)),
                  lambda: str(via.with_params(rport="1")),
                  lambda: via.response_target(("10.0.0.9", 5070))]
    for read in reads:
        try:
            seen.append(read())
        except (ParseError, ValueError) as e:
            seen.append(("error", type(e).__name__, str(e)))
    return tuple(seen)


PARSERS: dict[str, Callable[[str], object]] = {
    "parse_uri": parse_uri, "SipUri": SipUri.parse, "NameAddr": NameAddr.parse,
    "Via": Via.parse}


def _check(text: str) -> None:
    fast = {name: _outcome(parse, text) for name, parse in PARSERS.items()}
    with full_parsers_only():
        full = {name: _outcome(parse, text) for name, parse in PARSERS.items()}
    assert fast == full, text
    # Same values, not only the same observations: == compares every field.
    for parse in PARSERS.values():
        try:
            a = parse(text)
        except ParseError:
            continue
        with full_parsers_only():
            b = parse(text)
        assert a == b, text


def test_the_corpus_is_big_and_reaches_both_paths() -> None:
    assert len(CORPUS_TEXTS) > 3000
    hits = 0
    for text in CORPUS_TEXTS:
        for pattern in (uri_module._FAST_NAME_ADDR, uri_module._FAST_ADDR_SPEC,
                        uri_module._FAST_VIA, uri_module._FAST_SIP_URI):
            hits += pattern.fullmatch(text) is not None
    assert 300 < hits < len(CORPUS_TEXTS)


@pytest.mark.parametrize("chunk", range(8))
def test_fast_and_full_agree_on_the_corpus(chunk: int) -> None:
    for text in CORPUS_TEXTS[chunk::8]:
        _check(text)


FRAGMENTS = ["sip:", "sips:", "SIP:", "tel:", "alice", "+8613800000001", "%2B", "@", "@@",
             "example.com", "10.0.0.1", "[::1]", "[2001:db8::1", ":5060", ":0", ":65536", ":",
             ";tag=abc", ";TAG=x", ";lr", ";user=phone", ";rport", ";branch=z9hG4bK1", ";",
             "=", "<", ">", '"Bob"', '"B\\"b"', "Bob ", "张", " ", "\t", "?h=v", "?", ",",
             '"', "\\", "SIP/2.0/UDP ", "SIP/2.0/TCP", "/", "\x00", "\xa0", "*"]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=10).map("".join))
def test_fast_and_full_agree_on_generated_texts(text: str) -> None:
    _check(text)


@pytest.mark.parametrize("text", [
    '"13800000001" <sip:+8613800000001@10.1.2.3:5060;user=phone>;tag=as6f1c2b3a',
    "<sip:700100000000001@10.20.30.40:5060;user=phone>", "Bob <sip:b@h>;tag=1",
    "sip:13800000001@10.0.0.1;tag=x1", "<sips:a@[2001:db8::1]:5061>",
])
def test_common_name_addrs_take_the_fast_path(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(text: str) -> object:
        raise AssertionError(f"full parser used for {text!r}")
    monkeypatch.setattr(NameAddr, "_parse_full", refuse)
    monkeypatch.setattr(SipUri, "_parse_full", refuse)
    assert str(NameAddr.parse(text)) == text


@pytest.mark.parametrize("text", [
    "SIP/2.0/UDP 10.1.2.3:5060;branch=z9hG4bK-524287-1---5c3a8e6f0c1d2b3a;rport",
    "SIP/2.0/TCP [2001:db8::1];branch=z9hG4bKx;received=10.0.0.1",
])
def test_common_vias_take_the_fast_path(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(text: str) -> object:
        raise AssertionError(f"full parser used for {text!r}")
    monkeypatch.setattr(Via, "_parse_full", refuse)
    assert str(Via.parse(text)) == text


def test_lazy_parameters_split_once_and_can_be_replaced() -> None:
    addr = NameAddr.parse("<sip:a@b;user=phone>;tag=1;x")
    via = Via.parse("SIP/2.0/UDP h;BRANCH=z9hG4bKx;rport;received=1.2.3.4")
    assert (addr.tag, via.branch, via.rport, via.received, via.param("RPort")) == \
        ("1", "z9hG4bKx", "", "1.2.3.4", "")
    assert addr._params is None and via._params is None          # lookups split nothing
    assert addr.params is addr.params == [("tag", "1"), ("x", None)]
    addr.params = [("tag", "2")]
    assert str(addr) == "<sip:a@b;user=phone>;tag=2"
    assert isinstance(addr.uri, SipUri)
    addr.uri.params = []
    assert str(addr) == "<sip:a@b>;tag=2"


def test_a_value_changed_before_its_uri_is_read_prints_like_a_full_one() -> None:
    for text in ("sip:a@b:5060;tag=1", "<sip:a@b;lr>;tag=1", "Bob <sip:a@b>"):
        for change in ("display", "bracketed", "params"):
            fast = NameAddr.parse(text)
            with full_parsers_only():
                full = NameAddr.parse(text)
            for addr in (fast, full):
                if change == "display":
                    addr.display = '"X"'
                elif change == "bracketed":
                    addr.bracketed = not addr.bracketed
                else:
                    addr.params = [("tag", "2")]
            assert str(fast) == str(full) and fast == full


def test_values_compare_by_fields_and_stay_unhashable() -> None:
    assert NameAddr.parse("<sip:a@b>;tag=1") == NameAddr(SipUri("sip", "a", "b"), None,
                                                          [("tag", "1")])
    assert Via.parse("SIP/2.0/UDP h;branch=z9hG4bKx") == Via("UDP", "h", None,
                                                              [("branch", "z9hG4bKx")])
    assert SipUri.parse("sip:a@b") != NameAddr.parse("<sip:a@b>")
    with pytest.raises(TypeError):
        hash(SipUri.parse("sip:a@b"))
