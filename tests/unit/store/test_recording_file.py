"""Recordings sealed at rest (store/recording_file.py, store/recordings.py): a stolen file
shows no audio; the reader gives the WAV back and says how whole the file was (complete,
cut at any octet, cut by kill -9, altered); another key, another place, a rekey's rewrap."""

from __future__ import annotations

import io
import os
import signal
import stat
import struct
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from sipmask.config.schema import RecordingConfig
from sipmask.media.recorder import CallRecorder, Party
from sipmask.media.sinks import FileSink
from sipmask.store import recording_file, recordings
from sipmask.store.crypto import Keyring
from sipmask.store.recording_file import (
    HEADER_SIZE,
    MAGIC,
    RecordingUnreadable,
    Rewrap,
    SealedWriter,
    State,
    open_sealed,
)
from tests.support.goertzel import goertzel_power
from tests.support.tones import pcm, sine

REPO = Path(__file__).resolve().parents[3]
CALL = "5f0c2a9e41d7b3c8a6e1f0d2b4c6a8e0@127.0.0.1"
NAME = "5f0c2a9e41d7b3c8a6e1f0d2b4c6a8e0.wav"
KEYS = Keyring(bytes(range(32)))
T0 = 1000.0


def record_tones(sink: SealedWriter, seconds: float, hz: tuple[float, float] = (1000, 1600)
                 ) -> bytes:
    """A 1000 Hz caller and a 1600 Hz callee (or `hz`) through a CallRecorder into `sink`;
    the stereo samples the recorder wrote (from a copy of what went to the sink)."""
    written = bytearray()
    real_write = sink.write

    def spy(data: bytes) -> None:
        written.extend(data)
        real_write(data)

    sink.write = spy  # type: ignore[method-assign]
    recorder = CallRecorder(sink, T0)
    left, right = pcm(sine(hz[0], seconds)), pcm(sine(hz[1], seconds))
    for i in range(0, len(left) // 2, 160):
        now = T0 + (i + 160) / 8000
        recorder.feed(Party.CALLER, now, i, 1, left[2 * i:2 * (i + 160)])
        recorder.feed(Party.CALLEE, now, i, 2, right[2 * i:2 * (i + 160)])
        recorder.tick(now)
    stats = recorder.close(T0 + seconds)
    assert not stats.failed
    return bytes(written)


def read_all(path: Path, tenant: str = "demo", keys: Keyring = KEYS
             ) -> tuple[recording_file.Opened, bytes]:
    opened = open_sealed(os.open(path, os.O_RDONLY), keys, tenant, path.name)
    try:
        data = b""
        while piece := opened.stream.read(10_000):     # odd sizes: across chunk edges
            data += piece
    finally:
        opened.stream.close()
    assert len(data) == opened.size
    return opened, data


def stereo(wav_bytes: bytes) -> tuple[list[float], list[float]]:
    with wave.open(io.BytesIO(wav_bytes), "rb") as file:
        assert (file.getnchannels(), file.getsampwidth(), file.getframerate()) == (2, 2, 8000)
        values = memoryview(file.readframes(file.getnframes())).cast("h")
    return [v / 32768 for v in values[0::2]], [v / 32768 for v in values[1::2]]


@pytest.fixture
def config(tmp_path: Path) -> RecordingConfig:
    return RecordingConfig(dir=tmp_path / "rec")


def made(config: RecordingConfig, seconds: float = 2.0,
         hz: tuple[float, float] = (1000, 1600)) -> tuple[Path, bytes]:
    sink = recordings.open_sink(config, "demo", CALL, KEYS)
    audio = record_tones(sink, seconds, hz)
    return config.dir / "demo" / NAME, audio


# --- at rest ---------------------------------------------------------------------------

def test_a_stolen_recording_shows_no_audio(config: RecordingConfig) -> None:
    # Tones whose samples do not repeat every few frames: many distinct runs to look for.
    path, audio = made(config, hz=(1013.7, 1601.3))
    raw = path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"RIFF" not in raw and b"WAVE" not in raw and b"data" not in raw
    assert raw.startswith(MAGIC)
    # Not one 8-octet run of the samples written (two stereo frames) is in the file.
    runs = {audio[i:i + 8] for i in range(0, len(audio) - 8, 2)} - {bytes(8)}
    assert len(runs) > 1000
    assert not any(raw[i:i + 8] in runs for i in range(len(raw) - 8))


def test_the_reader_gives_the_wav_back(config: RecordingConfig) -> None:
    _, audio = made(config)
    found = recordings.open_recording(config, CALL, "demo", keys=KEYS)
    try:
        data = found.stream.read()
    finally:
        found.close()
    assert (found.tenant, found.name, found.state, found.size) == ("demo", NAME,
                                                                  State.COMPLETE, len(data))
    assert data[44:] == audio
    left, right = stereo(data)
    assert len(left) == 2 * 8000
    assert goertzel_power(left, 1000, 8000) > 100 * goertzel_power(left, 1600, 8000)
    assert goertzel_power(right, 1600, 8000) > 100 * goertzel_power(right, 1000, 8000)


def test_a_file_cut_at_any_octet_reads_up_to_its_last_whole_chunk(
        config: RecordingConfig, tmp_path: Path) -> None:
    path, audio = made(config, 3.0)
    raw = path.read_bytes()
    chunk = 4 + 32000 + 16                    # the recorder writes a second per chunk
    ends = [HEADER_SIZE + k * chunk for k in range(4)]
    cut = tmp_path / "cut"
    cut.mkdir()
    cuts = sorted({*range(0, len(raw), 997), *ends, *(e - 1 for e in ends),
                   *(e + 1 for e in ends), len(raw) - 1, len(raw) - 20})
    for size in cuts:
        (cut / NAME).unlink(missing_ok=True)
        (cut / NAME).write_bytes(raw[:size])
        opened, data = read_all(cut / NAME)
        whole = max(0, (size - HEADER_SIZE) // chunk)
        assert opened.state is State.TRUNCATED, size
        assert data == data[:44] + audio[:whole * 32000], size
        assert opened.audio_bytes == whole * 32000
    opened, data = read_all(path)
    assert opened.state is State.COMPLETE and data[44:] == audio


KILLED_WRITER = """
import sys, time
from sipmask.store.crypto import Keyring
from sipmask.store.recording_file import SealedWriter
sink = SealedWriter.create(sys.argv[1], sys.argv[2], Keyring(bytes(range(32))), "demo")
for n in range(5):
    sink.write(bytes([n + 1]) * 32000)
print("written", flush=True)
time.sleep(60)
"""


def test_a_writer_killed_with_sigkill_leaves_a_file_that_reads_as_truncated(
        tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path), NAME],
                             stdout=subprocess.PIPE, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout is not None and child.stdout.readline() == "written\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    opened, data = read_all(tmp_path / NAME)
    assert opened.state is State.TRUNCATED
    assert data[44:] == b"".join(bytes([n + 1]) * 32000 for n in range(5))


def damaged(path: Path, change: bytes) -> tuple[recording_file.Opened, bytes]:
    path.write_bytes(change)
    return read_all(path)


def test_an_altered_file_is_served_up_to_the_damage(config: RecordingConfig) -> None:
    path, audio = made(config, 3.0)
    raw = path.read_bytes()
    chunk = 4 + 32000 + 16
    second = HEADER_SIZE + chunk
    flipped = bytearray(raw)
    flipped[second + 100] ^= 1                              # a bit of the second chunk
    opened, data = damaged(path, bytes(flipped))
    assert opened.state is State.DAMAGED and data[44:] == audio[:32000]
    swapped = raw[:HEADER_SIZE] + raw[second:second + chunk] + raw[HEADER_SIZE:second] \
        + raw[second + chunk:]                              # two chunks in each other's place
    opened, data = damaged(path, swapped)
    assert opened.state is State.DAMAGED and data[44:] == b""
    opened, data = damaged(path, raw + b"\x00" * 30)        # something after the final chunk
    assert opened.state is State.DAMAGED and data[44:] == audio
    length = bytearray(raw)
    length[HEADER_SIZE] |= 0x80                             # the first chunk marked final
    opened, data = damaged(path, bytes(length))
    assert opened.state is State.DAMAGED and data[44:] == b""
    huge = raw[:HEADER_SIZE] + struct.pack(">I", 0x7FFFFFFF) + raw[HEADER_SIZE + 4:]
    opened, data = damaged(path, huge)
    assert opened.state is State.DAMAGED and data[44:] == b""


def test_only_the_store_key_that_wrapped_it_opens_it_and_only_in_its_place(
        config: RecordingConfig) -> None:
    path, _ = made(config)
    other = Keyring(bytes(32))
    with pytest.raises(RecordingUnreadable) as caught:
        recordings.open_recording(config, CALL, keys=other)
    assert KEYS.fingerprint in str(caught.value) and other.fingerprint in str(caught.value)
    # Moved into another tenant's directory: the tenant is in the key's associated data.
    (config.dir / "acme").mkdir(mode=0o700)
    path.rename(config.dir / "acme" / NAME)
    with pytest.raises(RecordingUnreadable, match="moved or altered"):
        recordings.open_recording(config, CALL, "acme", keys=KEYS)
    with pytest.raises(RecordingUnreadable, match="not a sipmask recording"):
        (config.dir / "acme" / NAME).write_bytes(b"hello, not a recording")
        recordings.open_recording(config, CALL, "acme", keys=KEYS)


def test_a_wav_from_before_sealing_is_served_as_it_is(config: RecordingConfig) -> None:
    folder = config.dir / "demo"
    folder.mkdir(parents=True)
    old = b"RIFF....WAVEfmt " + bytes(range(256)) * 10
    (folder / NAME).write_bytes(old)
    found = recordings.open_recording(config, CALL, keys=KEYS)
    try:
        assert (found.state, found.size, found.stream.read()) == (State.PLAIN, len(old), old)
    finally:
        found.close()


def test_a_file_cut_before_its_header_was_whole_is_an_empty_truncated_wav(
        tmp_path: Path) -> None:
    for size in (0, 5, HEADER_SIZE - 1):
        (tmp_path / NAME).write_bytes(b"" if size == 0 else
                                      (MAGIC + bytes(HEADER_SIZE))[:size])
        opened, data = read_all(tmp_path / NAME)
        assert opened.state is State.TRUNCATED and stereo(data) == ([], [])


# --- the writer ------------------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_after_a_failed_write_nothing_more_is_written_and_the_file_is_released() -> None:
    file = FileSink(os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC), Path("/dev/full"))
    sink = SealedWriter(file, bytes(32))
    with pytest.raises(OSError) as caught:
        sink.write(bytes(3200))
    assert caught.value.strerror is not None and caught.value.errno == 28      # ENOSPC
    with pytest.raises(OSError, match="earlier write"):
        sink.write(bytes(4))
    sink.close()                       # no final chunk after a half-written one
    assert file._fd is None


def test_a_header_that_cannot_be_written_leaves_no_file(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    def full(self: FileSink, data: bytes) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(FileSink, "write", full)
    with pytest.raises(OSError):
        SealedWriter.create(tmp_path, NAME, KEYS, "demo")
    assert list(tmp_path.iterdir()) == []


def test_long_writes_are_cut_into_chunks(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recording_file, "MAX_CHUNK", 1000)
    sink = SealedWriter.create(tmp_path, NAME, KEYS, "demo")
    audio = bytes(range(256)) * 20
    sink.write(audio)
    sink.close()
    assert (tmp_path / NAME).stat().st_size == HEADER_SIZE + 6 * (4 + 16) + len(audio) \
        + 4 + 16
    opened, data = read_all(tmp_path / NAME)
    assert opened.state is State.COMPLETE and data[44:] == audio


# --- rekey -----------------------------------------------------------------------------

def test_rewrap_moves_every_file_to_the_new_key_in_place(config: RecordingConfig) -> None:
    path, audio = made(config)
    before = path.read_bytes()
    plain = config.dir / "demo" / "0a0b.wav"
    plain.write_bytes(b"RIFF" + bytes(60))
    stranger = Keyring(bytes([7]) * 32)
    sink = recordings.open_sink(config, "acme", "0c0d@h", stranger)
    sink.write(bytes(64))
    sink.close()
    new = Keyring(bytes([9]) * 32)
    assert recordings.rewrap_all(config, KEYS, new) == {
        "rewrapped": 1, "current": 0, "plain": 1, "other_key": 1, "unreadable": 0}
    after = path.read_bytes()
    # Only the key id and the wrapped key changed: 68 octets after magic and version.
    assert after[:9] == before[:9] and after[HEADER_SIZE:] == before[HEADER_SIZE:]
    assert after[9:HEADER_SIZE] != before[9:HEADER_SIZE]
    found = recordings.open_recording(config, CALL, keys=new)
    try:
        assert found.state is State.COMPLETE and found.stream.read()[44:] == audio
    finally:
        found.close()
    with pytest.raises(RecordingUnreadable):
        recordings.open_recording(config, CALL, keys=KEYS)
    # Run again (a rekey that stopped half way): nothing left to do.
    assert recordings.rewrap_all(config, KEYS, new)["current"] == 1
    fd = os.open(path, os.O_RDWR)
    try:
        assert recording_file.rewrap(fd, "acme", NAME, new, KEYS) is Rewrap.UNREADABLE
    finally:
        os.close(fd)
