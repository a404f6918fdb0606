"""Which tone is in a recording: the Goertzel algorithm (sipmask/media/goertzel.py) over a
16-bit mono WAV. Pure Python: an 8 kHz recording of a few seconds takes milliseconds. Powers
are normalised so a sine of amplitude `a` (as a fraction of 32768) reads about a², whatever
the recording's length.
"""

from __future__ import annotations

import math
import wave
from collections.abc import Iterable
from pathlib import Path

# One Goertzel in the code base: sipmask's in-band DTMF detector uses the same function.
from sipmask.media.goertzel import goertzel_power

__all__ = ["dominant_tone", "goertzel_power", "read_samples", "rms", "tone_powers"]


def read_samples(path: str | Path) -> tuple[list[float], int]:
    """Samples in [-1, 1) and the sample rate of a 16-bit mono WAV."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
            raise ValueError(f"{path}: want 16-bit mono, got {wav.getsampwidth() * 8}-bit "
                             f"x{wav.getnchannels()}")
        rate = wav.getframerate()
        raw = wav.readframes(wav.getnframes())
    values = memoryview(raw).cast("h")
    return [v / 32768.0 for v in values], rate


def tone_powers(path: str | Path, candidates: Iterable[float],
                skip_seconds: float = 0.0) -> dict[float, float]:
    """Normalised power of each candidate frequency, after `skip_seconds` of the start."""
    samples, rate = read_samples(path)
    samples = samples[int(skip_seconds * rate):]
    return {hz: goertzel_power(samples, hz, rate) for hz in candidates}


def rms(path: str | Path) -> float:
    """Root mean square level in [0, 1]: tells silence from sound."""
    samples, _ = read_samples(path)
    if not samples:
        return 0.0
    return math.sqrt(sum(x * x for x in samples) / len(samples))


def dominant_tone(path: str | Path, candidates: Iterable[float], min_ratio: float = 10.0,
                  floor: float = 1e-4) -> float | None:
    """The candidate whose power is at least `min_ratio` times every other's and above
    `floor` (silence has no dominant tone), or None when no candidate stands out."""
    powers = tone_powers(path, candidates)
    if not powers:
        return None
    best = max(powers, key=lambda hz: powers[hz])
    if powers[best] < floor:
        return None
    others = [p for hz, p in powers.items() if hz != best]
    if any(powers[best] < min_ratio * p for p in others):
        return None
    return best
