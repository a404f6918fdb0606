"""The fast patterns in sipmask/sip/uri.py against the full parsers they stand in front of.

A fast pattern may only accept a subset of what the full parser accepts and must build the
same value: for every text (tests/support/uri_outcomes.py), `parse` with the fast patterns
and `parse` with them switched off give the same object (fields, repr, str before and after
the parameters are split, the accessors the call path reads) or the same error. The corpus:
the URIs of test_uri, every From/To/Contact/Route/Via value and Request-URI of the RFC 4475
messages and the trunk capture, hand-picked odd shapes (tel:, user=phone, IPv6, escapes,
quoted and flag parameters, LWS), seeded one-character mutations of all of those, and
generated texts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipmask.errors import ParseError
from sipmask.sip import uri as uri_module
from sipmask.sip.uri import NameAddr, SipUri, Via, parse_uri
from tests.support.uri_outcomes import CORPUS_TEXTS, FRAGMENTS, outcome

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




PARSERS: dict[str, Callable[[str], object]] = {
    "parse_uri": parse_uri, "SipUri": SipUri.parse, "NameAddr": NameAddr.parse,
    "Via": Via.parse}


def _check(text: str) -> None:
    fast = {name: outcome(parse, text) for name, parse in PARSERS.items()}
    with full_parsers_only():
        full = {name: outcome(parse, text) for name, parse in PARSERS.items()}
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
