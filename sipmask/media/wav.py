"""Audio for announcements and recordings: G.711 codecs, WAV read, WAV write (no sockets,
no clock).

Inside sipmask audio is 16-bit signed little-endian PCM, mono, 8 kHz ("pcm" below), the
format of the WAV files it reads and writes, so nothing converts twice.

G.711 (ITU-T G.711, 1988) is written here as tables: the stdlib `audioop` is deprecated in
3.11 and gone in 3.13. The conversions are those of the ITU reference coder as published by
Sun Microsystems (g711.c, public domain), which `audioop` used too: µ-law encodes the 14
high bits of a sample, A-law the 13 high bits, and decoding gives the middle of the
quantisation step. The tests check them against G.711's own table values.

Announcement files: RIFF WAVE, mono, 8000 Hz, 16-bit PCM (format tag 1) or G.711 µ-law (7)
or A-law (6), 8 bits; WAVE_FORMAT_EXTENSIBLE (0xFFFE) with one of those sub-formats is read
too (sox writes it for some inputs). Anything else is refused with a `WavError` that names
the file and what is wrong with it, for the config loader to report at start-up.

Recordings: `StereoWriter` streams a call's 16-bit stereo samples into a `RecordingSink`;
`wav_header` is the 44-octet header a recording is read back with (store/recording_file.py
makes it from the length it finds, so a file cut short by a crash still reads as a WAV).
"""

from __future__ import annotations

import errno
import itertools
import struct
import sys
from array import array
from dataclasses import dataclass
from enum import Enum
from functools import cache
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING

from sipmask.errors import MediaError

if TYPE_CHECKING:
    from sipmask.media.sinks import RecordingSink

RATE = 8000                       # samples per second; also the RTP clock rate of G.711
SAMPLE_BYTES = 2                  # 16-bit
MAX_ANNOUNCEMENT_S = 120          # an operator's file longer than this is refused
_FORMAT_PCM, _FORMAT_ALAW, _FORMAT_ULAW, _FORMAT_EXTENSIBLE = 1, 6, 7, 0xFFFE
_FORMAT_NAMES = {_FORMAT_PCM: "16-bit PCM", _FORMAT_ULAW: "G.711 µ-law",
                 _FORMAT_ALAW: "G.711 A-law", 3: "IEEE float", 2: "MS ADPCM",
                 0x11: "IMA ADPCM", 0x55: "MP3"}
_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
HEADER_SIZE = _HEADER.size        # 44
# RIFF sizes are 32-bit: the data chunk of a file may hold at most this many octets.
MAX_DATA_BYTES = (0xFFFFFFFF - (HEADER_SIZE - 8)) // 4 * 4
_LITTLE = sys.byteorder == "little"
# Samples per itemgetter call in G711.encode: bounds the argument tuple of a long prompt.
_ENCODE_SLICE = 4096


class WavError(MediaError):
    """A WAV file sipmask cannot play. str() names the file and the problem."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


# --- G.711 -----------------------------------------------------------------------------

# Segment end points of the reference coder: µ-law on 14-bit magnitudes plus the bias,
# A-law on 13-bit magnitudes (G.711 Tables 1a and 2a, as decision values).
_ULAW_SEGMENT_ENDS = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_ALAW_SEGMENT_ENDS = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)
_ULAW_BIAS = 0x84                 # 132: the µ-law curve is offset so segment 0 starts at 0
_ULAW_CLIP = 8159                 # the largest 14-bit magnitude µ-law represents


def _segment(value: int, ends: tuple[int, ...]) -> int:
    for index, end in enumerate(ends):
        if value <= end:
            return index
    return len(ends)


def _ulaw_encode14(value: int) -> int:
    """One µ-law code from a signed 14-bit value (a 16-bit sample >> 2)."""
    mask = 0xFF
    if value < 0:
        value, mask = -value, 0x7F       # µ-law sends every bit inverted; sign 0 is negative
    value = min(value, _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    segment = _segment(value, _ULAW_SEGMENT_ENDS)
    if segment >= 8:
        return 0x7F ^ mask
    return ((segment << 4) | ((value >> (segment + 1)) & 0x0F)) ^ mask


def _ulaw_decode(code: int) -> int:
    code = ~code & 0xFF
    step = (((code & 0x0F) << 3) + _ULAW_BIAS) << ((code & 0x70) >> 4)
    return _ULAW_BIAS - step if code & 0x80 else step - _ULAW_BIAS


def _alaw_encode13(value: int) -> int:
    """One A-law code from a signed 13-bit value (a 16-bit sample >> 3)."""
    mask = 0xD5                          # A-law inverts the even bits (G.711 §3.2)
    if value < 0:
        value, mask = -value - 1, 0x55
    segment = _segment(value, _ALAW_SEGMENT_ENDS)
    if segment >= 8:
        return 0x7F ^ mask
    shift = 1 if segment < 2 else segment
    return ((segment << 4) | ((value >> shift) & 0x0F)) ^ mask


def _alaw_decode(code: int) -> int:
    code ^= 0x55
    step = (code & 0x0F) << 4
    segment = (code & 0x70) >> 4
    if segment == 0:
        step += 8
    else:
        step = (step + 0x108) << (segment - 1)
    return step if code & 0x80 else -step


@cache
def _encode_table(codec: G711) -> bytes:
    """The code of every 16-bit sample, indexed by the sample read as unsigned: µ-law
    looks at 14 bits, so each code repeats 4 times; A-law at 13, 8 times."""
    if codec is G711.PCMU:
        codes = [_ulaw_encode14(v - 0x4000 if v & 0x2000 else v) for v in range(0x4000)]
        repeat = 4
    else:
        codes = [_alaw_encode13(v - 0x2000 if v & 0x1000 else v) for v in range(0x2000)]
        repeat = 8
    return bytes(itertools.chain.from_iterable(zip(*[codes] * repeat, strict=True)))


@cache
def _decode_tables(codec: G711) -> tuple[bytes, bytes]:
    """Each code's sample split into its low and its high octet, as two `bytes.translate`
    tables: decoding a payload is two translations and an interleave, done in C (about
    1 µs per 20 ms packet here, where a table of 2-octet strings joined per code took 25)."""
    decode = _ulaw_decode if codec is G711.PCMU else _alaw_decode
    pcm = b"".join(struct.pack("<h", decode(code)) for code in range(256))
    return pcm[0::2], pcm[1::2]


class G711(Enum):
    """The two codecs every SIP phone and trunk has (RFC 3551 §4.5.14)."""

    PCMU = "PCMU"
    PCMA = "PCMA"

    @property
    def static_payload_type(self) -> int:
        """RFC 3551 Table 4: PCMU is payload type 0, PCMA 8."""
        return 0 if self is G711.PCMU else 8

    @property
    def silence(self) -> int:
        """The code of a zero sample (0xFF µ-law, 0xD5 A-law)."""
        return _encode_table(self)[0]

    def encode(self, pcm: bytes) -> bytes:
        """One code per 16-bit sample of `pcm`. A 16-bit index is beyond `bytes.translate`,
        so the table is read by one itemgetter call per slice of samples: the lookups run in
        C (5.6 µs per 20 ms packet here, 9.0 with a Python-level call per sample)."""
        table = _encode_table(self)
        values = _unsigned(pcm)
        if len(values) <= _ENCODE_SLICE:
            return _pick(table, values)
        return b"".join(_pick(table, values[i:i + _ENCODE_SLICE])
                        for i in range(0, len(values), _ENCODE_SLICE))

    def decode(self, payload: bytes) -> bytes:
        """pcm, 2 octets per code (little-endian, whatever the machine's byte order)."""
        low, high = _decode_tables(self)
        pcm = bytearray(2 * len(payload))
        pcm[0::2] = payload.translate(low)
        pcm[1::2] = payload.translate(high)
        return bytes(pcm)


def _pick(table: bytes, indexes: array[int]) -> bytes:
    """table[i] for each i, as bytes (itemgetter of one index gives the item, not a tuple)."""
    if len(indexes) > 1:
        return bytes(itemgetter(*indexes)(table))
    return bytes(table[i] for i in indexes)


def _unsigned(pcm: bytes) -> array[int]:
    if len(pcm) % SAMPLE_BYTES:
        raise ValueError("pcm has an odd number of octets")
    values = array("H", pcm)
    if not _LITTLE:
        values.byteswap()
    return values


def samples(pcm: bytes) -> array[int]:
    """pcm as signed integers, for arithmetic (Goertzel, mixing)."""
    if len(pcm) % SAMPLE_BYTES:
        raise ValueError("pcm has an odd number of octets")
    values = array("h", pcm)
    if not _LITTLE:
        values.byteswap()
    return values


def to_pcm(values: array[int]) -> bytes:
    """Signed 16-bit integers as pcm (the inverse of `samples`)."""
    if _LITTLE:
        return values.tobytes()
    swapped = array("h", values)
    swapped.byteswap()
    return swapped.tobytes()


# --- reading ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Audio:
    """Mono 8 kHz pcm."""

    pcm: bytes

    @property
    def sample_count(self) -> int:
        return len(self.pcm) // SAMPLE_BYTES

    @property
    def duration_s(self) -> float:
        return self.sample_count / RATE


def parse_wav(data: bytes, name: str) -> Audio:
    """The audio of a WAV file's bytes; `name` (its path) goes into every error."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError(name, "not a WAV file (no RIFF/WAVE header)")
    fmt: bytes | None = None
    position = 12
    while position + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, position)
        body = data[position + 8:position + 8 + size]
        if len(body) < size:
            raise WavError(name, f"truncated: the {chunk_id.decode('latin-1')!r} chunk "
                                 f"declares {size} octets, the file holds {len(body)}")
        if chunk_id == b"fmt ":
            fmt = body
        elif chunk_id == b"data":
            if fmt is None:
                raise WavError(name, "the data chunk comes before any fmt chunk")
            encoding = _check_format(fmt, name)
            return Audio(_decode_data(encoding, body, name))
        position += 8 + size + (size & 1)     # RIFF chunks are padded to an even size
    raise WavError(name, "truncated: no data chunk" if fmt else "no fmt chunk")


def _check_format(fmt: bytes, name: str) -> int:
    """The format tag (1, 6 or 7) when the fmt chunk describes audio sipmask plays."""
    if len(fmt) < 16:
        raise WavError(name, f"fmt chunk of {len(fmt)} octets; want at least 16")
    tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _FORMAT_EXTENSIBLE and len(fmt) >= 26:
        (tag,) = struct.unpack_from("<H", fmt, 24)     # the sub-format GUID's first field
    if tag not in (_FORMAT_PCM, _FORMAT_ULAW, _FORMAT_ALAW):
        what = _FORMAT_NAMES.get(tag, f"format tag {tag:#x}")
        raise WavError(name, f"encoded as {what}; want 16-bit PCM, G.711 µ-law or A-law")
    if channels != 1:
        shape = "stereo" if channels == 2 else f"{channels} channels"
        raise WavError(name, f"{shape}; want mono (1 channel)")
    if rate != RATE:
        raise WavError(name, f"{rate} Hz; want {RATE} Hz")
    want_bits = 16 if tag == _FORMAT_PCM else 8
    if bits != want_bits:
        raise WavError(name, f"{bits}-bit {_FORMAT_NAMES[tag]}; want {want_bits}-bit")
    return int(tag)


def _decode_data(tag: int, body: bytes, name: str) -> bytes:
    if not body:
        raise WavError(name, "no audio (the data chunk is empty)")
    if tag == _FORMAT_PCM:
        if len(body) % SAMPLE_BYTES:
            raise WavError(name, "truncated: half a 16-bit sample at the end")
        pcm = bytes(body)
    else:
        pcm = (G711.PCMU if tag == _FORMAT_ULAW else G711.PCMA).decode(body)
    seconds = len(pcm) / SAMPLE_BYTES / RATE
    if seconds > MAX_ANNOUNCEMENT_S:
        raise WavError(name, f"{seconds:.0f} s long; an announcement is at most "
                             f"{MAX_ANNOUNCEMENT_S} s")
    return pcm


def read_wav(path: str | Path) -> Audio:
    """Read and check a WAV file (see `parse_wav`); an unreadable file is a WavError too."""
    name = str(path)
    # The longest file accepted is 16-bit at the limit, plus room for metadata chunks.
    limit = MAX_ANNOUNCEMENT_S * RATE * SAMPLE_BYTES + 65536
    try:
        with open(path, "rb") as file:
            data = file.read(limit + 1)
    except OSError as exc:
        raise WavError(name, f"cannot read: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise WavError(name, f"larger than {limit} octets; an announcement is at most "
                             f"{MAX_ANNOUNCEMENT_S} s")
    return parse_wav(data, name)


# --- writing ---------------------------------------------------------------------------

def wav_header(channels: int, data_bytes: int) -> bytes:
    """The canonical 44-octet header of 16-bit PCM at 8 kHz with `data_bytes` of samples."""
    align = channels * SAMPLE_BYTES
    return _HEADER.pack(b"RIFF", HEADER_SIZE - 8 + data_bytes, b"WAVE", b"fmt ", 16,
                        _FORMAT_PCM, channels, RATE, RATE * align, align, 16,
                        b"data", data_bytes)


def encode_wav(pcm: bytes) -> bytes:
    """A mono WAV file holding `pcm` (the shipped prompts are written with this)."""
    return wav_header(1, len(pcm)) + pcm


class StereoWriter:
    """A recording's stereo 16-bit 8 kHz samples, streamed into a sink.

    The sink gets the samples alone, interleaved left/right: the file format around them is
    the sink's (store/recording_file.py seals them, and its reader puts `wav_header` in
    front). Errors from the sink (OSError: disk full, I/O) pass to the caller, which decides
    what a failure means; a recording about to outgrow what a WAV header can count raises
    OSError(EFBIG) before writing.
    """

    FRAME_BYTES = 2 * SAMPLE_BYTES      # one left and one right sample

    def __init__(self, sink: RecordingSink) -> None:
        self._sink = sink
        self._data_bytes = 0

    @property
    def data_bytes(self) -> int:
        return self._data_bytes

    def append(self, frames: bytes) -> None:
        """Write interleaved left/right pcm (a whole number of stereo frames)."""
        if len(frames) % self.FRAME_BYTES:
            raise ValueError("not a whole number of stereo frames")
        if self._data_bytes + len(frames) > MAX_DATA_BYTES:
            raise OSError(errno.EFBIG, "a WAV file holds at most 4 GiB of samples")
        if frames:
            self._sink.write(frames)
            self._data_bytes += len(frames)

    def close(self) -> None:
        """Close the sink (the sink finishes its file)."""
        self._sink.close()
