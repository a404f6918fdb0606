"""G.711 codecs, WAV reading and the streaming stereo writer (sipmask/media/wav.py)."""

from __future__ import annotations

import importlib
import io
import struct
import warnings
import wave
from pathlib import Path
from types import ModuleType

import pytest

from sipmask.errors import MediaError
from sipmask.media import wav
from sipmask.media.wav import G711, StereoWriter, WavError, parse_wav, read_wav

ALL_SAMPLES = struct.pack("<65536h", *range(-32768, 32768))


def decoded(codec: G711, codes: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(codes)}h", codec.decode(codes)))


# --- G.711 -------------------------------------------------------------------------------

# ITU-T G.711 Table 2a (µ-law) and Table 1a (A-law): decoder output values in the tables'
# units (µ-law: 14-bit, max 8031; A-law: 13-bit, max 4032), scaled to 16 bits (×4, ×8).
# Characters as sent on the line (µ-law all bits inverted, A-law even bits inverted).
ULAW_KNOWN = {0xFF: 0, 0x7F: 0, 0xFE: 2 * 4, 0xF0: 30 * 4, 0xEF: 33 * 4, 0xEE: 37 * 4,
              0xDF: 99 * 4, 0x80: 8031 * 4, 0x00: -8031 * 4, 0x6F: -33 * 4}
ALAW_KNOWN = {0xD5: 1 * 8, 0x55: -1 * 8, 0xD4: 3 * 8, 0xC5: 33 * 8, 0xF5: 66 * 8,
              0xAA: 4032 * 8, 0x2A: -4032 * 8}


@pytest.mark.parametrize(("codec", "known"), [(G711.PCMU, ULAW_KNOWN), (G711.PCMA, ALAW_KNOWN)])
def test_g711_decodes_the_itu_table_values(codec: G711, known: dict[int, int]) -> None:
    assert decoded(codec, bytes(known)) == list(known.values())


def test_zero_encodes_to_the_silence_codes() -> None:
    assert G711.PCMU.encode(bytes(4)) == b"\xff\xff"
    assert G711.PCMA.encode(bytes(4)) == b"\xd5\xd5"
    assert (G711.PCMU.silence, G711.PCMA.silence) == (0xFF, 0xD5)
    assert (G711.PCMU.static_payload_type, G711.PCMA.static_payload_type) == (0, 8)


def test_full_scale_encodes_to_the_top_codes() -> None:
    loudest = struct.pack("<2h", 32767, -32768)
    assert G711.PCMU.encode(loudest) == b"\x80\x00"
    assert G711.PCMA.encode(loudest) == b"\xaa\x2a"


@pytest.mark.parametrize("codec", list(G711))
def test_every_code_survives_a_round_trip(codec: G711) -> None:
    codes = bytes(range(256))
    again = codec.encode(codec.decode(codes))
    if codec is G711.PCMU:
        # µ-law has two zeros (0x7F is "-0"); a zero sample encodes to 0xFF.
        assert again == codes.replace(b"\x7f", b"\xff")
    else:
        assert again == codes


@pytest.mark.parametrize(("codec", "top"), [(G711.PCMU, 32124), (G711.PCMA, 32256)])
def test_encoding_is_monotonic_and_its_error_is_half_a_step(codec: G711, top: int) -> None:
    values = decoded(codec, codec.encode(ALL_SAMPLES))
    assert values == sorted(values)
    for x, y in zip(range(-32768, 32768), values, strict=True):
        if abs(x) <= top:
            # Steps double per segment: half a step is at most 1/32 of the value (A-law),
            # a little more for µ-law's bias, and a few units near zero.
            assert abs(x - y) <= max(12, abs(x) * 0.051), x


def _audioop() -> ModuleType | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module("audioop")
    except ModuleNotFoundError:
        return None


@pytest.mark.skipif(_audioop() is None, reason="audioop is gone (Python 3.13+)")
def test_codecs_match_audioop_on_every_sample() -> None:
    # audioop is the same reference coder in C: an independent oracle while it exists.
    audioop = _audioop()
    assert audioop is not None
    assert G711.PCMU.encode(ALL_SAMPLES) == audioop.lin2ulaw(ALL_SAMPLES, 2)
    assert G711.PCMA.encode(ALL_SAMPLES) == audioop.lin2alaw(ALL_SAMPLES, 2)
    codes = bytes(range(256))
    assert G711.PCMU.decode(codes) == audioop.ulaw2lin(codes, 2)
    assert G711.PCMA.decode(codes) == audioop.alaw2lin(codes, 2)


@pytest.mark.parametrize("codec", list(G711))
def test_the_table_codecs_equal_the_reference_coder_on_every_input(codec: G711) -> None:
    # The reference functions one value at a time, the oracle of the translate and
    # itemgetter paths (which audioop checks too while it exists), on every sample and
    # every code; odd lengths cross the encoder's slice boundaries.
    if codec is G711.PCMU:
        expected = bytes(wav._ulaw_encode14(v >> 2) for v in range(-32768, 32768))
        decode = wav._ulaw_decode
    else:
        expected = bytes(wav._alaw_encode13(v >> 3) for v in range(-32768, 32768))
        decode = wav._alaw_decode
    assert codec.encode(ALL_SAMPLES) == expected
    for n in (1, 2, 3, 4097, 8193):
        assert codec.encode(ALL_SAMPLES[:2 * n]) == expected[:n]
    assert codec.encode(b"") == b"" and codec.decode(b"") == b""
    codes = bytes(range(256)) * 3
    assert codec.decode(codes) == struct.pack(f"<{len(codes)}h", *map(decode, codes))


def test_odd_pcm_is_refused() -> None:
    with pytest.raises(ValueError, match="odd"):
        G711.PCMU.encode(b"\x00")


# --- reading -------------------------------------------------------------------------------

def stdlib_wav(pcm: bytes, *, channels: int = 1, rate: int = 8000, width: int = 2) -> bytes:
    """A WAV from the stdlib writer, which sipmask's reader must accept."""
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(channels)
        file.setsampwidth(width)
        file.setframerate(rate)
        file.writeframes(pcm)
    return out.getvalue()


def riff(*chunks: tuple[bytes, bytes]) -> bytes:
    body = b"".join(cid + struct.pack("<I", len(data)) + data + b"\x00" * (len(data) & 1)
                    for cid, data in chunks)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body


def fmt(tag: int, channels: int = 1, rate: int = 8000, bits: int = 8, extra: bytes = b"") -> bytes:
    align = channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits) + extra


PCM = struct.pack("<4h", 0, 1000, -1000, 32767)


def test_reads_16_bit_pcm_mono() -> None:
    audio = parse_wav(stdlib_wav(PCM), "a.wav")
    assert audio.pcm == PCM
    assert audio.sample_count == 4
    assert audio.duration_s == pytest.approx(4 / 8000)


@pytest.mark.parametrize(("tag", "codec"), [(7, G711.PCMU), (6, G711.PCMA)])
def test_reads_g711_files_as_pcm(tag: int, codec: G711) -> None:
    codes = bytes(range(0, 256, 5))
    data = riff((b"fmt ", fmt(tag, extra=b"\x00\x00")), (b"fact", struct.pack("<I", 52)),
                (b"data", codes))
    assert parse_wav(data, "g711.wav").pcm == codec.decode(codes)


def test_reads_extensible_pcm_and_skips_odd_sized_chunks() -> None:
    # WAVE_FORMAT_EXTENSIBLE: cbSize 22, valid bits, channel mask, sub-format GUID (PCM).
    guid = struct.pack("<H", 1) + bytes.fromhex("000000001000800000aa00389b71")
    extensible = fmt(0xFFFE, bits=16, extra=struct.pack("<HHI", 22, 16, 4) + guid)
    data = riff((b"fmt ", extensible), (b"LIST", b"INFOx"), (b"data", PCM))
    assert parse_wav(data, "ext.wav").pcm == PCM


@pytest.mark.parametrize(("data", "problem"), [
    (stdlib_wav(PCM * 2, channels=2), "stereo; want mono (1 channel)"),
    (stdlib_wav(PCM, rate=44100), "44100 Hz; want 8000 Hz"),
    (stdlib_wav(PCM[:4], width=1), "8-bit 16-bit PCM; want 16-bit"),
    (stdlib_wav(PCM[:6], width=3), "24-bit 16-bit PCM; want 16-bit"),
    (stdlib_wav(PCM)[:-3], "truncated: the 'data' chunk declares 8 octets, the file holds 5"),
    (riff((b"fmt ", fmt(3, bits=32)), (b"data", bytes(8))), "encoded as IEEE float"),
    (riff((b"fmt ", fmt(0x55)), (b"data", bytes(8))), "encoded as MP3"),
    (riff((b"fmt ", fmt(1, channels=6, bits=16)), (b"data", bytes(12))), "6 channels"),
    (riff((b"fmt ", fmt(1, bits=16)), (b"data", b"")), "no audio (the data chunk is empty)"),
    (riff((b"fmt ", fmt(1, bits=16)), (b"data", b"\x00\x01\x02")), "half a 16-bit sample"),
    (riff((b"fmt ", fmt(1, bits=16))), "truncated: no data chunk"),
    (riff((b"data", PCM)), "the data chunk comes before any fmt chunk"),
    (riff((b"LIST", b"x")), "no fmt chunk"),
    (riff((b"fmt ", b"\x01\x00"), (b"data", PCM)), "fmt chunk of 2 octets"),
    (b"ID3\x03" + bytes(40), "not a WAV file"),
    (b"", "not a WAV file"),
])
def test_a_bad_file_is_refused_with_its_name_and_the_problem(data: bytes, problem: str) -> None:
    with pytest.raises(WavError) as caught:
        parse_wav(data, "/etc/sipmask/prompts/bad.wav")
    assert str(caught.value).startswith("/etc/sipmask/prompts/bad.wav: ")
    assert problem in str(caught.value)
    assert isinstance(caught.value, MediaError)


def test_an_announcement_longer_than_the_limit_is_refused() -> None:
    too_long = riff((b"fmt ", fmt(7)), (b"data", b"\xff" * 8000 * (wav.MAX_ANNOUNCEMENT_S + 1)))
    with pytest.raises(WavError, match="121 s long; an announcement is at most 120 s"):
        parse_wav(too_long, "long.wav")


def test_read_wav_reads_a_file_and_names_an_unreadable_one(tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    good.write_bytes(stdlib_wav(PCM))
    assert read_wav(good).pcm == PCM
    with pytest.raises(WavError, match=r"missing\.wav: cannot read: No such file"):
        read_wav(tmp_path / "missing.wav")
    big = tmp_path / "big.wav"
    big.write_bytes(stdlib_wav(bytes(2 * 8000 * wav.MAX_ANNOUNCEMENT_S + 70000)))
    with pytest.raises(WavError, match=r"big\.wav: larger than"):
        read_wav(big)


# --- writing -------------------------------------------------------------------------------

class MemorySink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = 0

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        self.closed += 1


def stdlib_read(data: bytes) -> tuple[int, int, int, bytes]:
    with wave.open(io.BytesIO(bytes(data)), "rb") as file:
        return (file.getnchannels(), file.getframerate(), file.getsampwidth(),
                file.readframes(file.getnframes()))


def test_encode_wav_is_a_mono_file_the_stdlib_reads() -> None:
    assert stdlib_read(wav.encode_wav(PCM)) == (1, 8000, 2, PCM)
    assert parse_wav(wav.encode_wav(PCM), "x").pcm == PCM


def test_the_stereo_writer_passes_the_samples_alone_and_the_header_counts_them() -> None:
    # The sink's format carries the samples (store/recording_file.py); read back, the
    # header made from their length makes a WAV the stdlib reads.
    sink = MemorySink()
    writer = StereoWriter(sink)
    frames = struct.pack("<4h", 1, -1, 2, -2)
    writer.append(frames)
    writer.append(frames)
    writer.append(b"")
    writer.close()
    assert sink.data == frames * 2 and sink.closed == 1
    assert writer.data_bytes == 16
    assert stdlib_read(wav.wav_header(2, len(sink.data)) + sink.data) == (2, 8000, 2,
                                                                          frames * 2)
    assert stdlib_read(wav.wav_header(2, 0)) == (2, 8000, 2, b"")


def test_the_writer_refuses_half_frames_and_more_than_riff_can_count(
        monkeypatch: pytest.MonkeyPatch) -> None:
    writer = StereoWriter(MemorySink())
    with pytest.raises(ValueError, match="whole number"):
        writer.append(b"\x00\x00")
    monkeypatch.setattr(wav, "MAX_DATA_BYTES", 8)
    writer.append(bytes(8))
    with pytest.raises(OSError, match="4 GiB") as caught:
        writer.append(bytes(4))
    assert caught.value.errno == 27      # EFBIG, handled like a full disk by the recorder
    assert wav.MAX_DATA_BYTES == 8


def test_the_real_size_limit_fits_riff() -> None:
    assert wav.MAX_DATA_BYTES % 4 == 0
    assert wav.MAX_DATA_BYTES + 36 <= 0xFFFFFFFF
