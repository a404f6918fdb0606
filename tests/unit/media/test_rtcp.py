"""RTCP scrubbing (sipmask/media/rtcp.py): identity text never crosses the relay."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from sipmask.media import rtcp

PSEUDO = b"sipmask-7f3a"


def packet(pt: int, count: int, body: bytes, *, pad: int = 0) -> bytes:
    """An RTCP packet; `pad` octets of RFC 3550 §6.4.1 padding (count in the last octet)."""
    if pad:
        body = body + b"\x00" * (pad - 1) + bytes((pad,))
    assert len(body) % 4 == 0
    return struct.pack("!BBH", 0x80 | (0x20 if pad else 0) | count, pt, len(body) // 4) + body


def sdes_chunk(ssrc: int, *items: tuple[int, bytes]) -> bytes:
    raw = struct.pack("!I", ssrc) + b"".join(bytes((k, len(v))) + v for k, v in items) + b"\x00"
    return raw + b"\x00" * (-len(raw) % 4)


def receiver_report(ssrc: int) -> bytes:
    block = struct.pack("!IIIIII", 0x1234, 0, 0, 0, 0, 0)
    return packet(rtcp.RR, 1, struct.pack("!I", ssrc) + block)


def parse_sdes(data: bytes) -> list[tuple[int, list[tuple[int, bytes]]]]:
    """Chunks of the SDES packets in a compound packet, read independently of rtcp.py."""
    out = []
    pos = 0
    while pos < len(data):
        first, pt, words = struct.unpack_from("!BBH", data, pos)
        end = pos + 4 * (words + 1)
        if pt == rtcp.SDES:
            q = pos + 4
            for _ in range(first & 0x1F):
                (ssrc,) = struct.unpack_from("!I", data, q)
                q += 4
                items = []
                while data[q] != 0:
                    items.append((data[q], data[q + 2: q + 2 + data[q + 1]]))
                    q += 2 + data[q + 1]
                q = (q + 4) & ~3
                out.append((ssrc, items))
            assert q == end
        pos = end
    assert pos == len(data)
    return out


def test_cname_and_other_items_are_replaced_by_the_pseudonym() -> None:
    sdes = packet(rtcp.SDES, 2, sdes_chunk(0xAAAA, (1, b"13800000001@192.168.1.20"),
                                           (2, b"Zhang San"), (4, b"+8613800000001"),
                                           (6, b"Yealink SIP-T46U")) +
                  sdes_chunk(0xBBBB, (1, b"alice@10.0.0.9")))
    data = receiver_report(0xAAAA) + sdes
    out = rtcp.scrub(data, PSEUDO)
    assert out is not None
    assert out.startswith(receiver_report(0xAAAA))
    assert parse_sdes(out) == [(0xAAAA, [(1, PSEUDO)]), (0xBBBB, [(1, PSEUDO)])]
    for secret in (b"13800000001", b"192.168.1.20", b"Zhang", b"Yealink", b"alice", b"10.0.0.9"):
        assert secret not in out


def test_packet_without_identity_text_passes_unchanged() -> None:
    data = receiver_report(0x42) + packet(rtcp.BYE, 1, struct.pack("!I", 0x42))
    assert rtcp.scrub(data, PSEUDO) is data


def test_bye_reason_and_app_packets_are_removed() -> None:
    reason = b"\x0fcall from 13800"
    bye = packet(rtcp.BYE, 1, struct.pack("!I", 7) + reason)
    app = packet(rtcp.APP, 0, struct.pack("!I", 7) + b"NAME" + b"13800000001\x00")
    out = rtcp.scrub(receiver_report(7) + bye + app, PSEUDO)
    assert out == receiver_report(7) + packet(rtcp.BYE, 1, struct.pack("!I", 7))


def test_padded_last_packet_is_rebuilt_without_padding() -> None:
    sdes = packet(rtcp.SDES, 1, sdes_chunk(9, (1, b"13800000001@h")), pad=8)
    out = rtcp.scrub(receiver_report(9) + sdes, PSEUDO)
    assert out is not None and b"13800000001" not in out
    assert parse_sdes(out) == [(9, [(1, PSEUDO)])]
    assert out[len(receiver_report(9))] & 0x20 == 0


def test_malformed_packets_are_refused() -> None:
    good = receiver_report(1) + packet(rtcp.SDES, 1, sdes_chunk(1, (1, b"x@y")))
    assert rtcp.scrub(good[:-4], PSEUDO) is None                 # cut short
    assert rtcp.scrub(b"\x40" + good[1:], PSEUDO) is None        # version 1
    items_overrun = packet(rtcp.SDES, 1, struct.pack("!I", 1) + b"\x01\xff" + b"ab")
    assert rtcp.scrub(items_overrun, PSEUDO) is None
    too_many_chunks = packet(rtcp.SDES, 3, sdes_chunk(1, (1, b"x@y")))
    assert rtcp.scrub(too_many_chunks, PSEUDO) is None
    padded_not_last = packet(rtcp.RR, 0, struct.pack("!I", 1), pad=4) + receiver_report(2)
    assert rtcp.scrub(padded_not_last, PSEUDO) is None
    assert rtcp.scrub(b"", PSEUDO) is None


def test_is_rtcp_tells_muxed_rtcp_from_rtp() -> None:
    assert rtcp.is_rtcp(receiver_report(1))
    rtp_pcmu = bytes((0x80, 0)) + b"\x00" * 10
    rtp_marker_dyn = bytes((0x80, 0x80 | 101)) + b"\x00" * 10   # marker + PT 101 = 229
    assert not rtcp.is_rtcp(rtp_pcmu)
    assert not rtcp.is_rtcp(rtp_marker_dyn)


@given(st.binary(max_size=200))
def test_scrub_never_raises_and_output_is_well_framed(data: bytes) -> None:
    out = rtcp.scrub(data, PSEUDO)
    if out is not None and out is not data:
        parse_sdes(out)              # frames add up to the whole packet
        assert len(out) % 4 == 0


@given(st.lists(st.tuples(st.integers(1, 8), st.binary(min_size=1, max_size=40)),
                min_size=1, max_size=6), st.integers(0, 2**32 - 1))
def test_any_sdes_items_come_out_as_just_the_pseudonym(items: list[tuple[int, bytes]],
                                                       ssrc: int) -> None:
    data = receiver_report(ssrc) + packet(rtcp.SDES, 1, sdes_chunk(ssrc, *items))
    out = rtcp.scrub(data, PSEUDO)
    assert out is not None
    assert parse_sdes(out) == [(ssrc, [(1, PSEUDO)])]
