"""UDP datagrams out of a classic pcap file (pure: reads a binary stream, nothing else).

rtpengine records a call (`start recording`, `--recording-method=pcap`) as a pcap of the
packets it received from the parties; the rtpengine backend turns that into the same stereo
WAV the embedded relay writes (media/rtpengine.py). This reader takes what rtpengine 10.5
writes and little more:
- the classic format (not pcapng): a 24-octet global header whose magic gives the byte
  order and the time unit (0xa1b2c3d4 microseconds, 0xa1b23c4d nanoseconds), then records
  of a 16-octet header (seconds, fraction, captured length, original length) and the data;
- link types 101 (LINKTYPE_RAW: the IP packet, rtpengine's `--recording-format=raw`) and
  1 (Ethernet, `--recording-format=eth`, with 802.1Q tags skipped);
- IPv4 (no fragments: rtpengine writes whole packets) and IPv6 (UDP as the first next
  header), UDP only.
Anything else in the file is skipped. A record cut short at the end (the writer stopped
mid-record: a crash, a full disk) ends the reading without an error; a file that is not a
pcap at all raises PcapError.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from sipmask.errors import MediaError

_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
_UDP = 17
_MAX_RECORD = 262144            # a record longer than this is not a packet: the file is bad


class PcapError(MediaError):
    """Not a pcap file sipmask can read."""


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    at: float                   # capture time, seconds since the epoch
    source: tuple[str, int]
    destination: tuple[str, int]
    payload: bytes


def udp_datagrams(stream: BinaryIO) -> Iterator[UdpDatagram]:
    """Each UDP datagram of the pcap on `stream`, in file order (module docstring)."""
    header = stream.read(24)
    if len(header) < 24 or header[:4] not in _MAGICS:
        raise PcapError("not a pcap file")
    order, unit = _MAGICS[header[:4]]
    (linktype,) = struct.unpack_from(order + "I", header, 20)
    if linktype not in (LINKTYPE_RAW, LINKTYPE_ETHERNET):
        raise PcapError(f"pcap link type {linktype} is not raw IP or Ethernet")
    record = struct.Struct(order + "IIII")
    while True:
        head = stream.read(record.size)
        if len(head) < record.size:
            return
        seconds, fraction, captured, _ = record.unpack(head)
        if captured > _MAX_RECORD:
            raise PcapError("pcap record longer than any packet")
        data = stream.read(captured)
        if len(data) < captured:
            return
        found = _udp(data, linktype, seconds + fraction * unit)
        if found is not None:
            yield found


def _udp(frame: bytes, linktype: int, at: float) -> UdpDatagram | None:
    start = 0
    if linktype == LINKTYPE_ETHERNET:
        start = 12
        while frame[start:start + 2] in (b"\x81\x00", b"\x88\xa8"):    # 802.1Q, 802.1ad
            start += 4
        start += 2
    if len(frame) < start + 1:
        return None
    version = frame[start] >> 4
    if version == 4:
        if len(frame) < start + 20:
            return None
        length = (frame[start] & 0x0F) * 4
        if frame[start + 9] != _UDP:
            return None
        source = str(ipaddress.IPv4Address(frame[start + 12:start + 16]))
        destination = str(ipaddress.IPv4Address(frame[start + 16:start + 20]))
        udp = start + length
    elif version == 6:
        if len(frame) < start + 40 or frame[start + 6] != _UDP:
            return None
        source = str(ipaddress.IPv6Address(frame[start + 8:start + 24]))
        destination = str(ipaddress.IPv6Address(frame[start + 24:start + 40]))
        udp = start + 40
    else:
        return None
    if len(frame) < udp + 8:
        return None
    sport, dport, size = struct.unpack_from("!HHH", frame, udp)
    end = min(len(frame), udp + size) if size >= 8 else len(frame)
    return UdpDatagram(at, (source, sport), (destination, dport), frame[udp + 8:end])
