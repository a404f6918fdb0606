"""RTCP scrubbing: what a relayed RTCP packet must not carry across (pure, no I/O).

RTP payloads are the conversation and pass untouched, but RTCP carries text about the
sender (RFC 3550 §6.5): SDES CNAME is often `user@host` with the real number or the
private IP in it, and NAME, EMAIL, PHONE, LOC, TOOL, NOTE and PRIV items may hold the rest
of a phone's identity. A BYE may carry a reason text and an APP packet anything at all.

`scrub(packet, cname)` returns the compound packet with:
- every SDES chunk reduced to its SSRC and one CNAME item set to `cname` (RFC 3550 §6.5.1
  requires a CNAME in each compound packet; a stable pseudonym per call side keeps
  receivers' lip-sync and SSRC bookkeeping working),
- BYE reason text removed,
- APP packets (PT 204) removed,
- everything else (SR, RR, RTPFB, PSFB, XR, ...) copied unchanged;
or None when the packet does not parse as RTCP: a malformed packet that cannot be scrubbed
is dropped rather than relayed, since it might be carrying what scrubbing removes.

With rtcp-mux (RFC 5761) RTCP shares the RTP port; `is_rtcp` tells the two apart by the
second octet (RFC 5761 §4: 192-223 is RTCP).
"""

from __future__ import annotations

import struct

SR, RR, SDES, BYE, APP = 200, 201, 202, 203, 204
_CNAME = 1
_HEADER = struct.Struct("!BBH")


def is_rtcp(packet: bytes) -> bool:
    """RFC 5761 §4: on a muxed port a second octet of 192-223 is RTCP, not RTP."""
    return len(packet) >= 2 and 192 <= packet[1] <= 223


def scrub(packet: bytes, cname: bytes) -> bytes | None:
    """The packet with identity-bearing text replaced or removed (module docstring);
    unchanged bytes when there is nothing to remove; None when it is not valid RTCP."""
    if len(cname) > 255:
        raise ValueError("CNAME longer than 255 octets")
    size = len(packet)
    offset = 0
    parts: list[bytes] = []
    changed = False
    while offset < size:
        if size - offset < 4:
            return None
        first, pt, words = _HEADER.unpack_from(packet, offset)
        length = (words + 1) * 4
        end = offset + length
        if first >> 6 != 2 or end > size:
            return None
        count = first & 0x1F
        body = packet[offset + 4:end]
        if first & 0x20:
            # Padding (RFC 3550 §6.4.1): only the last packet of a compound may carry it.
            if end != size or not body or not 0 < body[-1] <= len(body):
                return None
            body = body[:len(body) - body[-1]]
        if pt == SDES:
            chunk = _sdes(body, count, cname)
            if chunk is None:
                return None
            parts.append(chunk)
            changed = True
        elif pt == BYE:
            if len(body) < 4 * count:
                return None
            if len(body) > 4 * count or first & 0x20:
                parts.append(_packet(count, BYE, body[:4 * count]))
                changed = True
            else:
                parts.append(packet[offset:end])
        elif pt == APP:
            changed = True
        else:
            parts.append(packet[offset:end])
        offset = end
    if not parts:
        return None
    return b"".join(parts) if changed else packet


def _sdes(body: bytes, count: int, cname: bytes) -> bytes | None:
    """An SDES packet whose `count` chunks keep their SSRC and carry only `cname`."""
    item = bytes((_CNAME, len(cname))) + cname
    pad = b"\x00" * (4 - (len(item) % 4))   # the null item ending the list, then to 32 bits
    chunk_tail = item + pad
    out: list[bytes] = []
    pos = 0
    n = len(body)
    for _ in range(count):
        if n - pos < 4:
            return None
        out.append(body[pos:pos + 4])
        pos += 4
        while True:             # items up to the null item (RFC 3550 §6.5)
            if pos >= n:
                return None
            kind = body[pos]
            if kind == 0:
                pos = (pos + 4) & ~3   # the null item and padding to the next 32-bit boundary
                break
            if pos + 2 > n or pos + 2 + body[pos + 1] > n:
                return None
            pos += 2 + body[pos + 1]
        out.append(chunk_tail)
    if pos > n or any(body[pos:]):
        return None
    return _packet(count, SDES, b"".join(out))


def _packet(count: int, pt: int, body: bytes) -> bytes:
    return _HEADER.pack(0x80 | count, pt, len(body) // 4) + body
