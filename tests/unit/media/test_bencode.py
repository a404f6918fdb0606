"""Bencode for rtpengine's ng protocol: canonical encoding, strict decoding, round trip."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipmask.media import bencode
from sipmask.media.bencode import BencodeError


def test_encodes_each_type_canonically() -> None:
    assert bencode.encode(42) == b"i42e"
    assert bencode.encode(-7) == b"i-7e"
    assert bencode.encode(True) == b"i1e"
    assert bencode.encode("ping") == b"4:ping"
    assert bencode.encode(b"v=0\r\n") == b"5:v=0\r\n"
    assert bencode.encode(["a", 1]) == b"l1:ai1ee"
    # BEP 3: dict keys sorted as raw strings, whatever order they were given in.
    assert bencode.encode({"sdp": b"x", "command": "offer", "call-id": "c1"}) == (
        b"d7:call-id2:c17:command5:offer3:sdp1:xe")


def test_encodes_utf8_text_by_byte_length() -> None:
    assert bencode.encode("é") == b"2:\xc3\xa9"


def test_decodes_an_rtpengine_answer() -> None:
    raw = b"d6:result2:ok3:sdp10:v=0\r\no=-\r\n8:warningsl1:wee"
    assert bencode.decode(raw) == {"result": b"ok", "sdp": b"v=0\r\no=-\r\n", "warnings": [b"w"]}


@pytest.mark.parametrize("bad", [
    b"", b"i12", b"i-0e", b"i03e", b"i 1e", b"i1_0e", b"ie", b"5:abc", b"l", b"li1e",
    b"d3:key", b"d3:keyi1e", b"x", b"i1ei2e", b"02:ab", b"-1:a", b"di1ei2ee",
])
def test_rejects_malformed_input(bad: bytes) -> None:
    with pytest.raises(BencodeError):
        bencode.decode(bad)


def test_refuses_to_encode_other_types() -> None:
    with pytest.raises(TypeError):
        bencode.encode(1.5)  # type: ignore[arg-type]


values = st.recursive(
    st.integers() | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)


@given(values)
def test_round_trip(value: bencode.Value) -> None:
    assert bencode.decode(bencode.encode(value)) == value


@given(values)
def test_encoding_is_canonical(value: bencode.Value) -> None:
    raw = bencode.encode(value)
    assert bencode.encode(bencode.decode(raw)) == raw


@given(st.binary(max_size=60))
def test_arbitrary_bytes_raise_only_bencode_error(data: bytes) -> None:
    with contextlib.suppress(BencodeError):
        bencode.decode(data)
