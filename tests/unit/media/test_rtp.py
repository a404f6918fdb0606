"""The RTP fixed header (sipmask/media/rtp.py, RFC 3550 §5.1)."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from sipmask.media import rtp


def test_build_writes_the_rfc_3550_header() -> None:
    packet = rtp.build(8, 0x1234, 0xDEADBEEF, 0x01020304, b"xy", marker=True)
    assert packet == bytes.fromhex("8088 1234 deadbeef 01020304") + b"xy"
    assert rtp.build(0, 70000, 2**32 + 5, 1, b"")[2:8] == bytes.fromhex("1170 00000005")


@given(pt=st.integers(0, 127), seq=st.integers(0, 0xFFFF), ts=st.integers(0, 2**32 - 1),
       ssrc=st.integers(0, 2**32 - 1), marker=st.booleans(), payload=st.binary(max_size=200))
def test_parse_reads_what_build_wrote(pt: int, seq: int, ts: int, ssrc: int, marker: bool,
                                      payload: bytes) -> None:
    assert rtp.parse(rtp.build(pt, seq, ts, ssrc, payload, marker=marker)) == \
        rtp.RtpPacket(pt, marker, seq, ts, ssrc, payload)


def test_parse_skips_csrcs_extension_and_padding() -> None:
    header = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 2, 101, 7, 160, 9)
    csrcs = struct.pack("!II", 1, 2)
    extension = struct.pack("!HH", 0xBEDE, 1) + b"\x10abc"
    packet = header + csrcs + extension + b"DATA" + b"\x00\x00\x03"
    assert rtp.parse(packet) == rtp.RtpPacket(101, False, 7, 160, 9, b"DATA")


def test_parse_refuses_what_is_not_rtp_v2() -> None:
    good = rtp.build(0, 1, 2, 3, b"abcd")
    assert rtp.parse(good[:11]) is None                            # short
    assert rtp.parse(b"\x40" + good[1:]) is None                   # version 1
    assert rtp.parse(bytes([0x8F]) + good[1:]) is None             # 15 CSRCs, none there
    assert rtp.parse(bytes([0x90]) + good[1:14]) is None           # extension cut off
    assert rtp.parse(bytes([0xA0]) + good[1:] + b"\x00") is None   # padding count 0
    assert rtp.parse(bytes([0xA0]) + good[1:] + b"\x09") is None   # more padding than payload


def test_timestamp_delta_wraps() -> None:
    assert rtp.timestamp_delta(100, 2**32 - 60) == 160
    assert rtp.timestamp_delta(2**32 - 60, 100) == -160
    assert rtp.timestamp_delta(5, 5) == 0
