"""The prompt player's RTP stream and schedule, and which announcement and codec a leg
gets (sipmask/media/prompt.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipmask.media import rtp
from sipmask.media.prompt import (
    ANNOUNCEMENTS,
    PromptPlayer,
    announcement,
    choose_codec,
    telephone_event_type,
)
from sipmask.media.wav import G711, Audio, WavError, encode_wav
from tests.support.tones import pcm, sine

T0 = 500.0
SSRC = 0xCAFEF00D
TONE = Audio(pcm(sine(1000, 0.125)))          # 1000 samples: 6 whole frames and 40 samples


def player(audio: Audio = TONE, *, codec: G711 = G711.PCMU, loop: bool = False,
           seq0: int = 65534, ts0: int = 2**32 - 200, max_burst: int = 3) -> PromptPlayer:
    return PromptPlayer(payload_type=codec.static_payload_type, codec=codec, audio=audio,
                        ssrc=SSRC, seq0=seq0, ts0=ts0, now=T0, loop=loop, max_burst=max_burst)


def run(p: PromptPlayer, limit: int = 1000) -> list[tuple[float, rtp.RtpPacket]]:
    """Tick exactly when the player asks, as the shell does; (time, packet) for each."""
    sent: list[tuple[float, rtp.RtpPacket]] = []
    for _ in range(limit):
        due = p.next_due()
        if due is None:
            break
        for raw in p.packets_due(due):
            parsed = rtp.parse(raw)
            assert parsed is not None and raw[0] == 0x80       # V=2, no P, X, CC
            sent.append((due, parsed))
    return sent


def test_a_prompt_is_sent_as_20_ms_packets_on_time() -> None:
    sent = run(player())
    assert len(sent) == 7                                     # ceil(1000 / 160)
    assert [t for t, _ in sent] == pytest.approx([T0 + 0.02 * i for i in range(7)])
    packets = [p for _, p in sent]
    assert [p.sequence for p in packets] == [65534, 65535, 0, 1, 2, 3, 4]
    assert [p.timestamp for p in packets] == [(2**32 - 200 + 160 * i) % 2**32 for i in range(7)]
    assert {p.ssrc for p in packets} == {SSRC}
    assert [p.marker for p in packets] == [True] + [False] * 6
    assert {p.payload_type for p in packets} == {0}
    assert all(len(p.payload) == 160 for p in packets)


@pytest.mark.parametrize("codec", list(G711))
def test_payloads_are_the_prompt_in_the_legs_codec(codec: G711) -> None:
    payload = b"".join(p.payload for _, p in run(player(codec=codec)))
    assert payload[:1000] == codec.encode(TONE.pcm)
    assert payload[1000:] == bytes([codec.silence]) * 120     # the last frame padded
    assert {p.payload_type for _, p in run(player(codec=codec))} == {codec.static_payload_type}


def test_nothing_is_sent_before_its_time() -> None:
    p = player()
    assert p.packets_due(T0 - 0.001) == []
    assert len(p.packets_due(T0)) == 1
    assert p.packets_due(T0 + 0.019) == []
    assert len(p.packets_due(T0 + 0.02)) == 1
    assert p.next_due() == pytest.approx(T0 + 0.04)


def test_a_late_tick_within_the_burst_catches_up() -> None:
    p = player()
    assert len(p.packets_due(T0)) == 1
    late = [rtp.parse(raw) for raw in p.packets_due(T0 + 0.065)]   # slots at 20, 40, 60 ms
    assert [rtp.timestamp_delta(x.timestamp, 2**32 - 200) for x in late if x] == [160, 320, 480]
    assert [x.marker for x in late if x] == [False, False, False]
    assert p.stats.slots_skipped == 0


def test_a_very_late_tick_slips_the_schedule_without_a_burst_or_lost_audio() -> None:
    p = player(max_burst=3, seq0=10, ts0=1000)
    first = rtp.parse(p.packets_due(T0)[0])
    late = [rtp.parse(raw) for raw in p.packets_due(T0 + 0.125)]  # 6 slots due (20..120 ms)
    assert first is not None and all(late)
    assert len(late) == 3                                          # never more than max_burst
    assert [x.sequence for x in late if x] == [11, 12, 13]         # no sequence gap: not loss
    # The 3 oldest slots are skipped as time: the timestamp jumps over them.
    assert [x.timestamp for x in late if x] == [1000 + 160 * 4, 1000 + 160 * 5, 1000 + 160 * 6]
    assert [x.marker for x in late if x] == [True, False, False]   # a new talkspurt
    # The audio goes on where it stopped: frames 1, 2, 3 of the prompt.
    frames = [G711.PCMU.encode(TONE.pcm[320 * i:320 * (i + 1)]) for i in (1, 2, 3)]
    assert [x.payload for x in late if x] == frames
    assert p.stats.slots_skipped == 3
    assert p.next_due() == pytest.approx(T0 + 0.14)


def test_stop_is_at_once() -> None:
    p = player(loop=True)
    assert len(p.packets_due(T0)) == 1
    p.stop()
    assert not p.playing
    assert p.next_due() is None
    assert p.packets_due(T0 + 10) == []


def test_a_looped_prompt_repeats_without_a_gap_until_stopped() -> None:
    two_frames = Audio(pcm([float(i) for i in range(320)]))      # a ramp: frames differ
    p = player(two_frames, loop=True, ts0=0, seq0=0)
    sent = run(p, limit=7)
    assert len(sent) == 7 and p.playing
    payloads = [x.payload for _, x in sent]
    assert payloads[0] == payloads[2] == payloads[4] == payloads[6] != payloads[1]
    assert [x.timestamp for _, x in sent] == [160 * i for i in range(7)]
    assert [x.marker for _, x in sent] == [True] + [False] * 6


def test_a_new_prompt_after_silence_moves_the_timestamp_and_sets_the_marker() -> None:
    p = player(seq0=0, ts0=0)
    run(p)
    assert p.next_due() is None
    p.play(TONE, T0 + 2.0)                       # 2 s after the stream started
    again = run(p)
    first = again[0][1]
    assert again[0][0] == pytest.approx(T0 + 2.0)
    assert first.sequence == 7 and first.marker
    assert first.timestamp == 16000              # 2 s on the 8 kHz clock
    assert first.ssrc == SSRC


def test_a_new_prompt_while_playing_takes_the_next_slot() -> None:
    p = player(seq0=0, ts0=0)
    p.packets_due(T0)
    p.packets_due(T0 + 0.02)
    other = Audio(pcm(sine(2000, 0.02)))
    p.play(other, T0 + 0.03)
    sent = run(p)
    assert [(x.sequence, x.timestamp, x.marker) for _, x in sent] == [(2, 320, False)]
    assert sent[0][0] == pytest.approx(T0 + 0.04)
    assert sent[0][1].payload == G711.PCMU.encode(other.pcm)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="max_burst"):
        player(max_burst=0)
    with pytest.raises(ValueError, match="payload type"):
        PromptPlayer(payload_type=128, codec=G711.PCMU, audio=TONE, ssrc=1, seq0=0, ts0=0,
                     now=0.0)


# --- which codec, which file ---------------------------------------------------------------

def test_choose_codec_follows_the_offer_order() -> None:
    assert choose_codec(["0", "8", "101"], ["101 telephone-event/8000"]) == (G711.PCMU, 0)
    assert choose_codec(["18", "8", "0"], []) == (G711.PCMA, 8)
    assert choose_codec(["96", "0"], ["96 pcma/8000"]) == (G711.PCMA, 96)


def test_a_leg_without_g711_gets_no_prompt() -> None:
    assert choose_codec(["18", "101"], ["18 G729/8000", "101 telephone-event/8000"]) is None
    assert choose_codec(["96"], ["96 PCMU/16000"]) is None       # wrong clock rate
    assert choose_codec(["0"], ["0 G722/8000"]) is None          # rtpmap overrides the table
    assert choose_codec([], []) is None


def test_telephone_event_type() -> None:
    assert telephone_event_type(["0", "101"], ["101 telephone-event/8000"]) == 101
    assert telephone_event_type(["0", "96"], ["96 Telephone-Event/8000/1"]) == 96
    assert telephone_event_type(["0"], ["101 telephone-event/8000"]) is None  # not on the m=
    assert telephone_event_type(["0", "97"], ["97 telephone-event/16000"]) is None


@pytest.mark.parametrize("key", ANNOUNCEMENTS)
def test_the_package_ships_a_default_for_each_announcement(key: str) -> None:
    audio = announcement(key, "default")
    assert audio is not None
    assert 1.0 <= audio.duration_s <= 8.0
    # Not silence: the loudest sample is above -20 dBFS.
    assert max(abs(v) for v in memoryview(audio.pcm).cast("h")) > 3276


def test_null_means_no_prompt_and_a_path_means_the_operators_file(tmp_path: Path) -> None:
    assert announcement("callee_notice", None) is None
    (tmp_path / "mine.wav").write_bytes(encode_wav(TONE.pcm))
    assert announcement("unbound", "mine.wav", base=tmp_path) == TONE
    assert announcement("unbound", str(tmp_path / "mine.wav")) == TONE
    with pytest.raises(WavError, match=r"nothere\.wav: cannot read"):
        announcement("unbound", "nothere.wav", base=tmp_path)
    with pytest.raises(ValueError, match="unknown announcement"):
        announcement("hold_music", "default")
