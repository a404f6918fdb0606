"""Bencode, the encoding of rtpengine's ng control protocol. Pure functions.

Grammar (BitTorrent BEP 3, which rtpengine's ng protocol reuses):
    integer  i<decimal>e          string  <length>:<bytes>
    list     l<items>e            dict    d<string key><value>...e, keys sorted as bytes
Strings decode to bytes (an SDP body is bytes, and may not be UTF-8); dict keys decode to
str because ng keys are ASCII words ("call-id", "sdp"). Encoding takes str (as UTF-8), bytes,
int, bool (as 0/1: ng has no boolean type), lists/tuples and dicts with str keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TypeAlias

Value: TypeAlias = "int | bytes | list[Value] | dict[str, Value]"
Encodable: TypeAlias = "int | str | bytes | Sequence[Encodable] | Mapping[str, Encodable]"


_INTEGER = re.compile(rb"0|-?[1-9][0-9]*")


class BencodeError(ValueError):
    """Bytes that are not one complete bencoded value."""


def encode(value: Encodable) -> bytes:
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: Encodable, out: list[bytes]) -> None:
    if isinstance(value, bytes):
        out += (str(len(value)).encode(), b":", value)
    elif isinstance(value, str):
        _encode(value.encode(), out)
    elif isinstance(value, int):  # bool included: True -> i1e
        out.append(b"i%de" % int(value))
    elif isinstance(value, Mapping):
        out.append(b"d")
        # BEP 3: keys are sorted as raw strings, not as unicode text.
        for key, item in sorted((k.encode(), v) for k, v in value.items()):
            _encode(key, out)
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, Sequence):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def decode(data: bytes) -> Value:
    """One value that must span all of `data`; anything else raises BencodeError."""
    value, end = _decode(data, 0)
    if end != len(data):
        raise BencodeError(f"trailing bytes after the value at offset {end}")
    return value


def _decode(data: bytes, at: int) -> tuple[Value, int]:
    if at >= len(data):
        raise BencodeError("truncated input")
    lead = data[at:at + 1]
    if lead == b"i":
        end = data.find(b"e", at)
        if end < 0:
            raise BencodeError(f"unterminated integer at offset {at}")
        text = data[at + 1:end]
        # BEP 3: plain decimal, no leading zeros, no negative zero (so one value, one form).
        if _INTEGER.fullmatch(text) is None:
            raise BencodeError(f"bad integer {text!r} at offset {at}")
        return int(text), end + 1
    if lead == b"l":
        items: list[Value] = []
        at += 1
        while data[at:at + 1] != b"e":
            item, at = _decode(data, at)
            items.append(item)
        return items, at + 1
    if lead == b"d":
        mapping: dict[str, Value] = {}
        at += 1
        while data[at:at + 1] != b"e":
            if data[at:at + 1] == b"":
                raise BencodeError("truncated dictionary")
            key, at = _decode_string(data, at)
            mapping[key.decode("utf-8", "replace")], at = _decode(data, at)
        return mapping, at + 1
    if lead.isdigit():
        return _decode_string(data, at)
    raise BencodeError(f"unexpected byte {lead!r} at offset {at}")


def _decode_string(data: bytes, at: int) -> tuple[bytes, int]:
    colon = data.find(b":", at)
    length_text = data[at:colon]
    if colon < 0 or not length_text.isdigit():
        raise BencodeError(f"bad string length at offset {at}")
    if length_text.startswith(b"0") and len(length_text) > 1:
        raise BencodeError(f"bad string length at offset {at}")
    start = colon + 1
    end = start + int(length_text)
    if end > len(data):
        raise BencodeError(f"string at offset {at} runs past the end")
    return data[start:end], end
