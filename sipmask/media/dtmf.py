"""DTMF in, three ways, as digits (sans-IO): RFC 4733 telephone-events, SIP INFO bodies,
and in-band tones.

A digit is one of "0123456789*#ABCD". Each source reports one digit per key press:

- `TelephoneEventDecoder` (RFC 4733): one decoder per incoming RTP stream. An event is
  known by its RTP timestamp, which is the event's start and stays the same in every packet
  of it (§2.3.5); the repeated updates and the three end packets (§2.5.1.4) of one event
  give one digit, and a new timestamp is a new press even for the same key. The digit is
  reported on the first packet seen of the event, so a lost start packet (first seen is an
  update or an end) loses nothing. Redundant events inside RFC 2198 payloads (RFC 4733
  §2.5.1.5: how several events share a packet) go through `feed_red`, older blocks first.
  A long press that outgrows the 16-bit duration is sent as segments, each with a new
  timestamp equal to the last one plus the duration (§2.5.1.3): still one digit.
- `parse_info`: the body of a SIP INFO, `application/dtmf-relay` (`Signal=5`,
  `Duration=160`; the de-facto format of Cisco and most trunks, no RFC) or
  `application/dtmf` (the key alone). A bad body is a `DtmfBodyError` (400), another type an
  `UnsupportedDtmfType` (415); each INFO is one press (its transaction absorbs resends).
- `InbandDtmfDetector`: Goertzel filters at the eight DTMF frequencies (ITU-T Q.23) over
  blocks of 102 samples (12.75 ms at 8 kHz: 78 Hz bins, wide enough to accept the ±1.5 %
  frequency error Q.24 allows, narrow enough to tell 697 Hz from 770 Hz), for trunks that
  send neither. A block holds a key when its strongest row and column tones are both above
  the level floor, within the twist limits, and carry most of the block's energy (speech
  and noise spread theirs); a key is reported after two such blocks in a row (25.5 ms) and
  reported again only after three blocks without it (38 ms: ITU-T Q.24's shortest pause
  between digits is 40 ms, and a 10 ms dropout inside a press does not split it).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from sipmask.errors import ParseError, SipError
from sipmask.media import rtp
from sipmask.media.goertzel import goertzel_power
from sipmask.media.wav import RATE, samples

KEYS = "0123456789*#ABCD"            # RFC 4733 §3.2 Table 7: events 0-15 in this order


def event_key(code: int) -> str | None:
    """The key of a telephone-event code, or None for events that are not DTMF (16+)."""
    return KEYS[code] if 0 <= code < len(KEYS) else None


@dataclass
class DtmfStats:
    digits: int = 0
    malformed: int = 0          # payloads too short to hold an event report
    other_events: int = 0       # telephone-events that are not keys (flash, tones, ...)


# --- RFC 4733 ----------------------------------------------------------------------------

_EVENT = struct.Struct("!BBH")        # event | E R volume | duration
_END = 0x80
_LONG_SEGMENT = 0xFFFF                # RFC 4733 §2.5.1.3: the duration field's maximum


@dataclass
class _Seen:
    code: int
    ended: bool
    duration: int


class TelephoneEventDecoder:
    """Digits from one stream's telephone-event packets (see the module docstring).

    Memory is bounded: the last `memory` events are remembered, which covers every
    retransmission of an event (they all come within its duration plus ~50 ms)."""

    def __init__(self, memory: int = 16) -> None:
        self._seen: OrderedDict[tuple[int, int], _Seen] = OrderedDict()
        self._memory = memory
        self.stats = DtmfStats()

    def feed(self, packet: rtp.RtpPacket) -> list[str]:
        """The digit this telephone-event packet starts, if it starts one."""
        return self._event(packet.ssrc, packet.timestamp, packet.payload)

    def feed_red(self, packet: rtp.RtpPacket, event_payload_type: int) -> list[str]:
        """Digits from an RFC 2198 redundant payload whose blocks of `event_payload_type`
        are telephone-events; the older blocks first, so presses come out in order."""
        digits: list[str] = []
        for payload_type, timestamp, block in _red_blocks(packet.payload, packet.timestamp):
            if payload_type == event_payload_type:
                digits += self._event(packet.ssrc, timestamp, block)
        if not digits and not packet.payload:
            self.stats.malformed += 1
        return digits

    def _event(self, ssrc: int, timestamp: int, payload: bytes) -> list[str]:
        if len(payload) < _EVENT.size:
            self.stats.malformed += 1
            return []
        code, flags, duration = _EVENT.unpack_from(payload)
        ended = bool(flags & _END)
        identity = (ssrc, timestamp)
        seen = self._seen.get(identity)
        if seen is not None:
            # An update or a retransmitted end of an event already reported (§2.5.1.2-4).
            seen.ended |= ended
            seen.duration = max(seen.duration, duration)
            return []
        continuing = self._continues(ssrc, timestamp, code)
        self._remember(identity, _Seen(code, ended, duration))
        if continuing:
            return []
        key = event_key(code)
        if key is None:
            self.stats.other_events += 1
            return []
        self.stats.digits += 1
        return [key]

    def _continues(self, ssrc: int, timestamp: int, code: int) -> bool:
        """Is this a new segment of a long event (RFC 4733 §2.5.1.3) rather than a press?"""
        for (seen_ssrc, seen_timestamp), seen in self._seen.items():
            if seen_ssrc == ssrc and seen.code == code and not seen.ended:
                # The new segment starts one maximum duration after the last; allow for
                # the last packets of the old segment having been lost.
                step = rtp.timestamp_delta(timestamp, seen_timestamp)
                if _LONG_SEGMENT - 4000 <= step <= _LONG_SEGMENT:
                    return True
        return False

    def _remember(self, identity: tuple[int, int], seen: _Seen) -> None:
        self._seen[identity] = seen
        while len(self._seen) > self._memory:
            self._seen.popitem(last=False)


def _red_blocks(payload: bytes, timestamp: int) -> list[tuple[int, int, bytes]]:
    """(payload type, timestamp, data) of each block of an RFC 2198 payload, in the order
    they are carried (redundant ones first, the primary last); [] when malformed.

    RFC 2198 §3: each redundant block has a 4-octet header, F=1 | PT(7) | timestamp
    offset(14) | length(10); the primary's header is 1 octet, F=0 | PT(7)."""
    headers: list[tuple[int, int, int]] = []
    offset = 0
    while True:
        if offset >= len(payload):
            return []
        first = payload[offset]
        if not first & 0x80:
            primary_type = first & 0x7F
            offset += 1
            break
        if offset + 4 > len(payload):
            return []
        (word,) = struct.unpack_from("!I", payload, offset)
        headers.append(((word >> 24) & 0x7F, (word >> 10) & 0x3FFF, word & 0x3FF))
        offset += 4
    blocks: list[tuple[int, int, bytes]] = []
    for payload_type, ts_offset, length in headers:
        if offset + length > len(payload):
            return []
        blocks.append((payload_type, (timestamp - ts_offset) & 0xFFFFFFFF,
                       payload[offset:offset + length]))
        offset += length
    blocks.append((primary_type, timestamp, payload[offset:]))
    return blocks


# --- SIP INFO ------------------------------------------------------------------------------

class DtmfBodyError(ParseError):
    """An INFO body of a DTMF type that does not hold a key (answered 400)."""


class UnsupportedDtmfType(SipError):
    """An INFO body of a type that is not DTMF (answered 415, RFC 3261 §21.4.13)."""

    status = 415
    default_reason = "Unsupported Media Type"


DTMF_INFO_TYPES = ("application/dtmf-relay", "application/dtmf")


def parse_info(content_type: str, body: bytes) -> str:
    """The key an INFO request carries (module docstring)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type not in DTMF_INFO_TYPES:
        raise UnsupportedDtmfType()
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise DtmfBodyError("Bad DTMF body: not ASCII") from None
    if media_type == "application/dtmf":
        return _info_key(text.strip())
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip().lower() == "signal":
            return _info_key(value.strip())
    raise DtmfBodyError("Bad DTMF body: no Signal= line")


def _info_key(value: str) -> str:
    if len(value) == 1 and value.upper() in KEYS:
        return value.upper()
    # Some gateways send the telephone-event code instead of the key: 10 for *, 11 for #.
    if value.isdigit() and len(value) <= 2:
        key = event_key(int(value))
        if key is not None:
            return key
    raise DtmfBodyError("Bad DTMF body: the signal is not a DTMF key")


# --- in-band -------------------------------------------------------------------------------

ROWS = (697.0, 770.0, 852.0, 941.0)         # ITU-T Q.23: the low group
COLUMNS = (1209.0, 1336.0, 1477.0, 1633.0)  # the high group
KEYPAD = ("123A", "456B", "789C", "*0#D")
BLOCK = 102


def _db(ratio_db: float) -> float:
    return float(10.0 ** (ratio_db / 10.0))


@dataclass(frozen=True)
class InbandLimits:
    """What a block must show to hold a key. Levels in dBm0: a full-scale sine in G.711 is
    +3.17 dBm0 (ITU-T G.711 Table 5), so a tone of `level` dBm0 has amplitude
    10**((level - 3.17) / 20) of full scale."""

    min_level_dbm0: float = -30.0     # each tone; keypads send about -7 to -10 dBm0
    max_twist_db: float = 8.0         # row louder than column ("normal twist", Q.24)
    max_reverse_twist_db: float = 4.0  # column louder than row
    min_tone_share: float = 0.6       # the two tones' share of the block's energy
    min_peak_db: float = 8.0          # the best tone over the others of its group
    hits: int = 2                     # blocks in a row before a key counts
    release: int = 3                  # blocks without it before the same key counts again


class InbandDtmfDetector:
    """Keys in a stream of 8 kHz pcm (see the module docstring). Feed it the decoded audio
    of one direction, in order; it keeps at most one block of samples between calls."""

    def __init__(self, limits: InbandLimits | None = None) -> None:
        self.limits = limits or InbandLimits()
        amplitude = 10.0 ** ((self.limits.min_level_dbm0 - 3.17) / 20.0)
        self._min_power = amplitude * amplitude     # goertzel_power reads a² for a sine
        self._pending: list[float] = []
        self._candidate: str | None = None
        self._run = 0
        self._held: str | None = None
        self._misses = 0
        self.stats = DtmfStats()

    def feed(self, pcm: bytes) -> list[str]:
        """The keys whose press completes in this audio."""
        pending = self._pending + [value / 32768.0 for value in samples(pcm)]
        digits: list[str] = []
        whole = len(pending) - len(pending) % BLOCK
        for start in range(0, whole, BLOCK):
            digit = self._step(self.block_key(pending[start:start + BLOCK]))
            if digit is not None:
                digits.append(digit)
        self._pending = pending[whole:]
        self.stats.digits += len(digits)
        return digits

    def _step(self, key: str | None) -> str | None:
        """The debounce: a key after `hits` blocks in a row, once per press."""
        if key is not None and key == self._candidate:
            self._run += 1
        else:
            self._candidate, self._run = key, 1 if key is not None else 0
        if key is not None and key == self._held:
            self._misses = 0
            return None
        if self._held is not None:
            self._misses += 1
            if self._misses >= self.limits.release:
                self._held = None
        if key is not None and self._run >= self.limits.hits:
            self._held, self._misses = key, 0
            return key
        return None

    def block_key(self, block: Sequence[float]) -> str | None:
        """The key one block holds, or None."""
        energy = sum(x * x for x in block) / len(block)   # a sine's mean square is a²/2
        # Cheap gate first: two tones at the floor hold at least this much.
        if energy < self._min_power:
            return None
        rows = [goertzel_power(block, hz, RATE) for hz in ROWS]
        cols = [goertzel_power(block, hz, RATE) for hz in COLUMNS]
        row = max(range(4), key=rows.__getitem__)
        col = max(range(4), key=cols.__getitem__)
        low, high = rows[row], cols[col]
        limits = self.limits
        if low < self._min_power or high < self._min_power:
            return None
        if low > high * _db(limits.max_twist_db) or high > low * _db(limits.max_reverse_twist_db):
            return None
        if (low + high) / 2.0 < limits.min_tone_share * energy:
            return None
        peak = _db(limits.min_peak_db)
        if any(p * peak > low for i, p in enumerate(rows) if i != row) or \
                any(p * peak > high for i, p in enumerate(cols) if i != col):
            return None
        return KEYPAD[row][col]
