"""Tier 2 serves the kind of message its layout was promoted by (parser.py `_Layout.response`).

A request and a response with as many header lines fail each other's whole-block pattern
only late, so `_by_whole` skips a layout of the other kind. Skipping may only move a message
to tier 1 or the full path: the outcome is the full path's either way. Also: CSeq and
Max-Forwards numbers too short to be out of range are not read (`_finish`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sipmask.sip import parser
from sipmask.sip.parser import parse_message
from tests.support.parse_outcomes import RESPONSE, full_path, outcome

# A request with RESPONSE's line count and names, and a response with the request's.
REQUEST = (RESPONSE.replace(b"SIP/2.0 200 OK", b"INVITE sip:7001@10.20.30.40 SIP/2.0"))


@pytest.fixture(autouse=True)
def forget() -> Iterator[None]:
    parser._forget_layouts()
    yield
    parser._forget_layouts()


def _promoted_by(data: bytes) -> parser._Layout:
    """Learn `data`'s layout and serve it at tier 1 until tier 2 takes over."""
    for _ in range(parser._WHOLE_AFTER + 3):
        parse_message(data)
    (layout,) = parser._WHOLE[data.split(b"\r\n\r\n")[0].count(b"\n")]
    assert layout.whole is not None
    return layout


@pytest.mark.parametrize(("promoter", "other", "kind"),
                         [(RESPONSE, REQUEST, True), (REQUEST, RESPONSE, False)])
def test_tier_two_serves_its_kind_and_leaves_the_other_to_tier_one(
        promoter: bytes, other: bytes, kind: bool) -> None:
    expected = {data: full_path(data) for data in (promoter, other)}
    layout = _promoted_by(promoter)
    assert layout.response is kind
    head = other.split(b"\r\n\r\n")[0].decode()
    wholes = parser._WHOLE[head.count("\n")]
    assert parser._by_whole(other, len(head) + 4, head, wholes, False) is None   # skipped
    assert layout.whole.fullmatch(head) is not None       # though its pattern would match
    for data in (promoter, other, promoter):
        assert outcome(data) == expected[data]
    layout.response = None                                 # a layout promoted for both
    assert parser._by_whole(other, len(head) + 4, head, wholes, False) is not None
    assert outcome(other) == expected[other]


@pytest.mark.parametrize(("cseq", "max_forwards"), [
    (b"1", b"70"), (b"0000000001", b"070"), (b"2147483647", b"255"), (b"2147483648", b"70"),
    (b"9999999999", b"70"), (b"1", b"256"), (b"1", b"0000000255"), (b"1", b"0000000256"),
    (b"123456789", b"99"), (b"1", b"0"), (b"1", b"00")])
def test_number_range_checks_agree_with_the_full_path(cseq: bytes, max_forwards: bytes) -> None:
    data = (REQUEST.replace(b"CSeq: 102 INVITE", b"CSeq: " + cseq + b" INVITE")
            .replace(b"Content-Length: 0", b"Max-Forwards: " + max_forwards +
                     b"\r\nContent-Length: 0"))
    template = REQUEST.replace(b"Content-Length: 0", b"Max-Forwards: 70\r\nContent-Length: 0")
    expected = full_path(data)
    for _ in range(2):
        parse_message(template)                           # its layout known: tier 1
    assert outcome(data) == expected
    parser._forget_layouts()
    _promoted_by(template)                                # and at tier 2
    assert outcome(data) == expected
