"""Test audio made with math (numpy is not a dependency): sines, DTMF key tones, noise, as
pcm (16-bit signed little-endian, 8 kHz, mono: sipmask's audio format, media/wav.py)."""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Sequence

RATE = 8000
ROWS = (697.0, 770.0, 852.0, 941.0)           # ITU-T Q.23, written out again on purpose:
COLUMNS = (1209.0, 1336.0, 1477.0, 1633.0)    # the detector's own tables are under test
KEYPAD = ("123A", "456B", "789C", "*0#D")


def pcm(values: Sequence[float]) -> bytes:
    """Rounded and clipped to 16 bits."""
    return struct.pack(f"<{len(values)}h",
                       *(max(-32768, min(32767, round(v))) for v in values))


def amplitude(level_dbm0: float) -> float:
    """The peak of a sine at `level_dbm0`: full scale (32767) is +3.17 dBm0 in G.711."""
    return 32767.0 * 10.0 ** ((level_dbm0 - 3.17) / 20.0)


def sine(hz: float, seconds: float, peak: float = 8000.0, *, start: int = 0) -> list[float]:
    """`start` continues the phase of an earlier stretch (sample index)."""
    return [peak * math.sin(2 * math.pi * hz * (start + i) / RATE)
            for i in range(round(seconds * RATE))]


def silence(seconds: float) -> list[float]:
    return [0.0] * round(seconds * RATE)


def key_frequencies(key: str) -> tuple[float, float]:
    for row, keys in enumerate(KEYPAD):
        if key in keys:
            return ROWS[row], COLUMNS[keys.index(key)]
    raise ValueError(key)


def dtmf(key: str, seconds: float, level_dbm0: float = -10.0, *, twist_db: float = 0.0,
         scale: float = 1.0) -> list[float]:
    """The key's two tones; `twist_db` > 0 makes the column tone louder, < 0 the row tone;
    `scale` multiplies both frequencies (1.015: 1.5 % high)."""
    low, high = key_frequencies(key)
    a = amplitude(level_dbm0)
    b = a * 10.0 ** (twist_db / 20.0)
    return [a * math.sin(2 * math.pi * low * scale * i / RATE)
            + b * math.sin(2 * math.pi * high * scale * i / RATE)
            for i in range(round(seconds * RATE))]


def noise(seconds: float, sigma: float, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(0.0, sigma) for _ in range(round(seconds * RATE))]


def add(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x + y for x, y in zip(a, b, strict=True)]
