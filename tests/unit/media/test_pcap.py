"""media/pcap.py: UDP datagrams out of the classic pcap rtpengine writes (pure)."""

from __future__ import annotations

import io
import ipaddress
import struct

import pytest

from sipmask.media.pcap import LINKTYPE_ETHERNET, LINKTYPE_RAW, PcapError, udp_datagrams


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(src: str, dst: str, body: bytes, protocol: int = 17) -> bytes:
    return (struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(body), 0, 0, 64, protocol, 0)
            + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + body)


def ipv6(src: str, dst: str, body: bytes) -> bytes:
    return (struct.pack("!IHBB", 6 << 28, len(body), 17, 64)
            + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + body)


def pcap(frames: list[tuple[float, bytes]], linktype: int = LINKTYPE_RAW, *,
         order: str = "<", nanoseconds: bool = False) -> bytes:
    magic = 0xA1B23C4D if nanoseconds else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    unit = 1e9 if nanoseconds else 1e6
    for at, frame in frames:
        seconds = int(at)
        out += struct.pack(order + "IIII", seconds, round((at - seconds) * unit),
                           len(frame), len(frame)) + frame
    return out


def test_raw_ipv4_udp_with_time_addresses_and_payload() -> None:
    data = pcap([(1700000000.25, ipv4("127.0.0.2", "127.0.0.1", udp(4000, 43000, b"rtp"))),
                 (1700000000.27, ipv4("127.0.0.3", "127.0.0.1", b"\x00" * 8, protocol=6))])
    found = list(udp_datagrams(io.BytesIO(data)))
    assert len(found) == 1                                   # the TCP one is skipped
    assert found[0].source == ("127.0.0.2", 4000)
    assert found[0].destination == ("127.0.0.1", 43000)
    assert found[0].payload == b"rtp"
    assert found[0].at == pytest.approx(1700000000.25)


def test_big_endian_nanoseconds_and_ipv6() -> None:
    frame = ipv6("::1", "2001:db8::1", udp(5, 6, b"x" * 20))
    found = list(udp_datagrams(io.BytesIO(pcap([(10.5, frame)], order=">",
                                                nanoseconds=True))))
    assert [(d.source, d.destination, d.payload) for d in found] == [
        (("::1", 5), ("2001:db8::1", 6), b"x" * 20)]
    assert found[0].at == pytest.approx(10.5)


def test_ethernet_with_a_vlan_tag() -> None:
    ethernet = b"\x00" * 12 + b"\x81\x00\x00\x05" + b"\x08\x00"
    frame = ethernet + ipv4("10.0.0.1", "10.0.0.2", udp(1, 2, b"hi"))
    found = list(udp_datagrams(io.BytesIO(pcap([(1.0, frame)], LINKTYPE_ETHERNET))))
    assert [d.payload for d in found] == [b"hi"]


def test_a_record_cut_short_ends_the_reading_quietly() -> None:
    data = pcap([(1.0, ipv4("1.1.1.1", "2.2.2.2", udp(1, 2, b"a"))),
                 (2.0, ipv4("1.1.1.1", "2.2.2.2", udp(1, 2, b"b" * 50)))])
    assert [d.payload for d in udp_datagrams(io.BytesIO(data[:-10]))] == [b"a"]
    assert [d.payload for d in udp_datagrams(io.BytesIO(data[:24 + 8]))] == []


@pytest.mark.parametrize(("data", "problem"), [
    (b"", "not a pcap"),
    (b"GIF89a" + b"\x00" * 30, "not a pcap"),
    (pcap([], linktype=113), "link type 113"),
])
def test_what_is_not_a_readable_pcap_is_named(data: bytes, problem: str) -> None:
    with pytest.raises(PcapError, match=problem):
        list(udp_datagrams(io.BytesIO(data)))
