"""The RTP fixed header (RFC 3550 §5.1), read and written (pure, no I/O).

One place for the header's layout: the prompt player writes packets with `build`, the
DTMF decoder and the recorder read them with `parse`. The relay forwards payloads untouched
and needs neither.

     0                   1                   2                   3
    |V=2|P|X|  CC   |M|     PT      |       sequence number         |
    |                           timestamp                           |
    |           synchronization source (SSRC) identifier            |
    |            contributing source (CSRC) identifiers  (CC×)      |
    [ header extension (X): profile-defined 16 bits, length in words, words ]
    payload ... [ padding (P): last octet counts the padding octets ]
"""

from __future__ import annotations

import struct
from typing import NamedTuple

_FIXED = struct.Struct("!BBHII")
VERSION = 2
HEADER_SIZE = _FIXED.size        # 12 octets without CSRCs or an extension


class RtpPacket(NamedTuple):
    """A parsed packet. A NamedTuple, immutable like a frozen dataclass and made in a third
    of its time: the recorder parses every packet of a recorded call."""

    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


def build(payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes,
          *, marker: bool = False) -> bytes:
    """A packet with the 12-octet header: V=2, no padding, no extension, no CSRC."""
    if not 0 <= payload_type <= 127:
        raise ValueError(f"payload type {payload_type} is not 0-127")
    second = (0x80 if marker else 0) | payload_type
    return _FIXED.pack(VERSION << 6, second, sequence & 0xFFFF, timestamp & 0xFFFFFFFF,
                       ssrc & 0xFFFFFFFF) + payload


def parse(packet: bytes) -> RtpPacket | None:
    """The packet's header fields and payload (CSRCs, extension and padding removed), or
    None when it is not an RTP version 2 packet whose lengths add up."""
    size = len(packet)
    if size < HEADER_SIZE:
        return None
    first, second, sequence, timestamp, ssrc = _FIXED.unpack_from(packet)
    if first >> 6 != VERSION:
        return None
    start = HEADER_SIZE + 4 * (first & 0x0F)
    if first & 0x10:
        # RFC 3550 §5.3.1: 16 bits defined by profile, 16 bits of length in 32-bit words.
        if size < start + 4:
            return None
        (words,) = struct.unpack_from("!H", packet, start + 2)
        start += 4 + 4 * words
    end = size
    if first & 0x20:
        # RFC 3550 §5.1: the last octet counts the padding, itself included.
        if size <= start or packet[-1] == 0:
            return None
        end = size - packet[-1]
    if start > end:
        return None
    return RtpPacket(second & 0x7F, bool(second & 0x80), sequence, timestamp, ssrc,
                     bytes(packet[start:end]))


def timestamp_delta(later: int, earlier: int) -> int:
    """`later - earlier` for 32-bit RTP timestamps that wrap (RFC 3550 §5.1), in
    [-2**31, 2**31)."""
    return (later - earlier + 0x80000000) % 0x100000000 - 0x80000000
