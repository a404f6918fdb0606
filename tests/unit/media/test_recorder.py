"""A call's stereo recording (sipmask/media/recorder.py) and the file it goes to
(sipmask/media/sinks.py): alignment, gaps, bounded memory, and failures that never reach
the call."""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import wave
from pathlib import Path

import pytest

from sipmask.media import rtp
from sipmask.media.recorder import CallRecorder, Party
from sipmask.media.sinks import FileSink
from sipmask.media.wav import G711, wav_header
from tests.support.goertzel import goertzel_power
from tests.support.tones import pcm, sine

T0 = 1000.0
FRAME = 160


class MemorySink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.writes: list[int] = []
        self.closed = 0

    def write(self, data: bytes) -> None:
        self.writes.append(len(data))
        self.data += data

    def close(self) -> None:
        self.closed += 1


class FullDisk(MemorySink):
    """Takes `room` writes, then every write fails as a full disk does."""

    def __init__(self, room: int, *, close_fails: bool = False) -> None:
        super().__init__()
        self.room = room
        self.refused = 0
        self.close_fails = close_fails

    def write(self, data: bytes) -> None:
        if len(self.writes) >= self.room:
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        super().write(data)

    def close(self) -> None:
        super().close()
        if self.close_fails:
            raise OSError(errno.EIO, "Input/output error")


def channels(data: bytes) -> tuple[list[int], list[int]]:
    """Left and right samples of the stereo stream a recorder wrote, read by the stdlib (an
    independent reader) behind the header a recording is read back with."""
    with wave.open(io.BytesIO(wav_header(2, len(data)) + bytes(data)), "rb") as file:
        assert (file.getnchannels(), file.getsampwidth(), file.getframerate()) == (2, 2, 8000)
        frames = file.readframes(file.getnframes())
    values = struct.unpack(f"<{len(frames) // 2}h", frames)
    return list(values[0::2]), list(values[1::2])


def stream(recorder: CallRecorder, party: Party, audio: bytes, *, start: float, ts0: int,
           ssrc: int, jitter: list[float] | None = None) -> None:
    """Feed `audio` as 20 ms packets sent from `start`, each arriving at its send time plus
    its jitter."""
    for i in range(0, len(audio) // 2, FRAME):
        delay = jitter[i // FRAME] if jitter else 0.0
        recorder.feed(party, start + (i + FRAME) / 8000 + delay, ts0 + i, ssrc,
                      audio[2 * i:2 * (i + FRAME)])


def interleaved_feed(recorder: CallRecorder, left: bytes, right: bytes, start: float) -> None:
    """Both legs' packets in arrival order, as the relay would see them."""
    for i in range(0, len(left) // 2, FRAME):
        now = start + (i + FRAME) / 8000
        recorder.feed(Party.CALLER, now, 5000 + i, 1, left[2 * i:2 * (i + FRAME)])
        recorder.feed(Party.CALLEE, now, 2**32 - 800 + i, 2, right[2 * i:2 * (i + FRAME)])


def test_caller_left_callee_right_in_one_stereo_wav() -> None:
    sink = MemorySink()
    recorder = CallRecorder(sink, T0)
    interleaved_feed(recorder, pcm(sine(1000, 1.0)), pcm(sine(2000, 1.0)), T0)
    stats = recorder.close(T0 + 1.0)
    left, right = channels(sink.data)
    assert len(left) == 8000
    norm = [v / 32768 for v in left]
    assert goertzel_power(norm, 1000, 8000) > 100 * goertzel_power(norm, 2000, 8000)
    norm = [v / 32768 for v in right]
    assert goertzel_power(norm, 2000, 8000) > 100 * goertzel_power(norm, 1000, 8000)
    assert stats.data_bytes == 8000 * 4 and not stats.failed
    assert sink.closed == 1


def test_the_two_sides_are_aligned_in_time_whatever_their_timestamps() -> None:
    sink = MemorySink()
    recorder = CallRecorder(sink, T0)
    quiet, click = bytes(2 * FRAME), pcm([10000.0] * FRAME)
    # Both legs send silence, then a click in the packet sent at 0.5 s, with unrelated
    # timestamp origins and SSRCs (the callee's timestamps wrap past 2**32 on the way).
    left = quiet * 25 + click + quiet * 24
    interleaved_feed(recorder, left, left, T0)
    recorder.close(T0 + 1.0)
    left_out, right_out = channels(sink.data)
    assert left_out.index(10000) == right_out.index(10000) == 4000


def test_gaps_are_silence_and_audio_resumes_in_its_place() -> None:
    sink = MemorySink()
    recorder = CallRecorder(sink, T0)
    tone = pcm([1000.0] * 1600)
    # 0-0.2 s, then nothing for 0.4 s (silence suppression), then 0.6-0.8 s: the RTP
    # timestamp jumps with the time, as RFC 3551 §4.1 has it.
    stream(recorder, Party.CALLER, tone, start=T0, ts0=0, ssrc=9)
    stream(recorder, Party.CALLER, tone, start=T0 + 0.6, ts0=4800, ssrc=9)
    recorder.close(T0 + 1.0)
    left, right = channels(sink.data)
    assert left == [1000] * 1600 + [0] * 3200 + [1000] * 1600 + [0] * 1600
    assert right == [0] * 8000                      # the callee said nothing: silence


def test_jitter_inside_the_window_does_not_move_audio() -> None:
    sink = MemorySink()
    recorder = CallRecorder(sink, T0)
    ramp = pcm([float(i % 20000) for i in range(8000)])
    jitter = [0.0] + [((i * 37) % 11) / 100 for i in range(1, 50)]     # 0-100 ms late
    stream(recorder, Party.CALLEE, ramp, start=T0, ts0=123, ssrc=5, jitter=jitter)
    stats = recorder.close(T0 + 1.2)
    _, right = channels(sink.data)
    assert right[:8000] == [i % 20000 for i in range(8000)]
    assert stats.resyncs == 0 and stats.late_samples == 0


def test_a_delayed_first_packet_does_not_shift_the_rest() -> None:
    sink = MemorySink()
    recorder = CallRecorder(sink, T0)
    ramp = pcm([float(i) for i in range(1, 1601)])
    # The path's queue drains: the first packets come 40, 30, 20, 10 ms late, then on time.
    stream(recorder, Party.CALLER, ramp, start=T0, ts0=0, ssrc=5,
           jitter=[0.04, 0.03, 0.02, 0.01] + [0.0] * 6)
    stats = recorder.close(T0 + 1.0)
    left, _ = channels(sink.data)
    # Each sooner packet re-anchors the stream; from the first on-time one everything is
    # where it was sent, and nothing after it was shifted by the late start.
    assert left[640:1600] == list(range(641, 1601))
    assert stats.resyncs == 0 and stats.late_samples == 0


def test_a_new_ssrc_is_anchored_where_it_arrives() -> None:
    sink = MemorySink()
    recorder = CallRecorder(sink, T0)
    stream(recorder, Party.CALLER, pcm([500.0] * 800), start=T0, ts0=0, ssrc=1)
    stream(recorder, Party.CALLER, pcm([700.0] * 800), start=T0 + 0.3, ts0=777777, ssrc=2)
    stats = recorder.close(T0 + 0.5)
    left, _ = channels(sink.data)
    assert left[:800] == [500] * 800
    assert left[800:2400] == [0] * 1600
    assert left[2400:3200] == [700] * 800
    assert stats.resyncs == 1


def test_a_stream_that_falls_behind_the_window_is_put_back() -> None:
    sink = MemorySink()
    recorder = CallRecorder(sink, T0)
    stream(recorder, Party.CALLER, pcm([100.0] * 1600), start=T0, ts0=0, ssrc=1)
    # The same stream, 0.5 s later, with timestamps that say it follows on at once
    # (a stall, or a sender clock far slower than ours): too late for its place.
    stream(recorder, Party.CALLER, pcm([200.0] * 1600), start=T0 + 0.7, ts0=1600, ssrc=1)
    stats = recorder.close(T0 + 1.0)
    left, _ = channels(sink.data)
    assert stats.resyncs == 1
    assert left[:1600] == [100] * 1600
    assert left[5600:7200] == [200] * 1600
    assert left[1600:5600] == [0] * 4000


def test_audio_is_written_as_it_goes_and_memory_stays_bounded() -> None:
    sink = MemorySink()
    recorder = CallRecorder(sink, T0)
    tone = pcm(sine(440, 0.02))
    for i in range(30 * 50):                     # 30 s of both legs
        now = T0 + (i + 1) * 0.02
        recorder.feed(Party.CALLER, now, i * FRAME, 1, tone)
        recorder.feed(Party.CALLEE, now, i * FRAME, 2, tone)
        # Never more than the 200 ms window and a 1 s chunk behind: the rest is on disk.
        behind = (now - T0) * 32000 - len(sink.data)
        assert behind <= (0.2 + 1.0 + 0.02) * 32000
    assert max(sink.writes) <= 32000                 # chunks of at most 1 s
    recorder.close(T0 + 30.0)
    assert len(channels(sink.data)[0]) == 30 * 8000


def test_a_long_silence_is_written_a_chunk_at_a_time() -> None:
    sink = MemorySink()
    recorder = CallRecorder(sink, T0)
    stream(recorder, Party.CALLER, pcm([1.0] * 160), start=T0, ts0=0, ssrc=1)
    recorder.feed(Party.CALLER, T0 + 60.0, 480000, 1, pcm([2.0] * 160))
    assert max(sink.writes) <= 32000
    assert len(sink.data) >= 58 * 32000
    recorder.close(T0 + 60.0)
    left, _ = channels(sink.data)
    assert len(left) == 480000 and left[479840:] == [2] * 160


def test_ticks_grow_the_file_while_both_legs_are_silent() -> None:
    sink = MemorySink()
    recorder = CallRecorder(sink, T0)
    due = recorder.next_due()
    assert due == pytest.approx(T0 + 1.2)
    recorder.tick(due - 0.001)
    assert sink.data == b""
    recorder.tick(due)
    assert len(sink.data) == 32000
    assert recorder.next_due() == pytest.approx(T0 + 2.2)
    recorder.close(T0 + 3.01)
    assert len(channels(sink.data)[0]) == 24160          # 3.01 s, up to a whole frame


def test_feed_rtp_records_the_legs_codec_only() -> None:
    sink = MemorySink()
    recorder = CallRecorder(sink, T0)
    codecs = {8: G711.PCMA}
    audio = G711.PCMA.encode(pcm([1000.0] * 160))
    recorder.feed_rtp(Party.CALLEE, T0 + 0.02, rtp.build(8, 1, 0, 3, audio), codecs)
    recorder.feed_rtp(Party.CALLEE, T0 + 0.03, rtp.build(101, 2, 0, 3, b"\x05\x00\x00\xa0"),
                      codecs)                                         # a telephone-event
    recorder.feed_rtp(Party.CALLEE, T0 + 0.04, b"\x00junk", codecs)
    stats = recorder.close(T0 + 0.04)
    _, right = channels(sink.data)
    assert right[:160] == [1008] * 160                # A-law's step nearest 1000
    assert stats.dropped_packets == 2


def test_oversized_and_empty_packets_are_dropped() -> None:
    recorder = CallRecorder(MemorySink(), T0)
    recorder.feed(Party.CALLER, T0 + 2, 0, 1, bytes(2 * 8001))
    recorder.feed(Party.CALLER, T0 + 2, 0, 1, b"")
    recorder.feed(Party.CALLER, T0 + 2, 0, 1, b"\x00\x00\x00")
    assert recorder.stats.dropped_packets == 3


def test_a_full_disk_stops_the_recording_never_the_call() -> None:
    sink = FullDisk(room=1)          # one chunk, then no space
    recorder = CallRecorder(sink, T0)
    tone = pcm(sine(440, 0.02))
    for i in range(5 * 50):
        now = T0 + (i + 1) * 0.02
        recorder.feed(Party.CALLER, now, i * FRAME, 1, tone)     # raises nothing
        recorder.tick(now)
    stats = recorder.close(T0 + 5.0)
    assert stats.failed and stats.error == "ENOSPC"
    assert not recorder.active and recorder.next_due() is None
    assert sink.refused == 1          # no write is tried after the first refusal
    assert sink.closed == 1           # the file was released when it failed
    # What did reach the disk stays: the first second.
    assert len(channels(sink.data)[0]) == 8000
    assert recorder.close(T0 + 6.0) is stats and sink.closed == 1


def test_a_failing_close_is_a_failure_too_not_an_exception() -> None:
    sink = FullDisk(room=100, close_fails=True)
    recorder = CallRecorder(sink, T0)
    stats = recorder.close(T0 + 0.5)
    assert stats.failed and stats.error == "EIO"
    assert sink.closed == 1


# --- the file ------------------------------------------------------------------------------

def test_a_recording_file_is_0600_in_a_0700_directory(tmp_path: Path) -> None:
    folder = tmp_path / "recordings" / "2025"
    old = os.umask(0)                 # the most permissive umask: the modes must not follow
    try:
        sink = FileSink.create(folder, "c0ffee-1.wav")
    finally:
        os.umask(old)
    recorder = CallRecorder(sink, T0)
    interleaved_feed(recorder, pcm(sine(1000, 2.5)), pcm(sine(2000, 2.5)), T0)
    # Mid-call, the file on disk already holds what was written.
    assert len(channels(sink.path.read_bytes())[0]) == 16000
    recorder.close(T0 + 2.5)
    assert stat.S_IMODE(sink.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert len(channels(sink.path.read_bytes())[0]) == 20000


def test_a_recording_never_overwrites_and_names_are_plain(tmp_path: Path) -> None:
    FileSink.create(tmp_path, "a.wav").close()
    with pytest.raises(FileExistsError):
        FileSink.create(tmp_path, "a.wav")
    for bad in ("../a.wav", ".hidden.wav", "a/b.wav", "a.mp3", "", "a b.wav"):
        with pytest.raises(ValueError, match=r"not <id>\.wav"):
            FileSink.create(tmp_path, bad)


def test_a_closed_file_sink_refuses_writes_and_closes_once(tmp_path: Path) -> None:
    sink = FileSink.create(tmp_path, "b.wav")
    sink.close()
    sink.close()
    with pytest.raises(OSError) as caught:
        sink.write(b"x")
    assert caught.value.errno == errno.EBADF


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_real_enospc_from_the_kernel_is_caught() -> None:
    # /dev/full answers every write with ENOSPC: the real error, not a stand-in.
    sink = FileSink(os.open("/dev/full", os.O_WRONLY), Path("/dev/full"))
    recorder = CallRecorder(sink, T0)
    stream(recorder, Party.CALLER, pcm(sine(300, 2.0)), start=T0, ts0=0, ssrc=1)
    stats = recorder.close(T0 + 2.0)
    assert stats.failed and stats.error == "ENOSPC"
    with pytest.raises(OSError) as caught:
        sink.write(b"x")
    assert caught.value.errno == errno.EBADF          # the descriptor was released
