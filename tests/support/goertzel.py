"""Which tone is in a recording: the Goertzel algorithm over a 16-bit mono WAV.

Goertzel computes one DFT bin with a second-order recurrence (Goertzel 1958), O(N) per
frequency and pure Python: an 8 kHz recording of a few seconds takes milliseconds. Powers are
normalised so a full-scale sine of amplitude `a` (as a fraction of 32768) reads about a²,
whatever the recording's length.
"""

from __future__ import annotations

import math
import wave
from collections.abc import Iterable, Sequence
from pathlib import Path


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


def goertzel_power(samples: Sequence[float], hz: float, rate: int) -> float:
    """Normalised power of `hz` in `samples`: about a² for a sine of amplitude a."""
    n = len(samples)
    if n == 0:
        return 0.0
    coeff = 2.0 * math.cos(2.0 * math.pi * hz / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - coeff * s1 * s2
    # |X(k)|² of a sine of amplitude a over n samples is (a·n/2)².
    return power / (n / 2.0) ** 2


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
