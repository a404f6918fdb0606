"""The fast builders of the SIP core write what the plain ones wrote, byte for byte.

`Headers.of` builds its fields in one pass, `build_response` writes its fields with the keys
it knows (`Headers.built`), `Message.to_bytes` renders the head in one join
(`Headers.render`) and `Headers.select` reads only the fields asked for. The reference
implementations (tests/support/sip_oracle.py, and `ref_build_response` below) are the code
they replaced, kept verbatim: for the corpus messages and for hypothesis-made header blocks
(compact forms, odd case, duplicates, folded lines, unknown headers), each parsed once and
again after other messages (parsing keeps no state), the new code gives the same fields and
the same bytes.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipmask.errors import ParseError
from sipmask.sip.headers import Headers, canonical
from sipmask.sip.message import REASONS, Message, Request, Response, build_response
from tests.support.corpus import CORPUS_MESSAGES
from tests.support.sip_oracle import (
    MESSAGES,
    NAMES,
    RELAXED,
    VALUES,
    parses,
    ref_of,
    ref_serialize,
    ref_to_bytes,
)


# -- the reference: the code build_response replaced -------------------------------------
def ref_build_response(request: Request, status: int, reason: str | None = None, *,
                       to_tag: str | None = None, extra: tuple[tuple[str, str], ...] = (),
                       body: bytes = b"", content_type: str | None = None) -> Response:
    pairs: list[tuple[str, str]] = [("Via", v) for v in request.headers.get_fields("via")]
    from_value = request.headers.get("from") or ""
    to_value = request.headers.get("to") or ""
    if to_tag is not None and status > 100:
        try:
            to_addr = request.to
            if to_addr.tag is None:
                to_value = str(to_addr.with_tag(to_tag))
        except ParseError:
            pass
    pairs += [("From", from_value), ("To", to_value),
              ("Call-ID", request.headers.get("call-id") or ""),
              ("CSeq", request.headers.get("cseq") or "")]
    pairs.extend(extra)
    if content_type is not None:
        pairs.append(("Content-Type", content_type))
    pairs.append(("Content-Length", str(len(body))))
    return Response(status, reason or REASONS.get(status, "Unknown"), ref_of(*pairs), body)


# -- Headers.of and Headers.select ---------------------------------------------------------
@given(st.lists(st.tuples(NAMES, VALUES), max_size=16))
@RELAXED
def test_of_builds_the_fields_and_keys_the_reference_built(pairs: list[tuple[str, str]]) -> None:
    new, old = Headers.of(*pairs), ref_of(*pairs)
    assert new.fields() == old.fields()
    assert new.keys() == old.keys()
    assert new.serialize() == ref_serialize(old)
    assert Headers.built(old.fields()).fields() == old.fields()


def _selected(message: Message, keys: frozenset[str]) -> list[tuple[str, str, str]]:
    return [(canonical(name), name, value) for name, value in message.headers
            if canonical(name) in keys]


@pytest.mark.parametrize("keys", [frozenset({"allow", "content-type", "supported"}),
                                  frozenset({"via", "x-secret"}), frozenset()])
def test_select_is_iterating_and_keeping_on_the_corpus(keys: frozenset[str]) -> None:
    for data in CORPUS_MESSAGES:
        for message in parses(data):
            got = message.headers.select(keys)
            assert [(k, n, v) for k, n, v, _r in got] == _selected(message, keys)
            assert all(raw is None for *_x, raw in got)


@given(MESSAGES)
@RELAXED
def test_select_is_iterating_and_keeping(data: bytes) -> None:
    keys = frozenset({"supported", "require", "content-type", "allow", "retry-after",
                      "x-secret", "event"})
    for message in parses(data):
        got = message.headers.select(keys)
        assert [(k, n, v) for k, n, v, _r in got] == _selected(message, keys)


# -- build_response and to_bytes -----------------------------------------------------------
_RESPONSE_CASES: list[tuple[int, dict[str, object]]] = [
    (100, {}), (100, {"extra": (("Timestamp", "54"),)}), (180, {"to_tag": "t9"}),
    (200, {"to_tag": "t9", "body": b"v=0\r\n", "content_type": "application/sdp"}),
    (481, {"to_tag": "zz", "reason": "Gone Away"}), (599, {}),
    (200, {"extra": (("Supported", "timer"), ("k", "100rel"), ("X-Odd", "1"))}),
]


def _assert_same_responses(data: bytes) -> None:
    for status, options in _RESPONSE_CASES:
        for request, reference in zip(parses(data), parses(data), strict=True):
            if not isinstance(request, Request):
                continue
            new = build_response(request, status, **options)  # type: ignore[arg-type]
            old = ref_build_response(reference, status, **options)  # type: ignore[arg-type]
            assert new.headers.fields() == old.headers.fields()
            assert new.headers.keys() == old.headers.keys()
            assert (new.status, new.reason, new.body) == (old.status, old.reason, old.body)
            assert new.to_bytes() == ref_to_bytes(old)


def test_build_response_matches_the_reference_on_the_corpus() -> None:
    for data in CORPUS_MESSAGES:
        _assert_same_responses(data)


@given(MESSAGES)
@RELAXED
def test_build_response_matches_the_reference(data: bytes) -> None:
    _assert_same_responses(data)


def _changes(message: Message) -> None:
    """What the transaction layer and the engine do to messages before sending them."""
    message.headers.add("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKnew", first=True)
    message.headers.set("Max-Forwards", "69")


def test_to_bytes_matches_the_reference_on_changed_corpus_messages() -> None:
    for data in CORPUS_MESSAGES:
        for new, old in zip(parses(data), parses(data), strict=True):
            assert new.to_bytes() == ref_to_bytes(old)
            _changes(new)
            _changes(old)
            assert new.to_bytes() == ref_to_bytes(old)
            new.body = old.body = b"changed body"
            assert new.to_bytes() == ref_to_bytes(old)


@given(MESSAGES)
@RELAXED
def test_to_bytes_matches_the_reference_on_changed_messages(data: bytes) -> None:
    for new, old in zip(parses(data), parses(data), strict=True):
        _changes(new)
        _changes(old)
        assert new.to_bytes() == ref_to_bytes(old)
        assert new.headers.render("X") == "X\r\n" + ref_serialize(old.headers) + "\r\n"
