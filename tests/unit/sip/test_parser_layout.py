"""The parser's layout fast path (parser.py docstring) agrees with the full path.

Once a message's sequence of header names is learned, later messages with the same names
take `_by_layout` (tier 1), and once a layout is busy, `_by_whole` (tier 2). Neither may
accept what the full path refuses, and what they accept must be the same message: start
line, fields, body, raw bytes. Each test here parses a message with the layout known (fast
paths tried) and again with no layout (full path only) and compares the two outcomes, for
the corpus and for systematic one-character edits of it; `tier` runs each test with the
layout at tier 1 and again promoted to tier 2.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipmask.sip import parser
from sipmask.sip.parser import parse_message
from tests.support.parse_outcomes import RESPONSE, Outcome, full_path, outcome

CORPUS = Path(__file__).resolve().parents[2] / "corpus"
TRUNK = (CORPUS / "trunk" / "invite_sdp.sip").read_bytes()
RFC4475 = sorted((CORPUS / "rfc4475").glob("*/*.dat"))

BYE = (
    b"BYE sip:7001@10.20.30.40 SIP/2.0\r\n"
    b"v: SIP/2.0/TCP host.example.com:5060;branch=z9hG4bK-3\r\n"
    b"f: sip:a@b;tag=1\r\n"
    b"t: sip:c@d;tag=2\r\n"
    b"i: x\r\n"
    b"CSeq: 7 BYE\r\n"
    b"Max-Forwards: 70\r\n\r\n"
)
SAMPLES = [TRUNK, RESPONSE, BYE]

# What one-character edits insert: the characters the grammar cares about, whitespace
# str.strip() removes but the fast shapes do not expect, line breaks, non-ASCII.
EDIT_CHARS = ' \t"<>;=,:@\\*/?%[]aZ09.-_+~\x0b\x0c\x1c\x85\xa0\u2028\x00\r\n' + "é"


def with_layout_of(template: bytes, data: bytes, stream: bool = False) -> Outcome:
    """Parse `data` after `template` taught its layout (so the fast path is tried)."""
    learn(template)
    return outcome(data, stream)


TIER = [1]


def learn(template: bytes) -> None:
    """A layout is learned once its names are known: the second sighting of a message;
    at tier 2 it is then promoted as if it had served `_WHOLE_AFTER` messages."""
    parser._forget_layouts()
    parse_message(template)
    parse_message(template)
    if TIER[0] == 2:
        for bucket in parser._LAYOUTS.values():
            for layout in bucket:
                parser._promote(layout)


@pytest.fixture(autouse=True, params=[1, 2], ids=["tier1", "tier2"])
def tier(request: pytest.FixtureRequest) -> Iterator[int]:
    parser._forget_layouts()
    TIER[0] = request.param
    yield request.param
    TIER[0] = 1
    parser._forget_layouts()


@pytest.mark.parametrize("data", SAMPLES, ids=["trunk-invite", "200-ok", "compact-bye"])
def test_a_learned_layout_takes_the_fast_path(data: bytes, tier: int) -> None:
    learn(data)
    head = data[: data.index(b"\r\n\r\n")].decode()
    lines = head.split("\r\n")
    if tier == 1:
        layouts = parser._LAYOUTS[len(lines) - 1]
        fast = parser._by_layout(data, len(head) + 4, lines, layouts, False)
    else:
        wholes = parser._WHOLE[len(lines) - 1]
        fast = parser._by_whole(data, len(head) + 4, head, wholes, False)
    assert fast is not None
    assert fast.to_bytes() is data
    assert with_layout_of(data, data) == full_path(data)


@pytest.mark.parametrize("path", RFC4475, ids=lambda p: p.name)
def test_rfc4475_messages_agree_with_a_layout_known(path: Path) -> None:
    data = path.read_bytes()
    expected = full_path(data)
    assert outcome(data) == expected          # its own layout, learned just above if valid
    assert outcome(data) == expected
    for template in SAMPLES:
        assert with_layout_of(template, data) == expected


@pytest.mark.parametrize("data", SAMPLES, ids=["trunk-invite", "200-ok", "compact-bye"])
def test_one_character_edits_agree(data: bytes) -> None:
    """Every position of the header block, with a few edits each (seeded, so the same
    edits every run): replace, insert or delete one character."""
    rng = random.Random(4475)
    text = data.decode("utf-8")
    end = text.index("\r\n\r\n")
    for pos in range(end):
        for _ in range(3):
            ch = rng.choice(EDIT_CHARS)
            kind = rng.randrange(3)
            if kind == 0:
                edited = text[:pos] + ch + text[pos + 1:]
            elif kind == 1:
                edited = text[:pos] + ch + text[pos:]
            else:
                edited = text[:pos] + text[pos + 1:]
            raw = edited.encode("utf-8", "surrogateescape")
            assert with_layout_of(data, raw) == full_path(raw), (pos, edited[:end + 2])


@pytest.mark.parametrize("value", ["0", "2147483647", "2147483648", "9999999999",
                                   "12345678901", "007"])
def test_cseq_numbers_agree(value: str) -> None:
    raw = TRUNK.replace(b"CSeq: 102 INVITE", f"CSeq: {value} INVITE".encode())
    assert with_layout_of(TRUNK, raw) == full_path(raw)


@pytest.mark.parametrize("value", ["0", "255", "256", "0000000070", "00000000070", "-1"])
def test_max_forwards_agree(value: str) -> None:
    raw = TRUNK.replace(b"Max-Forwards: 69", f"Max-Forwards: {value}".encode())
    assert with_layout_of(TRUNK, raw) == full_path(raw)


@pytest.mark.parametrize("delta", [-300, -1, 0, 1, 5])
@pytest.mark.parametrize("stream", [False, True])
def test_bodies_agree(delta: int, stream: bool) -> None:
    """Content-Length against the bytes there: short body refused, extra bytes cut."""
    body = TRUNK[TRUNK.index(b"\r\n\r\n") + 4:]
    raw = TRUNK.replace(b"Content-Length: 272", f"Content-Length: {len(body) + delta}".encode()
                        ) if delta > -len(body) else TRUNK
    raw += b"X" * max(0, -delta) if delta < 0 else b""
    assert with_layout_of(TRUNK, raw, stream) == full_path(raw, stream)


def test_stream_without_content_length_is_refused_on_both_paths() -> None:
    assert with_layout_of(BYE, BYE, True) == full_path(BYE, True)
    assert full_path(BYE, True)[0] == "refused"


def test_a_method_and_cseq_mismatch_is_refused_on_both_paths() -> None:
    raw = BYE.replace(b"CSeq: 7 BYE", b"CSeq: 7 INVITE")
    assert with_layout_of(BYE, raw) == full_path(raw)
    assert full_path(raw)[0] == "refused"


def test_headers_read_from_lines_before_and_after_fields_are_built() -> None:
    learn(TRUNK)
    msg = parse_message(TRUNK)
    assert msg.headers.get("from") == ('"13800000001" <sip:+8613800000001@10.1.2.3:5060;'
                                       'user=phone>;tag=as6f1c2b3a')
    assert msg.headers.get("content-length") == "272"
    assert msg.headers.get("x-absent") is None
    assert msg.cseq.number == 102 and msg.top_via.branch is not None
    assert msg.headers.get_all("allow")[:2] == ["INVITE", "ACK"]
    msg.headers.set("Max-Forwards", "68")
    assert msg.headers.get("max-forwards") == "68"
    out = msg.to_bytes()
    assert out == TRUNK.replace(b"Max-Forwards: 69", b"Max-Forwards: 68")
    assert outcome(out) == full_path(out)


def test_a_changed_layout_is_not_mistaken_for_a_learned_one() -> None:
    """Same line count, one name differs: the full path parses it."""
    learn(TRUNK)
    raw = TRUNK.replace(b"User-Agent:", b"User-Agenz:")
    assert outcome(raw) == full_path(raw)
    raw = TRUNK.replace(b"\r\nTo:", b"\r\nTo :")
    assert outcome(raw) == full_path(raw)


def test_a_busy_layout_is_promoted_once() -> None:
    learn(TRUNK)
    for _ in range(parser._WHOLE_AFTER + 5):
        parse_message(TRUNK)
    (layout,) = parser._WHOLE[15]
    assert layout.whole is not None and layout.names == parser._LAYOUTS[15][0].names
    assert outcome(TRUNK) == full_path(TRUNK)


def test_promotion_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parser, "_WHOLE_MAX", 1)
    learn(BYE)
    learn_also = [TRUNK, RESPONSE]
    for data in learn_also:
        parse_message(data)
        parse_message(data)
    for bucket in list(parser._LAYOUTS.values()):
        for layout in bucket:
            parser._promote(layout)
    assert sum(map(len, parser._WHOLE.values())) == 1


def test_learned_layouts_stay_bounded() -> None:
    lines = TRUNK[: TRUNK.index(b"\r\n\r\n")].split(b"\r\n")
    for i in range(200):
        extra = [f"X-H{i}-{j}: v".encode() for j in range(i % 7)]
        parse_message(b"\r\n".join([*lines[:-1], *extra, lines[-1]]) + b"\r\n\r\n"
                      + TRUNK[TRUNK.index(b"\r\n\r\n") + 4:])
    assert len(parser._LAYOUTS) <= parser._LAYOUT_COUNTS_MAX
    assert all(len(b) <= parser._LAYOUTS_PER_COUNT for b in parser._LAYOUTS.values())
