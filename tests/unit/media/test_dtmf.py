"""DTMF in: RFC 4733 telephone-events, INFO bodies, in-band tones (sipmask/media/dtmf.py).
Packets are built here byte by byte; tones are made with math (tests/support/tones.py)."""

from __future__ import annotations

import struct

import pytest

from sipmask.media import rtp
from sipmask.media.dtmf import (
    DtmfBodyError,
    InbandDtmfDetector,
    InbandLimits,
    TelephoneEventDecoder,
    UnsupportedDtmfType,
    parse_info,
)
from sipmask.media.wav import G711
from tests.support.tones import add, dtmf, noise, pcm, silence, sine

PT = 101
SSRC = 0x11223344


def event(code: int, *, end: bool = False, duration: int = 0, volume: int = 10) -> bytes:
    """RFC 4733 §2.3: event | E R volume | duration."""
    return struct.pack("!BBH", code, (0x80 if end else 0) | volume, duration)


def packet(ts: int, payload: bytes, *, seq: int = 0, marker: bool = False,
           ssrc: int = SSRC, pt: int = PT) -> rtp.RtpPacket:
    parsed = rtp.parse(rtp.build(pt, seq, ts, ssrc, payload, marker=marker))
    assert parsed is not None
    return parsed


def press(code: int, ts: int, *, updates: int = 3, step: int = 400) -> list[rtp.RtpPacket]:
    """A key press as a sender transmits it (RFC 4733 §2.5.1): the start with the marker,
    updates with a growing duration, and the end packet three times."""
    packets = [packet(ts, event(code, duration=step), marker=True)]
    packets += [packet(ts, event(code, duration=step * (i + 2))) for i in range(updates)]
    final = step * (updates + 2)
    packets += [packet(ts, event(code, end=True, duration=final)) for _ in range(3)]
    return packets


def decode(decoder: TelephoneEventDecoder, packets: list[rtp.RtpPacket]) -> list[str]:
    return [digit for p in packets for digit in decoder.feed(p)]


# --- RFC 4733 ------------------------------------------------------------------------------

def test_one_press_is_one_digit_whatever_the_packets() -> None:
    decoder = TelephoneEventDecoder()
    assert decode(decoder, press(5, 8000)) == ["5"]
    assert decoder.stats.digits == 1


def test_every_key_event() -> None:
    decoder = TelephoneEventDecoder()
    packets = [p for code in range(16) for p in press(code, 1000 + 2000 * code)]
    assert "".join(decode(decoder, packets)) == "0123456789*#ABCD"


def test_the_same_key_twice_is_two_digits() -> None:
    decoder = TelephoneEventDecoder()
    assert decode(decoder, press(11, 8000) + press(11, 9600)) == ["#", "#"]


def test_a_lost_start_loses_no_digit() -> None:
    decoder = TelephoneEventDecoder()
    only_ends = press(7, 4000)[-3:]              # start and updates lost: the end arrives
    assert decode(decoder, only_ends) == ["7"]
    # An update that arrives after the end (reordering) is the same event.
    assert decoder.feed(packet(4000, event(7, duration=400))) == []


def test_repeats_after_other_events_are_still_recognised() -> None:
    decoder = TelephoneEventDecoder()
    one, two = press(1, 1000), press(2, 3000)
    assert decode(decoder, one[:2] + two[:2] + one[2:] + two[2:]) == ["1", "2"]


def test_streams_are_told_apart_by_ssrc() -> None:
    decoder = TelephoneEventDecoder()
    first = packet(1000, event(3, end=True, duration=800))
    other = packet(1000, event(3, end=True, duration=800), ssrc=SSRC + 1)
    assert decode(decoder, [first, other]) == ["3", "3"]


def test_events_that_are_not_keys_and_short_payloads_give_nothing() -> None:
    decoder = TelephoneEventDecoder()
    assert decoder.feed(packet(1000, event(16, duration=800))) == []          # flash
    assert decoder.feed(packet(2000, b"\x05\x80")) == []
    assert decoder.stats.other_events == 1
    assert decoder.stats.malformed == 1
    assert decoder.stats.digits == 0


def test_a_long_press_sent_as_segments_is_one_digit() -> None:
    # RFC 4733 §2.5.1.3: past 0xFFFF the sender starts a new segment at ts + 0xFFFF.
    decoder = TelephoneEventDecoder()
    first = [packet(1000, event(0, duration=d)) for d in (400, 0xFFFF)]
    second = [packet(1000 + 0xFFFF, event(0, duration=d)) for d in (400, 2000)]
    second += [packet(1000 + 0xFFFF, event(0, end=True, duration=2400))] * 3
    assert decode(decoder, first + second) == ["0"]
    # After the end, the same key with a new timestamp is a new press.
    assert decode(decoder, press(0, 1000 + 0xFFFF + 4000)) == ["0"]


def red(blocks: list[tuple[int, int, bytes]], primary: bytes, primary_pt: int = PT) -> bytes:
    """RFC 2198 §3: redundant block headers (F=1, PT, ts offset, length), the primary's
    1-octet header, then the blocks' data in the same order."""
    headers = b"".join(struct.pack("!I", 0x80000000 | (pt << 24) | (offset << 10) | len(data))
                       for pt, offset, data in blocks)
    return headers + bytes([primary_pt]) + b"".join(d for _, _, d in blocks) + primary


def test_redundancy_recovers_a_lost_event_in_order() -> None:
    decoder = TelephoneEventDecoder()
    # The packet that carried "1" (ts 1000) was lost; the next carries it as redundancy.
    first = packet(2000, red([(PT, 1000, event(1, end=True, duration=640))],
                             event(2, duration=160)), pt=100)
    assert decoder.feed_red(first, PT) == ["1", "2"]
    again = packet(2000, red([(PT, 1000, event(1, end=True, duration=640)),
                              (PT, 0, event(2, duration=160))], event(2, duration=320)), pt=100)
    assert decoder.feed_red(again, PT) == []
    assert decoder.stats.digits == 2


def test_redundancy_ignores_other_types_and_malformed_payloads() -> None:
    decoder = TelephoneEventDecoder()
    audio = packet(5000, red([(0, 160, b"\xff" * 160)], event(9, duration=160)), pt=100)
    assert decoder.feed_red(audio, PT) == ["9"]
    assert decoder.feed_red(packet(6000, red([(PT, 10, event(4))], b"")[:-4] + b"", pt=100),
                            PT) == []            # a block longer than the payload
    assert decoder.feed_red(packet(7000, b"", pt=100), PT) == []
    assert decoder.feed_red(packet(7000, b"\x80\x00", pt=100), PT) == []     # header cut
    assert decoder.stats.digits == 1


# --- INFO ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("content_type", "body", "key"), [
    ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", "5"),
    ("application/dtmf-relay", b"Signal= *\r\nDuration= 250\r\n", "*"),
    ("Application/DTMF-Relay; charset=us-ascii", b"signal=#\n", "#"),
    ("application/dtmf-relay", b"Duration=100\r\nSignal=a\r\n", "A"),
    ("application/dtmf-relay", b"Signal=10\r\nDuration=160", "*"),
    ("application/dtmf-relay", b"Signal=11\r\n", "#"),
    ("application/dtmf", b"7\r\n", "7"),
    ("application/dtmf", b"D", "D"),
])
def test_info_bodies(content_type: str, body: bytes, key: str) -> None:
    assert parse_info(content_type, body) == key


@pytest.mark.parametrize(("content_type", "body", "reason"), [
    ("application/dtmf-relay", b"Duration=160\r\n", "no Signal= line"),
    ("application/dtmf-relay", b"Signal=X\r\n", "not a DTMF key"),
    ("application/dtmf-relay", b"Signal=16\r\n", "not a DTMF key"),
    ("application/dtmf-relay", b"Signal=\r\n", "not a DTMF key"),
    ("application/dtmf", b"55", "not a DTMF key"),
    ("application/dtmf", "五".encode(), "not ASCII"),
])
def test_a_bad_info_body_is_a_400(content_type: str, body: bytes, reason: str) -> None:
    with pytest.raises(DtmfBodyError) as caught:
        parse_info(content_type, body)
    assert caught.value.status == 400
    assert reason in caught.value.reason


def test_an_info_of_another_type_is_a_415() -> None:
    with pytest.raises(UnsupportedDtmfType) as caught:
        parse_info("application/sdp", b"v=0\r\n")
    assert caught.value.status == 415


# --- in-band -------------------------------------------------------------------------------

def detect(samples: list[float], detector: InbandDtmfDetector | None = None,
           chunk: int = 160) -> list[str]:
    """Feed the audio as 20 ms packets would bring it."""
    detector = detector or InbandDtmfDetector()
    data = pcm(samples)
    digits: list[str] = []
    for i in range(0, len(data), chunk * 2):
        digits += detector.feed(data[i:i + chunk * 2])
    return digits


def keyed(keys: str, *, on: float = 0.05, off: float = 0.05, **kw: float) -> list[float]:
    out: list[float] = []
    for key in keys:
        out += dtmf(key, on, **kw) + silence(off)
    return out


def test_every_key_is_heard_once_in_order() -> None:
    assert "".join(detect(keyed("0123456789*#ABCD"))) == "0123456789*#ABCD"


def test_the_same_key_twice_is_two_digits_and_a_long_press_one() -> None:
    assert detect(keyed("55")) == ["5", "5"]
    assert detect(dtmf("8", 1.5) + silence(0.1)) == ["8"]


@pytest.mark.parametrize("lead", [0, 17, 34, 51, 68, 85])
def test_a_dropout_does_not_split_a_press_but_a_pause_does(lead: int) -> None:
    # `lead` samples first, so the gap falls at every place inside the 102-sample blocks.
    start = silence(lead / 8000)
    dropout = dtmf("5", 0.06) + silence(0.01) + dtmf("5", 0.06) + silence(0.1)
    pause = dtmf("5", 0.05) + silence(0.04) + dtmf("5", 0.05) + silence(0.1)  # Q.24: 40 ms
    assert detect(start + dropout) == ["5"]
    assert detect(start + pause) == ["5", "5"]


def test_packet_sizes_do_not_change_what_is_heard() -> None:
    audio = keyed("1#9")
    assert detect(audio, chunk=1) == detect(audio, chunk=7) == detect(audio, chunk=4000) == \
        ["1", "#", "9"]


def test_tones_through_g711_are_heard() -> None:
    for codec in G711:
        through = codec.decode(codec.encode(pcm(keyed("*7"))))
        assert InbandDtmfDetector().feed(through) == ["*", "7"]


@pytest.mark.parametrize("scale", [0.985, 1.015])
def test_a_keypad_off_by_1_5_percent_is_heard(scale: float) -> None:
    assert detect(keyed("1D", scale=scale)) == ["1", "D"]


def test_tones_3_5_percent_off_are_not_dtmf() -> None:
    assert detect(keyed("D3", scale=1.035)) == []


@pytest.mark.parametrize(("twist", "heard"), [(-6.0, True), (-10.0, False), (3.0, True),
                                              (6.0, False)])
def test_twist_limits(twist: float, heard: bool) -> None:
    assert detect(keyed("6", twist_db=twist)) == (["6"] if heard else [])


def test_level_floor() -> None:
    assert detect(keyed("2", level_dbm0=-25.0)) == ["2"]
    assert detect(keyed("2", level_dbm0=-36.0)) == []


@pytest.mark.parametrize("lead", range(0, 102, 17))
def test_a_40_ms_press_is_heard_wherever_it_falls_in_the_blocks(lead: int) -> None:
    assert detect(silence(lead / 8000) + keyed("0", on=0.04)) == ["0"]


@pytest.mark.parametrize("lead", range(0, 102, 17))
def test_a_press_shorter_than_two_blocks_is_not_a_digit(lead: int) -> None:
    assert detect(silence(lead / 8000) + keyed("4", on=0.015)) == []


def test_noise_speechless_tones_and_silence_give_nothing() -> None:
    assert detect(noise(3.0, 6000.0)) == []
    assert detect(sine(697, 1.0, 8000) + sine(1000, 1.0, 8000)) == []       # one tone each
    assert detect(add(sine(697, 1.0, 6000), sine(1000, 1.0, 6000))) == []   # 1000 Hz: no column
    assert detect(silence(1.0)) == []


def test_a_key_in_noise_is_still_heard() -> None:
    audio = keyed("39")
    assert detect(add(audio, noise(len(audio) / 8000, 300.0, seed=7))) == ["3", "9"]


def test_the_limits_are_settings() -> None:
    strict = InbandDtmfDetector(InbandLimits(hits=4))    # 51 ms in a row needed
    assert detect(keyed("5", on=0.045), strict) == []
    assert detect(keyed("5", on=0.07), InbandDtmfDetector(InbandLimits(hits=4))) == ["5"]
