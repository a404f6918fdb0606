"""Remembered fast parses (sipmask/sip/uri.py `_SEEN_*`) against the parsers without them.

`NameAddr.parse`, `SipUri.parse` and `parse_uri` keep the pieces of each fast match by text.
A remembered text must give what parsing it afresh gives, and a new object each time. The
reference is the code as it was before the tables (`old_*` below, kept here verbatim in
behaviour): for every corpus and generated text, a first parse (nothing remembered), a
second one (served from the table) and the reference agree in every observation
test_uri_fast makes, and the full parsers still have the last word on refusals.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipmask.errors import ParseError
from sipmask.sip import uri as uri_module
from sipmask.sip.uri import NameAddr, SipUri, Uri, Via, parse_uri
from tests.support.uri_outcomes import CORPUS_TEXTS, FRAGMENTS, outcome

_new = object.__new__


def old_sip_uri_parse(text: str) -> SipUri:
    """SipUri.parse before the table."""
    m = uri_module._FAST_SIP_URI.fullmatch(text)
    if m is not None:
        scheme, user, host, port, ptext = m.groups()
        if uri_module._fast_params_ok(ptext):
            return uri_module._fast_sip_uri(scheme, user, host, port, ptext)
    return SipUri._parse_full(text)


def old_parse_uri(text: str) -> Uri:
    """parse_uri before the table: its own fast try, then the scheme's parser."""
    m = uri_module._FAST_SIP_URI.fullmatch(text)
    if m is not None:
        scheme, user, host, port, ptext = m.groups()
        if uri_module._fast_params_ok(ptext):
            return uri_module._fast_sip_uri(scheme, user, host, port, ptext)
    scheme, colon, rest = text.partition(":")
    if not colon or not scheme or not rest:
        raise ParseError("Bad URI: no scheme")
    low = scheme.lower()
    if low in ("sip", "sips"):
        return old_sip_uri_parse(text)
    if low == "tel":
        return uri_module.TelUri.parse(text)
    if uri_module._SCHEME.fullmatch(scheme) is None:
        raise ParseError("Bad URI: invalid scheme")
    if any(c in text for c in " \t\r\n<>\""):
        raise ParseError("Bad URI: contains whitespace, quotes or angle brackets")
    return uri_module.AbsoluteUri(text)


def _old_fast_name_addr(uri: tuple[str, str | None, str, str | None, str],
                        display: str | None, ptext: str, bracketed: bool) -> NameAddr:
    addr: NameAddr = _new(NameAddr)
    addr._uri = None
    addr._uri_pieces = uri
    addr.display = display
    addr._params = None
    addr._ptext = ptext
    addr.bracketed = bracketed
    return addr


def old_name_addr_parse(text: str) -> NameAddr:
    """NameAddr.parse before the table."""
    m = uri_module._FAST_NAME_ADDR.fullmatch(text)
    if m is not None:
        quoted, words, scheme, user, host, port, uparams, hparams = m.groups()
        joined = uparams + hparams
        if ";;" not in joined and ";=" not in joined and joined[-1:] != ";":
            return _old_fast_name_addr((scheme, user, host, port, uparams),
                                       quoted if words is None else words, hparams, True)
    elif (m := uri_module._FAST_ADDR_SPEC.fullmatch(text)) is not None:
        scheme, user, host, port, hparams = m.groups()
        if uri_module._fast_params_ok(hparams):
            return _old_fast_name_addr((scheme, user, host, port, ""), None, hparams, False)
    return NameAddr._parse_full(text)


PAIRS = [(NameAddr.parse, old_name_addr_parse), (SipUri.parse, old_sip_uri_parse),
         (parse_uri, old_parse_uri)]


def _check(text: str) -> None:
    for parse, old in PAIRS:
        uri_module._forget_seen()
        first = outcome(parse, text)           # nothing remembered: matched now
        again = outcome(parse, text)           # served from the table when it matched
        reference = outcome(old, text)
        assert first == again == reference, (parse, text)
        try:
            a, b, c = parse(text), parse(text), old(text)
        except ParseError:
            continue
        assert a == b == c, (parse, text)
        assert a is not b


def test_remembered_parses_agree_with_the_old_code_on_the_corpus() -> None:
    remembered = 0
    for text in CORPUS_TEXTS:
        _check(text)
        remembered += text in uri_module._SEEN_NAME_ADDRS or text in uri_module._SEEN_URIS
    assert 300 < remembered < len(CORPUS_TEXTS)     # both paths reached


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=10).map("".join))
def test_remembered_parses_agree_with_the_old_code_on_generated_texts(text: str) -> None:
    _check(text)


def test_a_remembered_value_is_a_new_object_that_callers_may_change() -> None:
    text = '"Bob" <sip:b@h;user=phone>;tag=1;x'
    first = NameAddr.parse(text)
    first.params = [("tag", "2")]
    assert isinstance(first.uri, SipUri)
    first.uri.params = []
    first.display = None
    again = NameAddr.parse(text)
    assert text in uri_module._SEEN_NAME_ADDRS
    assert str(again) == text and again.tag == "1" and again.display == '"Bob"'
    uri = parse_uri("sip:a@b;lr")
    uri.params.append(("x", None))
    assert str(parse_uri("sip:a@b;lr")) == "sip:a@b;lr"


def test_refusals_are_never_remembered() -> None:
    uri_module._forget_seen()
    refused = [(NameAddr.parse, text) for text in
               ("<sip:a@b>;;tag=1", "<sip:a@b>;", "<sip:a@h:0>", "< sip:a@b>", "<sip:a@b;=x>")]
    refused += [(SipUri.parse, text) for text in ("sip:a@b;;x", "sip:a@b;", "sip:a@h:0")]
    refused += [(parse_uri, text) for text in ("sip:a@b;=x", "sip:a@h:65536", "sip:")]
    for parse, text in refused:
        for _ in range(2):
            with pytest.raises(ParseError):
                parse(text)
    # (A refused name-addr's URI may be valid and remembered: `sip:a@b` of the first.)
    for _, text in refused:
        assert text not in uri_module._SEEN_NAME_ADDRS and text not in uri_module._SEEN_URIS


def test_the_tables_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uri_module, "_SEEN_MAX", 8)
    uri_module._forget_seen()
    for i in range(100):
        assert NameAddr.parse(f"<sip:a@b>;tag={i}").tag == str(i)
        assert SipUri.parse(f"sip:a@b;x={i}").param("x") == str(i)
        assert len(uri_module._SEEN_NAME_ADDRS) <= 8 and len(uri_module._SEEN_URIS) <= 8


VIA_PARAMS = [";branch=z9hG4bK1", ";rport", ";RPort", ";rport=", ";rport=5061", ";received=1.2.3.4",
              ";Received=9.9.9.9", ";receivedx=1", ";rportx", ";x=rport", ";ttl=1", ";lr"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(VIA_PARAMS), max_size=5).map("".join),
       st.sampled_from(["10.0.0.9", "h"]))
def test_stamping_a_fast_via_matches_stamping_a_full_one(params: str, host: str) -> None:
    """Via._stamped_text against `stamped` on the
    full parser's value, whose parameters are a list."""
    text = f"SIP/2.0/UDP {host}:5060{params}"
    fast = Via.parse(text)
    full = Via._parse_full(text)
    assert fast._params is None and full._params is not None
    for source in (("10.0.0.9", 5070), ("10.0.0.8", 5060)):
        a, b = fast.stamped(source), full.stamped(source)
        assert (str(a), a.params, a.rport, a.received) == (str(b), b.params, b.rport, b.received)
        assert (a is fast) == (b is full)
